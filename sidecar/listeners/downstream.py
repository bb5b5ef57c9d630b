"""The downstream (client) side of the proxy: one asyncio Protocol per accepted connection.

Bytes go through the sans-IO `RequestParser`; its events drive one `Exchange` at a time, so
pipelined requests are answered in order. Events of a request that arrive while an earlier one is
still in flight wait in `events`, and the socket is not read meanwhile (backpressure). After a
101 the connection stops being HTTP and its bytes go through a `Splice` instead.

`phase` and `since` tell the listener's sweeper which downstream timeout applies: IDLE (no
request begun: idle timeout), HEAD (a head is arriving: head timeout, then 408) or BUSY.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import cast

from sidecar.contract import Completed
from sidecar.errors import DownstreamTimeout, ProxyError, rescue
from sidecar.http.http1 import (
    BodyKind,
    Data,
    EndOfMessage,
    ParseError,
    RequestEvent,
    RequestParser,
    RequestStart,
)
from sidecar.http.http2 import preface_state
from sidecar.http.messages import local_reply
from sidecar.listeners.exchange import Exchange
from sidecar.listeners.h2down import take_over
from sidecar.listeners.original_dst import original_destination
from sidecar.listeners.splice import DOWN, Splice
from sidecar.listeners.state import PAUSE_BACKLOG, ListenerState, Phase

logger = logging.getLogger("sidecar.proxy")

_END = EndOfMessage
_DATA = Data
_NO_BODY = BodyKind.NONE


class DownstreamConnection(asyncio.Protocol):
    """One client connection of an HTTP proxy listener."""

    __slots__ = (
        "_paused",
        "_processing",
        "eof",
        "events",
        "exchange",
        "original_dst",
        "parser",
        "peer",
        "peer_identity",
        "phase",
        "since",
        "sniff",
        "splice",
        "state",
        "transport",
        "write_paused",
    )

    def __init__(self, state: ListenerState) -> None:
        self.state = state
        settings = state.settings
        self.parser = RequestParser(
            max_head_bytes=settings.max_head_bytes, max_headers=settings.max_headers
        )
        self.events: deque[RequestEvent] = deque()
        self.exchange: Exchange | None = None
        self.splice: Splice | None = None
        self.peer = ""
        self.peer_identity = ""  # set by the TLS layer (inbound_tls.py) for mutual-TLS clients
        self.original_dst: tuple[str, int] | None = None
        self.phase = Phase.IDLE
        self.since = state.clock()
        self.eof = False
        self.write_paused = False
        self._paused = 0  # PAUSE_* reasons in force
        self._processing = False
        # The connection's first bytes until they tell HTTP/2's preface from HTTP/1 (None then).
        self.sniff: bytes | None = b""

    # --- asyncio.Protocol ---

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.peer = str(peer[0]) if isinstance(peer, tuple) and peer else ""
        state = self.state
        if state.intercept:
            # Once per connection: where the app was going before iptables redirected it.
            self.original_dst = dst = original_destination(transport.get_extra_info("socket"))
            if dst is not None and state.divert is not None and state.adopt is not None:
                decided = state.divert(dst)
                if decided is not None:  # not HTTP: raw TCP from the first byte
                    self.phase = Phase.CLOSED
                    state.adopt(self.transport, decided)
                    return
        state.clients.add(self)

    def data_received(self, data: bytes) -> None:
        splice = self.splice
        if splice is not None:
            splice.relay(DOWN, data)
            return
        if self.phase is Phase.CLOSED:
            return
        if self.sniff is not None:
            data = self.sniff + data
            h2c = preface_state(data)
            if h2c is None:
                self.sniff = data  # a prefix of the preface: wait for more
                return
            self.sniff = None
            if h2c:
                self._become_h2(data)
                return
        if self.phase is Phase.IDLE:
            self.phase, self.since = Phase.HEAD, self.state.clock()
        events = self.parser.feed(data)
        if events:
            self.events.extend(events)
        self.process()

    def _become_h2(self, data: bytes) -> None:
        """The client spoke HTTP/2 (prior knowledge, or ALPN h2): hand the connection over."""
        self.phase = Phase.CLOSED
        self.state.clients.discard(self)
        take_over(
            self.state,
            self.transport,
            data,
            peer=self.peer,
            peer_identity=self.peer_identity,
            original_dst=self.original_dst,
        )

    def eof_received(self) -> bool | None:
        if self.splice is not None:
            self.splice.end_input(DOWN)
            return not self.splice.ended
        self.eof = True
        if self.phase is Phase.CLOSED:
            return None
        self.process()
        # Keep our half open while an answer is still due (a client may half-close after its
        # request); `process` closes the connection once nothing is left.
        return not self.closed

    def connection_lost(self, exc: Exception | None) -> None:
        self.phase = Phase.CLOSED
        self.state.forget(self)
        if self.splice is not None:
            self.splice.lost(DOWN, exc)
            return
        exchange, self.exchange = self.exchange, None
        if exchange is not None:
            exchange.downstream_lost()

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.splice is not None:
            self.splice.throttle(DOWN, paused=True)
        elif self.exchange is not None:
            self.exchange.downstream_paused(paused=True)

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.splice is not None:
            self.splice.throttle(DOWN, paused=False)
        elif self.exchange is not None:
            self.exchange.downstream_paused(paused=False)

    @property
    def closed(self) -> bool:
        """Whether the connection is closing or closed."""
        return self.phase is Phase.CLOSED

    # --- the request loop ---

    def process(self) -> None:
        """Feed parsed events to the current exchange; start the next one when it is done."""
        if self._processing:
            return  # re-entered from an exchange that finished synchronously: the loop goes on
        self._processing = True
        try:
            self._process()
        finally:
            self._processing = False

    def _process(self) -> None:
        events = self.events
        parser = self.parser
        while True:
            exchange = self.exchange
            while events and self.phase is not Phase.CLOSED and self.splice is None:
                if exchange is None:
                    event = events.popleft()
                    if type(event) is not RequestStart:
                        logger.error(
                            "proxy listener=%s request stream out of sync: %r",
                            self.state.name,
                            event,
                        )
                        self.close(abort=True)
                        return
                    # A bodiless request's end comes with its head: the exchange knows it is
                    # complete from the start (no drain step for a local reply).
                    complete = (
                        event.framing.kind is _NO_BODY and bool(events) and type(events[0]) is _END
                    )
                    if complete:
                        events.popleft()
                    self.phase = Phase.BUSY
                    exchange = self.exchange = Exchange(self, event, self.state, complete=complete)
                    exchange.begin()
                elif exchange.request_complete:
                    break  # pipelined: the next request waits for this response
                else:
                    event = events.popleft()
                    if type(event) is _DATA:
                        exchange.body(event.data)
                    else:
                        exchange.end()
                exchange = self.exchange
            if self.phase is Phase.CLOSED or self.splice is not None:
                return
            if exchange is not None:
                if exchange.finished:
                    return  # a tunnel took the connection over
                if not exchange.request_complete and not events:
                    if parser.error is not None:
                        exchange.fail(parser.error)
                        continue
                    if self.eof:
                        exchange.fail(ParseError("request ended without a body terminator"))
                        continue
                if events or parser.paused:
                    self.pause(PAUSE_BACKLOG)  # bounded: one read's worth waits
                else:
                    self.resume(PAUSE_BACKLOG)  # e.g. the rest of this request's body
                return
            # No exchange in flight, nothing parsed.
            if parser.paused:  # an Upgrade request was answered without switching protocols
                events.extend(parser.resume())
                if events or parser.error is not None:
                    continue
            self.resume(PAUSE_BACKLOG)
            if parser.error is not None:
                self.refuse(parser.error)
                return
            if self.eof:
                self.close()
                return
            if parser.in_message:
                if self.phase is not Phase.HEAD:
                    self.phase, self.since = Phase.HEAD, self.state.clock()
            elif self.phase is not Phase.IDLE:
                self.phase, self.since = Phase.IDLE, self.state.clock()
            return

    # --- called by the exchange ---

    def exchange_done(self, *, keep_alive: bool, abort: bool) -> None:
        """The current exchange ended: go on with the next request, or close."""
        self.exchange = None
        if not keep_alive:
            self.close(abort=abort)
            return
        if not self._processing:
            self.process()

    def pause(self, reason: int) -> None:
        """Stop reading the client for `reason`."""
        if not self._paused and self.phase is not Phase.CLOSED:
            self.transport.pause_reading()
        self._paused |= reason

    def resume(self, reason: int) -> None:
        """Read again unless another reason holds."""
        if self._paused & reason:
            self._paused &= ~reason
            if not self._paused and self.phase is not Phase.CLOSED:
                self.transport.resume_reading()

    def start_tunnel(self, splice: Splice) -> bytes:
        """The connection switched protocols: relay raw bytes from now on."""
        self.splice = splice
        self.exchange = None
        self.phase = Phase.BUSY
        self.events.clear()
        if self._paused:
            self._paused = 0
            self.transport.resume_reading()
        if self.write_paused:
            splice.throttle(DOWN, paused=True)
        return self.parser.detach()

    def send_head(self, headers: list[tuple[bytes, bytes]], *, end: bool) -> None:
        """HTTP/2 only: an HTTP/1 exchange never asks for it."""
        raise ProxyError("an HTTP/2 response head on an HTTP/1 connection")

    def send_end(self, trailers: list[tuple[bytes, bytes]]) -> None:
        """HTTP/2 only: an HTTP/1 exchange never asks for it."""
        raise ProxyError("an HTTP/2 response end on an HTTP/1 connection")

    # --- closing ---

    def refuse(self, error: ProxyError) -> None:
        """Answer a request the engine could not read (or read in time) and close."""
        reply = rescue(error)
        status, flags = reply.status, reply.flags
        body = f"{reply.body}\n".encode("ascii")
        started = self.state.clock()
        # Nothing was read that says who called: a hiding listener says no mesh header.
        said = "" if self.state.hide_mesh_headers else flags
        self.transport.write(
            local_reply(status, body, flags=said, keep_alive=False, http11=True, head_only=False)
        )
        self.close()
        self.state.record(
            Completed(
                method="",
                host="",
                cluster="",
                status=status,
                flags=flags,
                duration=self.state.clock() - started,
                request_bytes=0,
                response_bytes=len(body),
            )
        )

    def close(self, *, abort: bool = False) -> None:
        """Close the connection (flushing what was written, unless `abort`)."""
        self.phase = Phase.CLOSED
        if abort:
            self.transport.abort()
        else:
            self.transport.close()

    def expire(self, now: float) -> None:
        """Enforce the downstream timeouts (called by the listener's sweeper)."""
        settings = self.state.settings
        waited = now - self.since
        if self.phase is Phase.IDLE and waited >= settings.idle_timeout:
            self.close()
        elif self.phase is Phase.HEAD and waited >= settings.head_timeout:
            # Nothing else is being written: the previous response is complete.
            self.refuse(DownstreamTimeout("head timeout"))
