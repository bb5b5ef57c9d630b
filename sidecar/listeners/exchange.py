"""The asyncio driver of one exchange: feeds an `ExchangeMachine` its I/O events, runs its actions.

The rules of an exchange live in the sans-IO machine (sidecar/exchange/machine.py); this driver
only translates. A downstream connection (downstream.py) makes an `Exchange` per request head and
passes it the request's events; the driver is the `UpstreamOwner` of the attempt's pooled
connection, holds the connect task and the timer handles, and carries out each action in the
order the machine returned it. An event that arrives while actions run (a pooled connection bound
synchronously) appends to the same list, so effects keep their order. Backpressure between the
two connections is wired here too (a full write buffer on one side pauses reading the other),
since it concerns only the transports.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from sidecar.errors import UpstreamConnectFailure
from sidecar.exchange.machine import (
    Action,
    CloseUp,
    Connect,
    EndDown,
    EndUp,
    ExchangeMachine,
    Finish,
    HeadDown,
    Mirror,
    ReadDown,
    Timer,
    Tunnel,
    Wake,
    WriteDown,
    WriteUp,
)
from sidecar.http.grpc import format_timeout, request_timeout
from sidecar.http.http1 import Headers, ParseError, RequestStart, ResponseEvent, ResponseParser
from sidecar.http.http2 import request_headers
from sidecar.listeners.splice import DOWN, Splice
from sidecar.listeners.state import PAUSE_UNSENT, PAUSE_UPSTREAM_FULL, ListenerState
from sidecar.upstream.h2pool import H2UpstreamStream
from sidecar.upstream.pool import UpstreamConnection

__all__ = ["Downstream", "Exchange"]


class Downstream(Protocol):
    """What an exchange needs of its downstream connection."""

    @property
    def transport(self) -> asyncio.Transport:
        """Where response bytes are written (an HTTP/2 stream's is the stream itself)."""

    peer: str
    peer_identity: str  # verified SPIFFE ID of a mutual-TLS client, "" otherwise
    original_dst: tuple[str, int] | None  # where an intercepted connection was going
    write_paused: bool

    def pause(self, reason: int) -> None:
        """Stop reading the client for `reason`."""

    def resume(self, reason: int) -> None:
        """`reason` no longer holds; read again if no other does."""

    def exchange_done(self, *, keep_alive: bool, abort: bool) -> None:
        """The exchange ended: serve the next request, or close (reset if `abort`)."""

    def start_tunnel(self, splice: Splice) -> bytes:
        """Stop parsing HTTP; route the connection through `splice`; the bytes held past the head."""

    def send_head(self, headers: Headers, *, end: bool) -> None:
        """HTTP/2 only: send a response header block."""

    def send_end(self, trailers: Headers) -> None:
        """HTTP/2 only: end the response once its data is sent."""


class Exchange:
    """Drives one request's machine against the downstream connection, the pool and the loop."""

    __slots__ = ("conn", "connecting", "down", "machine", "running", "state", "timers")

    def __init__(
        self, down: Downstream, start: RequestStart, state: ListenerState, *, complete: bool
    ) -> None:
        self.down = down
        self.state = state
        self.machine = ExchangeMachine(start, state, complete)
        # The current attempt's connection (HTTP/1), or stream (HTTP/2).
        self.conn: UpstreamConnection | H2UpstreamStream | None = None
        self.connecting: asyncio.Task[None] | None = None
        self.timers: list[asyncio.TimerHandle | None] | None = None  # per Timer, made on first use
        self.running = False
        state.active += 1

    @property
    def request_complete(self) -> bool:
        """Whether the request's end has been read."""
        return self.machine.request_complete

    @property
    def finished(self) -> bool:
        """Whether the exchange ended (or became a tunnel's)."""
        return self.machine.done

    # --- the request side (called by the downstream connection) ---

    def begin(self) -> None:
        """Resolve the request and answer or forward it."""
        down = self.down
        self.run(self.machine.begin(down.peer, down.peer_identity, down.original_dst))

    def body(self, data: bytes) -> None:
        """A piece of the request body (de-chunked)."""
        self.run(self.machine.request_body(data))

    def end(self) -> None:
        """The request is complete."""
        self.run(self.machine.request_end())

    def fail(self, error: ParseError) -> None:
        """The request broke mid-body."""
        self.run(self.machine.request_failed(error))

    def downstream_lost(self) -> None:
        """The client went away mid-exchange."""
        self.run(self.machine.downstream_lost())

    def downstream_paused(self, *, paused: bool) -> None:
        """The client's write buffer filled (or drained): throttle the upstream."""
        conn = self.conn
        if conn is not None:
            if paused:
                conn.pause_reading()
            else:
                conn.resume_reading()

    # --- running actions ---

    def run(self, actions: list[Action]) -> None:
        """Carry out `actions` in order; those appended meanwhile (a nested event) too."""
        if self.running or not actions:
            return
        self.running = True
        try:
            # A list iterator sees what is appended while it runs (events fed meanwhile).
            for action in actions:
                if type(action) is WriteDown:
                    self.down.transport.write(action.data)
                elif type(action) is WriteUp:
                    if self.conn is not None:
                        self.conn.write(action.data)
                elif type(action) is Finish:
                    self.finish(action)
                elif type(action) is CloseUp:
                    self.close_up(action)
                elif type(action) is Connect:
                    self.connect(action)
                elif type(action) is Wake:
                    self.wake(action)
                elif type(action) is ReadDown:
                    if action.on:
                        self.down.resume(PAUSE_UNSENT)
                    else:
                        self.down.pause(PAUSE_UNSENT)
                elif type(action) is Mirror:
                    state = self.state
                    state.mirrors.send(
                        action.target,
                        action.head,
                        action.framing,
                        action.body,
                        pool=state.pool,
                    )
                elif type(action) is HeadDown:
                    self.down.send_head(action.headers, end=action.end)
                elif type(action) is EndDown:
                    self.down.send_end(action.trailers)
                elif type(action) is EndUp:
                    conn = self.conn
                    if type(conn) is H2UpstreamStream:
                        conn.end_request()
                elif type(action) is Tunnel:
                    self.tunnel(action)
        finally:
            actions.clear()
            self.running = False

    def connect(self, action: Connect) -> None:
        """Bind an idle pooled connection, or connect (the one await of the hot path)."""
        target = action.target
        if target.http2:
            # A new stream is always fresh; it goes on a connection with room if one is open.
            stream = self.state.h2pool.take_stream(
                (target.address, target.port, target.tls_server_name),
                target.max_concurrent_streams,
                target.max_requests_per_connection,
                target.max_connection_age,
            )
            if stream is not None:
                self.bind(action.attempt, stream)
                return
            self.connecting = asyncio.get_running_loop().create_task(
                self.open_stream(action), name=f"proxy-{self.state.name}-connect"
            )
            return
        conn = (
            None
            if action.fresh
            else self.state.pool.take_idle(
                (target.address, target.port, target.tls_server_name), target.tls_identities
            )
        )
        if conn is not None:
            self.bind(action.attempt, conn)
        else:
            self.connecting = asyncio.get_running_loop().create_task(
                self.open(action), name=f"proxy-{self.state.name}-connect"
            )

    async def open(self, action: Connect) -> None:
        """Open a new connection, then bind it (or pool it if the attempt was given up)."""
        target = action.target
        state = self.state
        pool = state.pool
        try:
            conn = await pool.connect(
                target.address,
                target.port,
                connect_timeout=target.connect_timeout,
                tls_server_name=target.tls_server_name,
                identities=target.tls_identities,
            )
        except UpstreamConnectFailure as exc:
            if self.machine.expects(action.attempt):
                self.connecting = None
                self.run(self.machine.upstream_connect_failed(action.attempt, exc))
            return
        opened = state.connections_opened
        opened[target.cluster] = opened.get(target.cluster, 0) + 1
        if self.machine.expects(action.attempt):
            self.connecting = None
            self.bind(action.attempt, conn)
        else:
            pool.release(conn)  # clean and unused: someone else may take it

    async def open_stream(self, action: Connect) -> None:
        """A stream on a connection being opened or a new one, then bind it."""
        target = action.target
        state = self.state
        try:
            stream = await state.h2pool.stream(
                target.address,
                target.port,
                connect_timeout=target.connect_timeout,
                tls_server_name=target.tls_server_name,
                identities=target.tls_identities,
                cap=target.max_concurrent_streams,
                max_requests=target.max_requests_per_connection,
                max_age=target.max_connection_age,
                idle_timeout=target.idle_timeout or 0.0,
            )
        except UpstreamConnectFailure as exc:
            if self.machine.expects(action.attempt):
                self.connecting = None
                self.run(self.machine.upstream_connect_failed(action.attempt, exc))
            return
        if stream.requests == 1:
            opened = state.connections_opened
            opened[target.cluster] = opened.get(target.cluster, 0) + 1
        if self.machine.expects(action.attempt):
            self.connecting = None
            self.bind_stream(action.attempt, stream)

    def bind_stream(self, attempt: int, stream: H2UpstreamStream) -> None:
        """Open the HTTP/2 stream with the forwarded head; the machine sends the body so far."""
        machine = self.machine
        head = machine.head
        if head is None:  # unreachable: a forward has its head
            return
        self.conn = stream
        stream.owner = self
        headers = request_headers(head)
        timeout = request_timeout(head.headers)
        if timeout is not None:
            # The caller's deadline less the time spent here (and on any earlier attempt).
            left = timeout - (self.state.clock() - machine.started)
            headers = [
                (name, format_timeout(max(left, 0.0))) if name == b"grpc-timeout" else (name, v)
                for name, v in headers
            ]
        if not stream.open(headers, machine.start.method):
            self.conn = None
            failure = UpstreamConnectFailure("upstream HTTP/2 connection takes no new stream")
            self.run(machine.upstream_connect_failed(attempt, failure))
            return
        if self.down.write_paused:
            stream.pause_reading()
        actions = machine.upstream_connected(attempt, None, stream.tls, False, stream.requests)
        if not self.running:
            self.run(actions)

    def bind(self, attempt: int, conn: UpstreamConnection | H2UpstreamStream) -> None:
        """Use `conn` for `attempt`: the machine sends the request head and the body so far."""
        if type(conn) is H2UpstreamStream:
            self.bind_stream(attempt, conn)
            return
        assert type(conn) is UpstreamConnection  # noqa: S101 (narrowing)
        self.conn = conn
        conn.owner = self
        conn.requests += 1
        method = self.machine.start.method
        parser = conn.parser
        if parser is None or not parser.reset(method):
            parser = conn.parser = ResponseParser(method)
        if self.down.write_paused:
            conn.pause_reading()
        actions = self.machine.upstream_connected(
            attempt, parser, conn.tls, conn.reused, conn.requests
        )
        if not self.running:  # else the running loop takes them
            self.run(actions)

    def close_up(self, action: CloseUp) -> None:
        """Stop connecting; pool the connection (clean) or close it."""
        if self.connecting is not None:
            self.connecting.cancel()
            self.connecting = None
        conn, self.conn = self.conn, None
        if type(conn) is H2UpstreamStream:
            if action.reuse:
                conn.finished()
            else:
                conn.cancel()
        elif conn is not None:
            assert type(conn) is UpstreamConnection  # noqa: S101 (narrowing)
            pool = self.state.pool
            if action.reuse:
                pool.release(conn, idle_timeout=action.idle_timeout)
            else:
                pool.discard(conn)
        self.down.resume(PAUSE_UPSTREAM_FULL)

    def wake(self, action: Wake) -> None:
        """Set or cancel one of the machine's timers."""
        timers = self.timers
        if timers is None:
            timers = self.timers = [None, None, None, None]
        timer = action.timer
        handle = timers[timer]
        if handle is not None:
            handle.cancel()
        if action.delay is None:
            timers[timer] = None
        else:
            loop = asyncio.get_running_loop()
            timers[timer] = loop.call_later(action.delay, self.fired, timer)

    def fired(self, timer: Timer) -> None:
        """A timer handle ran."""
        if self.timers is not None:
            self.timers[timer] = None
        self.run(self.machine.timer_fired(timer))

    def tunnel(self, action: Tunnel) -> None:
        """After a 101: relay raw bytes both ways until both sides have closed."""
        conn, self.conn = self.conn, None
        if type(conn) is not UpstreamConnection or conn.transport is None:
            return  # unreachable: a 101 arrived on the attempt's HTTP/1 connection
        state = self.state
        state.pool.detach(conn)
        conn.resume_reading()
        down = self.down
        down.transport.write(action.data)
        splice = Splice(down.transport, conn.transport, on_end=self.tunnel_ended)
        splice.moved[1] = action.tail
        splice.idle_since = state.clock()
        conn.owner = splice
        state.tunnels.add(splice)
        held = down.start_tunnel(splice)
        if held:
            splice.relay(DOWN, held)

    def tunnel_ended(self, splice: Splice) -> None:
        """Both directions of the tunnel ended (or one broke)."""
        self.state.tunnels.discard(splice)
        moved = splice.moved
        self.run(self.machine.tunnel_ended(sent=moved[0], received=moved[1]))

    def finish(self, action: Finish) -> None:
        """Record the exchange; hand the downstream connection back (not a tunnel's)."""
        state = self.state
        state.active -= 1
        state.record(action.completed)
        if action.hand_back:
            self.down.exchange_done(keep_alive=action.keep_alive, abort=action.abort)

    # --- UpstreamOwner (the current attempt's connection) ---

    def upstream_data(self, data: bytes) -> None:
        """Bytes of the response."""
        self.run(self.machine.upstream_data(data))

    def upstream_response(self, events: list[ResponseEvent]) -> None:
        """Response events of the HTTP/2 stream."""
        self.run(self.machine.upstream_response(events))

    def upstream_refused(self, reason: str) -> None:
        """The HTTP/2 stream was refused unprocessed."""
        self.conn = None  # nothing to reset
        self.run(self.machine.upstream_refused(reason))

    def upstream_eof(self) -> bool:
        """The upstream closed its half; our half is of no more use."""
        self.run(self.machine.upstream_eof())
        return False

    def upstream_lost(self, exc: Exception | None) -> None:
        """The connection is gone before the response completed."""
        self.run(self.machine.upstream_lost(repr(exc)))

    def upstream_paused(self) -> None:
        """The upstream cannot take more body now."""
        self.down.pause(PAUSE_UPSTREAM_FULL)

    def upstream_resumed(self) -> None:
        """The upstream takes body bytes again."""
        self.down.resume(PAUSE_UPSTREAM_FULL)
