"""The heap trimmer runs until told to stop (on glibc it calls mallopt and malloc_trim)."""

import asyncio

from lightmesh.memory import _libc, return_freed_memory


async def test_trims_until_stopped() -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(return_freed_memory(stop, interval=0.01))
    await asyncio.sleep(0.05)  # a few rounds of malloc_trim
    assert not task.done() or _libc() is None
    stop.set()
    await asyncio.wait_for(task, 5)
