"""Retries, per-try timeouts, fault delay, mirroring, response header edits and connection limits,
through the real proxy engine and the real outbound router, to real aiohttp upstreams on loopback.

Timing is never asserted: the tests check statuses, flags, attempts and what the upstreams saw.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import web

from lightmesh import types
from lightmesh.v1 import config_pb2 as pb
from sidecar.config.apply import DataPlane
from sidecar.contract import Completed
from sidecar.listeners.engine import EngineSettings, ProxyListener, start_proxy
from sidecar.routing.router import OutboundRouter
from tests.support.config import pack
from tests.support.servers import closed_port, serving

DEADLINE = 10.0  # bound on every wait; never reached when things work
CLUSTER = "outbound||catalog.default.svc.cluster.local"
SHADOW = "outbound||catalog-shadow.default.svc.cluster.local"
FLAGS = "x-lightmesh-response-flags"


@dataclass
class Upstream:
    """An aiohttp upstream: /fail answers 503 to its first `fail_first` requests, /hang never
    answers, anything else echoes; counts requests and the connections they came on."""

    name: str
    fail_first: int = 0
    port: int = 0
    requests: list[tuple[str, str, str]] = field(default_factory=list)  # method, path, host
    peers: list[tuple[str, int]] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def app(self) -> web.Application:
        async def handle(request: web.Request) -> web.Response:
            await request.read()
            assert request.transport is not None
            self.peers.append(request.transport.get_extra_info("peername"))
            self.requests.append((request.method, request.path, request.headers.get("host", "")))
            self.arrived.set()
            if request.path == "/hang":
                await asyncio.sleep(3600)
            if request.path == "/fail" and len(self.requests) <= self.fail_first:
                return web.json_response({"name": self.name}, status=503)
            if request.path == "/always-fail":
                return web.json_response({"name": self.name}, status=503)
            return web.json_response({"name": self.name, "seen": len(self.requests)})

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handle)
        return app


Start = Callable[..., Awaitable[Upstream]]


@dataclass
class Mesh:
    """One proxy listener with the real OutboundRouter over a DataPlane fed by `configure`."""

    plane: DataPlane
    router: OutboundRouter
    listener: ProxyListener
    records: list[Completed]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.listener.port}"

    def configure(
        self,
        ports: list[int],
        *,
        route: pb.Route | None = None,
        cluster: pb.Cluster | None = None,
        shadow_port: int = 0,
    ) -> None:
        clusters = [cluster or pb.Cluster(name=CLUSTER, lb_policy=pb.ROUND_ROBIN)]
        assignments = [
            pb.ClusterLoadAssignment(
                cluster_name=CLUSTER,
                endpoints=[pb.Endpoint(address="127.0.0.1", port=p) for p in ports],
            )
        ]
        if shadow_port:
            clusters.append(pb.Cluster(name=SHADOW))
            assignments.append(
                pb.ClusterLoadAssignment(
                    cluster_name=SHADOW,
                    endpoints=[pb.Endpoint(address="127.0.0.1", port=shadow_port)],
                )
            )
        self.plane.apply(types.CLUSTER, pack(*clusters))
        self.plane.apply(types.ENDPOINTS, pack(*assignments))
        base = pb.Route(name="r", clusters=[pb.WeightedCluster(cluster=CLUSTER, weight=100)])
        if route is not None:
            base.MergeFrom(route)
        host = pb.VirtualHost(name="catalog", domains=["catalog"], routes=[base])
        self.plane.apply(types.ROUTES, pack(host))

    def last(self) -> Completed:
        return self.records[-1]


@pytest.fixture
async def mesh() -> AsyncIterator[Mesh]:
    plane = DataPlane()
    router = OutboundRouter(plane)
    records: list[Completed] = []

    def record(done: Completed) -> None:
        router.finished(done)
        records.append(done)

    listener = await start_proxy(
        "127.0.0.1", 0, resolver=router.resolve, recorder=record, listener="outbound"
    )
    yield Mesh(plane, router, listener, records)
    await listener.close(drain_timeout=1.0)
    assert listener.active == 0


@pytest.fixture
async def upstreams() -> AsyncIterator[Start]:
    async with AsyncExitStack() as stack:

        async def start(name: str, *, fail_first: int = 0) -> Upstream:
            upstream = Upstream(name, fail_first=fail_first)
            upstream.port = await stack.enter_async_context(serving(upstream.app()))
            return upstream

        yield start


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=DEADLINE)) as s:
        yield s


async def call(
    session: aiohttp.ClientSession, mesh: Mesh, path: str, *, method: str = "GET", data: bytes = b""
) -> tuple[int, dict[str, str], bytes]:
    async with session.request(
        method, mesh.url + path, headers={"Host": "catalog"}, data=data or None
    ) as response:
        return response.status, dict(response.headers), await response.read()


def retries(attempts: int, retry_on: str, *, per_try_ms: int = 0) -> pb.RetryPolicy:
    return pb.RetryPolicy(
        attempts=attempts, per_try_timeout_ms=per_try_ms, retry_on=retry_on.split(",")
    )


@pytest.fixture(autouse=True)
def in_flight_released(mesh: Mesh) -> Iterator[None]:
    """After each test, every attempt's in-flight slot was released (retries included)."""
    yield
    cluster = mesh.plane.clusters.get(CLUSTER)
    if cluster is not None:
        assert cluster.stats.total_in_flight == 0


