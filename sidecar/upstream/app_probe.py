"""TCP probes of the sidecar's own app, when its `AppHealth` asks for them (the I/O of that state
machine): while the app is down, every PROBE_INTERVAL, so the inbound listener serves again (and
/ready turns 200) within a fraction of a second of the app listening again.

A probe is a TCP connect to the app's port, closed at once: no request, nothing the app acts on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from sidecar.cluster.app_health import AppHealth

logger = logging.getLogger("sidecar.app_probe")

CONNECT_TIMEOUT = 0.5
IDLE_CHECK = 0.25  # how often an up app's state is looked at (a refusal schedules a probe)


async def connects(host: str, port: int) -> bool:
    """Whether a TCP connection to host:port opens within CONNECT_TIMEOUT."""
    try:
        async with asyncio.timeout(CONNECT_TIMEOUT):
            _, writer = await asyncio.open_connection(host, port)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


async def run_probes(
    health: AppHealth,
    host: str,
    port: int,
    stop: asyncio.Event,
    *,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Probe when `health.next_probe` is due, until `stop`; logs each change of the app's state."""
    was_down = health.down
    while not stop.is_set():
        delay = health.next_probe - clock()
        if delay > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), min(delay, IDLE_CHECK))
        else:
            health.probed(ok=await connects(host, port), now=clock())
        if health.down != was_down:
            was_down = health.down
            logger.warning(
                "app %s",
                "unreachable" if was_down else "reachable again",
                extra={"event": "app_down" if was_down else "app_up", "app_port": port},
            )
