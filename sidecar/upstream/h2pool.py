"""Upstream HTTP/2: connections that multiplex exchanges as streams, and the pool that holds them.

One `H2UpstreamConnection` per (address, port, TLS server name) serves many exchanges at once,
each as an `H2UpstreamStream` with the interface an exchange's driver uses on an HTTP/1
connection (write, pause/resume reading, an owner that gets its events), so each request is
balanced on its own: the router picks an endpoint per request, and the stream goes on that
endpoint's connection. A connection takes new streams while it has fewer open than the peer's
MAX_CONCURRENT_STREAMS (and the cluster's cap); beyond that the pool opens another. Concurrent
first requests to one endpoint share the connection being opened.

Flow control end to end: request body goes out only within the peer's stream and connection
windows; what does not fit waits in the stream (bounded: beyond BUFFER_LIMIT its owner is told to
stop, as a full socket buffer tells it on HTTP/1). Response data is acknowledged (window credit
given back) only once the owner took it and did not pause reading, so a slow client slows the
server's stream, not the connection's others. A GOAWAY stops new streams; streams it left out
are reported refused (never processed, so they may be retried anywhere).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Callable, Collection
from typing import Protocol

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings

from sidecar.errors import UpstreamConnectFailure
from sidecar.http.http1 import END, Data, EndOfMessage, Headers, ParseError, ResponseEvent
from sidecar.http.http2 import (
    ALPN_H2,
    new_connection,
    reopen_after_goaway,
    response_start,
    send_within_window,
)
from sidecar.upstream.pool import Dialled, PoolKey, dial

logger = logging.getLogger(__name__)

# Bytes a stream holds beyond what the peer's window takes before its owner is paused.
BUFFER_LIMIT = 64 * 1024
# Our receive windows: per stream (the bound of a stalled stream's unacknowledged data) and for
# the connection, large enough that 256 streams each stalled on a slow client (their windows
# unacknowledged) leave the connection's other streams their flow.
STREAM_WINDOW = 256 * 1024
CONNECTION_WINDOW = 256 * STREAM_WINDOW
DEFAULT_MAX_STREAMS = 100  # until the peer's SETTINGS say otherwise (RFC 9113 suggests >= 100)
# Client stream ids are odd and below 2^31: a connection retires well before it runs out.
STREAM_IDS = 2**30 - 1


class _DialAbandoned(UpstreamConnectFailure):
    """The request dialling a connection others wait on was cancelled before it was up."""


class H2Owner(Protocol):
    """Who receives an upstream stream's events: the exchange's driver."""

    def upstream_response(self, events: list[ResponseEvent]) -> None:
        """Response events (head, data, end with trailers)."""

    def upstream_refused(self, reason: str) -> None:
        """The stream was refused unprocessed (REFUSED_STREAM or left out by GOAWAY)."""

    def upstream_lost(self, exc: Exception | None) -> None:
        """The stream was reset or its connection is gone."""

    def upstream_paused(self) -> None:
        """The stream cannot take more request body now."""

    def upstream_resumed(self) -> None:
        """It can again."""


class H2UpstreamStream:
    """One exchange's stream on an upstream HTTP/2 connection."""

    __slots__ = (
        "buffer",
        "conn",
        "end_pending",
        "ended_up",
        "method",
        "owner",
        "paused_owner",
        "reading_paused",
        "requests",
        "reused",
        "stream_id",
        "tls",
        "trailers",
        "unacked",
    )

    def __init__(self, conn: H2UpstreamConnection, *, reused: bool) -> None:
        self.conn = conn
        self.stream_id = 0  # given when the head is sent
        self.owner: H2Owner | None = None
        self.tls = conn.tls
        self.reused = False  # a stream is never stale: a dead connection refuses it instead
        self.requests = conn.streams_opened
        self.buffer = bytearray()  # request body waiting for window
        self.end_pending = False  # the request's end waits behind `buffer`
        self.ended_up = False
        self.reading_paused = False
        self.paused_owner = False
        self.unacked = 0  # response bytes received and not yet acknowledged
        self.trailers: Headers = []
        self.method = "GET"
        del reused

    # --- what the exchange's driver calls ---

    def open(self, headers: Headers, method: str) -> bool:
        """Send the request head (the body follows with `write`, the end with `end_request`);
        False when this connection cannot take the stream (the caller treats it as a failed
        connect, so the request is retried or answered, never left waiting)."""
        conn = self.conn
        self.method = method
        try:
            self.stream_id = conn.h2.get_next_available_stream_id()
            conn.h2.send_headers(self.stream_id, headers)
        except (h2.exceptions.ProtocolError, h2.exceptions.NoAvailableStreamIDError) as exc:
            # Out of stream ids, over the peer's limit or closed by h2: no new streams here, but
            # the streams in flight on it are not this stream's failure.
            logger.info("upstream HTTP/2 connection %s takes no new stream: %r", conn.key, exc)
            conn.close()
            return False
        conn.streams[self.stream_id] = self
        conn.flush()
        return True

    def write(self, data: bytes) -> None:
        """Request body bytes, sent within the peer's windows."""
        self.buffer += data
        self.conn.send_pending(self)

    def end_request(self) -> None:
        """The request is complete."""
        self.end_pending = True
        self.conn.send_pending(self)

    def pause_reading(self) -> None:
        """The downstream cannot take more: stop acknowledging response data."""
        self.reading_paused = True

    def resume_reading(self) -> None:
        """Acknowledge what was held."""
        if self.reading_paused:
            self.reading_paused = False
            self.conn.acknowledge(self)

    def cancel(self) -> None:
        """Give the stream up (RST_STREAM CANCEL if it is still open)."""
        self.owner = None
        self.conn.forget(self, reset=True)

    def finished(self) -> None:
        """The exchange is done with the stream (its response is complete)."""
        self.owner = None
        self.conn.forget(self, reset=not self.ended_up)


