"""The sidecar's side of the stream and the all-or-nothing application of config."""

import pytest

from lightmesh import types
from lightmesh.v1 import config_pb2 as pb
from lightmesh.versions import set_version
from sidecar.cluster.balancers import Endpoint
from sidecar.config.apply import DataPlane
from sidecar.config.client import Backoff
from sidecar.config.protocol import ClientProtocol
from sidecar.errors import ConfigError
from tests.support.config import pack as packed


def test_ack_records_versions_and_nack_keeps_the_last_good_ones() -> None:
    """Playbook: responses in, replies out; what is held is announced on reconnect."""
    protocol = ClientProtocol()
    first = protocol.subscriptions()
    assert [(s.type_url, s.subscribe, dict(s.initial)) for s in first] == [
        (t, ("*",), {}) for t in types.PUSH_ORDER
    ]
    reply = protocol.on_response(
        type_url=types.ROUTES,
        updated={"a": "1", "b": "1"},
        removed=(),
        nonce="1",
        error=None,
        now=1,
    )
    assert (reply.nonce, reply.error) == ("1", None)
    reply = protocol.on_response(
        type_url=types.ROUTES, updated={"a": "2"}, removed=("b",), nonce="2", error="bad", now=2
    )
    assert (reply.nonce, reply.error) == ("2", "bad")
    held = protocol.held[types.ROUTES]
    assert held.versions == {"a": "1", "b": "1"}  # nothing of the rejected response applied
    assert (held.nacked_version, held.nack_message) == ("a@2", "bad")
    again = {s.type_url: s for s in protocol.subscriptions()}[types.ROUTES]
    assert dict(again.initial) == {"a": "1", "b": "1"}  # announced on reconnect
    assert again.digest == held.version == set_version({"a": "1", "b": "1"})
    protocol.on_response(
        type_url=types.ROUTES, updated={}, removed=("b",), nonce="3", error=None, now=3
    )
    assert held.versions == {"a": "1"}
    assert not protocol.complete
    assert protocol.subscribe(types.ROUTES, ["x.example", "x.example"]) == ("x.example",)
    assert protocol.subscribe(types.ROUTES, ["x.example"]) == ()


def vhost(name: str, *, regex: str = "") -> pb.VirtualHost:
    route = pb.Route(name="r", clusters=[pb.WeightedCluster(cluster="x", weight=100)])
    if regex:
        route.matches.add().uri.regex = regex
    return pb.VirtualHost(name=name, domains=[name], routes=[route])


def test_rejected_routes_leave_the_serving_table_untouched() -> None:
    dataplane = DataPlane(max_regex_length=5)
    dataplane.apply(types.ROUTES, packed(vhost("c")))
    serving = dataplane.routes
    with pytest.raises(ConfigError, match="limit of 5"):
        # One bad host among good ones: none of the response applies.
        dataplane.apply_delta(
            types.ROUTES,
            [("d", packed(vhost("d"))[0]), ("c", packed(vhost("c", regex="a" * 6))[0])],
            [],
        )
    assert dataplane.routes is serving


def test_a_delta_recompiles_only_the_hosts_it_names() -> None:
    dataplane = DataPlane()
    dataplane.apply(types.ROUTES, packed(vhost("c"), vhost("d")))
    compiled_d = dataplane._compiled["d"]
    dataplane.apply_delta(types.ROUTES, [("c", packed(vhost("c", regex="/x"))[0])], [])
    assert dataplane._compiled["d"] is compiled_d
    dataplane.apply_delta(types.ROUTES, [], ["d"])
    assert dataplane.routes.domains == ["c"]


def test_unknown_load_balancer_policy_is_rejected() -> None:
    cluster = pb.Cluster(name="c", lb_policy=42)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="load balancer policy 42 is not supported"):
        DataPlane().apply(types.CLUSTER, packed(cluster))


def test_wrong_resource_type_is_rejected() -> None:
    with pytest.raises(ConfigError, match=r"where lightmesh\.v1\.Cluster was expected"):
        DataPlane().apply(types.CLUSTER, packed(pb.Endpoint()))


def test_endpoints_follow_clusters_in_either_order() -> None:
    dataplane = DataPlane()
    assignment = pb.ClusterLoadAssignment(
        cluster_name="c", endpoints=[pb.Endpoint(address="127.0.0.1", port=9)]
    )
    dataplane.apply(types.ENDPOINTS, packed(assignment))
    dataplane.apply(types.CLUSTER, packed(pb.Cluster(name="c")))
    assert dataplane.clusters["c"].endpoints == (Endpoint("127.0.0.1", 9, ""),)


def test_backoff_grows_to_its_cap_and_resets() -> None:
    import random

    backoff = Backoff(base=0.25, cap=4.0, rng=random.Random(1))
    delays = [backoff.next_delay() for _ in range(8)]
    assert delays[0] < 0.4 and all(d <= 6.0 for d in delays) and delays[-1] >= 2.0
    backoff.reset()
    assert backoff.next_delay() < 0.4


def test_cluster_and_endpoint_changes_report_the_upstreams_no_cluster_has_left() -> None:
    plane = DataPlane()
    gone: list[set[tuple[str, int, str]]] = []
    plane.on_upstreams = gone.append
    mutual = pb.Cluster(name="outbound||a", service="a.shop.svc.cluster.local", tls=pb.MESH_MUTUAL)
    plane.apply(types.CLUSTER, packed(mutual, pb.Cluster(name="outbound||b")))
    endpoints = [pb.Endpoint(address="10.0.0.1", port=80), pb.Endpoint(address="10.0.0.2", port=80)]

    def assign(a: list[pb.Endpoint], b: list[pb.Endpoint]) -> None:
        plane.apply(
            types.ENDPOINTS,
            packed(
                pb.ClusterLoadAssignment(cluster_name="outbound||a", endpoints=a),
                pb.ClusterLoadAssignment(cluster_name="outbound||b", endpoints=b),
            ),
        )

    assign(endpoints, endpoints[:1])
    assert gone == []  # only additions
    sni = "a.shop.svc.cluster.local"
    assign(endpoints[1:], endpoints[:1])  # 10.0.0.1 leaves a; b (plaintext) keeps its own
    assert gone == [{("10.0.0.1", 80, sni)}]
    plane.apply(types.CLUSTER, packed(pb.Cluster(name="outbound||b")))  # a is gone
    assert gone[-1] == {("10.0.0.2", 80, sni)}
    assert len(gone) == 2
