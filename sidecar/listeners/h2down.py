"""The downstream side of HTTP/2: one connection, one `Exchange` per stream.

A `DownstreamConnection` that reads the HTTP/2 preface (h2c with prior knowledge, or after ALPN h2
over the mesh's mutual TLS) hands its transport to an `H2Downstream`, which runs the `h2` state
machine. Every request stream becomes an `Exchange` (the same driver and sans-IO machine as an
HTTP/1 request: routing, retries, timeouts, telemetry) whose downstream is an `H2DownStream`.

Flow control end to end: request data is acknowledged (window given back to the client) only
while the exchange has not paused reading its downstream, which it does for the same reasons it
pauses an HTTP/1 socket (the body waits for an upstream connection beyond the replay limit, or
the upstream cannot take more), so each stream holds at most its window plus the machine's
bounded buffer. Response data goes out within the client's windows; what waits beyond
BUFFER_LIMIT pauses the exchange's upstream. Frames the codec answers on its own (PING and
SETTINGS acknowledgements, resets) are bounded by not reading: while the transport's write buffer
is above its high-water mark the connection stops reading from the client, so one that floods
PINGs and never reads is held back by TCP rather than by our memory. A client that resets most of
its streams before their response (HTTP/2 rapid reset, CVE-2023-44487) gets GOAWAY
ENHANCE_YOUR_CALM and the connection is closed. A reset from the client ends its exchange (and
resets the upstream stream); an exchange that aborts resets the client's stream. On drain the
connection sends GOAWAY and closes once its streams are done.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import cast

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings

from sidecar.errors import ProxyError, rescue
from sidecar.http.http1 import Headers, ParseError
from sidecar.http.http2 import (
    new_connection,
    reopen_after_goaway,
    request_start,
    send_within_window,
)
from sidecar.listeners.exchange import Exchange
from sidecar.listeners.splice import Splice
from sidecar.listeners.state import ListenerState, Phase

logger = logging.getLogger("sidecar.proxy")

BUFFER_LIMIT = 64 * 1024  # response bytes a stream holds beyond the client's window
STREAM_WINDOW = 256 * 1024  # our per-stream receive window
MAX_STREAMS = 256  # concurrent streams a client may open (SETTINGS_MAX_CONCURRENT_STREAMS)
# Every stream may hold its whole window unacknowledged (its upstream is slow) without starving
# the connection's other streams: the connection window is the sum of theirs (64 MiB).
CONNECTION_WINDOW = MAX_STREAMS * STREAM_WINDOW
# Rapid reset (CVE-2023-44487): a connection whose client reset more than EARLY_RESET_LIMIT
# streams before their response, and more than half of all its streams, is closed. Like Envoy's
# premature-reset check, the count is per connection and needs both a floor and a ratio: gRPC
# clients cancel calls legitimately (deadlines, streaming calls abandoned), so a ratio alone would
# punish a short connection that cancelled 2 of 3 calls, and a floor alone a long-lived
# connection that has cancelled a hundred calls out of a million. 100 is well above what a
# well-behaved client cancels while each reset still costs us an Exchange, routing and maybe a
# dial, so an attacker gets about a hundred of those per connection.
EARLY_RESET_LIMIT = 100


class H2DownStream:
    """One request stream as its exchange's downstream (the `Downstream` protocol)."""

    __slots__ = (
        "buffer",
        "conn",
        "end_pending",
        "exchange",
        "original_dst",
        "paused",
        "paused_up",
        "peer",
        "peer_identity",
        "responded",
        "stream_id",
        "trailers",
        "unacked",
        "write_paused",
    )

    def __init__(self, conn: H2Downstream, stream_id: int) -> None:
        self.conn = conn
        self.stream_id = stream_id
        self.peer = conn.peer
        self.peer_identity = conn.peer_identity
        self.original_dst = conn.original_dst
        self.write_paused = conn.write_paused
        self.exchange: Exchange | None = None
        self.buffer = bytearray()  # response data waiting for the client's window
        self.end_pending = False
        self.trailers: Headers = []
        self.paused = 0  # PAUSE_* reasons of the exchange: request data is not acknowledged
        self.paused_up = False  # we paused the exchange's upstream (buffer full)
        self.responded = False  # the response's header block was sent
        self.unacked = 0

    @property
    def transport(self) -> asyncio.Transport:
        """Itself: an exchange writes response data with `transport.write`."""
        return cast(asyncio.Transport, self)

    def write(self, data: bytes) -> None:
        """Response data for the client."""
        self.buffer += data
        self.conn.send_pending(self)

    def send_head(self, headers: Headers, *, end: bool) -> None:
        """The response header block."""
        self.conn.send_headers(self, headers, end=end)

    def send_end(self, trailers: Headers) -> None:
        """End the response after its data (with trailers)."""
        self.end_pending = True
        self.trailers = trailers
        self.conn.send_pending(self)

    def pause(self, reason: int) -> None:
        """Stop acknowledging request data for `reason`."""
        self.paused |= reason

    def resume(self, reason: int) -> None:
        """Acknowledge again once no reason holds."""
        if self.paused & reason:
            self.paused &= ~reason
            if not self.paused:
                self.conn.acknowledge(self)

    def exchange_done(self, *, keep_alive: bool, abort: bool) -> None:
        """The exchange ended: reset the stream if it aborted, else let the response finish."""
        del keep_alive  # a stream's end never closes its connection
        self.conn.exchange_done(self, abort=abort)

    def start_tunnel(self, splice: Splice) -> bytes:
        """Not reached: no HTTP/2 request asks for an upgrade."""
        del splice
        raise ProxyError("no protocol upgrade over HTTP/2")


