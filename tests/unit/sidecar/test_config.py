"""The sidecar's side of the stream and the all-or-nothing application of config."""

import pytest
from google.protobuf.any_pb2 import Any as AnyPb

from lightmesh import types
from lightmesh.v1 import config_pb2 as pb
from sidecar.cluster.balancers import Endpoint
from sidecar.config.apply import DataPlane
from sidecar.config.client import Backoff
from sidecar.config.protocol import ClientProtocol
from sidecar.errors import ConfigError


def packed(*messages: object) -> list[AnyPb]:
    out = []
    for message in messages:
        item = AnyPb()
        item.Pack(message)
        out.append(item)
    return out


def test_ack_records_version_and_nack_keeps_the_last_good_one() -> None:
    protocol = ClientProtocol()
    assert protocol.subscriptions() == [(t, "") for t in types.PUSH_ORDER]
    reply = protocol.on_response(type_url=types.ROUTES, version="a", nonce="1", error=None, now=1)
    assert (reply.version, reply.nonce, reply.error) == ("a", "1", None)
    reply = protocol.on_response(type_url=types.ROUTES, version="b", nonce="2", error="bad", now=2)
    assert (reply.version, reply.nonce, reply.error) == ("a", "2", "bad")
    held = protocol.held[types.ROUTES]
    assert (held.version, held.nacked_version, held.nack_message) == ("a", "b", "bad")
    assert dict(protocol.subscriptions())[types.ROUTES] == "a"  # announced on reconnect
    assert not protocol.complete


def test_rejected_routes_leave_the_serving_table_untouched() -> None:
    dataplane = DataPlane(max_regex_length=5)
    good = pb.RouteConfiguration(virtual_hosts=[pb.VirtualHost(
        name="c", domains=["c"], routes=[pb.Route(name="r", clusters=[pb.WeightedCluster(cluster="x", weight=100)])])])  # fmt: skip
    dataplane.apply(types.ROUTES, packed(good))
    serving = dataplane.routes
    bad = pb.RouteConfiguration()
    bad.CopyFrom(good)
    bad.virtual_hosts[0].routes[0].matches.add().uri.regex = "a" * 6
    with pytest.raises(ConfigError, match="limit of 5"):
        dataplane.apply(types.ROUTES, packed(bad))
    assert dataplane.routes is serving


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
