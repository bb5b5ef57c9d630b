"""Raw byte relay between two transports: Upgrade tunnels after a 101, and TCP passthrough.

Side 0 is the downstream (client) transport, side 1 the upstream one. Bytes read on one side are
written to the other in the same callback; a full write buffer pauses reading on the other side.
An EOF is passed on as a half-close, and the splice ends when both directions have ended or
either connection breaks (a broken side resets the other, so the peer sees the truncation).
`active` is set by traffic and cleared by the listener's sweeper, which ends splices that stay
idle for longer than their idle timeout.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

DOWN = 0
UP = 1


class Splice:
    """Copies bytes both ways between `down` and `up` until both directions end."""

    __slots__ = ("_eof", "_on_end", "_transports", "active", "ended", "idle_since", "moved")

    def __init__(
        self,
        down: asyncio.Transport,
        up: asyncio.Transport,
        *,
        on_end: Callable[[Splice], None],
    ) -> None:
        self._transports = (down, up)
        self._on_end = on_end
        self._eof = [False, False]
        self.moved = [0, 0]  # bytes read from down (sent up), read from up (sent down)
        self.active = True
        self.idle_since = 0.0
        self.ended = False

    def relay(self, side: int, data: bytes) -> None:
        """Bytes read on `side`: write them to the other side."""
        if data:
            self.moved[side] += len(data)
            self.active = True
            other = self._transports[1 - side]
            if not other.is_closing():
                other.write(data)

    def end_input(self, side: int) -> None:
        """`side` half-closed: pass the end on; once both directions ended, close both."""
        self._eof[side] = True
        if self._eof[1 - side]:
            self.close()
            return
        other = self._transports[1 - side]
        if other.is_closing():
            return
        if other.can_write_eof():
            other.write_eof()
        else:
            self.close()

    def lost(self, side: int, exc: Exception | None) -> None:
        """The connection on `side` is gone: end the splice (a broken side resets the other)."""
        self._eof[side] = True
        self.close(abort=exc is not None)

    def throttle(self, side: int, *, paused: bool) -> None:
        """`side`'s write buffer filled (or drained): stop (or restart) reading the other side."""
        other = self._transports[1 - side]
        if other.is_closing():
            return
        if paused:
            other.pause_reading()
        else:
            other.resume_reading()

    def close(self, *, abort: bool = False) -> None:
        """End the splice: close both connections (reset them if `abort`); report once."""
        for transport in self._transports:
            if abort:
                transport.abort()
            elif not transport.is_closing():
                transport.close()
        if not self.ended:
            self.ended = True
            self._on_end(self)

    # --- the upstream side, as an UpstreamOwner ---

    def upstream_data(self, data: bytes) -> None:
        """Bytes from the upstream."""
        self.relay(UP, data)

    def upstream_eof(self) -> bool:
        """The upstream half-closed; keep sending it what the client still sends."""
        self.end_input(UP)
        return not self.ended

    def upstream_lost(self, exc: Exception | None) -> None:
        """The upstream connection is gone."""
        self.lost(UP, exc)

    def upstream_paused(self) -> None:
        """The upstream's write buffer is full."""
        self.throttle(UP, paused=True)

    def upstream_resumed(self) -> None:
        """The upstream's write buffer drained."""
        self.throttle(UP, paused=False)


def expire_splices(splices: set[Splice], *, now: float, idle_timeout: float) -> None:
    """Close splices that moved no byte for `idle_timeout` (run periodically by a sweeper)."""
    for splice in list(splices):
        if splice.active:
            splice.active = False
            splice.idle_since = now
        elif now - splice.idle_since >= idle_timeout:
            splice.close()
