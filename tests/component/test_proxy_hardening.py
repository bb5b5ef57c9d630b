"""Component tests of the proxy engine's defences and protocol edges on loopback sockets.

Request smuggling (a corpus and a bounded fuzz), head limits and downstream timeouts, WebSocket
tunnelling after a 101, and draining. Upstreams are real servers: a raw recorder that parses what
the proxy forwards with its own llhttp parser, and an aiohttp app (WebSocket echo, slow handler).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import httptools
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar.contract import Completed, Decision, Forward, RequestHead
from sidecar.listeners.engine import EngineSettings, ProxyListener, start_proxy
from tests.component.smuggling_corpus import CORPUS, Case
from tests.support.servers import serving

DEADLINE = 10.0  # bound on every wait; never reached when things work


@pytest.fixture(autouse=True)
def no_logged_errors(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Errors logged by the engine or asyncio (e.g. unhandled task exceptions) fail the test."""
    yield
    records = caplog.get_records("setup") + caplog.get_records("call") + caplog.records
    assert [r.getMessage() for r in records if r.levelno >= logging.WARNING] == []


# --- a recording upstream ----------------------------------------------------------------------


class _Heads:
    """httptools callbacks: collect each forwarded head, answer each complete request."""

    def __init__(self, upstream: RecordingUpstream, writer: asyncio.StreamWriter) -> None:
        self._upstream = upstream
        self._writer = writer
        self._fields: list[tuple[bytes, bytes]] = []

    def on_message_begin(self) -> None:
        self._fields = []

    def on_header(self, name: bytes, value: bytes) -> None:
        self._fields.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self._upstream.heads.append(self._fields)
        self._upstream.head_seen.set()
        problem = ambiguity(self._fields)
        if problem:
            self._upstream.violations.append(problem)

    def on_message_complete(self) -> None:
        self._upstream.requests += 1
        self._writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")


def ambiguity(fields: list[tuple[bytes, bytes]]) -> str:
    """Why a forwarded head could be framed differently by another parser ("" if it cannot)."""
    lengths = [v for k, v in fields if k == b"content-length"]
    codings = [v for k, v in fields if k == b"transfer-encoding"]
    hosts = [v for k, v in fields if k == b"host"]
    if lengths and codings:
        return "content-length and transfer-encoding"
    if len(lengths) > 1 or len(codings) > 1 or len(hosts) > 1:
        return "repeated framing or host field"
    if codings and codings[0].split(b",")[-1].strip().lower() != b"chunked":
        return f"transfer-encoding {codings[0]!r}"
    return ""


@dataclass
class RecordingUpstream:
    """Records every byte and head it receives; anything it cannot parse is a violation."""

    port: int = 0
    connections: int = 0
    received: bytearray = field(default_factory=bytearray)
    heads: list[list[tuple[bytes, bytes]]] = field(default_factory=list)
    requests: int = 0
    violations: list[str] = field(default_factory=list)
    head_seen: asyncio.Event = field(default_factory=asyncio.Event)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        parser = httptools.HttpRequestParser(_Heads(self, writer))
        try:
            while data := await reader.read(65536):
                self.received += data
                try:
                    parser.feed_data(data)
                except httptools.HttpParserUpgrade:
                    parser = httptools.HttpRequestParser(_Heads(self, writer))
                except httptools.HttpParserError as exc:
                    self.violations.append(f"forwarded bytes do not parse: {exc}")
                    return
        except ConnectionError:
            pass  # the proxy reset a truncated request: that is allowed
        finally:
            writer.close()


@pytest.fixture
async def recorder() -> AsyncIterator[RecordingUpstream]:
    upstream = RecordingUpstream()
    server = await asyncio.start_server(upstream.serve, "127.0.0.1", 0)
    upstream.port = server.sockets[0].getsockname()[1]
    yield upstream
    server.close()
    await server.wait_closed()


# --- an aiohttp upstream (WebSocket echo, slow handler) -----------------------------------------


@dataclass
class AppUpstream:
    port: int = 0
    slow_arrived: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)