async def test_flaky_upstream_succeeds_on_the_third_attempt(
    mesh: Mesh, upstreams: Start, session: aiohttp.ClientSession
) -> None:
    flaky = await upstreams("flaky", fail_first=2)
    mesh.configure([flaky.port], route=pb.Route(retries=retries(3, "5xx")))
    status, _, _ = await call(session, mesh, "/fail")
    assert status == 200
    assert len(flaky.requests) == 3
    assert mesh.last().attempts == 3
    assert mesh.last().flags == ""
    assert mesh.plane.clusters[CLUSTER].retries == 2


async def test_post_is_not_retried_on_5xx_unless_the_status_is_listed(
    mesh: Mesh, upstreams: Start, session: aiohttp.ClientSession
) -> None:
    flaky = await upstreams("flaky", fail_first=1)
    mesh.configure([flaky.port], route=pb.Route(retries=retries(3, "5xx")))
    status, _, _ = await call(session, mesh, "/fail", method="POST", data=b"order=1")
    assert status == 503
    assert [m for m, _, _ in flaky.requests] == ["POST"]
    assert mesh.last().attempts == 1

    again = await upstreams("again", fail_first=1)
    mesh.configure([again.port], route=pb.Route(retries=retries(3, "5xx,503")))
    status, _, body = await call(session, mesh, "/fail", method="POST", data=b"order=2")
    assert status == 200, body
    assert [m for m, _, _ in again.requests] == ["POST", "POST"]


async def test_retry_goes_to_a_different_endpoint(
    mesh: Mesh, upstreams: Start, session: aiohttp.ClientSession
) -> None:
    bad = await upstreams("bad", fail_first=1000)
    good = await upstreams("good")
    mesh.configure([bad.port, good.port], route=pb.Route(retries=retries(1, "5xx")))
    for _ in range(6):
        status, _, body = await call(session, mesh, "/fail")
        assert status == 200, body
    # Every request that landed on the bad endpoint was retried once, on the good one.
    retried = [done for done in mesh.records if done.attempts == 2]
    assert len(retried) == len(bad.requests) >= 1
    assert len(good.requests) == 6
    assert all(done.upstream == f"127.0.0.1:{good.port}" for done in mesh.records)


async def test_exhausted_retries_relay_the_last_response_flagged_urx(
    mesh: Mesh, upstreams: Start, session: aiohttp.ClientSession
) -> None:
    first = await upstreams("first")
    second = await upstreams("second")
    mesh.configure([first.port, second.port], route=pb.Route(retries=retries(1, "5xx")))
    for _ in range(4):
        status, _, body = await call(session, mesh, "/always-fail")
        assert status == 503
        assert b'"name"' in body  # the upstream's own answer, not a proxy error
    assert all(done.attempts == 2 and done.flags == "URX" for done in mesh.records)
    # Each request tried both endpoints.
    assert len(first.requests) == len(second.requests) == 4