class H2UpstreamConnection(Dialled):
    """One HTTP/2 connection to an endpoint (client side)."""

    __slots__ = (
        "clock",
        "closed",
        "flush_pending",
        "goaway",
        "h2",
        "idle_since",
        "idle_timeout",
        "key",
        "max_streams",
        "on_closed",
        "opened_at",
        "peer",
        "streams",
        "streams_opened",
        "tls",
        "transport",
        "write_paused",
    )

    def __init__(
        self,
        key: PoolKey,
        clock: Callable[[], float],
        on_closed: Callable[[H2UpstreamConnection], None],
    ) -> None:
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.tls = False
        self.peer = ""
        self.h2 = new_connection(client_side=True)
        self.streams: dict[int, H2UpstreamStream] = {}
        self.streams_opened = 0
        self.closed = False
        self.goaway = False  # no new streams
        self.write_paused = False
        self.max_streams = DEFAULT_MAX_STREAMS
        self.flush_pending = False
        self.clock = clock
        self.idle_since = self.opened_at = clock()
        self.idle_timeout = 0.0  # the cluster's idleTimeout; 0: the pool's
        self.on_closed = on_closed

    # --- asyncio.Protocol ---

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        h2c = self.h2
        h2c.initiate_connection()
        h2c.update_settings(
            {
                h2.settings.SettingCodes.ENABLE_PUSH: 0,
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
            }
        )
        h2c.increment_flow_control_window(CONNECTION_WINDOW - 65535)
        self.flush_now()

    def data_received(self, data: bytes) -> None:
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            self.fail(exc)
            return
        for event in events:
            self._event(event)
        self.flush_now()

    def eof_received(self) -> bool | None:
        self.goaway = True
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.goaway = True
        streams = list(self.streams.values())
        self.streams.clear()
        for stream in streams:
            if stream.owner is not None:
                stream.owner.upstream_lost(exc or ConnectionResetError("upstream closed"))
        self.on_closed(self)

    def pause_writing(self) -> None:
        self.write_paused = True
        for stream in list(self.streams.values()):
            if stream.owner is not None and not stream.paused_owner:
                stream.paused_owner = True
                stream.owner.upstream_paused()

    def resume_writing(self) -> None:
        self.write_paused = False
        for stream in list(self.streams.values()):
            self.send_pending(stream)

    # --- HTTP/2 events ---

    def _event(self, event: h2.events.Event) -> None:
        kind = type(event)
        if kind is h2.events.ResponseReceived:
            stream = self.streams.get(event.stream_id)  # type: ignore[attr-defined]
            if stream is None or stream.owner is None:
                return
            ended = event.stream_ended is not None  # type: ignore[attr-defined]
            try:
                head = response_start(event.headers, end_stream=ended, method=stream.method)  # type: ignore[attr-defined]
            except ParseError as exc:
                self.reset(stream, h2.errors.ErrorCodes.PROTOCOL_ERROR)
                stream.owner.upstream_lost(exc)
                return
            stream.owner.upstream_response([head, END] if ended else [head])
        elif kind is h2.events.DataReceived:
            stream = self.streams.get(event.stream_id)  # type: ignore[attr-defined]
            size = event.flow_controlled_length  # type: ignore[attr-defined]
            if stream is None or stream.owner is None:
                if size:
                    self.h2.acknowledge_received_data(size, event.stream_id)  # type: ignore[attr-defined]
                return
            stream.unacked += size
            data = event.data  # type: ignore[attr-defined]
            if data:
                stream.owner.upstream_response([Data(data)])
            if not stream.reading_paused:
                self.acknowledge(stream)
        elif kind is h2.events.TrailersReceived:
            stream = self.streams.get(event.stream_id)  # type: ignore[attr-defined]
            if stream is not None:
                stream.trailers = list(event.headers)  # type: ignore[attr-defined]
        elif kind is h2.events.StreamEnded:
            stream = self.streams.get(event.stream_id)  # type: ignore[attr-defined]
            if stream is not None and stream.owner is not None:
                trailers = stream.trailers
                stream.owner.upstream_response(
                    [EndOfMessage(tuple(trailers))] if trailers else [END]
                )
        elif kind is h2.events.StreamReset:
            stream = self.streams.pop(event.stream_id, None)  # type: ignore[attr-defined]
            if stream is not None and stream.owner is not None:
                code = event.error_code  # type: ignore[attr-defined]
                owner, stream.owner = stream.owner, None
                if code == h2.errors.ErrorCodes.REFUSED_STREAM:
                    owner.upstream_refused("upstream refused the stream")
                else:
                    owner.upstream_lost(
                        ConnectionResetError(f"upstream reset the stream: {code!r}")
                    )
        elif kind is h2.events.WindowUpdated or kind is h2.events.RemoteSettingsChanged:
            if kind is h2.events.RemoteSettingsChanged:
                changed = event.changed_settings  # type: ignore[attr-defined]
                setting = changed.get(h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS)
                if setting is not None:
                    self.max_streams = setting.new_value
            # Only streams with request body waiting for window.
            sid = getattr(event, "stream_id", 0)
            waiting = (self.streams.get(sid),) if sid else tuple(self.streams.values())
            for stream in waiting:
                if stream is not None and (stream.buffer or stream.paused_owner):
                    self.send_pending(stream)
        elif kind is h2.events.ConnectionTerminated:
            self.goaway = True
            if event.error_code == h2.errors.ErrorCodes.NO_ERROR:  # type: ignore[attr-defined]
                reopen_after_goaway(self.h2)  # a drain: the streams it covers finish
            last = event.last_stream_id  # type: ignore[attr-defined]
            for stream_id, stream in list(self.streams.items()):
                if last is not None and stream_id > last:
                    del self.streams[stream_id]
                    if stream.owner is not None:
                        owner, stream.owner = stream.owner, None
                        owner.upstream_refused("upstream GOAWAY before the stream")
            if not self.streams:
                self.close_transport()

    # --- streams ---

    def has_room(self, cap: int, max_requests: int = 0, max_age: float = 0.0) -> bool:
        """Whether a new stream may open now (under the peer's and the cluster's limits).

        A connection that carried `max_requests` streams (maxRequestsPerConnection), or is
        `max_age` seconds old (maxConnectionDuration), takes no more and closes once its last
        one ends: connections are recycled, so endpoints added since it opened get their share
        of new connections too."""
        if self.goaway or self.closed:
            return False
        if max_age and self.clock() - self.opened_at >= max_age:
            self.close()  # GOAWAY: the server learns no more streams come
            return False
        if self.streams_opened >= (max_requests or STREAM_IDS):
            self.goaway = True  # retired: closes when its streams are done
            if not self.streams:
                self.close_transport()
            return False
        limit = self.max_streams if not cap else min(cap, self.max_streams)
        return len(self.streams) < limit

    def new_stream(self) -> H2UpstreamStream:
        """A stream for one exchange (its id is given when it opens)."""
        self.streams_opened += 1
        return H2UpstreamStream(self, reused=self.streams_opened > 1)

    def send_pending(self, stream: H2UpstreamStream) -> None:
        """Send what the windows allow of a stream's body, then its end."""
        if stream.stream_id == 0 or self.closed:
            return
        h2c = self.h2
        buffer = stream.buffer
        sid = stream.stream_id
        try:
            send_within_window(h2c, sid, buffer)
            if not buffer and stream.end_pending and not stream.ended_up:
                stream.ended_up = True
                h2c.end_stream(sid)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            buffer.clear()
        self.flush()
        owner = stream.owner
        if owner is None:
            return
        full = len(buffer) > BUFFER_LIMIT or self.write_paused
        if full and not stream.paused_owner:
            stream.paused_owner = True
            owner.upstream_paused()
        elif not full and stream.paused_owner:
            stream.paused_owner = False
            owner.upstream_resumed()

    def acknowledge(self, stream: H2UpstreamStream) -> None:
        """Give back the window of response data the owner took."""
        size, stream.unacked = stream.unacked, 0
        if size and not self.closed:
            with contextlib.suppress(h2.exceptions.StreamClosedError):
                self.h2.acknowledge_received_data(size, stream.stream_id)
            self.flush()

    def reset(self, stream: H2UpstreamStream, code: h2.errors.ErrorCodes) -> None:
        """RST_STREAM one stream."""
        self.streams.pop(stream.stream_id, None)
        if stream.stream_id and not self.closed:
            with contextlib.suppress(h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
                self.h2.reset_stream(stream.stream_id, code)
            self.flush()

    def forget(self, stream: H2UpstreamStream, *, reset: bool) -> None:
        """A stream's exchange let it go; reset it if it is still open."""
        if stream.stream_id not in self.streams:
            return
        if reset:
            self.reset(stream, h2.errors.ErrorCodes.CANCEL)
        else:
            self.streams.pop(stream.stream_id, None)
        if stream.unacked:
            self.acknowledge(stream)
        if not self.streams:
            self.idle_since = self.clock()
            if self.goaway:
                self.close_transport()

    def flush(self) -> None:
        """Write what the codec produced once this turn of the loop is over (one write for the
        frames of many streams' actions)."""
        if not self.flush_pending:
            self.flush_pending = True
            asyncio.get_running_loop().call_soon(self.flush_now)

    def flush_now(self) -> None:
        """Write what the codec produced, now."""
        self.flush_pending = False
        data = self.h2.data_to_send()
        transport = self.transport
        if data and transport is not None and not self.closed and not transport.is_closing():
            transport.write(data)

    def close_transport(self) -> None:
        """Close the socket after what is pending was written."""
        self.flush_now()
        if self.transport is not None:
            self.transport.close()

    def fail(self, exc: Exception) -> None:
        """A protocol error: the connection and every stream on it are done."""
        logger.warning("upstream HTTP/2 connection %s failed: %r", self.key, exc)
        self.abort()

    def abort(self) -> None:
        """Drop the connection."""
        self.goaway = True
        if self.transport is not None:
            self.transport.abort()

    def close(self) -> None:
        """GOAWAY, then close once the streams in flight are done."""
        if self.closed:
            return
        self.goaway = True
        with contextlib.suppress(h2.exceptions.ProtocolError):
            self.h2.close_connection()
            reopen_after_goaway(self.h2)
        self.flush()
        if not self.streams:
            self.close_transport()


class H2Pool:
    """Upstream HTTP/2 connections per (address, port, TLS server name)."""

    def __init__(
        self,
        *,
        idle_timeout: float,
        clock: Callable[[], float],
        client_tls: Callable[[], ssl.SSLContext | None],
        refused: dict[str, int],
    ) -> None:
        self.idle_timeout = idle_timeout
        self._clock = clock
        self._client_tls = client_tls
        self._refused = refused
        self._conns: dict[PoolKey, list[H2UpstreamConnection]] = {}
        self._opening: dict[PoolKey, asyncio.Future[H2UpstreamConnection]] = {}

    def take_stream(
        self, key: PoolKey, cap: int = 0, max_requests: int = 0, max_age: float = 0.0
    ) -> H2UpstreamStream | None:
        """A stream on an open connection to `key` with room, or None."""
        for conn in list(self._conns.get(key, ())):
            if conn.has_room(cap, max_requests, max_age):
                return conn.new_stream()
        return None

    async def stream(
        self,
        address: str,
        port: int,
        *,
        connect_timeout: float,
        tls_server_name: str = "",
        identities: frozenset[str] = frozenset(),
        cap: int = 0,
        max_requests: int = 0,
        max_age: float = 0.0,
        idle_timeout: float = 0.0,
    ) -> H2UpstreamStream:
        """A stream to the endpoint: on a connection being opened, or on a new one."""
        key = (address, port, tls_server_name)
        opening = self._opening.get(key)
        if opening is not None:
            try:
                conn = await asyncio.shield(opening)
            except _DialAbandoned:
                pass  # its dialer was cancelled: dial ourselves below
            else:
                if conn.has_room(cap, max_requests, max_age):
                    return conn.new_stream()
        stream = self.take_stream(key, cap, max_requests, max_age)
        if stream is not None:
            return stream
        future: asyncio.Future[H2UpstreamConnection] = asyncio.get_running_loop().create_future()
        self._opening[key] = future
        try:
            conn = await self._open(key, connect_timeout, identities)
        except BaseException as exc:
            # Also when this request is cancelled mid-dial (its client reset, its timeout): the
            # others waiting on this dial must not wait forever, they dial again on their own.
            failure = exc if isinstance(exc, UpstreamConnectFailure) else _DialAbandoned(repr(exc))
            future.set_exception(failure)
            future.exception()  # retrieved: nobody else may be waiting
            raise
        finally:
            if self._opening.get(key) is future:
                del self._opening[key]
        conn.idle_timeout = idle_timeout
        future.set_result(conn)
        self._conns.setdefault(key, []).append(conn)
        return conn.new_stream()

    async def _open(
        self, key: PoolKey, connect_timeout: float, identities: frozenset[str]
    ) -> H2UpstreamConnection:
        address, port, server_name = key
        context = self._client_tls() if server_name else None
        conn = await dial(
            lambda: self._connection(key),
            address,
            port,
            connect_timeout=connect_timeout,
            context=context,
            tls_server_name=server_name,
            identities=identities,
            refused=self._refused,
        )
        if context is not None and conn.transport is not None:
            ssl_object = conn.transport.get_extra_info("ssl_object")
            chosen = ssl_object.selected_alpn_protocol() if ssl_object is not None else None
            if chosen != ALPN_H2:
                conn.abort()
                raise UpstreamConnectFailure(
                    f"connect {address}:{port}: ALPN {chosen!r}, not {ALPN_H2!r}"
                )
        return conn

    def _connection(self, key: PoolKey) -> H2UpstreamConnection:
        return H2UpstreamConnection(key, self._clock, self._closed)

    def _closed(self, conn: H2UpstreamConnection) -> None:
        conns = self._conns.get(conn.key)
        if conns is not None and conn in conns:
            conns.remove(conn)
            if not conns:
                del self._conns[conn.key]

    def sweep(self) -> None:
        """Close connections without streams idle longer than their cluster's idle timeout
        (connectionPool idleTimeout), or the pool's."""
        now = self._clock()
        for conns in list(self._conns.values()):
            for conn in list(conns):
                limit = conn.idle_timeout or self.idle_timeout
                if not conn.streams and now - conn.idle_since >= limit:
                    conn.close()

    def retire(self, gone: Collection[PoolKey]) -> int:
        """GOAWAY the connections to `gone` (endpoints a config change removed); their streams
        in flight finish. Returns how many were retired."""
        retired = 0
        for key in gone:
            for conn in list(self._conns.get(key, ())):
                if not conn.goaway:
                    conn.close()
                    retired += 1
        return retired

    def close(self) -> None:
        """Abort every connection."""
        for conns in list(self._conns.values()):
            for conn in list(conns):
                conn.abort()
        self._conns.clear()
