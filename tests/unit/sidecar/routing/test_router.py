"""The outbound router: route → cluster → endpoint, local replies with flags, in-flight accounting."""

import random

from google.protobuf.any_pb2 import Any as AnyPb
from google.protobuf.message import Message

from lightmesh import types
from lightmesh.v1 import config_pb2 as pb
from sidecar.config.apply import DataPlane
from sidecar.contract import Completed, Forward, LocalReply, RequestHead
from sidecar.policies.retry import DEFAULT_RETRY
from sidecar.routing.router import OutboundRouter

CLUSTER = "outbound||catalog.default.svc.cluster.local"


def pack(message: Message) -> list[AnyPb]:
    item = AnyPb()
    item.Pack(message)
    return [item]


def dataplane(*ports: int) -> DataPlane:
    plane = DataPlane()
    plane.apply(
        types.CLUSTER,
        pack(pb.Cluster(name=CLUSTER, lb_policy=pb.LEAST_REQUEST, connect_timeout_ms=250)),
    )
    plane.apply(types.ENDPOINTS, pack(pb.ClusterLoadAssignment(
        cluster_name=CLUSTER, endpoints=[pb.Endpoint(address="127.0.0.1", port=p) for p in ports])))  # fmt: skip
    plane.apply(types.ROUTES, pack(pb.VirtualHost(
        name="catalog", domains=["catalog"], routes=[pb.Route(
            name="r", timeout_ms=1500, clusters=[pb.WeightedCluster(cluster=CLUSTER, weight=100)])])))  # fmt: skip
    return plane


def head(host: str = "catalog") -> RequestHead:
    return RequestHead(method="GET", path="/", host=host, http_version="1.1")


def done(decision: Forward) -> Completed:
    return Completed(
        method="GET", host="catalog", cluster=decision.cluster, status=200, flags="",
        duration=0.001, request_bytes=0, response_bytes=0,
        upstream=f"{decision.address}:{decision.port}",
    )  # fmt: skip


def test_forward_carries_route_timeout_and_cluster_connect_timeout() -> None:
    plane = dataplane(1)
    router = OutboundRouter(plane)
    decision = router.resolve(head())
    assert decision == Forward(
        address="127.0.0.1", port=1, cluster=CLUSTER, timeout=1.5, connect_timeout=0.25,
        retry=DEFAULT_RETRY, retrier=router, retry_budget=plane.clusters[CLUSTER].retry_budget,
    )  # fmt: skip


def test_in_flight_slots_are_released_when_requests_complete() -> None:
    plane = dataplane(1, 2)
    router = OutboundRouter(plane)
    decisions = [router.resolve(head()) for _ in range(4)]
    stats = plane.clusters[CLUSTER].stats
    assert sum(stats.in_flight.values()) == stats.total_in_flight == 4
    for decision in decisions:
        assert isinstance(decision, Forward)
        router.finished(done(decision))
    assert stats.in_flight == {} and stats.total_in_flight == 0


def test_local_replies_say_why() -> None:
    assert OutboundRouter(dataplane(1)).resolve(head("payments")) == LocalReply(
        status=404, body="no route to host 'payments'", flags="NR"
    )
    reply = OutboundRouter(dataplane()).resolve(head())
    assert isinstance(reply, LocalReply)
    assert (reply.status, reply.flags) == (503, "UH")


def test_a_retry_goes_to_another_endpoint_and_each_attempt_is_accounted() -> None:
    plane = dataplane(1, 2, 3)
    router = OutboundRouter(plane)
    first = router.resolve(head())
    assert isinstance(first, Forward)
    tried = [f"{first.address}:{first.port}"]
    second = router.retry_target(first, tried=tried, now=0.0)
    assert second is not None and second.port != first.port
    tried.append(f"{second.address}:{second.port}")
    third = router.retry_target(second, tried=tried, now=0.0)
    assert third is not None and third.port not in (first.port, second.port)
    stats = plane.clusters[CLUSTER].stats
    assert stats.total_in_flight == 3
    router.attempt_finished(first, status=503, duration=0.01)
    router.attempt_finished(second, status=503, duration=0.01)
    router.finished(done(third))
    assert stats.total_in_flight == 0
    assert plane.clusters[CLUSTER].retries == 2


def test_a_retry_reuses_the_only_endpoint() -> None:
    plane = dataplane(1)
    router = OutboundRouter(plane)
    first = router.resolve(head())
    assert isinstance(first, Forward)
    assert router.retry_target(first, tried=["127.0.0.1:1"], now=0.0) == first


def test_no_retry_once_the_budget_is_spent() -> None:
    plane = dataplane(1, 2)
    router = OutboundRouter(plane)
    first = router.resolve(head())
    assert isinstance(first, Forward)
    cluster = plane.clusters[CLUSTER]
    # The floor is 10 retries/s over 10 s; one request adds 0.2.
    granted = [router.retry_target(first, tried=[], now=0.5) for _ in range(101)]
    assert all(g is not None for g in granted[:100])
    assert granted[100] is None
    assert (cluster.retries, cluster.retries_refused) == (100, 1)


def test_backoff_is_jittered_within_the_cap() -> None:
    router = OutboundRouter(dataplane(1), rng=random.Random(7))
    waits = [router.retry_backoff(n) for n in (1, 2, 3, 10) for _ in range(50)]
    assert all(0.0 <= w <= 0.25 for w in waits)
    assert len(set(waits)) > 100


def test_default_retries_can_be_turned_off_but_a_route_s_own_retries_stay() -> None:
    off = OutboundRouter(dataplane(1), default_retries=False)
    decision = off.resolve(head())
    assert isinstance(decision, Forward) and decision.retry is None
    on = OutboundRouter(dataplane(1))
    decision = on.resolve(head())
    assert isinstance(decision, Forward) and decision.retry is DEFAULT_RETRY


def test_refusing_endpoints_are_ejected_briefly_and_return_when_they_answer() -> None:
    plane = dataplane(1, 2)
    now = [0.0]
    router = OutboundRouter(plane, clock=lambda: now[0])
    first = router.resolve(head())
    assert isinstance(first, Forward)
    # The attempt was refused (or marked never-processed by its sidecar): retried elsewhere.
    second = router.retry_target(first, tried=[f"{first.address}:{first.port}"], now=0.0)
    assert second is not None
    router.attempt_finished(first, status=503, duration=0.001, local_origin=True)
    router.finished(done(second))
    picks = set()
    for _ in range(6):
        decision = router.resolve(head())
        assert isinstance(decision, Forward)
        picks.add(decision.port)
        router.finished(done(decision))
    assert picks == {second.port}  # the refusing endpoint is out
    now[0] = 1.0  # its second is up: admitted again, it answers, it stays
    seen = set()
    for _ in range(6):
        decision = router.resolve(head())
        assert isinstance(decision, Forward)
        seen.add(decision.port)
        router.finished(done(decision))
    assert seen == {1, 2}


def test_this_sidecar_s_own_connect_failures_eject_too() -> None:
    plane = dataplane(1, 2)
    router = OutboundRouter(plane)
    decision = router.resolve(head())
    assert isinstance(decision, Forward)
    failed = Completed(
        method="GET", host="catalog", cluster=CLUSTER, status=503, flags="UF", duration=0.001,
        request_bytes=0, response_bytes=0, upstream=f"{decision.address}:{decision.port}",
    )  # fmt: skip
    router.finished(failed)
    outlier = plane.clusters[CLUSTER].outlier
    assert outlier is not None and outlier.ejected == {f"{decision.address}:{decision.port}"}
