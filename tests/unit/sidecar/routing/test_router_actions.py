"""Route actions through the real DataPlane and OutboundRouter: redirect, rewrite, header edits,
fault abort, circuit breaking, consistent hashing and outlier ejection (time passed explicitly)."""

import random
from collections import Counter

from lightmesh import types
from lightmesh.v1 import config_pb2 as pb
from sidecar.config.apply import DataPlane
from sidecar.contract import Completed, Forward, LocalReply, RequestHead
from sidecar.routing.router import OutboundRouter
from sidecar.routing.table import CompiledRoute
from tests.support.config import pack

CLUSTER = "outbound||catalog.default.svc.cluster.local"


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def setup(
    *routes: pb.Route, ports: tuple[int, ...] = (1, 2), **cluster: object
) -> tuple[OutboundRouter, DataPlane, Clock]:
    plane = DataPlane(rng=random.Random(7))
    plane.apply(types.CLUSTER, pack(pb.Cluster(name=CLUSTER, **cluster)))  # type: ignore[arg-type]
    plane.apply(types.ENDPOINTS, pack(pb.ClusterLoadAssignment(
        cluster_name=CLUSTER, endpoints=[pb.Endpoint(address="127.0.0.1", port=p) for p in ports])))  # fmt: skip
    plane.apply(types.ROUTES, pack(pb.VirtualHost(
        name="catalog", domains=["catalog"], routes=routes)))  # fmt: skip
    clock = Clock()
    return OutboundRouter(plane, clock=clock, rng=random.Random(3)), plane, clock


def route(**fields: object) -> pb.Route:
    return pb.Route(
        name="r",
        clusters=[pb.WeightedCluster(cluster=CLUSTER, weight=100)],
        **fields,  # type: ignore[arg-type]
    )


def head(path: str = "/", **headers: str) -> RequestHead:
    return RequestHead(
        method="GET", path=path, host="catalog", http_version="1.1",
        headers=[(b"host", b"catalog:8080"),
                 *((k.replace("_", "-").encode(), v.encode()) for k, v in headers.items())],
    )  # fmt: skip


def done(decision: Forward, status: int = 200) -> Completed:
    return Completed(
        method="GET", host="catalog", cluster=decision.cluster, status=status, flags="",
        duration=0.001, request_bytes=0, response_bytes=0,
        upstream=f"{decision.address}:{decision.port}",
    )  # fmt: skip


def test_redirect_answers_with_location_keeping_the_query() -> None:
    router, *_ = setup(pb.Route(name="r", redirect=pb.Redirect(uri="/v2/items", code=308)))
    reply = router.resolve(head("/items?id=1"))
    assert reply == LocalReply(
        status=308,
        body="redirecting to http://catalog:8080/v2/items?id=1",
        headers=((b"location", b"http://catalog:8080/v2/items?id=1"),),
    )
    router, *_ = setup(pb.Route(name="r", redirect=pb.Redirect(authority="shop.example", code=301)))
    reply = router.resolve(head("/a"))
    assert isinstance(reply, LocalReply)
    assert reply.headers == ((b"location", b"http://shop.example/a"),)


def test_rewrite_replaces_the_matched_prefix_and_the_authority() -> None:
    router, *_ = setup(
        route(
            matches=[pb.RouteMatch(uri=pb.StringMatch(prefix="/api/v1/"))],
            rewrite=pb.Rewrite(uri="/", authority="catalog-internal"),
        ),
        route(
            matches=[pb.RouteMatch(uri=pb.StringMatch(exact="/old"))],
            rewrite=pb.Rewrite(uri="/new"),
        ),
    )
    request = head("/api/v1/items?id=1")
    assert isinstance(router.resolve(request), Forward)
    assert request.path == "/items?id=1"
    assert request.header(b"host") == b"catalog-internal"
    request = head("/old?x")
    router.resolve(request)
    assert request.path == "/new?x"


def test_request_header_edits_remove_then_set_then_add() -> None:
    ops = pb.HeaderOps(
        set=[pb.HeaderValue(name="x-env", value="prod")],
        add=[pb.HeaderValue(name="x-tag", value="b")],
        remove=["x-secret"],
    )
    router, *_ = setup(route(request_headers=ops, response_headers=ops))
    request = head(x_secret="s", x_env="dev", x_tag="a")
    decision = router.resolve(request)
    assert isinstance(decision, Forward)
    assert [(k, v) for k, v in request.headers if k.startswith(b"x-")] == [
        (b"x-tag", b"a"), (b"x-env", b"prod"), (b"x-tag", b"b"),
    ]  # fmt: skip
    assert decision.response_headers is not None  # passed on for the engine


def test_fault_abort_hits_its_percentage_with_flag_fi() -> None:
    router, *_ = setup(route(fault=pb.Fault(abort_status=503, abort_percent=25.0)))
    replies = [router.resolve(head()) for _ in range(4000)]
    aborted = [r for r in replies if isinstance(r, LocalReply)]
    assert all((r.status, r.flags) == (503, "FI") for r in aborted)
    # Labelled with the destination it stood for (metrics, the dashboard's edge).
    forwarded = next(r for r in replies if isinstance(r, Forward))
    assert {r.cluster for r in aborted} == {forwarded.cluster}
    assert 850 <= len(aborted) <= 1150  # Binomial(4000, 0.25): mean 1000, sd 27


