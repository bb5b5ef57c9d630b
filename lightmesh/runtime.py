"""Running a daemon's main coroutine on uvloop when it is installed, the stdlib loop otherwise."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency; kept for odd platforms
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def run_main(main: Coroutine[Any, Any, None]) -> None:
    """Run `main` to completion on the fastest available loop."""
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        runner.run(main)
