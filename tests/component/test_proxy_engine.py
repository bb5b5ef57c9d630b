"""Component tests of the sidecar proxy engine and admin server on loopback sockets.

Every test runs under the stdlib event loop and under uvloop. Upstreams are a real aiohttp
server (echo, streaming, chunked, slow) and small raw asyncio servers for the misbehaving cases.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import http.client
import json
import logging
import random
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from sidecar.admin.server import LocalResponse, start_local_server
from sidecar.contract import Completed, Decision, Forward, LocalReply, RequestHead
from sidecar.listeners.engine import ConnectionPool, ProxyListener, start_proxy
from tests.support.servers import download_pattern, serving

DEADLINE = 10.0  # bound on every wait in these tests; never reached when things work
BIG = 20 * 1024 * 1024


@pytest.fixture(autouse=True)
def no_logged_errors(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Errors logged by asyncio (e.g. unhandled task exceptions) fail the test."""
    yield
    records = caplog.get_records("setup") + caplog.get_records("call") + caplog.records
    unexpected = [
        r.getMessage()
        for r in records
        if r.levelno >= logging.WARNING and "routing bug" not in r.getMessage()
    ]
    assert unexpected == []


# --- upstreams -------------------------------------------------------------------------------------


@dataclass
class Upstream:
    port: int
    peers: set[tuple[str, int]] = field(default_factory=set)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    slow_arrived: asyncio.Event = field(default_factory=asyncio.Event)


def _echo_app(upstream: Upstream) -> web.Application:
    def seen(request: web.Request) -> None:
        assert request.transport is not None
        upstream.peers.add(request.transport.get_extra_info("peername"))

    async def echo(request: web.Request) -> web.Response:
        seen(request)
        body = await request.read()
        return web.json_response(
            {
                "method": request.method,
                "path": request.path_qs,
                "headers": [
                    [k.decode("latin-1").lower(), v.decode("latin-1")]
                    for k, v in request.raw_headers
                ],
                "body": body.decode("latin-1"),
            }
        )

    async def stream(request: web.Request) -> web.StreamResponse:
        seen(request)
        response = web.StreamResponse()
        await response.prepare(request)
        async for chunk in request.content.iter_chunked(64 * 1024):
            await response.write(chunk)
        await response.write_eof()
        return response

    async def chunked(request: web.Request) -> web.StreamResponse:
        seen(request)
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        for i in range(3):
            await response.write(f"part{i}".encode())
        await response.write_eof()
        return response

    async def download(request: web.Request) -> web.StreamResponse:
        seen(request)
        return await download_pattern(request)

    async def nocontent(request: web.Request) -> web.Response:
        seen(request)
        return web.Response(status=204)

    async def slow(request: web.Request) -> web.Response:
        seen(request)
        upstream.slow_arrived.set()
        await upstream.release.wait()
        return web.Response(text="finally")

    app = web.Application(client_max_size=BIG)
    app.router.add_route("*", "/echo", echo)
    app.router.add_route("*", "/stream", stream)
    app.router.add_get("/chunked", chunked)
    app.router.add_get("/download", download)
    app.router.add_get("/nocontent", nocontent)
    app.router.add_get("/slow", slow)
    return app


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    state = Upstream(port=0)
    async with serving(_echo_app(state)) as port:
        state.port = port
        yield state
        state.release.set()


RawHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]


class RawUpstream:
    """A bare asyncio server running `handler(reader, writer, connection_index)`."""

    def __init__(self, handler: RawHandler) -> None:
        self._handler = handler
        self.connections = 0
        self._writers: list[asyncio.StreamWriter] = []
        self._server: asyncio.Server | None = None
        self.port = 0

    async def __aenter__(self) -> RawUpstream:
        self._server = await asyncio.start_server(self._on_connect, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        index = self.connections
        self.connections += 1
        self._writers.append(writer)
        try:
            await self._handler(reader, writer, index)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
        await self._server.wait_closed()


# --- proxy under test ------------------------------------------------------------------------------


class Records:
    """Collects Completed reports; tests wait on a count rather than on time."""

    def __init__(self) -> None:
        self.items: list[Completed] = []
        self._changed = asyncio.Event()

    def __call__(self, completed: Completed) -> None:
        self.items.append(completed)
        self._changed.set()

    async def wait_for(self, count: int) -> list[Completed]:
        async with asyncio.timeout(DEADLINE):
            while len(self.items) < count:
                self._changed.clear()
                await self._changed.wait()
        return self.items


@dataclass
class Proxy:
    listener: ProxyListener
    routes: dict[str, Decision]
    heads: list[RequestHead]
    records: Records

    @property
    def port(self) -> int:
        return self.listener.port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.listener.port}"


