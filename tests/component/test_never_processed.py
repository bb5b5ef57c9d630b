"""The never-processed mark end to end through real engines: a client-side outbound listener
(the real OutboundRouter) in front of two server-side inbound listeners (the real InboundRouter
with its AppHealth), each in front of a real aiohttp app on loopback.

A request the server side could not deliver to its app comes back marked; the client side sends
it to the other endpoint whatever its method, and never re-sends one that an app may have seen.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

from lightmesh import types
from lightmesh.v1 import config_pb2 as pb
from sidecar.cluster.app_health import AppHealth
from sidecar.config.apply import DataPlane
from sidecar.contract import Completed
from sidecar.listeners.engine import ProxyListener, start_proxy
from sidecar.routing.router import InboundRouter, OutboundRouter
from sidecar.telemetry.hooks import Telemetry, wrap_resolver
from sidecar.upstream.app_probe import run_probes
from tests.support.config import pack
from tests.support.servers import closed_port, serving

CLUSTER = "outbound||catalog.default.svc.cluster.local"
DEADLINE = 10.0


@dataclass
class App:
    """An app that records what it saw; /die closes the connection without answering."""

    name: str
    seen: list[tuple[str, str]] = field(default_factory=list)  # method, body
    forge: bool = False  # answer 503 carrying the mesh's mark itself

    def app(self) -> web.Application:
        async def handle(request: web.Request) -> web.StreamResponse:
            body = (await request.read()).decode()
            self.seen.append((request.method, body))
            if request.path == "/die":
                assert request.transport is not None
                request.transport.abort()  # saw it, then died before answering
                await asyncio.sleep(3600)
            if self.forge:
                return web.Response(status=503, headers={"x-lightmesh-unprocessed": "1"})
            return web.Response(text=self.name)

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handle)
        return app


@dataclass
class Server:
    """An inbound listener (a server-side sidecar) in front of one app port."""

    health: AppHealth
    listener: ProxyListener
    records: list[Completed]


@dataclass
class Rig:
    client: ProxyListener
    client_records: list[Completed]
    plane: DataPlane
    servers: list[Server]
    session: aiohttp.ClientSession

    async def call(
        self, method: str, path: str = "/", body: bytes = b"order=1"
    ) -> tuple[int, dict[str, str]]:
        async with self.session.request(
            method,
            f"http://127.0.0.1:{self.client.port}{path}",
            headers={"Host": "catalog"},
            data=body if method != "GET" else None,
        ) as response:
            await response.read()
            return response.status, dict(response.headers)

    def configure(self, *, meshed: bool) -> None:
        self.plane.apply(
            types.CLUSTER,
            pack(pb.Cluster(name=CLUSTER, lb_policy=pb.ROUND_ROBIN, meshed=meshed)),
        )
        endpoints = [pb.Endpoint(address="127.0.0.1", port=s.listener.port) for s in self.servers]
        self.plane.apply(
            types.ENDPOINTS,
            pack(pb.ClusterLoadAssignment(cluster_name=CLUSTER, endpoints=endpoints)),
        )
        route = pb.Route(name="r", clusters=[pb.WeightedCluster(cluster=CLUSTER, weight=100)])
        host = pb.VirtualHost(name="catalog", domains=["catalog"], routes=[route])
        self.plane.apply(types.ROUTES, pack(host))


async def start_server(app_port: int) -> Server:
    health = AppHealth()
    records: list[Completed] = []

    def record(done: Completed) -> None:
        health.finished(done, time.monotonic())
        records.append(done)

    router = InboundRouter(app_host="127.0.0.1", app_port=app_port, app_health=health)
    # As sidecar/app.py wires it: the mark goes only to a caller that is a sidecar.
    listener = await start_proxy(
        "127.0.0.1",
        0,
        resolver=router.resolve,
        recorder=record,
        listener="inbound",
        hide_mesh_headers=True,
    )
    return Server(health, listener, records)


async def rig_for(stack: AsyncExitStack, app_ports: list[int]) -> Rig:
    plane = DataPlane()
    router = OutboundRouter(plane)
    records: list[Completed] = []

    def record(done: Completed) -> None:
        router.finished(done)
        records.append(done)

    servers = [await start_server(port) for port in app_ports]
    # The client side announces itself, as every outbound listener does (telemetry/wiring.py).
    announced = wrap_resolver(router.resolve, Telemetry(peer=b"client;default;client;v1"))
    client = await start_proxy(
        "127.0.0.1", 0, resolver=announced, recorder=record, listener="outbound"
    )
    session = await stack.enter_async_context(
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=DEADLINE))
    )
    for listener in (client, *(s.listener for s in servers)):
        stack.push_async_callback(listener.close, 1.0)
    return Rig(client, records, plane, servers, session)


async def test_a_post_its_app_never_saw_is_sent_to_the_other_endpoint() -> None:
    b = App("b")
    async with AsyncExitStack() as stack:
        b_port = await stack.enter_async_context(serving(b.app()))
        rig = await rig_for(stack, [closed_port(), b_port])  # a's app is gone
        rig.configure(meshed=True)
        for n in range(4):
            status, headers = await rig.call("POST", body=f"order={n}".encode())
            assert status == 200
            assert "x-lightmesh-unprocessed" not in {k.lower() for k in headers}
        assert b.seen == [("POST", f"order={n}") for n in range(4)]
        dead = rig.servers[0]
        # a's sidecar was asked at least once: first a connect failure, then refused at once.
        assert dead.health.down and dead.records
        assert all(r.flags == "UF" for r in dead.records)
        assert any(r.attempts == 2 for r in rig.client_records)
        # and the client ejected the refusing endpoint (local-origin failure)
        cluster = rig.plane.clusters[CLUSTER]
        assert cluster.outlier is not None and cluster.outlier.ejections_total >= 1


async def test_the_mark_is_not_believed_from_a_cluster_not_all_sidecars_over_plaintext() -> None:
    b = App("b")
    async with AsyncExitStack() as stack:
        b_port = await stack.enter_async_context(serving(b.app()))
        rig = await rig_for(stack, [closed_port(), b_port])
        rig.configure(meshed=False)  # no mTLS identity, no control-plane word: not trusted
        statuses = set()
        for n in range(6):
            status, headers = await rig.call("POST", body=f"order={n}".encode())
            statuses.add(status)
            assert "x-lightmesh-unprocessed" not in {k.lower() for k in headers}
        assert statuses == {200, 503}


async def test_a_post_its_app_saw_is_never_sent_again() -> None:
    a, b = App("a"), App("b")
    async with AsyncExitStack() as stack:
        a_port = await stack.enter_async_context(serving(a.app()))
        b_port = await stack.enter_async_context(serving(b.app()))
        rig = await rig_for(stack, [a_port, b_port])
        rig.configure(meshed=True)
        outcomes = [await rig.call("POST", "/die", body=f"order={n}".encode()) for n in range(4)]
        assert {status for status, _ in outcomes} == {503}
        seen = a.seen + b.seen
        assert sorted(body for _, body in seen) == [f"order={n}" for n in range(4)]  # once each
        assert all(r.attempts == 1 for r in rig.client_records)


async def test_an_app_cannot_forge_the_mark() -> None:
    forger, b = App("forger", forge=True), App("b")
    async with AsyncExitStack() as stack:
        f_port = await stack.enter_async_context(serving(forger.app()))
        b_port = await stack.enter_async_context(serving(b.app()))
        rig = await rig_for(stack, [f_port, b_port])
        rig.configure(meshed=True)
        results = [await rig.call("POST", body=f"order={n}".encode()) for n in range(4)]
        assert sorted(status for status, _ in results) == [200, 200, 503, 503]
        for _, headers in results:
            assert "x-lightmesh-unprocessed" not in {k.lower() for k in headers}
        assert len(forger.seen) == 2 and len(b.seen) == 2  # nothing re-sent


async def test_a_get_is_retried_too_and_the_app_returns_when_it_listens_again() -> None:
    a, b = App("a"), App("b")
    async with AsyncExitStack() as stack:
        b_port = await stack.enter_async_context(serving(b.app()))
        a_port = closed_port()
        rig = await rig_for(stack, [a_port, b_port])
        rig.configure(meshed=True)
        for _ in range(3):
            assert (await rig.call("GET"))[0] == 200
        dead = rig.servers[0]
        assert dead.health.down
        # The app comes back on its port: the server side's prober sees it, requests reach it.
        stop = asyncio.Event()
        probes = asyncio.create_task(run_probes(dead.health, "127.0.0.1", a_port, stop))
        runner = web.AppRunner(a.app())
        await runner.setup()
        stack.push_async_callback(runner.cleanup)
        await web.TCPSite(runner, "127.0.0.1", a_port).start()
        async with asyncio.timeout(DEADLINE):
            while dead.health.down:  # noqa: ASYNC110 - a pure state the prober changes
                await asyncio.sleep(0.01)
        stop.set()
        await probes
        async with asyncio.timeout(DEADLINE):  # its ejection ends within a second or two
            while not a.seen:
                assert (await rig.call("GET"))[0] == 200
                await asyncio.sleep(0.05)