async def test_connect_failure_is_retried_on_another_endpoint_by_default(
    mesh: Mesh, upstreams: Start, session: aiohttp.ClientSession
) -> None:
    live = await upstreams("live")
    mesh.configure([closed_port(), live.port])  # no retries on the route: the default policy
    results = [await call(session, mesh, "/x") for _ in range(6)]
    assert [status for status, _, _ in results] == [200] * 6
    assert {done.attempts for done in mesh.records} <= {1, 2}
    assert any(done.attempts == 2 for done in mesh.records)


async def test_default_policy_never_retries_a_5xx(
    mesh: Mesh, upstreams: Start, session: aiohttp.ClientSession
) -> None:
    flaky = await upstreams("flaky", fail_first=1)
    mesh.configure([flaky.port])
    status, _, _ = await call(session, mesh, "/fail")
    assert status == 503
    assert len(flaky.requests) == 1


async def test_hanging_upstream_hits_per_try_timeout_then_the_route_timeout(
    mesh: Mesh, upstreams: Start, session: aiohttp.ClientSession
) -> None:
    hang = await upstreams("hang")
    mesh.configure(
        [hang.port],
        route=pb.Route(timeout_ms=1500, retries=retries(50, "5xx", per_try_ms=200)),
    )
    status, headers, _ = await call(session, mesh, "/hang")
    assert status == 504
    assert headers[FLAGS] == "UT"
    # More than one try reached the app (per-try timeouts), far fewer than 51 (the route timeout).
    assert 2 <= len(hang.requests) < 51
    # The route timeout may fire while the last attempt's request is still on its way to the app.
    assert len(hang.requests) <= mesh.last().attempts <= len(hang.requests) + 1


async def test_per_try_timeout_alone_ends_in_504_after_the_retries(
    mesh: Mesh, upstreams: Start, session: aiohttp.ClientSession
) -> None:
    hang = await upstreams("hang")
    mesh.configure([hang.port], route=pb.Route(retries=retries(2, "5xx", per_try_ms=100)))
    status, headers, _ = await call(session, mesh, "/hang")
    assert status == 504
    assert headers[FLAGS] == "UT,URX"
    assert len(hang.requests) == 3


async def test_body_over_the_replay_limit_is_not_retried(
    mesh: Mesh, upstreams: Start, session: aiohttp.ClientSession
) -> None:
    flaky = await upstreams("flaky", fail_first=1)
    mesh.configure([flaky.port], route=pb.Route(retries=retries(3, "5xx")))
    status, _, _ = await call(session, mesh, "/fail", method="PUT", data=b"x" * (100 * 1024))
    assert status == 503
    assert len(flaky.requests) == 1
    # A small PUT (idempotent, body held) is re-sent whole.
    again = await upstreams("again", fail_first=1)
    mesh.configure([again.port], route=pb.Route(retries=retries(3, "5xx")))
    status, _, _ = await call(session, mesh, "/fail", method="PUT", data=b"y" * 1000)
    assert status == 200
    assert len(again.requests) == 2


async def test_response_header_edits_reach_the_client(
    mesh: Mesh, upstreams: Start, session: aiohttp.ClientSession
) -> None:
    app = await upstreams("app")
    edits = pb.HeaderOps(
        set=[pb.HeaderValue(name="x-served-by", value="mesh")],
        add=[pb.HeaderValue(name="x-extra", value="1")],
        remove=["server"],
    )
    mesh.configure([app.port], route=pb.Route(response_headers=edits))
    status, headers, _ = await call(session, mesh, "/x")
    assert status == 200
    assert headers["x-served-by"] == "mesh"
    assert headers["x-extra"] == "1"
    assert "server" not in {k.lower() for k in headers}


async def test_fault_delay_is_flagged_di(
    mesh: Mesh, upstreams: Start, session: aiohttp.ClientSession
) -> None:
    app = await upstreams("app")
    mesh.configure([app.port], route=pb.Route(fault=pb.Fault(delay_ms=20, delay_percent=100)))
    status, _, _ = await call(session, mesh, "/x")
    assert status == 200
    assert mesh.last().flags == "DI"
    assert len(app.requests) == 1