def closed_port() -> int:
    """A port nobody listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
async def proxy(upstream: Upstream) -> AsyncIterator[Proxy]:
    echo = Forward(address="127.0.0.1", port=upstream.port, cluster="echo")
    routes: dict[str, Decision] = {
        "echo": echo,
        "catalog": echo,
        "slow": Forward(address="127.0.0.1", port=upstream.port, cluster="echo", timeout=0.2),
        "refused": Forward(address="127.0.0.1", port=closed_port(), cluster="gone"),
    }
    heads: list[RequestHead] = []

    def resolve(head: RequestHead) -> Decision:
        heads.append(head)
        return routes.get(head.host, LocalReply(status=404, body="no route", flags="NR"))

    records = Records()
    listener = await start_proxy(
        "127.0.0.1", 0, resolver=resolve, recorder=records, listener="outbound"
    )
    yield Proxy(listener, routes, heads, records)
    await listener.close(drain_timeout=1.0)
    assert listener.active == 0


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=DEADLINE)) as s:
        yield s


# --- raw HTTP helpers ------------------------------------------------------------------------------


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes


async def read_response(reader: asyncio.StreamReader, *, head_only: bool = False) -> RawResponse:
    """Read one response with Content-Length, chunked or close-delimited framing."""
    raw_head = await reader.readuntil(b"\r\n\r\n")
    status_line, *lines = raw_head.decode("latin-1").split("\r\n")[:-2]
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    status = int(status_line.split()[1])
    if head_only or status in (204, 304):
        return RawResponse(status, headers, b"")
    if "content-length" in headers:
        return RawResponse(
            status, headers, await reader.readexactly(int(headers["content-length"]))
        )
    if headers.get("transfer-encoding") == "chunked":
        body = bytearray()
        while size := int((await reader.readuntil(b"\r\n"))[:-2], 16):
            body += await reader.readexactly(size)
            await reader.readexactly(2)
        await reader.readuntil(b"\r\n")
        return RawResponse(status, headers, bytes(body))
    return RawResponse(status, headers, await reader.read())


@dataclass
class RawClient:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    async def read(self, *, head_only: bool = False) -> RawResponse:
        async with asyncio.timeout(DEADLINE):
            return await read_response(self.reader, head_only=head_only)

    async def at_eof(self) -> bool:
        async with asyncio.timeout(DEADLINE):
            try:
                return await self.reader.read() == b""
            except ConnectionResetError:
                return True


@pytest.fixture
async def raw(proxy: Proxy) -> AsyncIterator[Callable[[], Awaitable[RawClient]]]:
    writers: list[asyncio.StreamWriter] = []

    async def connect() -> RawClient:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writers.append(writer)
        return RawClient(reader, writer)

    yield connect
    for writer in writers:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


def echoed(body: bytes) -> dict[str, Any]:
    return dict(json.loads(body))


def header(echo: dict[str, Any], name: str) -> list[str]:
    return [v for k, v in echo["headers"] if k == name]


# --- tests: basic forwarding -----------------------------------------------------------------------


async def test_get_is_forwarded_and_recorded(proxy: Proxy, session: aiohttp.ClientSession) -> None:
    async with session.get(f"{proxy.url}/echo?q=1", headers={"Host": "echo:8080"}) as resp:
        assert resp.status == 200
        body = await resp.read()
    echo = echoed(body)
    assert (echo["method"], echo["path"]) == ("GET", "/echo?q=1")
    assert proxy.heads[0].host == "echo"
    (record,) = await proxy.records.wait_for(1)
    assert (record.method, record.host, record.cluster, record.status) == (
        "GET",
        "echo",
        "echo",
        200,
    )
    assert record.flags == ""
    assert record.response_bytes == len(body)
    assert record.duration >= 0
    echo_route = proxy.routes["echo"]
    assert isinstance(echo_route, Forward)
    assert record.upstream == f"127.0.0.1:{echo_route.port}"  # the balancer releases this slot


async def test_post_with_content_length(proxy: Proxy, session: aiohttp.ClientSession) -> None:
    async with session.post(f"{proxy.url}/echo", data=b"hello", headers={"Host": "echo"}) as resp:
        echo = echoed(await resp.read())
    assert (echo["method"], echo["body"]) == ("POST", "hello")
    assert header(echo, "content-length") == ["5"]
    (record,) = await proxy.records.wait_for(1)
    assert record.request_bytes == 5


async def test_chunked_request_body_is_streamed(
    proxy: Proxy, session: aiohttp.ClientSession
) -> None:
    async def parts() -> AsyncIterator[bytes]:
        for i in range(5):
            yield f"piece{i};".encode()

    async with session.post(f"{proxy.url}/echo", data=parts(), headers={"Host": "echo"}) as resp:
        echo = echoed(await resp.read())
    assert echo["body"] == "piece0;piece1;piece2;piece3;piece4;"
    assert header(echo, "transfer-encoding") == ["chunked"]


async def test_chunked_response_is_rechunked(proxy: Proxy, raw: Any) -> None:
    client = await raw()
    client.writer.write(b"GET /chunked HTTP/1.1\r\nHost: echo\r\n\r\n")
    response = await client.read()
    assert response.headers["transfer-encoding"] == "chunked"
    assert response.body == b"part0part1part2"


async def test_keep_alive_reuses_one_upstream_connection(
    proxy: Proxy, upstream: Upstream, session: aiohttp.ClientSession
) -> None:
    for i in range(4):
        async with session.get(f"{proxy.url}/echo?n={i}", headers={"Host": "echo"}) as resp:
            assert resp.status == 200
            await resp.read()
    assert len(upstream.peers) == 1


async def test_pipelined_requests_are_answered_in_order(proxy: Proxy, raw: Any) -> None:
    client = await raw()
    client.writer.write(
        b"".join(f"GET /echo?n={i} HTTP/1.1\r\nHost: echo\r\n\r\n".encode() for i in range(3))
    )
    paths = [echoed((await client.read()).body)["path"] for _ in range(3)]
    assert paths == ["/echo?n=0", "/echo?n=1", "/echo?n=2"]


async def test_head_and_204_have_no_body(proxy: Proxy) -> None:
    """http.client on one keep-alive connection would desync if a body were sent."""

    def run() -> list[tuple[int, bytes, str | None]]:
        conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=DEADLINE)
        try:
            out = []
            for method, path in [("HEAD", "/echo"), ("GET", "/nocontent"), ("GET", "/echo")]:
                conn.request(method, path, headers={"Host": "echo"})
                resp = conn.getresponse()
                out.append((resp.status, resp.read(), resp.getheader("content-length")))
            return out
        finally:
            conn.close()

    (head, nocontent, get) = await asyncio.to_thread(run)
    assert head[:2] == (200, b"")
    assert int(head[2] or 0) > 0
    assert nocontent[:2] == (204, b"")
    assert get[0] == 200
    assert echoed(get[1])["method"] == "GET"


async def test_absolute_form_target_with_curl(proxy: Proxy, upstream: Upstream) -> None:
    process = await asyncio.create_subprocess_exec(
        "/usr/bin/curl",
        "-sS",
        "--max-time",
        str(DEADLINE),
        "-x",
        proxy.url,
        "http://Catalog/echo?x=1",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await process.communicate()
    assert process.returncode == 0, stderr
    echo = echoed(stdout)
    assert echo["path"] == "/echo?x=1"
    assert header(echo, "host") == ["Catalog"]
    assert header(echo, "proxy-connection") == []
    assert proxy.heads[0].host == "catalog"
    assert proxy.heads[0].path == "/echo?x=1"


async def test_absolute_form_authority_overrides_host_header(proxy: Proxy, raw: Any) -> None:
    client = await raw()
    client.writer.write(b"GET http://catalog:8080/echo HTTP/1.1\r\nHost: elsewhere\r\n\r\n")
    echo = echoed((await client.read()).body)
    assert header(echo, "host") == ["catalog:8080"]
    assert (proxy.heads[0].host, proxy.heads[0].path) == ("catalog", "/echo")


async def test_hop_by_hop_request_headers_are_stripped(proxy: Proxy, raw: Any) -> None:
    client = await raw()
    client.writer.write(
        b"GET /echo HTTP/1.1\r\nHost: echo\r\n"
        b"Connection: keep-alive, X-Secret\r\nX-Secret: 1\r\nKeep-Alive: timeout=5\r\n"
        b"Proxy-Connection: keep-alive\r\nTE: trailers\r\nUpgrade: websocket\r\n"
        b"Proxy-Authorization: Basic Zm9vOmJhcg==\r\nX-Forwarded-For: 10.0.0.1\r\n\r\n"
        # A second request proves the connection stayed usable (Upgrade without Connection:
        # upgrade is not a protocol switch, just a hop-by-hop header).
        b"GET /echo HTTP/1.1\r\nHost: echo\r\nX-Request-Id: given-id\r\n\r\n"
    )
    first = echoed((await client.read()).body)
    second = echoed((await client.read()).body)
    names = {k for k, _ in first["headers"]}
    assert names.isdisjoint({"connection", "x-secret", "keep-alive", "proxy-connection", "te"})
    assert "upgrade" not in names
    assert header(first, "proxy-authorization") == ["Basic Zm9vOmJhcg=="]
    assert header(first, "x-forwarded-for") == ["10.0.0.1, 127.0.0.1"]
    assert header(first, "x-forwarded-proto") == ["http"]
    uuid.UUID(header(first, "x-request-id")[0])
    assert header(second, "x-request-id") == ["given-id"]
    assert header(second, "x-forwarded-for") == ["127.0.0.1"]


async def test_hop_by_hop_response_headers_are_stripped(proxy: Proxy, raw: Any) -> None:
    async def respond(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 200 OK\r\nConnection: X-Secret\r\nX-Secret: 1\r\nKeep-Alive: timeout=5\r\n"
            b"Trailer: x-t\r\nX-Kept: yes\r\nContent-Length: 2\r\n\r\nok"
        )
        await reader.read()

    async with RawUpstream(respond) as up:
        proxy.routes["raw"] = Forward(address="127.0.0.1", port=up.port, cluster="raw")
        client = await raw()
        client.writer.write(b"GET / HTTP/1.1\r\nHost: raw\r\n\r\n")
        response = await client.read()
    assert response.body == b"ok"
    assert response.headers["x-kept"] == "yes"
    assert {"connection", "x-secret", "keep-alive", "trailer"}.isdisjoint(response.headers)


# --- tests: local replies and errors ---------------------------------------------------------------


async def test_local_reply_carries_flags(proxy: Proxy, session: aiohttp.ClientSession) -> None:
    async with session.get(f"{proxy.url}/x", headers={"Host": "nowhere"}) as resp:
        assert resp.status == 404
        assert resp.headers["x-lightmesh-response-flags"] == "NR"
        assert resp.headers["content-type"] == "text/plain"
        assert await resp.read() == b"no route\n"
    (record,) = await proxy.records.wait_for(1)
    assert (record.status, record.flags, record.cluster) == (404, "NR", "")


async def test_connect_failure_is_503_uf(proxy: Proxy, session: aiohttp.ClientSession) -> None:
    async with session.post(f"{proxy.url}/x", data=b"abc", headers={"Host": "refused"}) as resp:
        assert resp.status == 503
        assert resp.headers["x-lightmesh-response-flags"] == "UF"
    (record,) = await proxy.records.wait_for(1)
    assert (record.status, record.flags, record.cluster) == (503, "UF", "gone")


async def test_upstream_timeout_is_504_ut(proxy: Proxy, session: aiohttp.ClientSession) -> None:
    async with session.get(f"{proxy.url}/slow", headers={"Host": "slow"}) as resp:
        assert resp.status == 504
        assert resp.headers["x-lightmesh-response-flags"] == "UT"
    (record,) = await proxy.records.wait_for(1)
    assert (record.status, record.flags) == (504, "UT")


async def test_upstream_closing_before_head_is_503_uc(proxy: Proxy, raw: Any) -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        await reader.readuntil(b"\r\n\r\n")

    async with RawUpstream(hang_up) as up:
        proxy.routes["raw"] = Forward(address="127.0.0.1", port=up.port, cluster="raw")
        client = await raw()
        client.writer.write(b"GET / HTTP/1.1\r\nHost: raw\r\n\r\n")
        response = await client.read()
    assert response.status == 503
    assert response.headers["x-lightmesh-response-flags"] == "UC"


async def test_stale_pooled_connection_is_retried_once(
    proxy: Proxy, session: aiohttp.ClientSession
) -> None:
    """The first connection answers once, then closes on the next request without a response."""

    async def flaky(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, index: int) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n" + str(index).encode())
        await writer.drain()
        if index == 0:
            await reader.readuntil(b"\r\n\r\n")
            return  # closes under the proxy's second request
        await reader.read()

    async with RawUpstream(flaky) as up:
        proxy.routes["raw"] = Forward(address="127.0.0.1", port=up.port, cluster="raw")
        bodies = []
        for _ in range(2):
            async with session.get(f"{proxy.url}/", headers={"Host": "raw"}) as resp:
                assert resp.status == 200
                bodies.append(await resp.read())
        assert bodies == [b"0", b"1"]
        assert up.connections == 2


async def test_upstream_dying_mid_body_closes_downstream(proxy: Proxy, raw: Any) -> None:
    async def truncate(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
        await writer.drain()

    async with RawUpstream(truncate) as up:
        proxy.routes["raw"] = Forward(address="127.0.0.1", port=up.port, cluster="raw")
        client = await raw()
        client.writer.write(b"GET / HTTP/1.1\r\nHost: raw\r\n\r\n")
        head = await client.read(head_only=True)
        assert head.headers["content-length"] == "100"
        async with asyncio.timeout(DEADLINE):
            with pytest.raises((asyncio.IncompleteReadError, ConnectionResetError)):
                await client.reader.readexactly(100)
    (record,) = await proxy.records.wait_for(1)
    assert (record.status, record.flags) == (200, "UC")


async def test_close_delimited_response_is_chunked_for_http11(proxy: Proxy, raw: Any) -> None:
    async def until_close(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int
    ) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nhello world")

    async with RawUpstream(until_close) as up:
        proxy.routes["raw"] = Forward(address="127.0.0.1", port=up.port, cluster="raw")
        client = await raw()
        client.writer.write(b"GET / HTTP/1.1\r\nHost: raw\r\n\r\nGET /nowhere HTTP/1.1\r\n\r\n")
        response = await client.read()
        assert response.headers["transfer-encoding"] == "chunked"
        assert response.body == b"hello world"
        assert (await client.read()).status == 404  # the downstream connection stayed usable


async def test_malformed_request_is_400_and_closes(proxy: Proxy, raw: Any) -> None:
    client = await raw()
    client.writer.write(b"GET /echo HTTP/1.1\r\nHost: echo\r\nBad Header\r\n\r\n")
    response = await client.read()
    assert response.status == 400
    assert response.headers["connection"] == "close"
    assert await client.at_eof()
    (record,) = await proxy.records.wait_for(1)
    assert record.status == 400


# --- tests: big bodies and old clients -------------------------------------------------------------


async def test_20mb_streams_both_directions(proxy: Proxy, session: aiohttp.ClientSession) -> None:
    block = bytes(range(256)) * 256
    sent = hashlib.sha256()

    async def upload() -> AsyncIterator[bytes]:
        for _ in range(BIG // len(block)):
            sent.update(block)
            yield block

    received = hashlib.sha256()
    count = 0
    async with session.post(f"{proxy.url}/stream", data=upload(), headers={"Host": "echo"}) as resp:
        async for chunk in resp.content.iter_chunked(256 * 1024):
            received.update(chunk)
            count += len(chunk)
    assert count == BIG
    assert received.digest() == sent.digest()
    (record,) = await proxy.records.wait_for(1)
    assert (record.request_bytes, record.response_bytes) == (BIG, BIG)


async def test_20mb_download_with_content_length(
    proxy: Proxy, session: aiohttp.ClientSession
) -> None:
    count = 0
    url = f"{proxy.url}/download?size={BIG}"
    async with session.get(url, headers={"Host": "echo"}) as resp:
        assert resp.content_length == BIG
        async for chunk in resp.content.iter_chunked(256 * 1024):
            count += len(chunk)
    assert count == BIG


async def test_http10_client_gets_close_delimited_body(proxy: Proxy, raw: Any) -> None:
    client = await raw()
    client.writer.write(b"GET /chunked HTTP/1.0\r\nHost: echo\r\n\r\n")
    response = await client.read()
    assert "transfer-encoding" not in response.headers
    assert response.body == b"part0part1part2"


async def test_http10_keep_alive_with_known_length(proxy: Proxy, raw: Any) -> None:
    client = await raw()
    request = b"GET /echo HTTP/1.0\r\nHost: echo\r\nConnection: keep-alive\r\n\r\n"
    client.writer.write(request)
    first = await client.read()
    assert first.headers["connection"] == "keep-alive"
    client.writer.write(request.replace(b"keep-alive", b"close"))
    second = await client.read()
    assert second.status == 200
    assert await client.at_eof()


# --- tests: lifecycle and pool ---------------------------------------------------------------------


async def test_close_waits_for_in_flight_exchange(
    proxy: Proxy, upstream: Upstream, raw: Any
) -> None:
    proxy.routes["slow"] = Forward(address="127.0.0.1", port=upstream.port, cluster="echo")
    client = await raw()
    client.writer.write(b"GET /slow HTTP/1.1\r\nHost: slow\r\n\r\n")
    async with asyncio.timeout(DEADLINE):
        await upstream.slow_arrived.wait()
    assert proxy.listener.active == 1
    closing = asyncio.ensure_future(proxy.listener.close(drain_timeout=DEADLINE))
    upstream.release.set()
    response = await client.read()
    await closing
    assert (response.status, response.body) == (200, b"finally")
    assert response.headers["connection"] == "close"


async def test_pool_expires_idle_connections(upstream: Upstream) -> None:
    now = [0.0]
    pool = ConnectionPool(idle_timeout=60.0, clock=lambda: now[0])
    conn = await pool.acquire("127.0.0.1", upstream.port, connect_timeout=DEADLINE, fresh=False)
    pool.release(conn)
    again = await pool.acquire("127.0.0.1", upstream.port, connect_timeout=DEADLINE, fresh=False)
    assert again is conn
    assert again.reused
    pool.release(again)
    now[0] = 61.0
    pool.sweep()
    assert not conn.usable()
    fresh = await pool.acquire("127.0.0.1", upstream.port, connect_timeout=DEADLINE, fresh=False)
    assert fresh is not conn
    pool.close()


# --- local (admin) server --------------------------------------------------------------------------


async def test_local_server_serves_handler(session: aiohttp.ClientSession) -> None:
    async def handler(head: RequestHead) -> LocalResponse:
        if head.path == "/ready":
            return LocalResponse(status=200, headers=[(b"content-type", b"text/plain")], body=b"ok")
        return LocalResponse(status=404, body=f"{head.method} {head.path}".encode())

    server = await start_local_server("127.0.0.1", 0, handler)
    port = server.sockets[0].getsockname()[1]
    try:
        async with session.get(f"http://127.0.0.1:{port}/ready") as resp:
            assert (resp.status, await resp.read()) == (200, b"ok")
            assert resp.headers["content-type"] == "text/plain"
        async with session.post(f"http://127.0.0.1:{port}/other", data=b"x") as resp:
            assert (resp.status, await resp.read()) == (404, b"POST /other")
    finally:
        await session.close()  # closes the keep-alive connection before the server goes
        server.close()
        await server.wait_closed()


async def test_local_server_answers_413_for_a_large_body_and_414_431_for_large_heads() -> None:
    """RFC 9110 statuses from the admin server: 413 Content Too Large (the handler not run), and
    the parser's own 414 / 431."""
    calls: list[str] = []

    async def handler(head: RequestHead) -> LocalResponse:
        calls.append(head.path)
        return LocalResponse(status=200, body=b"ok")

    server = await start_local_server("127.0.0.1", 0, handler)
    port = server.sockets[0].getsockname()[1]

    async def status_of(request: bytes) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(request)
            return (await asyncio.wait_for(reader.readline(), DEADLINE)).split(b" ")[1]
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    try:
        big = b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % (1024 * 1024)
        assert await status_of(big) == b"413"
        assert await status_of(b"GET /" + b"a" * 40 * 1024 + b" HTTP/1.1\r\n") == b"414"
        fields = b"".join(b"X-%d: v\r\n" % i for i in range(200))
        assert await status_of(b"GET / HTTP/1.1\r\nHost: a\r\n" + fields + b"\r\n") == b"431"
        assert calls == []
    finally:
        server.close()
        await server.wait_closed()


