"""gRPC through two sidecars: a real grpcio client and servers, mutual TLS between the sidecars.

The client's channel (h2c, prior knowledge) goes to an outbound listener whose router balances
each call over three inbound listeners (mutual TLS, ALPN h2, STRICT), each in front of its own
real grpcio server (h2c, the caller's protocol). Certificates come from a real CA. Everything
runs on loopback in the test's event loop; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import http.client
import subprocess
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from aiohttp import web
from grpc import aio

from controlplane.ca import new_root
from controlplane.model import ServiceEndpoint
from controlplane.sources.kube_index import KubeIndex
from controlplane.translate.inbound import inbound_policy
from controlplane.world import NodeInfo, World, service_key
from lightmesh import types
from lightmesh.v1 import config_pb2 as pb
from sidecar.config.apply import DataPlane
from sidecar.contract import Completed
from sidecar.identity.tls import MeshTLS
from sidecar.listeners.engine import ProxyListener, start_proxy
from sidecar.routing.router import InboundRouter, OutboundRouter
from tests.component.test_tls_contexts import issue
from tests.support.config import pack
from tests.support.grpc_echo import Echo, method, start
from tests.support.servers import serving

SNI = "catalog.shop.svc.cluster.local"
CLUSTER = "outbound||catalog.shop.svc.cluster.local"
BOUND = 20.0  # seconds: a hang fails the test instead of blocking it
BIG = 8 * 1024 * 1024
OPTIONS = [
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ("grpc.default_authority", "catalog"),
]


@dataclass
class Rig:
    channel: aio.Channel
    outbound: ProxyListener
    inbounds: list[ProxyListener]
    echoes: list[Echo]
    plane: DataPlane
    client_records: list[Completed]
    server_records: list[Completed]

    def configure(self, *, retry_on: str = "") -> None:
        _limit(self)
        endpoints = [pb.Endpoint(address="127.0.0.1", port=i.port) for i in self.inbounds]
        self.plane.apply(
            types.ENDPOINTS,
            pack(pb.ClusterLoadAssignment(cluster_name=CLUSTER, endpoints=endpoints)),
        )
        route = pb.Route(name="r", clusters=[pb.WeightedCluster(cluster=CLUSTER, weight=100)])
        if retry_on:
            route.retries.CopyFrom(pb.RetryPolicy(attempts=2, retry_on=retry_on.split(",")))
        host = pb.VirtualHost(name="catalog", domains=["catalog"], routes=[route])
        self.plane.apply(types.ROUTES, pack(host))


@pytest.fixture
async def rig(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Rig]:
    flaky = getattr(request, "param", ())
    material = new_root("cluster.local", now=datetime.datetime.now(datetime.UTC))
    client_tls, server_tls = MeshTLS(), MeshTLS()
    client_tls.rotated(issue(material, tmp_path / "frontend", "frontend"))
    server_tls.rotated(issue(material, tmp_path / "catalog", "catalog"))
    async with AsyncExitStack() as stack:
        echoes: list[Echo] = []
        inbounds: list[ProxyListener] = []
        server_records: list[Completed] = []
        for n in range(3):
            server, port, echo = await start(f"s{n}", flaky=n in flaky)
            stack.push_async_callback(server.stop, 0)
            echoes.append(echo)
            router = InboundRouter(
                app_host="127.0.0.1",
                app_port=port,
                own_identity=lambda: server_tls.identity,
            )
            inbound = await start_proxy(
                "127.0.0.1",
                0,
                resolver=router.resolve,
                recorder=server_records.append,
                listener="inbound",
                inbound_tls=server_tls,
                mtls_mode=lambda: "STRICT",
                hide_mesh_headers=True,
            )
            stack.push_async_callback(inbound.close, 1.0)
            inbounds.append(inbound)
        plane = DataPlane()
        outbound_router = OutboundRouter(plane)
        client_records: list[Completed] = []

        def record(done: Completed) -> None:
            outbound_router.finished(done)
            client_records.append(done)

        outbound = await start_proxy(
            "127.0.0.1",
            0,
            resolver=outbound_router.resolve,
            recorder=record,
            listener="outbound",
            client_tls=lambda: client_tls.client,
            client_tls_h2=lambda: client_tls.client_h2,
        )
        stack.push_async_callback(outbound.close, 1.0)
        channel = aio.insecure_channel(f"127.0.0.1:{outbound.port}", options=OPTIONS)
        stack.push_async_callback(channel.close)
        rig = Rig(channel, outbound, inbounds, echoes, plane, client_records, server_records)
        rig.configure()
        yield rig


async def bounded(awaitable: Any) -> Any:
    return await asyncio.wait_for(awaitable, BOUND)


async def test_unary_with_metadata_and_trailers_over_mutual_tls(rig: Rig) -> None:
    call = method(rig.channel, "Unary")(b"hello", metadata=(("x-echo", "ping"),))  # type: ignore[operator]
    assert await bounded(call) == b"hello"
    assert ("x-echo", "ping") in list(await call.initial_metadata())
    trailers = dict(await call.trailing_metadata())
    assert trailers["x-trailer"] in {"s0", "s1", "s2"}
    assert await call.code() == grpc.StatusCode.OK
    client = rig.client_records[-1]
    assert client.upstream_tls and client.grpc_status == "0" and client.status == 200
    assert client.head is not None and client.head.http_version == "2"
    server = rig.server_records[-1]
    assert server.head is not None
    assert server.head.peer_identity.endswith("/sa/frontend")  # the mTLS peer, verified
    assert server.grpc_status == "0"


async def test_large_messages_both_ways(rig: Rig) -> None:
    reply = await bounded(method(rig.channel, "Unary")(b"big:%d" % BIG))  # type: ignore[operator]
    assert len(reply) == BIG
    payload = bytes(range(256)) * (BIG // 256)
    assert await bounded(method(rig.channel, "Unary")(payload)) == payload  # type: ignore[operator]


async def test_server_client_and_bidi_streaming(rig: Rig) -> None:
    received = 0
    stream = method(rig.channel, "ServerStream", "unary_stream")(b"40:262144")  # type: ignore[operator]

    async def drain() -> None:
        nonlocal received
        async for message in stream:
            received += len(message)

    await bounded(drain())
    assert received == 40 * 262144

    async def upload() -> AsyncIterator[bytes]:
        for _ in range(40):
            yield b"u" * 262144

    total = await bounded(method(rig.channel, "ClientStream", "stream_unary")(upload()))  # type: ignore[operator]
    assert total == str(40 * 262144).encode()

    bidi = method(rig.channel, "Bidi", "stream_stream")()  # type: ignore[operator]
    for n in range(50):
        await bounded(bidi.write(b"m%d" % n))
        assert await bounded(bidi.read()) == b"m%d" % n  # one at a time: nothing is held back
    await bounded(bidi.done_writing())
    assert await bounded(bidi.code()) == grpc.StatusCode.OK
    await bounded(_until(lambda: len(rig.client_records) == 3))
    # gRPC messages counted each way, per call (Istio's message counters).
    counts = [(r.request_messages, r.response_messages) for r in rig.client_records]
    assert counts == [(1, 40), (40, 1), (50, 50)]


@pytest.mark.parametrize(
    "code",
    [
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
    ],
)
async def test_status_codes_pass_through(rig: Rig, code: grpc.StatusCode) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        await bounded(method(rig.channel, "Unary")(b"status:%d" % code.value[0]))  # type: ignore[operator]
    error: aio.AioRpcError = caught.value  # type: ignore[assignment]
    assert error.code() == code
    assert error.details() == f"asked for {code.name}"
    assert rig.client_records[-1].grpc_status == str(code.value[0])


async def test_deadline_is_enforced_and_forwarded(rig: Rig) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        await bounded(method(rig.channel, "Unary")(b"sleep:30", timeout=0.5))  # type: ignore[operator]
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED  # type: ignore[attr-defined]
    # The server was told the deadline (grpc-timeout, shortened by each hop) or the reset.
    await bounded(_until(lambda: sum(e.cancelled for e in rig.echoes) == 1))


async def test_cancellation_resets_the_stream_to_the_server(rig: Rig) -> None:
    call = method(rig.channel, "Unary")(b"sleep:30")  # type: ignore[operator]
    await bounded(_until(lambda: sum(e.calls.get("Unary", 0) for e in rig.echoes) == 1))
    call.cancel()
    await bounded(_until(lambda: sum(e.cancelled for e in rig.echoes) == 1))
    assert await bounded(call.code()) == grpc.StatusCode.CANCELLED
    await bounded(_until(lambda: bool(rig.client_records)))
    assert rig.client_records[-1].flags == "DC"


async def test_one_channel_is_balanced_per_request(rig: Rig) -> None:
    who = method(rig.channel, "Who")
    names = [await bounded(who(b"")) for _ in range(300)]  # type: ignore[operator]
    shares = {name: names.count(name) for name in set(names)}
    # Round robin over the three endpoints, one HTTP/2 connection from the client.
    assert shares == {b"s0": 100, b"s1": 100, b"s2": 100}
    assert rig.outbound.connections_opened == {CLUSTER: 3}


@pytest.mark.parametrize("rig", [(0,)], indirect=True)
async def test_unavailable_is_retried_on_another_endpoint(rig: Rig) -> None:
    rig.configure(retry_on="unavailable")
    flaky = method(rig.channel, "Flaky")
    names = [await bounded(flaky(b"")) for _ in range(30)]  # type: ignore[operator]
    assert set(names) <= {b"s1", b"s2"}  # never s0's UNAVAILABLE
    assert rig.echoes[0].calls["Flaky"] >= 5  # s0 was asked, and the call moved on
    assert any(r.attempts == 2 for r in rig.client_records)


@pytest.mark.parametrize("rig", [(0,)], indirect=True)
async def test_without_retry_on_the_status_reaches_the_caller(rig: Rig) -> None:
    flaky = method(rig.channel, "Flaky")
    codes = set()
    for _ in range(6):
        try:
            await bounded(flaky(b""))  # type: ignore[operator]
            codes.add(grpc.StatusCode.OK)
        except grpc.RpcError as error:
            codes.add(error.code())  # type: ignore[attr-defined]
    assert codes == {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE}


async def test_proxy_errors_are_grpc_statuses(rig: Rig) -> None:
    lost = aio.insecure_channel(
        f"127.0.0.1:{rig.outbound.port}", options=[("grpc.default_authority", "nowhere")]
    )
    try:
        with pytest.raises(grpc.RpcError) as caught:
            await bounded(method(lost, "Unary")(b"x"))  # type: ignore[operator]
    finally:
        await lost.close()
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED  # type: ignore[attr-defined]
    assert "no route to host" in caught.value.details()  # type: ignore[attr-defined]
    record = rig.client_records[-1]
    assert record.flags == "NR" and record.grpc_status == "12"
    # No healthy upstream: every endpoint gone.
    rig.plane.apply(
        types.ENDPOINTS, pack(pb.ClusterLoadAssignment(cluster_name=CLUSTER, endpoints=[]))
    )
    with pytest.raises(grpc.RpcError) as caught:
        await bounded(method(rig.channel, "Unary")(b"x"))  # type: ignore[operator]
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]


async def _until(check: Any) -> None:
    for _ in range(int(BOUND / 0.01)):  # polled: the state is another component's
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")


async def _hello(request: web.Request) -> web.Response:
    return web.Response(text=f"hello {request.version.major}.{request.version.minor}")


async def test_curl_http2_prior_knowledge_and_http11_on_one_port() -> None:
    async with serving(_app()) as app_port:
        router = InboundRouter(app_host="127.0.0.1", app_port=app_port, app_protocol="http")
        listener = await start_proxy(
            "127.0.0.1", 0, resolver=router.resolve, recorder=lambda _: None, listener="inbound"
        )
        try:
            url = f"http://127.0.0.1:{listener.port}/"
            for flag, version in (("--http2-prior-knowledge", "2"), ("--http1.1", "1.1")):
                result = await asyncio.to_thread(
                    subprocess.run,
                    ["curl", "-sS", "-m", "10", flag, "-w", " %{http_version}", url],
                    capture_output=True,
                    text=True,
                    timeout=BOUND,
                    check=True,
                )
                # The app is HTTP/1.1 whatever the client spoke.
                assert result.stdout == f"hello 1.1 {version}"
        finally:
            await listener.close(1.0)


def _app() -> web.Application:
    app = web.Application()
    app.router.add_get("/", _hello)
    return app


def _limit(rig: Rig, **fields: object) -> None:
    """(Re-)apply the cluster, mutual TLS to sidecars, with connection-pool limits if any."""
    rig.plane.apply(
        types.CLUSTER,
        pack(
            pb.Cluster(
                name=CLUSTER,
                service=SNI,
                lb_policy=pb.ROUND_ROBIN,
                tls=pb.MESH_MUTUAL,
                meshed=True,
                **fields,  # type: ignore[arg-type]
            )
        ),
    )


async def test_max_concurrent_streams_opens_more_connections(rig: Rig) -> None:
    _limit(rig, max_concurrent_streams=2)
    unary = method(rig.channel, "Unary")
    calls = [unary(b"sleep:0.5") for _ in range(9)]  # type: ignore[operator]
    assert await bounded(asyncio.gather(*calls)) == [b"sleep:0.5"] * 9
    # Three calls at once per endpoint, two streams per connection: two connections each.
    assert rig.outbound.connections_opened == {CLUSTER: 6}


async def test_http2_max_requests_answers_overflow_as_resource_exhausted(rig: Rig) -> None:
    _limit(rig, http2_max_requests=3)
    unary = method(rig.channel, "Unary")
    calls = [unary(b"sleep:0.5") for _ in range(5)]  # type: ignore[operator]
    results = await bounded(asyncio.gather(*calls, return_exceptions=True))
    codes = sorted(
        r.code().name if isinstance(r, grpc.RpcError) else "OK"  # type: ignore[attr-defined]
        for r in results
    )
    assert codes == ["OK", "OK", "OK", "RESOURCE_EXHAUSTED", "RESOURCE_EXHAUSTED"]
    assert sorted(r.flags for r in rig.client_records) == ["", "", "", "UO", "UO"]


async def test_a_draining_listener_sends_goaway_and_finishes_streams_in_flight(rig: Rig) -> None:
    unary = method(rig.channel, "Unary")
    assert await bounded(unary(b"warm")) == b"warm"  # type: ignore[operator]
    slow = asyncio.ensure_future(unary(b"sleep:0.5"))  # type: ignore[operator]
    await bounded(_until(lambda: sum(e.calls.get("Unary", 0) for e in rig.echoes) == 2))
    await bounded(rig.outbound.close(5.0))  # returns once the stream in flight is done
    assert await bounded(slow) == b"sleep:0.5"
    assert rig.outbound.active == 0


async def test_an_upstream_going_away_moves_new_calls_to_a_new_connection(rig: Rig) -> None:
    who = method(rig.channel, "Who")
    assert {await bounded(who(b"")) for _ in range(3)} == {b"s0", b"s1", b"s2"}  # type: ignore[operator]
    # s0's sidecar drains: GOAWAY on the connection the outbound holds to it, then it is gone.
    await bounded(rig.inbounds[0].close(1.0))
    rig.plane.apply(
        types.ENDPOINTS,
        pack(
            pb.ClusterLoadAssignment(
                cluster_name=CLUSTER,
                endpoints=[pb.Endpoint(address="127.0.0.1", port=i.port) for i in rig.inbounds[1:]],
            )
        ),
    )
    names = [await bounded(who(b"")) for _ in range(10)]  # type: ignore[operator]
    assert set(names) == {b"s1", b"s2"}


async def test_connections_are_recycled_after_max_requests(rig: Rig) -> None:
    _limit(rig, max_requests_per_connection=5)
    who = method(rig.channel, "Who")
    for _ in range(30):  # 10 calls per endpoint, 5 per connection
        await bounded(who(b""))  # type: ignore[operator]
    assert rig.outbound.connections_opened == {CLUSTER: 6}


def _held(listener: ProxyListener) -> int:
    """Response bytes the listener's HTTP/2 streams hold for their clients, and request bytes
    its upstream streams hold for their servers (nothing else buffers a stream)."""
    from sidecar.listeners.h2down import H2Downstream

    state = listener._state
    down = sum(
        len(s.buffer)
        for c in state.clients
        if isinstance(c, H2Downstream)
        for s in c.streams.values()
    )
    up = sum(
        len(s.buffer)
        for conns in state.h2pool._conns.values()
        for conn in conns
        for s in conn.streams.values()
    )
    return down + up


async def test_a_slow_reader_holds_back_the_server_with_bounded_buffers(rig: Rig) -> None:
    from sidecar.listeners.h2down import BUFFER_LIMIT, STREAM_WINDOW

    size, count = 32768, 2000  # 64 MiB the server would send at once
    stream = method(rig.channel, "ServerStream", "unary_stream")(b"%d:%d" % (count, size))  # type: ignore[operator]
    reader = stream.__aiter__()
    assert len(await bounded(reader.__anext__())) == size
    peak = 0
    for _ in range(50):  # the client reads nothing for half a second
        peak = max(peak, _held(rig.outbound), *(_held(i) for i in rig.inbounds))
        await asyncio.sleep(0.01)
    print(f"peak held: {peak} bytes")
    # Held per listener: at most the buffer limit plus the window the peer may still fill.
    assert peak <= BUFFER_LIMIT + STREAM_WINDOW + 16384
    received = size

    async def rest() -> None:
        nonlocal received
        async for message in reader:  # type: ignore[attr-defined]
            received += len(message)

    await bounded(rest())
    assert received == size * count


@pytest.mark.parametrize("rig", [(0,)], indirect=True)
async def test_outlier_detection_ejects_a_server_answering_unavailable(rig: Rig) -> None:
    outlier = pb.OutlierDetection(
        consecutive_5xx=2, interval_ms=60_000, base_ejection_ms=60_000, max_ejection_percent=50
    )
    _limit(rig, outlier=outlier)  # type: ignore[arg-type]
    flaky = method(rig.channel, "Flaky")
    for _ in range(30):
        with contextlib.suppress(grpc.RpcError):
            await bounded(flaky(b""))  # type: ignore[operator]
    # UNAVAILABLE counts as a 503: after two in a row s0 is out, the others serve the rest.
    assert rig.echoes[0].calls["Flaky"] == 2
    assert rig.echoes[1].calls["Flaky"] + rig.echoes[2].calls["Flaky"] == 28


async def test_an_http2_caller_reaches_an_http11_app_through_two_sidecars() -> None:
    """curl with prior knowledge, two sidecars speaking HTTP/2 to each other, an HTTP/1.1 app
    whose port protocol nobody declared: the inbound sidecar speaks HTTP/1.1 to it."""
    async with serving(_app()) as app_port, AsyncExitStack() as stack:
        inbound = await start_proxy(
            "127.0.0.1",
            0,
            resolver=InboundRouter(app_host="127.0.0.1", app_port=app_port).resolve,
            recorder=lambda _: None,
            listener="inbound",
        )
        stack.push_async_callback(inbound.close, 1.0)
        plane = DataPlane()
        plane.apply(types.CLUSTER, pack(pb.Cluster(name=CLUSTER, meshed=True)))
        plane.apply(types.ENDPOINTS, pack(pb.ClusterLoadAssignment(
            cluster_name=CLUSTER, endpoints=[pb.Endpoint(address="127.0.0.1", port=inbound.port)])))  # fmt: skip
        route = pb.Route(name="r", clusters=[pb.WeightedCluster(cluster=CLUSTER, weight=100)])
        plane.apply(types.ROUTES, pack(pb.VirtualHost(name="web", domains=["web"], routes=[route])))
        records: list[Completed] = []
        outbound = await start_proxy(
            "127.0.0.1",
            0,
            resolver=OutboundRouter(plane).resolve,
            recorder=records.append,
            listener="outbound",
        )
        stack.push_async_callback(outbound.close, 1.0)
        result = await asyncio.to_thread(
            subprocess.run,
            ["curl", "-sS", "-m", "10", "--http2-prior-knowledge", "-H", "host: web",
             "-w", " %{http_version}", f"http://127.0.0.1:{outbound.port}/"],
            capture_output=True, text=True, timeout=BOUND, check=True,
        )  # fmt: skip
        assert result.stdout == "hello 1.1 2"
        assert records[-1].status == 200  # and the sidecars spoke HTTP/2 to each other:
        assert inbound.connections_opened == {f"inbound|{app_port}": 1}
        assert outbound._state.h2pool._conns  # an HTTP/2 connection to the inbound sidecar


async def test_stalled_streams_do_not_starve_the_others_on_their_connection(rig: Rig) -> None:
    """Eight server streams whose caller reads nothing hold their windows; a ninth call on the
    same client connection (and the same upstream connections) still flows."""
    size = 262144
    stalled = [
        method(rig.channel, "ServerStream", "unary_stream")(b"200:%d" % size)  # type: ignore[operator]
        for _ in range(8)
    ]
    readers = [s.__aiter__() for s in stalled]
    for reader in readers:
        assert len(await bounded(reader.__anext__())) == size
    await asyncio.sleep(0.3)  # the stalled ones fill every window they may
    assert await bounded(method(rig.channel, "Unary")(b"big:%d" % BIG)) == b"x" * BIG  # type: ignore[operator]
    for s in stalled:
        s.cancel()


async def test_a_removed_endpoint_gets_goaway_and_comes_back_on_a_new_connection(
    rig: Rig,
) -> None:
    """A config change that drops an endpoint GOAWAYs the pooled connection to it (its sidecar
    still up): nothing is left to it, so when the endpoint returns a new connection opens."""
    retired: list[int] = []
    rig.plane.on_upstreams = lambda gone: retired.append(rig.outbound.retire_upstreams(gone))
    who = method(rig.channel, "Who")
    assert {await bounded(who(b"")) for _ in range(3)} == {b"s0", b"s1", b"s2"}  # type: ignore[operator]
    assert rig.outbound.connections_opened == {CLUSTER: 3}

    def endpoints(inbounds: list[ProxyListener]) -> None:
        found = [pb.Endpoint(address="127.0.0.1", port=i.port) for i in inbounds]
        assignment = pb.ClusterLoadAssignment(cluster_name=CLUSTER, endpoints=found)
        rig.plane.apply(types.ENDPOINTS, pack(assignment))

    endpoints(rig.inbounds[1:])
    assert retired == [1]
    assert {await bounded(who(b"")) for _ in range(4)} == {b"s1", b"s2"}  # type: ignore[operator]
    endpoints(rig.inbounds)
    assert {await bounded(who(b"")) for _ in range(3)} == {b"s0", b"s1", b"s2"}  # type: ignore[operator]
    assert rig.outbound.connections_opened == {CLUSTER: 4}  # s0 again, on a new connection
    # Removing the whole cluster retires every connection.
    rig.plane.apply(types.CLUSTER, [])
    assert retired[-1] == 3


def _pool_clock(rig: Rig) -> list[float]:
    """The outbound's HTTP/2 pool reads the time from the list's one item (the test moves it);
    connections opened from now on keep that clock."""
    now = [0.0]
    rig.outbound._state.h2pool._clock = lambda: now[0]
    return now


async def _who(rig: Rig, calls: int) -> None:
    who = method(rig.channel, "Who")
    for _ in range(calls):
        await bounded(who(b""))  # type: ignore[operator]


async def test_connections_older_than_the_max_duration_take_no_new_streams(rig: Rig) -> None:
    """maxConnectionDuration: a connection past it is GOAWAYed when a new call would use it,
    and the call goes on a new connection (time is the pool's clock, moved by the test)."""
    now = _pool_clock(rig)
    _limit(rig, max_connection_duration_ms=60_000)
    await _who(rig, 6)
    assert rig.outbound.connections_opened == {CLUSTER: 3}
    now[0] = 59.0
    await _who(rig, 3)
    assert rig.outbound.connections_opened == {CLUSTER: 3}
    now[0] = 60.0  # every connection is a minute old: each endpoint's next call opens anew
    await _who(rig, 6)
    assert rig.outbound.connections_opened == {CLUSTER: 6}


def _http11_grpc_call(port: int, message: bytes) -> tuple[int, bytes]:
    """A gRPC-framed unary call sent as HTTP/1.1: the answer's status and body."""
    frame = b"\x00" + len(message).to_bytes(4, "big") + message
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        headers = {"Host": "catalog", "Content-Type": "application/grpc", "TE": "trailers"}
        connection.request("POST", "/test.Echo/Unary", body=frame, headers=headers)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


async def test_a_service_declared_grpc_in_kubernetes_makes_the_inbound_speak_http2() -> None:
    """The control plane's translation of a Kubernetes Service port `appProtocol: grpc` (whose
    endpoint is this workload), applied by an inbound sidecar started without --app-protocol:
    an HTTP/1.1 call reaches the grpcio app (HTTP/2 only) as HTTP/2. Before it, HTTP/1.1."""
    server, app_port, _ = await start("app")
    async with AsyncExitStack() as stack:
        stack.push_async_callback(server.stop, 0)
        plane = DataPlane()
        inbound = await start_proxy(
            "127.0.0.1",
            0,
            resolver=InboundRouter(
                app_host="127.0.0.1", app_port=app_port, dataplane=plane
            ).resolve,
            recorder=lambda _: None,
            listener="inbound",
        )
        stack.push_async_callback(inbound.close, 1.0)
        framed = b"\x00\x00\x00\x00\x02hi"
        status, _ = await asyncio.to_thread(_http11_grpc_call, inbound.port, b"hi")
        assert status >= 500  # HTTP/1.1 to a gRPC server: no answer
        index = KubeIndex()
        index.replace(
            "Service",
            [{"metadata": {"name": "catalog", "namespace": "shop"},
              "spec": {"clusterIP": "10.0.0.9",
                       "ports": [{"name": "api", "port": 80, "appProtocol": "grpc"}]}}],
        )  # fmt: skip
        service = index.services()["catalog.shop.svc.cluster.local"]
        endpoint = ServiceEndpoint(address="127.0.0.1", port=inbound.port, workload="catalog-1")
        world = World()
        world.put(service_key(service), dataclasses.replace(service, endpoints=(endpoint,)))
        node = NodeInfo(id="catalog-1.shop", workload="catalog-1", namespace="shop")
        plane.apply(types.INBOUND, pack(inbound_policy(world, node)))
        assert await asyncio.to_thread(_http11_grpc_call, inbound.port, b"hi") == (200, framed)


async def test_the_clusters_idle_timeout_closes_idle_http2_connections(rig: Rig) -> None:
    """connectionPool idleTimeout applies to upstream HTTP/2 connections: one idle that long is
    closed at the next sweep, and the next call opens a new one (the pool's clock, moved)."""
    now = _pool_clock(rig)
    pool = rig.outbound._state.h2pool
    _limit(rig, idle_timeout_ms=30_000)
    await _who(rig, 3)
    assert rig.outbound.connections_opened == {CLUSTER: 3}
    now[0] = 29.0
    pool.sweep()
    await _who(rig, 3)
    assert rig.outbound.connections_opened == {CLUSTER: 3}
    now[0] = 29.0 + 30.0  # idle 30 s since the last calls (the pool's own default is 60 s)
    pool.sweep()
    await bounded(_until(lambda: not pool._conns))
    await _who(rig, 3)
    assert rig.outbound.connections_opened == {CLUSTER: 6}