async def test_mirror_copy_arrives_with_shadow_host_and_a_dead_mirror_is_harmless(
    mesh: Mesh, upstreams: Start, session: aiohttp.ClientSession
) -> None:
    app = await upstreams("app")
    shadow = await upstreams("shadow")
    mirror = pb.Route(mirror=pb.Mirror(cluster=SHADOW, percent=100))
    mesh.configure([app.port], route=mirror, shadow_port=shadow.port)
    status, _, body = await call(session, mesh, "/x", method="POST", data=b"payload")
    assert status == 200
    assert b'"app"' in body
    async with asyncio.timeout(DEADLINE):
        await shadow.arrived.wait()
    assert shadow.requests == [("POST", "/x", "catalog-shadow")]
    assert mesh.listener.mirrors.sent == 1

    mesh.configure([app.port], route=mirror, shadow_port=closed_port())
    for _ in range(3):
        status, _, _ = await call(session, mesh, "/y")
        assert status == 200
    async with asyncio.timeout(DEADLINE):
        await asyncio.gather(*list(mesh.listener.mirrors.tasks))
    assert mesh.listener.mirrors.failed == 3


async def test_max_requests_per_connection_closes_the_upstream_connection(
    mesh: Mesh, upstreams: Start, session: aiohttp.ClientSession
) -> None:
    app = await upstreams("app")
    limited = pb.Cluster(name=CLUSTER, lb_policy=pb.ROUND_ROBIN, max_requests_per_connection=2)
    mesh.configure([app.port], cluster=limited)
    for _ in range(6):
        status, _, _ = await call(session, mesh, "/x")
        assert status == 200
    # Sequential requests: 2 per connection, so 3 connections (ports) in order.
    ports = [port for _, port in app.peers]
    assert ports[0] == ports[1] != ports[2] == ports[3] != ports[4] == ports[5]


async def test_unlimited_connections_are_reused(
    mesh: Mesh, upstreams: Start, session: aiohttp.ClientSession
) -> None:
    app = await upstreams("app")
    mesh.configure([app.port])
    for _ in range(4):
        await call(session, mesh, "/x")
    assert len({port for _, port in app.peers}) == 1


async def test_mirrors_beyond_the_limit_are_dropped_and_never_slow_the_original(
    mesh: Mesh, upstreams: Start, session: aiohttp.ClientSession
) -> None:
    app = await upstreams("app")
    accepted: list[asyncio.StreamWriter] = []

    async def silent(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)  # a shadow that takes the copy and never answers

    shadow = await asyncio.start_server(silent, "127.0.0.1", 0)
    try:
        mirror = pb.Route(mirror=pb.Mirror(cluster=SHADOW, percent=100))
        mesh.configure([app.port], route=mirror, shadow_port=shadow.sockets[0].getsockname()[1])
        mesh.listener.mirrors.limit = 1
        for _ in range(3):
            status, _, _ = await call(session, mesh, "/x")
            assert status == 200
        assert (mesh.listener.mirrors.sent, mesh.listener.mirrors.dropped) == (1, 2)
        assert len(app.requests) == 3
    finally:
        for writer in accepted:
            writer.close()
        shadow.close()
        await shadow.wait_closed()


async def test_cluster_idle_timeout_expires_pooled_connections(
    upstreams: Start, session: aiohttp.ClientSession
) -> None:
    """With a stepped clock: a connection idle past its cluster's idleTimeout is not reused."""
    app = await upstreams("app")
    now = [1000.0]
    plane = DataPlane()
    router = OutboundRouter(plane, clock=lambda: now[0])
    settings = EngineSettings(clock=lambda: now[0])
    listener = await start_proxy(
        "127.0.0.1",
        0,
        resolver=router.resolve,
        recorder=router.finished,
        listener="outbound",
        settings=settings,
    )
    local = Mesh(plane, router, listener, [])
    try:
        local.configure(
            [app.port],
            cluster=pb.Cluster(name=CLUSTER, lb_policy=pb.ROUND_ROBIN, idle_timeout_ms=500),
        )
        await call(session, local, "/x")
        now[0] += 0.2  # within the idle timeout: reused
        await call(session, local, "/x")
        now[0] += 1.0  # past it: a new connection
        await call(session, local, "/x")
        ports = [port for _, port in app.peers]
        assert ports[0] == ports[1] != ports[2]
    finally:
        await listener.close(drain_timeout=1.0)
