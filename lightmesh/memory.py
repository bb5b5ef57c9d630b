"""Returning freed heap to the operating system (glibc), so RSS follows use (both daemons).

Measured (`python -m bench.tls_churn`, docs/reliability.md): every TLS connection of the event
loop (uvloop) mallocs a 256 KiB read buffer. glibc serves the first ones with mmap, and when one is freed it raises its mmap
threshold above that size, so from then on each new buffer comes from the heap; connections that
come and go (endpoints restarting, retries on fresh connections) then leave the heap fragmented
and the RSS high: 40 TLS connections opened and closed 40 times grew a process from 30.6 to
39.2 MB, still climbing. Two remedies, both cheap:
- a fixed mmap threshold of 128 KiB at start (`mallopt(M_MMAP_THRESHOLD)`): buffers that large are
  always their own mappings and go back to the system when freed (39.2 → 32.5 MB above);
- `malloc_trim(0)` every TRIM_INTERVAL seconds: free pages inside the heap are returned too
  (29.2 MB above, flat).
Elsewhere than glibc (musl, macOS) both are skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import logging

logger = logging.getLogger("lightmesh.memory")

TRIM_INTERVAL = 5.0  # seconds
MMAP_THRESHOLD = 128 * 1024
_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    if libc is None or not hasattr(libc, "malloc_trim") or not hasattr(libc, "mallopt"):
        return None
    return libc


async def return_freed_memory(stop: asyncio.Event, *, interval: float = TRIM_INTERVAL) -> None:
    """Fix the mmap threshold, then trim the heap every `interval` seconds until `stop`."""
    libc = _libc()
    if libc is None:
        return
    libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=interval)
        libc.malloc_trim(0)
