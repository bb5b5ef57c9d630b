"""TCP passthrough: a listener that splices each connection's raw bytes to a resolved endpoint.

For ports declared non-HTTP (databases, brokers, anything the HTTP codec must not touch). Each
accepted connection asks `resolve` for an endpoint, connects to it (the client is not read
meanwhile), then a `Splice` copies bytes both ways with backpressure and half-close. Connections
idle in both directions for `idle_timeout` are closed by the listener's sweeper.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import cast

from lightmesh.response_flags import ResponseFlag
from sidecar.contract import Completed, Forward, LocalReply, Recorder
from sidecar.errors import UpstreamConnectFailure
from sidecar.listeners.splice import DOWN, Splice, expire_splices
from sidecar.upstream.pool import ConnectionPool, UpstreamConnection

logger = logging.getLogger("sidecar.proxy")

# Picks the endpoint for a new connection from the client's address; None refuses it.
TcpResolver = Callable[[str], Forward | None]

# Envoy's tcp_proxy default idle_timeout.
DEFAULT_IDLE_TIMEOUT = 3600.0


class _TcpConnection(asyncio.Protocol):
    """One client connection of a TCP passthrough listener."""

    def __init__(
        self, listener: TcpProxyListener, decided: Forward | LocalReply | None = None
    ) -> None:
        self._listener = listener
        # Set for a connection adopted from the HTTP listener: already decided, no resolve.
        self._decided = decided
        self.transport: asyncio.Transport | None = None
        self.splice: Splice | None = None
        self._connecting: asyncio.Task[None] | None = None
        self._target: Forward | None = None
        self._started = 0.0
        self._start_time = 0.0
        self._write_paused = False
        # Bytes that arrived before the upstream connection (uvloop may deliver a first read
        # despite pause_reading in connection_made); reading is paused again meanwhile.
        self._early: list[bytes] = []
        self._early_eof = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        listener = self._listener
        self.transport = down = cast(asyncio.Transport, transport)
        self._started = listener.clock()
        self._start_time = time.time()
        listener.connections.add(self)
        down.pause_reading()  # until the upstream is there to take the bytes
        decided = self._decided
        target: Forward | None
        if isinstance(decided, LocalReply):
            self._end(flags=decided.flags, moved=(0, 0))
            down.close()
            return
        if decided is not None:
            target = decided
        else:
            peer = down.get_extra_info("peername")
            try:
                target = listener.resolve(str(peer[0]) if isinstance(peer, tuple) and peer else "")
            except Exception as exc:
                logger.error("tcp listener=%s resolver failed: %r", listener.name, exc)
                target = None
        if target is None:
            self._end(flags=ResponseFlag.NR, moved=(0, 0))
            down.close()
            return
        self._target = target
        self._connecting = asyncio.get_running_loop().create_task(
            self._connect(target), name=f"tcp-{listener.name}-connect"
        )

    async def _connect(self, target: Forward) -> None:
        down = self.transport
        if down is None:
            return
        try:
            conn = await self._listener.pool.connect(
                target.address, target.port, connect_timeout=target.connect_timeout
            )
        except UpstreamConnectFailure:
            self._connecting = None
            self._end(flags=ResponseFlag.UF, moved=(0, 0))
            down.close()
            return
        self._connecting = None
        up = conn.transport
        if down.is_closing() or up is None:
            self._listener.pool.discard(conn)
            return
        self._bind(down, conn, up)

    def _bind(
        self, down: asyncio.Transport, conn: UpstreamConnection, up: asyncio.Transport
    ) -> None:
        self._listener.pool.detach(conn)
        splice = Splice(down, up, on_end=self._spliced)
        splice.idle_since = self._listener.clock()
        conn.owner = splice
        self.splice = splice
        self._listener.splices.add(splice)
        if self._write_paused:
            splice.throttle(DOWN, paused=True)
        early, self._early = self._early, []
        for data in early:
            splice.relay(DOWN, data)
        if self._early_eof:
            splice.end_input(DOWN)
        elif not splice.ended:
            down.resume_reading()

    def _spliced(self, splice: Splice) -> None:
        self._listener.splices.discard(splice)
        self._end(flags="", moved=(splice.moved[0], splice.moved[1]))

    def _end(self, *, flags: str, moved: tuple[int, int]) -> None:
        listener = self._listener
        target = self._target
        listener.record(
            Completed(
                method="",
                host="",
                cluster=target.cluster if target is not None else "",
                status=0,
                flags=flags,
                duration=listener.clock() - self._started,
                request_bytes=moved[0],
                response_bytes=moved[1],
                upstream=f"{target.address}:{target.port}" if target is not None else "",
                start_time=self._start_time,
            )
        )

    def data_received(self, data: bytes) -> None:
        if self.splice is not None:
            self.splice.relay(DOWN, data)
        elif self.transport is not None:
            self._early.append(data)
            self.transport.pause_reading()

    def eof_received(self) -> bool | None:
        if self.splice is not None:
            self.splice.end_input(DOWN)
            return not self.splice.ended
        self._early_eof = True
        return True  # passed on once the upstream is connected

    def connection_lost(self, exc: Exception | None) -> None:
        self._listener.forget(self)
        if self.splice is not None:
            self.splice.lost(DOWN, exc)
        elif self._connecting is not None:
            self._connecting.cancel()
            self._connecting = None

    def pause_writing(self) -> None:
        self._write_paused = True
        if self.splice is not None:
            self.splice.throttle(DOWN, paused=True)

    def resume_writing(self) -> None:
        self._write_paused = False
        if self.splice is not None:
            self.splice.throttle(DOWN, paused=False)

    def abort(self) -> None:
        """Reset the connection (and its upstream)."""
        if self.splice is not None:
            self.splice.close(abort=True)
        elif self.transport is not None:
            self.transport.abort()


class TcpProxyListener:
    """A running TCP passthrough listener. Create with `start_tcp_proxy`."""

    def __init__(
        self,
        *,
        resolve: TcpResolver,
        recorder: Recorder | None,
        listener: str,
        idle_timeout: float,
        clock: Callable[[], float],
    ) -> None:
        self.resolve = resolve
        self._recorder = recorder
        self.name = listener
        self.idle_timeout = idle_timeout
        self.clock = clock
        self.pool = ConnectionPool(idle_timeout=idle_timeout, clock=clock)
        self.connections: set[_TcpConnection] = set()
        self.splices: set[Splice] = set()
        self._drained = asyncio.Event()
        self._draining = False
        self._server: asyncio.Server | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self.port = 0

    @property
    def active(self) -> int:
        """Connections open (connecting or spliced)."""
        return len(self.connections)

    async def _start(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _TcpConnection(self), host, port)
        self.port = int(self._server.sockets[0].getsockname()[1])
        self.start_sweeper()

    def start_sweeper(self) -> None:
        """Start expiring idle connections (`start_tcp_proxy` does; an adopting listener too)."""
        self._sweeper = asyncio.get_running_loop().create_task(
            self._sweep_forever(), name=f"tcp-{self.name}-sweeper"
        )

    def adopt(self, transport: asyncio.Transport, decided: Forward | LocalReply) -> None:
        """Take over a connection another listener accepted (the HTTP listener found on accept
        that it is not HTTP): splice it to `decided`, or refuse it with a LocalReply's flags."""
        connection = _TcpConnection(self, decided)
        transport.set_protocol(connection)
        connection.connection_made(transport)

    def record(self, completed: Completed) -> None:
        """Report a finished connection (telemetry trouble never costs the connection)."""
        if self._recorder is None:
            return
        try:
            self._recorder(completed)
        except Exception as exc:
            logger.error("tcp listener=%s recorder failed: %r", self.name, exc)

    def forget(self, connection: _TcpConnection) -> None:
        """A client connection closed."""
        self.connections.discard(connection)
        if self._draining and not self.connections:
            self._drained.set()

    async def _sweep_forever(self) -> None:
        interval = max(self.idle_timeout / 8, 0.01)
        while True:
            await asyncio.sleep(interval)
            expire_splices(self.splices, now=self.clock(), idle_timeout=self.idle_timeout)

    async def close(self, drain_timeout: float = 5.0) -> None:
        """Stop accepting; let open connections end for up to `drain_timeout`, then reset them."""
        self._draining = True
        if self._server is not None:
            self._server.close()
        for timeout in (drain_timeout, 1.0):  # then a moment for resets to be reported
            if self.connections:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(timeout):
                        await self._drained.wait()
            for connection in list(self.connections):
                connection.abort()
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
        self.pool.close()


async def start_tcp_proxy(
    host: str,
    port: int,
    *,
    resolve: TcpResolver,
    listener: str,
    recorder: Recorder | None = None,
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
    clock: Callable[[], float] = time.monotonic,
) -> TcpProxyListener:
    """Listen on host:port (0 picks a free port) and splice every connection to `resolve(peer)`."""
    proxy = TcpProxyListener(
        resolve=resolve,
        recorder=recorder,
        listener=listener,
        idle_timeout=idle_timeout,
        clock=clock,
    )
    await proxy._start(host, port)
    return proxy
