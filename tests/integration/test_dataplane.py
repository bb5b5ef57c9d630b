"""The data plane as real processes: WebSocket through two sidecars, drain on SIGTERM, 100 MB bodies.

A control plane (empty config directory) and sidecars run as `python -m lightmeshctl.cli ...`
children; the "app" is an aiohttp server in the test process (the demo app has no WebSocket).
Blocking process management runs in threads so the app keeps serving meanwhile.
"""

from __future__ import annotations

import asyncio
import hashlib
import signal
import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from lightmeshctl.demo.mesh import LocalMesh, Process, free_port, http_get, wait_for
from tests.support.servers import serving, upload_digest

pytestmark = pytest.mark.integration

DEADLINE = 60.0  # bound on every wait; never reached when things work
MB = 1024 * 1024
BIG = 100 * MB
BLOCK = bytes(range(256)) * 256  # 64 KiB
RSS_LIMIT = 100 * MB
# Long enough that a request made right after /ready turns 503 lands inside it on a busy machine.
DRAIN_DELAY = 8.0


# --- the app -------------------------------------------------------------------------------------


@dataclass
class App:
    port: int = 0
    in_flight: int = 0
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    expected: int = 0


def _app(state: App) -> web.Application:
    async def ws_echo(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for message in ws:
            if message.type is aiohttp.WSMsgType.TEXT:
                await ws.send_str(f"echo:{message.data}")
            elif message.type is aiohttp.WSMsgType.BINARY:
                await ws.send_bytes(message.data)
        return ws

    async def plain(request: web.Request) -> web.Response:
        return web.Response(text="plain")

    async def slow(request: web.Request) -> web.Response:
        state.in_flight += 1
        if state.in_flight >= state.expected:
            state.arrived.set()
        await state.release.wait()
        return web.Response(text="finally")

    async def download(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.content_length = BIG
        await response.prepare(request)
        for _ in range(BIG // len(BLOCK)):
            await response.write(BLOCK)
        await response.write_eof()
        return response

    app = web.Application(client_max_size=2 * BIG)
    app.router.add_get("/ws", ws_echo)
    app.router.add_get("/plain", plain)
    app.router.add_get("/slow", slow)
    app.router.add_post("/upload", upload_digest)
    app.router.add_get("/download", download)
    return app


@pytest.fixture
async def app() -> AsyncIterator[App]:
    state = App()
    async with serving(_app(state)) as port:
        state.port = port
        yield state
        state.release.set()


# --- the mesh processes --------------------------------------------------------------------------


@dataclass
class Sidecar:
    process: Process
    inbound_port: int
    outbound_port: int
    admin_port: int

    @property
    def pid(self) -> int:
        return self.process.popen.pid

    def ready_status(self) -> int:
        return http_get(f"http://127.0.0.1:{self.admin_port}/ready", timeout=2).status


@pytest.fixture
def mesh(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[LocalMesh]:
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    with LocalMesh(config_dir=config_dir, work_dir=tmp_path / "mesh") as local:
        yield local
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            for process in local._processes:
                print(f"--- {process.name} ---\n{process.tail(30)}")


def start_sidecar(
    mesh: LocalMesh, name: str, *, app_port: int = 0, service: str = "", drain_delay: float = 0.0
) -> Sidecar:
    """Start `lightmesh sidecar` (blocking until /ready answers 200)."""
    inbound, outbound, admin = free_port(), free_port(), free_port()
    args = [
        "-m", "lightmeshctl.cli", "sidecar",
        *mesh.control_plane_args(),
        "--workload", name,
        "--app-port", str(app_port),
        "--inbound-port", str(inbound),
        "--outbound-port", str(outbound),
        "--admin-port", str(admin),
        "--drain-timeout", str(DEADLINE),
        "--drain-delay", str(drain_delay),
    ]  # fmt: skip
    if service:
        args += ["--service", service]
    started = Sidecar(mesh.spawn(f"{name}-sidecar", args), inbound, outbound, admin)
    wait_for(lambda: started.ready_status() == 200, timeout=DEADLINE, what=f"{name} /ready")
    return started


async def start_mesh(
    mesh: LocalMesh, app: App, *, drain_delay: float = 0.0
) -> tuple[Sidecar, Sidecar]:
    """Control plane, the app's sidecar (service "wsapp") and a client-only sidecar."""

    def start() -> tuple[Sidecar, Sidecar]:
        mesh.start_control_plane()
        server = start_sidecar(
            mesh, "server", app_port=app.port, service="wsapp", drain_delay=drain_delay
        )
        client = start_sidecar(mesh, "client")
        # The client's config names "wsapp" once the server's registration has been pushed.
        wait_for(
            lambda: (
                http_get(
                    "http://wsapp/plain", proxy=f"127.0.0.1:{client.outbound_port}", timeout=2
                ).status
                == 200
            ),
            timeout=DEADLINE,
            what="route to wsapp through the client sidecar",
        )
        return server, client

    return await asyncio.to_thread(start)


def rss_bytes(pid: int) -> int:
    """Resident set size of a process, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


# --- tests ---------------------------------------------------------------------------------------


async def test_websocket_echo_through_two_sidecars(mesh: LocalMesh, app: App) -> None:
    _, client = await start_mesh(mesh, app)
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=DEADLINE)) as session,
        session.ws_connect(
            f"http://127.0.0.1:{client.outbound_port}/ws", headers={"Host": "wsapp"}
        ) as ws,
    ):
        for i in range(5):
            await ws.send_str(f"hello {i}")
            assert await ws.receive_str() == f"echo:hello {i}"
        payload = BLOCK * 8  # 512 KiB: many frames' worth of TCP segments through both tunnels
        await ws.send_bytes(payload)
        assert await ws.receive_bytes() == payload
        await ws.close()
    assert ws.close_code == aiohttp.WSCloseCode.OK


async def test_sigterm_drains_in_flight_requests_and_exits_zero(mesh: LocalMesh, app: App) -> None:
    """/ready turns 503 first; during the drain delay new requests are still served; then the
    listener stops accepting and the held requests finish."""
    server, _ = await start_mesh(mesh, app, drain_delay=DRAIN_DELAY)
    app.expected = 5
    url = f"http://127.0.0.1:{server.inbound_port}/slow"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=DEADLINE)) as session:

        async def call() -> tuple[int, str, str]:
            async with session.get(url) as resp:
                return resp.status, resp.headers.get("Connection", ""), await resp.text()

        calls = [asyncio.ensure_future(call()) for _ in range(app.expected)]
        async with asyncio.timeout(DEADLINE):
            await app.arrived.wait()
        server.process.popen.send_signal(signal.SIGTERM)
        # Readiness goes first, then the listener stops accepting; the requests are still held.
        await asyncio.to_thread(
            wait_for, lambda: server.ready_status() == 503, timeout=DEADLINE, what="/ready 503"
        )
        # Within the drain delay: a new connection and request are still served.
        fresh = await asyncio.to_thread(
            http_get, f"http://127.0.0.1:{server.inbound_port}/plain", timeout=DRAIN_DELAY / 2
        )
        assert (fresh.status, fresh.body) == (200, b"plain")
        await asyncio.to_thread(
            wait_for,
            lambda: refuses(server.inbound_port),
            timeout=DEADLINE,
            what="inbound listener to stop accepting",
        )
        assert not any(c.done() for c in calls)
        app.release.set()
        results = await asyncio.gather(*calls)
    assert results == [(200, "close", "finally")] * app.expected
    code = await asyncio.to_thread(server.process.popen.wait, DEADLINE)
    assert code == 0


def refuses(port: int) -> bool:
    """Whether nothing accepts connections on the port any more."""
    with socket.socket() as sock:
        sock.settimeout(2)
        return sock.connect_ex(("127.0.0.1", port)) != 0


async def test_100mb_bodies_stream_through_a_sidecar_in_bounded_memory(
    mesh: LocalMesh, app: App
) -> None:
    server, _ = await start_mesh(mesh, app)
    base = f"http://127.0.0.1:{server.inbound_port}"
    peak = rss_bytes(server.pid)
    sent = hashlib.sha256()

    async def upload() -> AsyncIterator[bytes]:
        nonlocal peak
        for i in range(BIG // len(BLOCK)):
            if i % 160 == 0:  # every 10 MB
                peak = max(peak, rss_bytes(server.pid))
            sent.update(BLOCK)
            yield BLOCK

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=DEADLINE)) as session:
        async with session.post(f"{base}/upload", data=upload()) as resp:
            assert resp.status == 200
            assert await resp.json() == {"size": BIG, "sha256": sent.hexdigest()}
        received = hashlib.sha256()
        size = 0
        async with session.get(f"{base}/download") as resp:
            assert resp.content_length == BIG
            async for chunk in resp.content.iter_chunked(256 * 1024):
                received.update(chunk)
                size += len(chunk)
                if size % (10 * MB) < len(chunk):
                    peak = max(peak, rss_bytes(server.pid))
    expected = hashlib.sha256(BLOCK * (BIG // len(BLOCK))).hexdigest()
    assert (size, received.hexdigest()) == (BIG, expected)
    assert peak < RSS_LIMIT, f"sidecar VmRSS peaked at {peak / MB:.1f} MB"