def _app(state: AppUpstream) -> web.Application:
    async def ws_echo(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.send_str("welcome")  # may share a segment with the 101 head
        async for message in ws:
            if message.type is aiohttp.WSMsgType.TEXT:
                await ws.send_str(f"echo:{message.data}")
            elif message.type is aiohttp.WSMsgType.BINARY:
                await ws.send_bytes(message.data[::-1])
        return ws

    async def slow(request: web.Request) -> web.Response:
        state.slow_arrived.set()
        await state.release.wait()
        return web.Response(text="finally")

    async def plain(request: web.Request) -> web.Response:
        return web.Response(text="plain")

    app = web.Application()
    app.router.add_get("/ws", ws_echo)
    app.router.add_get("/slow", slow)
    app.router.add_get("/plain", plain)
    return app


@pytest.fixture
async def app_upstream() -> AsyncIterator[AppUpstream]:
    state = AppUpstream()
    async with serving(_app(state)) as port:
        state.port = port
        yield state
        state.release.set()


# --- the proxy under test ----------------------------------------------------------------------

StartProxy = Callable[..., Awaitable[ProxyListener]]


@dataclass
class Started:
    listeners: list[ProxyListener] = field(default_factory=list)
    records: list[Completed] = field(default_factory=list)
    recorded: asyncio.Event = field(default_factory=asyncio.Event)

    def record(self, completed: Completed) -> None:
        self.records.append(completed)
        self.recorded.set()


@pytest.fixture
async def started() -> AsyncIterator[Started]:
    state = Started()
    yield state
    for listener in state.listeners:
        await listener.close(drain_timeout=1.0)


@pytest.fixture
def make_proxy(started: Started) -> StartProxy:
    """Start a listener that forwards everything to `port`, with the given engine settings."""

    async def make(port: int, **tunables: Any) -> ProxyListener:
        target = Forward(address="127.0.0.1", port=port, cluster="up")

        def resolve(head: RequestHead) -> Decision:
            return target

        listener = await start_proxy(
            "127.0.0.1",
            0,
            resolver=resolve,
            recorder=started.record,
            listener="test",
            settings=EngineSettings(**tunables),
        )
        started.listeners.append(listener)
        return listener

    return make


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes


async def exchange(port: int, raw: bytes) -> tuple[Reply, bool]:
    """Send raw bytes, read one Content-Length response; also whether the proxy then closed."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        async with asyncio.timeout(DEADLINE):
            writer.write(raw)
            reply = await read_reply(reader)
            try:
                closed = await reader.read() == b""
            except ConnectionResetError:
                closed = True
        return reply, closed
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def read_reply(reader: asyncio.StreamReader) -> Reply:
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")[:-2]
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return Reply(int(status_line.split()[1]), headers, body)


# --- request smuggling -------------------------------------------------------------------------


@pytest.mark.parametrize("case", CORPUS, ids=[c.name for c in CORPUS])
async def test_smuggling_attempt_is_refused_and_never_forwarded(
    case: Case, recorder: RecordingUpstream, make_proxy: StartProxy, started: Started
) -> None:
    listener = await make_proxy(recorder.port)
    reply, closed = await exchange(listener.port, case.raw)
    assert reply.status == 400, case.family
    assert reply.headers["connection"] == "close"
    assert reply.headers["x-lightmesh-response-flags"] == "DPE"
    assert closed
    assert (recorder.connections, bytes(recorder.received)) == (0, b"")
    assert [r.status for r in started.records] == [400]


async def test_corpus_sanity_valid_requests_are_forwarded(
    recorder: RecordingUpstream, make_proxy: StartProxy
) -> None:
    """The same shapes, well-formed, do get through: the refusals above are not blanket ones."""
    listener = await make_proxy(recorder.port)
    for raw in VALID:
        closing = raw.replace(b"Host: echo\r\n", b"Host: echo\r\nConnection: close\r\n", 1)
        reply, _ = await exchange(listener.port, closing)
        assert (reply.status, reply.body) == (200, b"ok")
    assert recorder.violations == []
    assert recorder.requests == len(VALID)


VALID = (
    b"GET /a HTTP/1.1\r\nHost: echo\r\n\r\n",
    b"POST /a HTTP/1.1\r\nHost: echo\r\nContent-Length: 5\r\n\r\nhello",
    b"POST /a HTTP/1.1\r\nHost: echo\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5;ext=1\r\nhello\r\n0\r\n\r\n",
    b"POST /a HTTP/1.1\r\nHost: echo\r\nTransfer-Encoding: gzip, CHUNKED \r\n\r\n"
    b"5\r\nhello\r\n0\r\nX-Trailer: t\r\n\r\n",
    b"POST /a HTTP/1.0\r\nHost: echo\r\nContent-Length: 5\r\n\r\nhello",
)

TOKENS = (
    b" ",
    b"\t",
    b"\r",
    b"\n",
    b"\r\n",
    b"\x00",
    b"\x0b",
    b",",
    b":",
    b"_",
    b"0",
    b"5",
    b"chunked",
    b"identity",
    b"Content-Length: 3\r\n",
    b"Content-Length: 5\r\n",
    b"Transfer-Encoding: chunked\r\n",
    b"Transfer-Encoding: gzip\r\n",
    b"Host: other\r\n",
    b"Connection: upgrade\r\nUpgrade: websocket\r\n",
    b"0\r\n\r\n",
    b"GET /smuggled HTTP/1.1\r\nHost: echo\r\n\r\n",
)


@st.composite
def mutated_requests(draw: st.DrawFn) -> bytes:
    """One or two valid requests, then 1-4 insertions, deletions or replacements of bytes."""
    raw = bytearray(b"".join(draw(st.lists(st.sampled_from(VALID), min_size=1, max_size=2))))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(raw)))
        kind = draw(st.sampled_from(("insert", "delete", "replace")))
        if kind == "insert":
            raw[at:at] = draw(st.sampled_from(TOKENS))
        elif kind == "delete":
            del raw[at : at + draw(st.integers(1, 8))]
        else:
            raw[at : at + 1] = draw(st.sampled_from(TOKENS))
    return bytes(raw)


def _send_and_read_all(port: int, raw: bytes) -> bytes:
    """Blocking: send, half-close, read until the proxy closes (the timeout is a hang guard)."""
    with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE) as sock:
        sock.sendall(raw)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        with contextlib.suppress(ConnectionResetError):
            while data := sock.recv(65536):
                chunks.append(data)
        return b"".join(chunks)


async def test_fuzzed_requests_never_crash_the_listener_or_forward_ambiguity(
    recorder: RecordingUpstream, make_proxy: StartProxy
) -> None:
    """Bounded fuzz: 300 mutated requests; whatever reaches the upstream frames unambiguously."""
    listener = await make_proxy(recorder.port)
    refused = 0

    @settings(
        max_examples=300,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(raw=mutated_requests())
    def fuzz(raw: bytes) -> None:
        nonlocal refused
        replies = _send_and_read_all(listener.port, raw)
        refused += b"HTTP/1.1 400 " in replies
        assert recorder.violations == [], raw

    await asyncio.to_thread(fuzz)
    # Still serving afterwards.
    reply, _ = await exchange(
        listener.port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    assert (reply.status, reply.body) == (200, b"ok")
    assert recorder.violations == []
    assert refused > 0 and recorder.requests > 0  # the fuzz reached both outcomes


@pytest.mark.parametrize(
    ("rest", "status"),
    [
        (b"zz\r\nabc\r\n0\r\n\r\n", 400),
        # Unterminated, so the parser would have to keep buffering them.
        (b"3;ext=" + b"e" * 2000, 431),
        (b"0\r\nX-Trailer: " + b"t" * 2000, 431),
    ],
    ids=["bad-chunk-size", "huge-chunk-extension", "huge-trailer"],
)
async def test_body_fault_after_the_head_was_forwarded_resets_upstream_and_refuses(
    rest: bytes, status: int, recorder: RecordingUpstream, make_proxy: StartProxy
) -> None:
    """Streaming forwards a head before its body is read: a later fault resets the upstream
    connection (it never sees a complete request) and the client gets the refusal."""
    listener = await make_proxy(recorder.port, max_head_bytes=1024)
    reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
    try:
        async with asyncio.timeout(DEADLINE):
            writer.write(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
            await recorder.head_seen.wait()
            writer.write(rest)
            reply = await read_reply(reader)
            assert await reader.read() == b""
    finally:
        writer.close()
        await writer.wait_closed()
    assert (reply.status, reply.headers["connection"]) == (status, "close")
    assert recorder.requests == 0
    assert recorder.violations == []


# --- limits and downstream timeouts ------------------------------------------------------------


async def test_oversized_head_is_431_and_closes(
    recorder: RecordingUpstream, make_proxy: StartProxy
) -> None:
    listener = await make_proxy(recorder.port, max_head_bytes=1024)
    small = b"GET / HTTP/1.1\r\nHost: x\r\nX-Pad: %s\r\nConnection: close\r\n\r\n" % (b"a" * 900)
    assert (await exchange(listener.port, small))[0].status == 200
    big = small.replace(b"a" * 900, b"a" * 2000)
    reply, closed = await exchange(listener.port, big)
    assert (reply.status, reply.headers["x-lightmesh-response-flags"], closed) == (431, "DPE", True)
    assert recorder.requests == 1


async def test_overlong_request_target_is_414_and_closes(
    recorder: RecordingUpstream, make_proxy: StartProxy
) -> None:
    """A 1 MB URI: 414 URI Too Long (RFC 9110 15.5.15), not 431, and nothing forwarded."""
    listener = await make_proxy(recorder.port)
    request = b"GET /" + b"a" * 1024 * 1024 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    reply, closed = await exchange(listener.port, request)
    assert (reply.status, reply.headers["x-lightmesh-response-flags"], closed) == (414, "DPE", True)
    assert recorder.connections == 0
    # Half the head limit is the target's own limit; a long target under it is served.
    listener = await make_proxy(recorder.port, max_head_bytes=1024)
    fits = b"GET /" + b"a" * 500 + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    assert (await exchange(listener.port, fits))[0].status == 200
    reply, _ = await exchange(listener.port, fits.replace(b"a" * 500, b"a" * 600))
    assert reply.status == 414


async def test_too_many_header_fields_is_431(
    recorder: RecordingUpstream, make_proxy: StartProxy
) -> None:
    listener = await make_proxy(recorder.port, max_headers=5)
    fields = b"".join(b"X-%d: v\r\n" % i for i in range(5))
    reply, closed = await exchange(
        listener.port, b"GET / HTTP/1.1\r\nHost: x\r\n" + fields + b"\r\n"
    )
    assert (reply.status, closed) == (431, True)
    assert recorder.connections == 0


async def test_default_limits_allow_100_fields_and_refuse_101(
    recorder: RecordingUpstream, make_proxy: StartProxy
) -> None:
    listener = await make_proxy(recorder.port)
    fields = b"".join(b"X-%d: v\r\n" % i for i in range(98))
    head = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + fields
    assert (await exchange(listener.port, head + b"\r\n"))[0].status == 200
    assert (await exchange(listener.port, head + b"X-Last: v\r\n\r\n"))[0].status == 431


async def test_idle_keep_alive_connection_is_closed(
    recorder: RecordingUpstream, make_proxy: StartProxy
) -> None:
    listener = await make_proxy(recorder.port, idle_timeout=0.05)
    reply, closed = await exchange(listener.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert reply.headers.get("connection") is None  # kept alive, then closed for idleness
    assert (reply.status, closed) == (200, True)


async def test_incomplete_head_is_408_and_closes(
    recorder: RecordingUpstream, make_proxy: StartProxy
) -> None:
    listener = await make_proxy(recorder.port, head_timeout=0.05, idle_timeout=DEADLINE)
    reply, closed = await exchange(listener.port, b"GET / HTTP/1.1\r\nHost: x\r\n")
    assert (reply.status, reply.headers["x-lightmesh-response-flags"], closed) == (408, "DT", True)
    assert recorder.connections == 0


# --- Upgrade / WebSocket -----------------------------------------------------------------------


async def test_websocket_is_tunnelled_both_ways(
    app_upstream: AppUpstream, make_proxy: StartProxy, started: Started
) -> None:
    listener = await make_proxy(app_upstream.port)
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=DEADLINE)) as session,
        session.ws_connect(f"http://127.0.0.1:{listener.port}/ws") as ws,
    ):
        assert (await ws.receive_str()) == "welcome"
        for i in range(3):
            await ws.send_str(f"m{i}")
            assert (await ws.receive_str()) == f"echo:m{i}"
        await ws.send_bytes(b"\x00\x01\x02" * 50_000)
        assert (await ws.receive_bytes()) == (b"\x00\x01\x02" * 50_000)[::-1]
    async with asyncio.timeout(DEADLINE):
        await started.recorded.wait()  # the record lands when both halves have closed
    (record,) = started.records
    assert (record.status, record.flags) == (101, "")
    assert record.request_bytes > 150_000 and record.response_bytes > 150_000


async def test_declined_upgrade_keeps_the_connection_http(
    app_upstream: AppUpstream, make_proxy: StartProxy
) -> None:
    """A 200 to an Upgrade request: the bytes after it are the next request, not a tunnel."""
    listener = await make_proxy(app_upstream.port)
    reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
    try:
        async with asyncio.timeout(DEADLINE):
            writer.write(
                b"GET /plain HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
                b"GET /plain HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            )
            first = await read_reply(reader)
            second = await read_reply(reader)
    finally:
        writer.close()
        await writer.wait_closed()
    assert (first.status, first.body, second.status, second.body) == (200, b"plain", 200, b"plain")


# --- draining ------------------------------------------------------------------------------------


async def test_close_drains_in_flight_and_closes_idle_keep_alive(
    app_upstream: AppUpstream, make_proxy: StartProxy
) -> None:
    listener = await make_proxy(app_upstream.port)
    idle_reader, idle_writer = await asyncio.open_connection("127.0.0.1", listener.port)
    busy_reader, busy_writer = await asyncio.open_connection("127.0.0.1", listener.port)
    try:
        async with asyncio.timeout(DEADLINE):
            idle_writer.write(b"GET /plain HTTP/1.1\r\nHost: x\r\n\r\n")
            assert (await read_reply(idle_reader)).status == 200
            busy_writer.write(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
            await app_upstream.slow_arrived.wait()
            closing = asyncio.ensure_future(listener.close(drain_timeout=DEADLINE))
            assert await idle_reader.read() == b""  # idle keep-alive: closed at once
            with pytest.raises(ConnectionRefusedError):
                await asyncio.open_connection("127.0.0.1", listener.port)  # no longer accepting
            app_upstream.release.set()
            reply = await read_reply(busy_reader)
            await closing
    finally:
        for writer in (idle_writer, busy_writer):
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
    assert (reply.status, reply.body, reply.headers["connection"]) == (200, b"finally", "close")


async def test_idle_websocket_tunnel_is_closed_after_the_tunnel_idle_timeout(
    app_upstream: AppUpstream, make_proxy: StartProxy, started: Started
) -> None:
    listener = await make_proxy(app_upstream.port, tunnel_idle_timeout=0.05)
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=DEADLINE)) as session,
        session.ws_connect(f"http://127.0.0.1:{listener.port}/ws") as ws,
    ):
        assert (await ws.receive_str()) == "welcome"
        await ws.send_str("m")
        assert (await ws.receive_str()) == "echo:m"
        # Then silence both ways: the proxy closes the tunnel, which the client sees.
        message = await ws.receive()
        assert message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
    async with asyncio.timeout(DEADLINE):
        await started.recorded.wait()
    (record,) = started.records
    assert record.status == 101
    assert listener.active == 0