def test_fault_delay_is_decided_per_request_and_carried_on_forward() -> None:
    router, *_ = setup(route(fault=pb.Fault(delay_ms=200, delay_percent=100)))
    decision = router.resolve(head())
    assert isinstance(decision, Forward) and decision.delay == 0.2


def test_in_flight_cap_answers_503_uo_and_frees_slots_on_completion() -> None:
    router, *_ = setup(route(), max_connections=2, max_pending_requests=1)
    taken = [router.resolve(head()) for _ in range(3)]
    assert all(isinstance(d, Forward) for d in taken)
    refused = router.resolve(head())
    assert isinstance(refused, LocalReply) and (refused.status, refused.flags) == (503, "UO")
    router.finished(done(taken[0]))  # type: ignore[arg-type]
    assert isinstance(router.resolve(head()), Forward)


def test_consistent_hash_on_a_header_is_sticky() -> None:
    router, *_ = setup(
        route(), ports=(1, 2, 3, 4), lb_policy=pb.RING_HASH, hash=pb.ConsistentHash(header="x-user")
    )
    for user in ("ann", "bob", "cyd"):
        ports = {router.resolve(head(x_user=user)).port for _ in range(10)}  # type: ignore[union-attr]
        assert len(ports) == 1


def test_consecutive_5xx_eject_an_endpoint_until_base_ejection_time_passes() -> None:
    outlier = pb.OutlierDetection(
        consecutive_5xx=5, base_ejection_ms=30_000, interval_ms=1000, max_ejection_percent=50
    )
    router, _, clock = setup(route(), lb_policy=pb.ROUND_ROBIN, outlier=outlier)
    for _ in range(10):  # round robin: each endpoint gets five; port 1 fails
        decision = router.resolve(head())
        assert isinstance(decision, Forward)
        router.finished(done(decision, status=503 if decision.port == 1 else 200))
    assert Counter(router.resolve(head()).port for _ in range(10)) == {2: 10}  # type: ignore[union-attr]
    clock.now = 30.0
    assert Counter(router.resolve(head()).port for _ in range(10)) == {1: 5, 2: 5}  # type: ignore[union-attr]


def test_without_headers_and_presence_matches() -> None:
    router, *_ = setup(
        pb.Route(
            name="anonymous",
            matches=[pb.RouteMatch(headers=[pb.HeaderMatch(
                name="authorization", value=pb.StringMatch(present=True), invert=True)])],
            redirect=pb.Redirect(uri="/login", code=302),
        ),
        route(),
    )  # fmt: skip
    reply = router.resolve(head())
    assert isinstance(reply, LocalReply) and reply.status == 302
    assert isinstance(router.resolve(head(authorization="Bearer x")), Forward)


def test_live_state_survives_a_cluster_push() -> None:
    router, plane, _ = setup(route(), max_connections=1, max_pending_requests=1)
    first = router.resolve(head())
    plane.apply(
        types.CLUSTER, pack(pb.Cluster(name=CLUSTER, max_connections=1, max_pending_requests=1))
    )
    assert plane.clusters[CLUSTER].stats.total_in_flight == 1
    router.finished(done(first))  # type: ignore[arg-type]
    assert plane.clusters[CLUSTER].stats.total_in_flight == 0


def test_each_forward_deposits_into_its_clusters_retry_budget() -> None:
    router, plane, clock = setup(route())
    budget = plane.clusters[CLUSTER].retry_budget
    floor = budget.available(clock.now)
    decisions = [router.resolve(head()) for _ in range(10)]
    assert all(isinstance(d, Forward) and d.retry_budget is budget for d in decisions)
    assert budget.available(clock.now) == floor + 10 * budget.ratio


def test_the_route_gate_answers_once_the_route_is_known_before_its_action() -> None:
    """A gateway's per-route rate limit: asked with the chosen route, before a redirect (or any
    other action) runs; no route, no question."""
    redirect = pb.Route(name="old", redirect=pb.Redirect(uri="/new", code=301))
    redirect.matches.add().uri.prefix = "/old"
    other = route()
    other.matches.add().uri.prefix = "/api"
    _, plane, _ = setup(redirect, other)
    asked: list[str] = []
    limited = LocalReply(status=429, body="local_rate_limited", flags="RL")

    def gate(request: RequestHead, chosen: CompiledRoute) -> LocalReply | None:
        asked.append(chosen.name)
        return limited if chosen.name == "old" else None

    router = OutboundRouter(plane, route_gate=gate)
    assert router.resolve(head("/old/page")) is limited
    assert isinstance(router.resolve(head("/api/items")), Forward)
    missing = router.resolve(head("/nothing"))
    assert isinstance(missing, LocalReply) and missing.status == 404
    assert asked == ["old", "r"]
