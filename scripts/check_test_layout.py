"""Unit-test paths mirror source paths (mitmproxy's test/filename_matching.py, as a script).

`tests/unit/<package path>/test_<module>[_<topic>].py` must test `<package path>/<module>.py` (or
the package `<package path>/<module>/`): the directory names the package, the file name starts
with the module's. Run by `make lint`; exits 1 naming each unit test file that has no source.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
UNIT = ROOT / "tests" / "unit"

# Test files that do not mirror one module (none now): test file -> what it tests.
PENDING: dict[str, str] = {}


def source_of(test: Path) -> Path | None:
    """The module or package `test` mirrors, or None."""
    directory = ROOT / test.parent.relative_to(UNIT)
    words = test.stem.removeprefix("test_").split("_")
    for end in range(len(words), 0, -1):  # the longest module name that matches
        name = "_".join(words[:end])
        for candidate in (directory / f"{name}.py", directory / name):
            if candidate.exists():
                return candidate
    return None


def main() -> int:
    """Check every unit test file; print the strays."""
    strays = []
    for test in sorted(UNIT.rglob("test_*.py")):
        relative = test.relative_to(UNIT).as_posix()
        if relative not in PENDING and source_of(test) is None:
            strays.append(relative)
    strays += [
        f"{name} (listed as pending, but gone)" for name in PENDING if not (UNIT / name).exists()
    ]
    for stray in strays:
        print(f"tests/unit/{stray}: no source module it mirrors", file=sys.stderr)
    return 1 if strays else 0


if __name__ == "__main__":
    sys.exit(main())