class H2Downstream(asyncio.Protocol):
    """One HTTP/2 client connection of a proxy listener (server side)."""

    def __init__(
        self,
        state: ListenerState,
        transport: asyncio.Transport,
        *,
        peer: str,
        peer_identity: str,
        original_dst: tuple[str, int] | None,
    ) -> None:
        self.state = state
        self.transport = transport
        self.peer = peer
        self.peer_identity = peer_identity
        self.original_dst = original_dst
        self.write_paused = False
        self.h2 = new_connection(client_side=False)
        self.streams: dict[int, H2DownStream] = {}
        self.phase = Phase.IDLE
        self.since = state.clock()
        self.goaway_sent = False
        self.closed = False
        self.loop = asyncio.get_running_loop()
        self.flush_pending = False
        self.reading_paused = False  # we paused reading the transport (its write buffer is full)
        self.opened = 0  # request streams the client opened
        self.early_resets = 0  # of those, reset by the client before their response
        h2c = self.h2
        h2c.initiate_connection()
        h2c.update_settings(
            {
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: MAX_STREAMS,
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
                h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: state.settings.max_head_bytes,
            }
        )
        h2c.increment_flow_control_window(CONNECTION_WINDOW - 65535)
        self.flush()
        state.clients.add(self)

    # --- asyncio.Protocol ---

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            logger.info("proxy listener=%s HTTP/2 protocol error: %r", self.state.name, exc)
            self.flush_now()  # the GOAWAY h2 made
            self._linger()
            return
        for event in events:
            self._event(event)
            if self.phase is Phase.CLOSED:  # rapid reset: the rest of this read is not served
                return
        self.flush_now()

    def eof_received(self) -> bool | None:
        self._lost()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        del exc
        self._lost()

    def pause_writing(self) -> None:
        # Stop reading too: the codec answers PINGs and SETTINGS on its own, so a client that
        # sends and never reads would otherwise grow the write buffer without bound. What is
        # queued beyond the high-water mark is at most what one read's frames make. h2 takes
        # every byte of a read, so nothing waits on our side to be processed on resume.
        self.write_paused = True
        if not self.reading_paused and not self.closed:
            self.reading_paused = True
            self.transport.pause_reading()
        for stream in list(self.streams.values()):
            stream.write_paused = True
            if stream.exchange is not None:
                stream.exchange.downstream_paused(paused=True)

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.reading_paused:
            self.reading_paused = False
            if not self.closed:
                self.transport.resume_reading()
        for stream in list(self.streams.values()):
            stream.write_paused = False
            if stream.exchange is not None and not stream.paused_up:
                stream.exchange.downstream_paused(paused=False)

    # --- the listener's sweeper and drain (the `Client` protocol) ---

    def expire(self, now: float) -> None:
        """No stream for the idle timeout: GOAWAY and close."""
        if not self.streams and now - self.since >= self.state.settings.idle_timeout:
            self.close()

    def drain(self) -> None:
        """The listener drains: GOAWAY (streams in flight finish), close once none is left."""
        self.goaway()
        if not self.streams:
            self.close()

    def close(self, *, abort: bool = False) -> None:
        """Close the connection (GOAWAY first unless `abort`)."""
        if self.closed:
            return
        if not abort:
            self.goaway()
            self.flush_now()
        self.closed = True
        self.phase = Phase.CLOSED
        if abort:
            self.transport.abort()
        else:
            self.transport.close()

    def _linger(self) -> None:
        """After a connection error's GOAWAY: half-close and read (discarding) until the client
        closes, for a second at most, so unread bytes do not turn our close into a reset that
        could overtake the GOAWAY."""
        transport = self.transport
        self.goaway_sent = True
        self.closed = True
        self.phase = Phase.CLOSED
        if self.reading_paused:  # read (and discard) what the client still sends
            self.reading_paused = False
            transport.resume_reading()
        if transport.can_write_eof():
            try:
                transport.write_eof()
            except OSError:  # the client is gone already
                transport.abort()
                return
            self.loop.call_later(1.0, transport.abort)
        else:
            transport.close()

    def _calm(self) -> None:
        """Rapid reset: GOAWAY ENHANCE_YOUR_CALM, end every exchange, close."""
        logger.warning(
            "proxy listener=%s peer=%s HTTP/2 rapid reset: %d of %d streams reset before their "
            "response; closing with ENHANCE_YOUR_CALM",
            self.state.name, self.peer, self.early_resets, self.opened,
        )  # fmt: skip
        if not self.closed:
            with contextlib.suppress(h2.exceptions.ProtocolError):
                self.h2.close_connection(error_code=h2.errors.ErrorCodes.ENHANCE_YOUR_CALM)
            self.flush_now()
        self._linger()  # closed from here: the exchanges' callbacks below write nothing
        self._lose_streams()

    def goaway(self) -> None:
        """Tell the client no new stream will be served."""
        if self.goaway_sent or self.closed:
            return
        self.goaway_sent = True
        try:
            self.h2.close_connection()
        except h2.exceptions.ProtocolError:
            return
        reopen_after_goaway(self.h2)  # the streams in flight finish
        self.flush()

    # --- events ---

    def _event(self, event: h2.events.Event) -> None:
        kind = type(event)
        if kind is h2.events.RequestReceived:
            self._request(event)  # type: ignore[arg-type]
        elif kind is h2.events.DataReceived:
            sid = event.stream_id  # type: ignore[attr-defined]
            size = event.flow_controlled_length  # type: ignore[attr-defined]
            stream = self.streams.get(sid)
            if stream is None or stream.exchange is None:
                if size:
                    self._ack(sid, size)
                return
            stream.unacked += size
            data = event.data  # type: ignore[attr-defined]
            if data:
                stream.exchange.body(data)
            if not stream.paused:
                self.acknowledge(stream)
        elif kind is h2.events.StreamEnded:
            stream = self.streams.get(event.stream_id)  # type: ignore[attr-defined]
            if stream is not None and stream.exchange is not None:
                exchange = stream.exchange
                if not exchange.request_complete:
                    exchange.end()
        elif kind is h2.events.StreamReset:
            stream = self.streams.pop(event.stream_id, None)  # type: ignore[attr-defined]
            if stream is not None and stream.exchange is not None:
                exchange, stream.exchange = stream.exchange, None
                exchange.downstream_lost()
            if stream is not None and not stream.responded and event.remote_reset:  # type: ignore[attr-defined]
                self.early_resets += 1
                if self.early_resets > EARLY_RESET_LIMIT and self.early_resets * 2 > self.opened:
                    self._calm()
                    return
            self._idle()
        elif kind is h2.events.WindowUpdated or kind is h2.events.RemoteSettingsChanged:
            # Only streams with data waiting for window (the others have nothing to send).
            sid = getattr(event, "stream_id", 0)
            waiting = (self.streams.get(sid),) if sid else tuple(self.streams.values())
            for stream in waiting:
                if stream is not None and (stream.buffer or stream.end_pending):
                    self.send_pending(stream)
        elif kind is h2.events.ConnectionTerminated:
            self.goaway_sent = True  # the client is done: nothing new will come
            if event.error_code == h2.errors.ErrorCodes.NO_ERROR:  # type: ignore[attr-defined]
                reopen_after_goaway(self.h2)
            if not self.streams and not self.closed:
                self.goaway()
                self.flush_now()
                # Half-close and discard what still comes: closing with the client's next
                # frames unread (h2spec 7/1 sends a PING after its GOAWAY) would reset the
                # connection instead of closing it.
                self._linger()

    def _request(self, event: h2.events.RequestReceived) -> None:
        sid = event.stream_id
        ended = event.stream_ended is not None
        if self.goaway_sent or self.state.draining:
            self._reset(sid, h2.errors.ErrorCodes.REFUSED_STREAM)
            return
        stream = H2DownStream(self, sid)
        self.streams[sid] = stream
        self.opened += 1
        self.phase = Phase.BUSY
        try:
            start = request_start(list(event.headers), end_stream=ended)
        except ParseError as error:
            reply = rescue(error)
            self.send_headers(
                stream,
                [(b":status", b"%d" % reply.status), (b"content-length", b"0")],
                end=True,
            )
            self.exchange_done(stream, abort=False)
            return
        exchange = stream.exchange = Exchange(stream, start, self.state, complete=ended)
        exchange.begin()

    # --- sending ---

    def send_headers(self, stream: H2DownStream, headers: Headers, *, end: bool) -> None:
        """A response header block on `stream`."""
        if self.closed:
            return
        try:
            self.h2.send_headers(stream.stream_id, headers, end_stream=end)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError) as exc:
            logger.debug("proxy listener=%s send_headers: %r", self.state.name, exc)
            return
        stream.responded = True
        if end:
            stream.end_pending = False
        self.flush()

    def send_pending(self, stream: H2DownStream) -> None:
        """Send what the client's windows allow of a stream's data, then its end."""
        if self.closed or stream.stream_id not in self.streams:
            return
        h2c = self.h2
        buffer = stream.buffer
        sid = stream.stream_id
        try:
            send_within_window(h2c, sid, buffer)
            if not buffer and stream.end_pending:
                stream.end_pending = False
                if stream.trailers:
                    h2c.send_headers(sid, stream.trailers, end_stream=True)
                else:
                    h2c.end_stream(sid)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError) as exc:
            logger.debug("proxy listener=%s send_data: %r", self.state.name, exc)
            buffer.clear()
        self.flush()
        exchange = stream.exchange
        full = len(buffer) > BUFFER_LIMIT
        if exchange is not None:
            if full and not stream.paused_up:
                stream.paused_up = True
                exchange.downstream_paused(paused=True)
            elif not full and stream.paused_up:
                stream.paused_up = False
                if not self.write_paused:
                    exchange.downstream_paused(paused=False)
        self._maybe_retire(stream)

    def acknowledge(self, stream: H2DownStream) -> None:
        """Give back the window of the request data the exchange took."""
        size, stream.unacked = stream.unacked, 0
        if size:
            self._ack(stream.stream_id, size)

    def _ack(self, sid: int, size: int) -> None:
        if self.closed:
            return
        try:
            self.h2.acknowledge_received_data(size, sid)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            return
        self.flush()

    def _reset(self, sid: int, code: h2.errors.ErrorCodes) -> None:
        if self.closed:
            return
        try:
            self.h2.reset_stream(sid, code)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            return
        self.flush()

    def flush(self) -> None:
        """Write what the codec produced, once this turn of the loop is over: the frames one
        read's events make (heads, data, trailers, window updates) go out in one write."""
        if not self.flush_pending:
            self.flush_pending = True
            self.loop.call_soon(self.flush_now)

    def flush_now(self) -> None:
        """Write what the codec produced, now."""
        self.flush_pending = False
        data = self.h2.data_to_send()
        if data and not self.closed and not self.transport.is_closing():
            self.transport.write(data)

    # --- the end of streams ---

    def exchange_done(self, stream: H2DownStream, *, abort: bool) -> None:
        """A stream's exchange ended."""
        stream.exchange = None
        if abort:
            self.streams.pop(stream.stream_id, None)
            self._reset(stream.stream_id, h2.errors.ErrorCodes.INTERNAL_ERROR)
            self._idle()
            return
        self._maybe_retire(stream)

    def _maybe_retire(self, stream: H2DownStream) -> None:
        """Forget a stream whose exchange is done and whose response is all sent; a request
        still open after the response is refused (RST_STREAM NO_ERROR, RFC 9113 8.1)."""
        if stream.exchange is not None or stream.buffer or stream.end_pending:
            return
        if self.streams.pop(stream.stream_id, None) is None:
            return
        with contextlib.suppress(h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            state = self.h2.streams.get(stream.stream_id)
            if state is not None and not state.closed:
                self.h2.reset_stream(stream.stream_id, h2.errors.ErrorCodes.NO_ERROR)
        self.flush()
        self._idle()

    def _idle(self) -> None:
        if self.streams:
            return
        self.phase = Phase.IDLE
        self.since = self.state.clock()
        if self.goaway_sent or self.state.draining:
            self.close()

    def _lose_streams(self) -> None:
        """Every stream's exchange learns its client is gone."""
        streams = list(self.streams.values())
        self.streams.clear()
        for stream in streams:
            exchange, stream.exchange = stream.exchange, None
            if exchange is not None:
                exchange.downstream_lost()

    def _lost(self) -> None:
        if self.phase is Phase.CLOSED and not self.streams:
            self.state.forget(self)
            return
        self.closed = True
        self.phase = Phase.CLOSED
        self._lose_streams()
        self.state.forget(self)


def take_over(
    state: ListenerState,
    transport: asyncio.BaseTransport,
    first: bytes,
    *,
    peer: str,
    peer_identity: str,
    original_dst: tuple[str, int] | None,
) -> H2Downstream:
    """Make `transport` (which sent the preface, in `first`) an HTTP/2 connection."""
    conn = H2Downstream(
        state,
        cast(asyncio.Transport, transport),
        peer=peer,
        peer_identity=peer_identity,
        original_dst=original_dst,
    )
    transport.set_protocol(conn)
    conn.data_received(first)
    return conn
