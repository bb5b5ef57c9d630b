"""JSONPatch (RFC 6902) between a pod and its injected form, as an admission response carries. Pure.

Injection only touches a few top-level fields of `metadata` and `spec`, so the patch replaces
each changed field whole: short, easy to read in an audit log, and exactly the template's output
once applied (no list-index arithmetic that could drift from it).
"""

from __future__ import annotations

from typing import Any

Operation = dict[str, Any]


def _pointer(*parts: str) -> str:
    return "".join("/" + part.replace("~", "~0").replace("/", "~1") for part in parts)


def diff(original: dict[str, Any], injected: dict[str, Any]) -> list[Operation]:
    """Operations that turn `original` into `injected`, field by field under metadata and spec."""
    operations: list[Operation] = []
    for section in ("metadata", "spec"):
        before = original.get(section)
        after = injected.get(section)
        if before == after:
            continue
        if not isinstance(before, dict) or not isinstance(after, dict):
            operations.append({"op": "add", "path": _pointer(section), "value": after})
            continue
        for key in sorted(before.keys() - after.keys()):
            operations.append({"op": "remove", "path": _pointer(section, key)})
        for key in after:  # in the template's order
            if key not in before or before[key] != after[key]:
                # "add" on an existing member replaces it (RFC 6902 4.1).
                operations.append(
                    {"op": "add", "path": _pointer(section, key), "value": after[key]}
                )
    return operations
