"""The sidecar's HTTP/1.1 proxy engine: accept, resolve, forward through a pool, stream back.

One task per downstream connection serves its requests in order (so pipelined requests are
answered in order). For each request the engine asks the `Resolver` for a decision, then either
answers locally or forwards to the chosen endpoint over a pooled keep-alive connection. Bodies are
streamed both ways with `drain()` backpressure; the request body is pumped by a helper task so an
upstream may answer before it has read the whole request.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import logging
import os
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from sidecar.proxy.decision import (
    Completed,
    Decision,
    Forward,
    LocalReply,
    Recorder,
    RequestHead,
    Resolver,
)
from sidecar.proxy.http1 import (
    CHUNKED,
    MAX_HEAD_BYTES,
    MAX_HEADERS,
    UNTIL_CLOSE,
    BodyKind,
    Data,
    EndOfMessage,
    Framing,
    Headers,
    ParseError,
    RequestStart,
    ResponseStart,
    encode_body,
    end_of_body,
    framing_headers,
    header_values,
    request_head,
    serialize_request_head,
    serialize_response_head,
    split_target,
    strip_hop_by_hop,
)
from sidecar.proxy.streams import READ_SIZE, PeerClosed, RequestStream, ResponseStream, close_writer

logger = logging.getLogger("sidecar.proxy")

FLAGS_HEADER = b"x-lightmesh-response-flags"
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
# A local reply drains at most this much unread request body before giving up on keep-alive.
MAX_DRAIN_BYTES = 256 * 1024
# How long a finished response waits for the request pump to flush its last bytes upstream.
PUMP_FLUSH_TIMEOUT = 1.0

_REQUEST_IDS = random.Random(os.urandom(16))
_NO_DEADLINE = contextlib.nullcontext()


@dataclass(frozen=True, slots=True, kw_only=True)
class EngineSettings:
    """Tunables of one proxy listener; defaults suit production (and follow Envoy's)."""

    pool_idle_timeout: float = 60.0
    # A downstream connection with no request in flight is closed after this long.
    idle_timeout: float = 60.0
    # From the first byte of a request head to its end; then 408 and close.
    head_timeout: float = 30.0
    # Larger heads, or heads with more fields, are answered 431 and the connection closed.
    max_head_bytes: int = MAX_HEAD_BYTES
    max_headers: int = MAX_HEADERS
    read_size: int = READ_SIZE
    clock: Callable[[], float] = time.monotonic


# --- errors raised while obtaining a response head ------------------------------------------------


class UpstreamError(Exception):
    """The proxy could not get a response head; carries what to answer instead."""

    status = 503
    flags = "UC"


class UpstreamConnectFailure(UpstreamError):
    """Connecting to the endpoint failed (refused, unreachable, connect timeout)."""

    flags = "UF"


class UpstreamReset(UpstreamError):
    """The upstream closed or reset the connection before a response head."""


class UpstreamTimeout(UpstreamError):
    """Forward.timeout passed before the response head arrived."""

    status = 504
    flags = "UT"


class UpstreamProtocolError(UpstreamError):
    """The upstream sent something that is not a valid HTTP/1.1 response."""

    status = 502
    flags = "UPE"


# --- upstream connection pool ---------------------------------------------------------------------


@dataclass(slots=True, eq=False)
class UpstreamConnection:
    """One connection to an endpoint; `reused` if it came out of the idle pool."""

    key: tuple[str, int]
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    reused: bool = False
    idle_since: float = 0.0

    def usable(self) -> bool:
        """False once the upstream closed it (EOF seen) or it was closed locally."""
        return not (self.writer.is_closing() or self.reader.at_eof())

    def abort(self) -> None:
        """Drop the connection without a graceful close (it may be mid-message)."""
        self.writer.transport.abort()


@dataclass(slots=True)
class ConnectionPool:
    """Idle keep-alive connections per (address, port), reused last-in first-out."""

    idle_timeout: float
    clock: Callable[[], float]
    _idle: dict[tuple[str, int], list[UpstreamConnection]] = field(default_factory=dict)
    _open: set[UpstreamConnection] = field(default_factory=set)

    async def acquire(
        self, address: str, port: int, *, connect_timeout: float, fresh: bool
    ) -> UpstreamConnection:
        """An idle connection if one is healthy (unless `fresh`), else a new one."""
        key = (address, port)
        if not fresh:
            conn = self._pop_idle(key)
            if conn is not None:
                return conn
        try:
            async with asyncio.timeout(connect_timeout):
                reader, writer = await asyncio.open_connection(address, port)
        except (OSError, TimeoutError) as exc:
            raise UpstreamConnectFailure(f"connect {address}:{port}: {exc!r}") from exc
        conn = UpstreamConnection(key=key, reader=reader, writer=writer)
        self._open.add(conn)
        return conn

    def _pop_idle(self, key: tuple[str, int]) -> UpstreamConnection | None:
        stack = self._idle.get(key)
        now = self.clock()
        while stack:
            conn = stack.pop()
            if conn.usable() and now - conn.idle_since < self.idle_timeout:
                conn.reused = True
                return conn
            self.discard(conn)
        return None

    def release(self, conn: UpstreamConnection) -> None:
        """Return a connection whose exchange completed cleanly and may be reused."""
        if not conn.usable():
            self.discard(conn)
            return
        conn.idle_since = self.clock()
        self._idle.setdefault(conn.key, []).append(conn)

    def discard(self, conn: UpstreamConnection) -> None:
        """Close a connection that must not be reused."""
        conn.abort()
        self._open.discard(conn)

    def sweep(self) -> None:
        """Close idle connections that expired or that the upstream closed."""
        now = self.clock()
        for key, stack in list(self._idle.items()):
            keep = [c for c in stack if c.usable() and now - c.idle_since < self.idle_timeout]
            for conn in stack:
                if conn not in keep:
                    self.discard(conn)
            if keep:
                self._idle[key] = keep
            else:
                del self._idle[key]

    async def close(self) -> None:
        """Close every connection, idle or not."""
        conns = list(self._open)
        self._open.clear()
        self._idle.clear()
        for conn in conns:
            await close_writer(conn.writer, abort=True)


# --- per-request plumbing -------------------------------------------------------------------------


class DownstreamFailed(Exception):
    """The client closed, reset or sent garbage while its request body was being read."""


class Phase(enum.Enum):
    """Where a downstream connection is, for the sweeper that enforces the downstream timeouts."""

    IDLE = enum.auto()  # waiting for the first byte of a request (idle_timeout)
    HEAD = enum.auto()  # a head has begun but is not complete (head_timeout)
    BUSY = enum.auto()  # an exchange is in flight (its own timeouts apply)
    EXPIRED = enum.auto()  # the sweeper closed it; whatever arrives now is ignored


class RequestBody:
    """The body of the current request, pulled from the downstream connection."""

    def __init__(self, requests: RequestStream) -> None:
        self._requests = requests
        self.complete = False  # END seen: the connection is positioned at the next request
        self.consumed = 0
        self.failed = False
        self.failed_status = 400  # what to answer if it failed on bad bytes
        self.continue_sent = False  # we told a client sending Expect: 100-continue to go ahead

    async def next_chunk(self) -> bytes | None:
        """The next piece of body, or None at the end. Raises DownstreamFailed."""
        if self.complete:
            return None
        try:
            event = await self._requests.next_event()
        except (ParseError, ConnectionError) as exc:
            self.failed = True
            if isinstance(exc, ParseError):
                self.failed_status = exc.status
            raise DownstreamFailed(str(exc)) from exc
        if isinstance(event, Data):
            self.consumed += len(event.data)
            return event.data
        if isinstance(event, EndOfMessage):
            self.complete = True
            return None
        self.failed = True
        raise DownstreamFailed("request ended without a body terminator")

    async def drain(self, limit: int) -> bool:
        """Discard the rest of the body; False if it is larger than `limit` or broken."""
        with contextlib.suppress(DownstreamFailed):
            while self.consumed <= limit:
                if await self.next_chunk() is None:
                    return True
        return False


@dataclass(slots=True)
class Attempt:
    """One try at an upstream exchange: the connection, the response and the body pump."""

    conn: UpstreamConnection
    response: ResponseStream
    pump: asyncio.Task[None] | None = None
    pump_ok: bool = True

    async def stop_pump(self) -> bool:
        """Cancel the pump if still running (and wait for it); True if it had finished."""
        pump = self.pump
        if pump is None:
            return True
        if pump.done():
            return True
        pump.cancel()
        # Waiting matters: the next reader of the downstream must not race a dying pump.
        await asyncio.gather(pump, return_exceptions=True)
        return False


@dataclass(frozen=True, slots=True)
class Outcome:
    """How an exchange ended, for the recorder and the connection loop."""

    status: int
    flags: str
    response_bytes: int
    keep_alive: bool
    cluster: str = ""


def forwarded_head(start: RequestStart, *, peer: str) -> RequestHead:
    """The request head as it will be forwarded: hop-by-hop gone, forwarding headers added."""
    head = request_head(start, peer=peer)
    headers = [(k, v) for k, v in strip_hop_by_hop(start.headers) if k != b"expect"]
    _, authority = split_target(start.target)
    if authority is not None:
        # Absolute-form: the URI's authority replaces the Host header (RFC 9112 3.2.2).
        headers = [(k, v) for k, v in headers if k != b"host"]
        headers.insert(0, (b"host", authority.rpartition("@")[2].encode("latin-1")))
    headers = _append_forwarded_for(headers, peer)
    if start.upgrade:
        headers += [(b"connection", b"upgrade"), (b"upgrade", start.upgrade)]
    if not header_values(headers, b"x-forwarded-proto"):
        headers.append((b"x-forwarded-proto", b"http"))
    if not header_values(headers, b"x-request-id"):
        # A version-4 UUID from a Mersenne Twister seeded by the OS: uuid4() costs a getrandom
        # syscall per request (5% of the sidecar's CPU in the profile); request ids need
        # uniqueness, not unpredictability.
        request_id = uuid.UUID(int=_REQUEST_IDS.getrandbits(128), version=4)
        headers.append((b"x-request-id", str(request_id).encode("ascii")))
    head.headers = headers
    return head


def _append_forwarded_for(headers: Headers, peer: str) -> Headers:
    previous = header_values(headers, b"x-forwarded-for")
    value = b", ".join([*previous, peer.encode("latin-1")]) if peer else b", ".join(previous)
    kept = [(k, v) for k, v in headers if k != b"x-forwarded-for"]
    return [*kept, (b"x-forwarded-for", value)] if value else kept


def expects_continue(start: RequestStart) -> bool:
    """A 1.1 client waiting for 100 Continue before it sends its body."""
    expect = b",".join(header_values(start.headers, b"expect")).strip().lower()
    return (
        start.http_version == "1.1"
        and expect == b"100-continue"
        and start.framing.kind is not BodyKind.NONE
    )


def downstream_framing(upstream: Framing, *, http11: bool) -> Framing:
    """Re-frame an upstream body for the client: 1.0 clients cannot take chunked."""
    if upstream.kind in (BodyKind.NONE, BodyKind.LENGTH):
        return upstream
    if not http11:
        return UNTIL_CLOSE
    return upstream if upstream.kind is BodyKind.CHUNKED else CHUNKED


def response_headers(
    head: ResponseStart, framing: Framing, *, keep_alive: bool, http11: bool
) -> Headers:
    """Upstream response headers as sent to the client, framed by `framing`."""
    keep_length = framing.kind in (BodyKind.NONE, BodyKind.LENGTH)
    headers = [
        (k, v) for k, v in strip_hop_by_hop(head.headers) if keep_length or k != b"content-length"
    ]
    if framing.kind is BodyKind.CHUNKED:
        headers += framing_headers(framing)
    return headers + connection_header(keep_alive=keep_alive, http11=http11)


def connection_header(*, keep_alive: bool, http11: bool) -> Headers:
    """The Connection header the client needs to know whether we keep the connection."""
    if not keep_alive:
        return [(b"connection", b"close")]
    return [] if http11 else [(b"connection", b"keep-alive")]


def local_reply_head(
    status: int, body: bytes, *, flags: str, keep_alive: bool, http11: bool
) -> bytes:
    """Head of a response produced by the proxy itself."""
    headers: Headers = [
        (b"content-type", b"text/plain"),
        (b"content-length", str(len(body)).encode("ascii")),
    ]
    if flags:
        headers.append((FLAGS_HEADER, flags.encode("ascii")))
    headers += connection_header(keep_alive=keep_alive, http11=http11)
    return serialize_response_head(status, headers)


def upstream_request(head: RequestHead, framing: Framing) -> bytes:
    """The request head sent upstream (always HTTP/1.1, chunked re-announced if needed)."""
    extra = framing_headers(framing) if framing.kind is BodyKind.CHUNKED else []
    return serialize_request_head(head.method, head.path, head.headers + extra)


def _peer_host(writer: asyncio.StreamWriter) -> str:
    peer = writer.get_extra_info("peername")
    return str(peer[0]) if isinstance(peer, tuple) and peer else ""


# --- the listener ---------------------------------------------------------------------------------


@dataclass(slots=True, eq=False)
class _Client:
    """A downstream connection and whether it is between exchanges."""

    requests: RequestStream
    writer: asyncio.StreamWriter
    peer: str
    task: asyncio.Task[None] | None = None
    phase: Phase = Phase.IDLE
    since: float = 0.0  # clock reading when `phase` began


class ProxyListener:
    """A running proxy listener. Create with `start_proxy`."""

    def __init__(
        self,
        *,
        resolver: Resolver,
        recorder: Recorder,
        listener: str,
        settings: EngineSettings,
    ) -> None:
        self._resolver = resolver
        self._recorder = recorder
        self._name = listener
        self._settings = settings
        self._clock = settings.clock
        self._pool = ConnectionPool(idle_timeout=settings.pool_idle_timeout, clock=settings.clock)
        self._clients: set[_Client] = set()
        self._active = 0
        self._draining = False
        self._server: asyncio.Server | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self.port = 0

    @property
    def active(self) -> int:
        """Exchanges in flight."""
        return self._active

    async def _start(self, host: str, port: int) -> None:
        self._server = await asyncio.start_server(self._on_connect, host, port)
        self.port = int(self._server.sockets[0].getsockname()[1])
        self._sweeper = asyncio.get_running_loop().create_task(
            self._sweep_forever(), name=f"proxy-{self._name}-pool-sweeper"
        )

    async def close(self, drain_timeout: float = 5.0) -> None:
        """Drain: stop accepting, close idle connections, let exchanges in flight finish (each
        answered with Connection: close) for up to `drain_timeout`, then close everything."""
        self._draining = True
        if self._server is not None:
            self._server.close()
        for client in list(self._clients):
            if client.phase is Phase.IDLE and client.task is not None:
                client.task.cancel()  # between requests: nothing is lost by closing now
        tasks = [c.task for c in self._clients if c.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=drain_timeout)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for client in list(self._clients):  # tasks cancelled before they ever ran
            self._clients.discard(client)
            await close_writer(client.writer, abort=True)
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
        await self._pool.close()

    async def _sweep_forever(self) -> None:
        # Timers per connection would cost more than the whole request on the hot path; a sweep
        # enforces the downstream timeouts instead, late by at most one interval.
        settings = self._settings
        shortest = min(settings.pool_idle_timeout, settings.idle_timeout, settings.head_timeout)
        interval = max(shortest / 8, 0.01)
        while True:
            await asyncio.sleep(interval)
            self._pool.sweep()
            self._expire_clients()

    def _expire_clients(self) -> None:
        """Close connections idle too long; answer 408 to heads that take too long."""
        now = self._clock()
        settings = self._settings
        for client in self._clients:
            waited = now - client.since
            if client.phase is Phase.IDLE and waited >= settings.idle_timeout:
                client.phase = Phase.EXPIRED
                client.writer.close()  # the connection task then reads EOF and ends
            elif client.phase is Phase.HEAD and waited >= settings.head_timeout:
                client.phase = Phase.EXPIRED
                # Nothing else is being written: the previous response is complete.
                self._refuse_now(client, 408, "request timeout", flags="DT")
                client.writer.close()

    # --- downstream connection ---

    def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # We own the connection task (rather than letting start_server wrap a coroutine) so
        # close() can cancel it: Python 3.11's wrapper logs an error for cancelled tasks.
        settings = self._settings
        client = _Client(
            requests=RequestStream(
                reader,
                read_size=settings.read_size,
                max_head_bytes=settings.max_head_bytes,
                max_headers=settings.max_headers,
            ),
            writer=writer,
            peer=_peer_host(writer),
            since=self._clock(),
        )
        client.task = asyncio.get_running_loop().create_task(
            self._serve(client), name=f"proxy-{self._name}-connection"
        )
        self._clients.add(client)

    async def _serve(self, client: _Client) -> None:
        writer = client.writer
        abort = False
        try:
            await self._serve_requests(client)
        except (ConnectionError, DownstreamFailed):
            abort = True  # the client went away; nothing to answer
        except Exception as exc:
            abort = True
            logger.error(
                "proxy listener=%s peer=%s unexpected error: %r", self._name, client.peer, exc
            )
        finally:
            self._clients.discard(client)
            await close_writer(writer, abort=abort)

    async def _serve_requests(self, client: _Client) -> None:
        requests = client.requests
        clock = self._clock
        while not self._draining:
            try:
                if not requests.ready:  # pipelined requests are parsed already
                    client.phase, client.since = Phase.IDLE, clock()
                    if not await requests.begin() or client.phase is Phase.EXPIRED:
                        return
                    client.phase, client.since = Phase.HEAD, clock()
                event = await requests.next_event()
            except ParseError as exc:
                text = "request header fields too large" if exc.status == 431 else "bad request"
                self._refuse_now(client, exc.status, text, flags="DPE")
                await client.writer.drain()
                return
            if event is None or client.phase is Phase.EXPIRED:
                return
            if not isinstance(event, RequestStart):
                raise RuntimeError(f"request stream out of sync: {event!r}")
            client.phase = Phase.BUSY
            self._active += 1
            try:
                keep_alive = await self._exchange(client, event)
            finally:
                self._active -= 1
            if not keep_alive:
                return

    def _refuse_now(self, client: _Client, status: int, text: str, *, flags: str) -> None:
        """Answer a request the engine could not read; the caller closes the connection."""
        started = self._clock()
        body = f"{text}\n".encode("ascii")
        client.writer.write(
            local_reply_head(status, body, flags=flags, keep_alive=False, http11=True) + body
        )
        self._record(None, None, Outcome(status, flags, len(body), False), started, 0)

    # --- one exchange ---

    async def _exchange(self, client: _Client, start: RequestStart) -> bool:
        started = self._clock()
        wall = time.time()
        body = RequestBody(client.requests)
        try:
            head = forwarded_head(start, peer=client.peer)
        except ParseError:
            bad_target = LocalReply(status=400, body="bad request target", flags="DPE")
            outcome = await self._reply(client, start, body, bad_target)
            self._record(start, None, outcome, started, body.consumed, start_time=wall)
            return False
        decision = self._resolve(head)
        upstream = ""
        if isinstance(decision, LocalReply):
            outcome = await self._reply(client, start, body, decision)
        else:
            upstream = f"{decision.address}:{decision.port}"
            outcome = await self._forward(client, start, head, body, decision)
        self._record(
            start, head, outcome, started, body.consumed, upstream=upstream, start_time=wall
        )
        return outcome.keep_alive and body.complete and not self._draining

    def _resolve(self, head: RequestHead) -> Decision:
        try:
            return self._resolver(head)
        except Exception as exc:
            # A routing bug must not take the connection down with it.
            logger.error("proxy listener=%s resolver failed: %r", self._name, exc)
            return LocalReply(status=500, body="internal error")

    def _record(
        self,
        start: RequestStart | None,
        head: RequestHead | None,
        outcome: Outcome,
        started: float,
        request_bytes: int,
        *,
        upstream: str = "",
        start_time: float = 0.0,
    ) -> None:
        completed = Completed(
            method=start.method if start else "",
            host=head.host if head else "",
            cluster=outcome.cluster,
            status=outcome.status,
            flags=outcome.flags,
            duration=self._clock() - started,
            request_bytes=request_bytes,
            response_bytes=outcome.response_bytes,
            upstream=upstream,
            head=head,
            start_time=start_time,
        )
        try:
            self._recorder(completed)
        except Exception as exc:
            # Telemetry trouble must not cost the client its connection.
            logger.error("proxy listener=%s recorder failed: %r", self._name, exc)

    async def _reply(
        self, client: _Client, start: RequestStart, body: RequestBody, reply: LocalReply
    ) -> Outcome:
        """Answer from the proxy. The unread body is drained, unless the client awaits 100."""
        # A client still waiting for 100 Continue never sends its body: draining would hang.
        awaiting_continue = expects_continue(start) and not body.continue_sent
        keep_alive = start.keep_alive and not self._draining and not awaiting_continue
        if keep_alive:
            keep_alive = await body.drain(MAX_DRAIN_BYTES)
        payload = (reply.body + "\n").encode("utf-8")
        data = local_reply_head(
            reply.status,
            payload,
            flags=reply.flags,
            keep_alive=keep_alive,
            http11=start.http_version == "1.1",
        )
        client.writer.write(data + (b"" if start.method == "HEAD" else payload))
        await client.writer.drain()
        return Outcome(reply.status, reply.flags, len(payload), keep_alive)

    async def _forward(
        self,
        client: _Client,
        start: RequestStart,
        head: RequestHead,
        body: RequestBody,
        target: Forward,
    ) -> Outcome:
        if expects_continue(start):
            # Like Envoy, answer 100 ourselves and keep Expect away from the upstream.
            client.writer.write(CONTINUE)
            body.continue_sent = True
        try:
            # asyncio.timeout(None) still costs a get_running_loop (a getpid syscall on 3.11).
            deadline = _NO_DEADLINE if target.timeout is None else asyncio.timeout(target.timeout)
            async with deadline:
                attempt, response = await self._open(target, start, head, body)
        except TimeoutError:
            return await self._upstream_error(client, start, body, target, UpstreamTimeout())
        except UpstreamError as exc:
            if body.failed:
                # The body broke (bad chunk, too large, truncated) before any response: the
                # upstream connection was reset, so it never saw a complete request. Refuse.
                too_large = body.failed_status == 431
                text = "request header fields too large" if too_large else "bad request"
                refusal = LocalReply(status=body.failed_status, body=text, flags="DPE")
                outcome = await self._reply(client, start, body, refusal)
                return dataclasses.replace(outcome, cluster=target.cluster)
            return await self._upstream_error(client, start, body, target, exc)
        reusable = False
        try:
            if response.status == 101:
                outcome = await self._tunnel(client, body, attempt, response)
            else:
                outcome, reusable = await self._relay(client, start, body, attempt, response)
            return dataclasses.replace(outcome, cluster=target.cluster)
        finally:
            reusable = await attempt.stop_pump() and reusable
            if reusable:
                self._pool.release(attempt.conn)
            else:
                self._pool.discard(attempt.conn)

    async def _upstream_error(
        self,
        client: _Client,
        start: RequestStart,
        body: RequestBody,
        target: Forward,
        error: UpstreamError,
    ) -> Outcome:
        reply = LocalReply(status=error.status, body=_error_text(error.flags), flags=error.flags)
        outcome = await self._reply(client, start, body, reply)
        return dataclasses.replace(outcome, cluster=target.cluster)

    async def _open(
        self, target: Forward, start: RequestStart, head: RequestHead, body: RequestBody
    ) -> tuple[Attempt, ResponseStart]:
        """Send the request and wait for the response head; retry a stale pooled connection once."""
        data = upstream_request(head, start.framing)
        fresh = False
        while True:
            conn = await self._pool.acquire(
                target.address, target.port, connect_timeout=target.connect_timeout, fresh=fresh
            )
            attempt = Attempt(
                conn,
                ResponseStream(
                    conn.reader, method=start.method, read_size=self._settings.read_size
                ),
            )
            try:
                await self._send_head(attempt, data, body, start.framing)
                return attempt, await self._response_head(attempt, upgrade=bool(start.upgrade))
            except PeerClosed as exc:
                await attempt.stop_pump()
                self._pool.discard(conn)
                nothing_lost = attempt.response.parser.received == 0 and body.consumed == 0
                if conn.reused and not fresh and nothing_lost and not body.failed:
                    fresh = True  # the upstream closed an idle connection under us
                    continue
                raise UpstreamReset(str(exc)) from exc
            except ParseError as exc:
                await attempt.stop_pump()
                self._pool.discard(conn)
                raise UpstreamProtocolError(str(exc)) from exc
            except BaseException:
                # Includes the cancellation by Forward.timeout.
                await attempt.stop_pump()
                self._pool.discard(conn)
                raise

    async def _send_head(
        self, attempt: Attempt, data: bytes, body: RequestBody, framing: Framing
    ) -> None:
        attempt.conn.writer.write(data)
        if not body.complete and framing.kind is BodyKind.NONE:
            await body.next_chunk()  # consumes the END that follows a bodiless head
        if not body.complete:
            attempt.pump = asyncio.get_running_loop().create_task(
                self._pump(attempt, body, framing), name=f"proxy-{self._name}-request-body"
            )

    async def _response_head(self, attempt: Attempt, *, upgrade: bool) -> ResponseStart:
        event = await attempt.response.next_event()
        if not isinstance(event, ResponseStart) or (event.status == 101 and not upgrade):
            # 101 only answers a request that asked for Upgrade.
            raise ParseError(f"unexpected response event {event!r}")
        return event

    async def _pump(self, attempt: Attempt, body: RequestBody, framing: Framing) -> None:
        """Stream the request body upstream. Never raises: failures abort the connection."""
        writer = attempt.conn.writer
        try:
            while (chunk := await body.next_chunk()) is not None:
                writer.write(encode_body(chunk, framing))
                await writer.drain()
            writer.write(end_of_body(framing))
            await writer.drain()
        except DownstreamFailed:
            # The upstream must not see a truncated request as complete: reset it. The response
            # reader then fails and the exchange ends without an answer.
            attempt.pump_ok = False
            attempt.conn.abort()
        except ConnectionError:
            # The upstream stopped reading; its response (if any) still decides the outcome.
            attempt.pump_ok = False

    async def _relay(
        self,
        client: _Client,
        start: RequestStart,
        body: RequestBody,
        attempt: Attempt,
        head: ResponseStart,
    ) -> tuple[Outcome, bool]:
        """Stream the response to the client. Returns the outcome and whether the upstream
        connection may be pooled."""
        http11 = start.http_version == "1.1"
        framing = downstream_framing(head.framing, http11=http11)
        keep_alive = (
            start.keep_alive and framing.kind is not BodyKind.UNTIL_CLOSE and not self._draining
        )
        headers = response_headers(head, framing, keep_alive=keep_alive, http11=http11)
        # What one upstream read produced goes out in one write (head, body and end together for
        # a typical response): the profile showed write syscalls as the largest cost per request.
        pending = [serialize_response_head(head.status, headers, reason=head.reason)]
        sent = 0
        writer = client.writer
        try:
            while True:
                if pending and not attempt.response.ready:
                    writer.write(b"".join(pending))
                    pending.clear()
                    await writer.drain()
                event = await attempt.response.next_event()
                if isinstance(event, EndOfMessage):
                    break
                if isinstance(event, Data):
                    sent += len(event.data)
                    pending.append(encode_body(event.data, framing))
            pending.append(end_of_body(framing))
            writer.write(b"".join(pending))
            await writer.drain()
        except (PeerClosed, ParseError):
            # Too late for an error response: reset so the client sees the truncation.
            client.writer.transport.abort()
            return Outcome(head.status, "UC", sent, False), False
        except ConnectionError:
            return Outcome(head.status, "DC", sent, False), False
        request_done = await self._await_pump(attempt, body)
        reusable = head.keep_alive and request_done and not attempt.response.parser.trailing_data
        return Outcome(head.status, "", sent, keep_alive and request_done), reusable

    async def _tunnel(
        self, client: _Client, body: RequestBody, attempt: Attempt, head: ResponseStart
    ) -> Outcome:
        """After a 101: relay raw bytes both ways until both sides have closed their half."""
        upgrade = b", ".join(header_values(head.headers, b"upgrade"))
        headers = [*strip_hop_by_hop(head.headers), (b"connection", b"upgrade")]
        if upgrade:
            headers.append((b"upgrade", upgrade))
        client.writer.write(serialize_response_head(101, headers, reason=head.reason))
        conn = attempt.conn
        read_size = self._settings.read_size
        async with asyncio.TaskGroup() as group:
            name = f"proxy-{self._name}-tunnel"
            up = group.create_task(
                _splice(
                    client.requests.reader,
                    client.requests.detach(),
                    conn.writer,
                    read_size=read_size,
                    other=client.writer,
                ),
                name=f"{name}-up",
            )
            down = group.create_task(
                _splice(
                    conn.reader,
                    attempt.response.parser.upgrade_tail,
                    client.writer,
                    read_size=read_size,
                    other=conn.writer,
                ),
                name=f"{name}-down",
            )
        body.consumed += up.result()
        return Outcome(101, "", down.result(), False)

    async def _await_pump(self, attempt: Attempt, body: RequestBody) -> bool:
        """After the response: whether the request body was fully read and sent."""
        pump = attempt.pump
        if pump is None:
            return True
        if body.complete and not pump.done():
            # Everything was read; give the last write a moment to flush.
            await asyncio.wait({pump}, timeout=PUMP_FLUSH_TIMEOUT)
        if not pump.done():
            pump.cancel()  # the upstream answered without reading the whole request
            await asyncio.gather(pump, return_exceptions=True)
            return False
        return attempt.pump_ok and body.complete


async def _splice(
    reader: asyncio.StreamReader,
    first: bytes,
    writer: asyncio.StreamWriter,
    *,
    read_size: int,
    other: asyncio.StreamWriter,
) -> int:
    """Copy `first`, then everything `reader` yields, to `writer`; pass the end of input on as a
    half-close. Returns the bytes copied. A broken side resets both connections (`other` is the
    writer on the reader's connection), which ends the opposite direction too."""
    moved = len(first)
    try:
        if first:
            writer.write(first)
            await writer.drain()
        while data := await reader.read(read_size):
            moved += len(data)
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof() and not writer.is_closing():
            writer.write_eof()
    except OSError:
        writer.transport.abort()
        other.transport.abort()
    return moved


def _error_text(flags: str) -> str:
    return {
        "UF": "upstream connect error",
        "UT": "upstream request timeout",
        "UC": "upstream connection closed",
        "UPE": "upstream protocol error",
    }.get(flags, "upstream error")


async def start_proxy(
    host: str,
    port: int,
    *,
    resolver: Resolver,
    recorder: Recorder,
    listener: str,
    settings: EngineSettings | None = None,
) -> ProxyListener:
    """Listen on host:port (0 picks a free port) and proxy every request per `resolver`."""
    proxy = ProxyListener(
        resolver=resolver,
        recorder=recorder,
        listener=listener,
        settings=settings or EngineSettings(),
    )
    await proxy._start(host, port)
    return proxy
