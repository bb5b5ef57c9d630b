"""Create-once private files, safe against replicas racing to create them. Pure I/O helper.

The content is written to a temporary 0600 file first and then hard-linked into place: `link`
fails if the name exists, so exactly one creator wins, and nobody ever reads a half-written file
(as they could with O_CREAT|O_EXCL followed by a write).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def write_once(path: Path, data: bytes) -> bytes:
    """Create `path` (0600) holding `data` unless it exists; return what `path` holds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as out:  # mkstemp creates the file 0600
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return path.read_bytes()
        return data
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