async def test_expect_continue_is_answered_by_the_proxy(proxy: Proxy, tmp_path: Any) -> None:
    payload = tmp_path / "payload"
    payload.write_bytes(b"x" * 2_000_000)
    process = await asyncio.create_subprocess_exec(
        "/usr/bin/curl",
        "-sS",
        "--max-time",
        str(DEADLINE),
        "-H",
        "Host: echo",
        "-H",
        "Expect: 100-continue",
        "--data-binary",
        f"@{payload}",
        f"{proxy.url}/echo",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await process.communicate()
    assert process.returncode == 0, stderr
    echo = echoed(stdout)
    assert len(echo["body"]) == 2_000_000
    assert header(echo, "expect") == []


async def test_transfer_codings_before_chunked_are_kept(proxy: Proxy, raw: Any) -> None:
    client = await raw()
    client.writer.write(
        b"POST /echo HTTP/1.1\r\nHost: echo\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
        b"3\r\nabc\r\n0\r\n\r\n"
    )
    echo = echoed((await client.read()).body)
    assert header(echo, "transfer-encoding") == ["gzip, chunked"]


async def test_resolver_failure_is_500_and_logged(
    proxy: Proxy, raw: Any, caplog: pytest.LogCaptureFixture
) -> None:
    def explode(head: RequestHead) -> Decision:
        raise RuntimeError("routing bug")

    listener = await start_proxy(
        "127.0.0.1", 0, resolver=explode, recorder=proxy.records, listener="broken"
    )
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n")
        client = RawClient(reader, writer)
        assert (await client.read()).status == 500
        assert (await client.read()).status == 500  # the connection survived
        writer.close()
        await writer.wait_closed()
    finally:
        await listener.close(drain_timeout=1.0)
    assert [r.name for r in caplog.records] == ["sidecar.proxy", "sidecar.proxy"]
    assert "routing bug" in caplog.records[0].getMessage()
    assert all("\n" not in r.getMessage() for r in caplog.records)


async def test_resolver_edits_of_path_and_headers_are_forwarded(
    proxy: Proxy, upstream: Upstream, raw: Any
) -> None:
    """The resolver may rewrite the head (a later change uses this for rewrites and header
    edits): the engine serialises the upstream request after the resolver ran."""

    def rewrite(head: RequestHead) -> Decision:
        head.path = "/echo?rewritten=1"
        head.headers = [(k, v) for k, v in head.headers if k != b"x-drop"]
        head.headers.append((b"x-added", b"yes"))
        return Forward(address="127.0.0.1", port=upstream.port, cluster="echo")

    listener = await start_proxy(
        "127.0.0.1", 0, resolver=rewrite, recorder=proxy.records, listener="rewrite"
    )
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
        writer.write(b"GET /original HTTP/1.1\r\nHost: echo\r\nX-Drop: 1\r\n\r\n")
        echo = echoed((await RawClient(reader, writer).read()).body)
        writer.close()
        await writer.wait_closed()
    finally:
        await listener.close(drain_timeout=1.0)
    assert echo["path"] == "/echo?rewritten=1"
    assert header(echo, "x-added") == ["yes"]
    assert header(echo, "x-drop") == []
    (record,) = await proxy.records.wait_for(1)
    assert record.head is not None
    assert record.head.path == "/echo?rewritten=1"
    assert record.start_time > 0


@pytest.mark.parametrize("method", ["PUT", "POST"])
async def test_stale_pooled_connection_retry_replays_an_idempotent_request_body_only(
    proxy: Proxy, session: aiohttp.ClientSession, method: str
) -> None:
    """The body sent on the dead connection is kept (up to 64 KiB) and, for an idempotent method,
    sent again in full; a POST the upstream may have read is never sent twice (503 UC)."""
    bodies: list[bytes] = []

    async def flaky(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, index: int) -> None:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            if index == 0 and bodies:
                return  # the pooled connection dies under the second request
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            bodies.append(await reader.readexactly(length))
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n" + str(index).encode())
            await writer.drain()

    async with RawUpstream(flaky) as up:
        proxy.routes["raw"] = Forward(address="127.0.0.1", port=up.port, cluster="raw")
        answers = []
        for payload in (b"first", b"y" * 40_000):
            async with session.request(
                method, f"{proxy.url}/", data=payload, headers={"Host": "raw"}
            ) as resp:
                answers.append((resp.status, await resp.read()))
    if method == "PUT":
        assert answers == [(200, b"0"), (200, b"1")]
        assert bodies == [b"first", b"y" * 40_000]
        assert up.connections == 2
    else:
        assert answers == [(200, b"0"), (503, b"upstream connection closed\n")]
        assert bodies == [b"first"]
        assert up.connections == 1


async def test_pipelined_request_body_split_across_reads_is_read_to_its_end(
    proxy: Proxy, raw: Any
) -> None:
    """A body that begins behind an earlier request and ends in a later read: the connection,
    paused while the first request was in flight, is read again for the rest."""
    client = await raw()
    client.writer.write(
        b"GET /echo?n=1 HTTP/1.1\r\nHost: echo\r\n\r\n"
        b"POST /echo HTTP/1.1\r\nHost: echo\r\nContent-Length: 10\r\n\r\nhello"
    )
    first = echoed((await client.read()).body)
    client.writer.write(b"world")
    second = echoed((await client.read()).body)
    assert (first["path"], second["method"], second["body"]) == ("/echo?n=1", "POST", "helloworld")


async def test_connect_failure_with_a_large_body_still_answers_503(proxy: Proxy, raw: Any) -> None:
    """Body bytes held while connecting (reading paused past 64 KiB) are dropped on failure and
    the rest of the body is read and discarded before the 503, keeping the connection."""
    client = await raw()
    body = b"b" * 200_000
    client.writer.write(
        b"POST /x HTTP/1.1\r\nHost: refused\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    )
    response = await client.read()
    assert (response.status, response.headers["x-lightmesh-response-flags"]) == (503, "UF")
    client.writer.write(b"GET /x HTTP/1.1\r\nHost: nowhere\r\n\r\n")
    assert (await client.read()).status == 404  # still usable


async def test_pipelined_mixed_requests_split_at_random_points_are_all_answered(
    proxy: Proxy, raw: Any
) -> None:
    """Bounded (30 rounds, seeded): GET, Content-Length and chunked POSTs, local replies and an
    upstream error, pipelined and cut into random pieces; every request is answered, in order."""
    rng = random.Random(1234)
    requests = [
        (b"GET /echo?n=0 HTTP/1.1\r\nHost: echo\r\n\r\n", 200),
        (b"POST /echo HTTP/1.1\r\nHost: echo\r\nContent-Length: 6000\r\n\r\n" + b"p" * 6000, 200),
        (b"POST /x HTTP/1.1\r\nHost: nowhere\r\nContent-Length: 3000\r\n\r\n" + b"q" * 3000, 404),
        (
            b"POST /echo HTTP/1.1\r\nHost: echo\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n1000\r\n" + b"c" * 4096 + b"\r\n0\r\n\r\n",
            200,
        ),
        (b"POST /x HTTP/1.1\r\nHost: refused\r\nContent-Length: 2000\r\n\r\n" + b"r" * 2000, 503),
        (b"HEAD /echo HTTP/1.1\r\nHost: echo\r\n\r\n", 200),
    ]
    for _ in range(30):
        chosen = [rng.choice(requests) for _ in range(rng.randint(1, 5))]
        stream = b"".join(r for r, _ in chosen)
        client = await raw()
        cuts = sorted(rng.sample(range(1, len(stream)), k=min(4, len(stream) - 1)))
        for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
            client.writer.write(stream[start:end])
            await client.writer.drain()
            await asyncio.sleep(0)
        statuses = []
        for raw_request, _ in chosen:
            response = await client.read(head_only=raw_request.startswith(b"HEAD"))
            statuses.append(response.status)
        assert statuses == [status for _, status in chosen]
