"""Intercepted connections: the router falls back to the dialled address when Host is not enough."""

from google.protobuf.any_pb2 import Any as AnyPb
from google.protobuf.message import Message

from lightmesh import types
from lightmesh.v1 import config_pb2 as pb
from sidecar.config.apply import DataPlane
from sidecar.contract import Forward, LocalReply, RequestHead
from sidecar.routing.destinations import PASSTHROUGH
from sidecar.routing.router import OutboundRouter

CLUSTER = "outbound||catalog.default.svc.cluster.local"
SERVICE_IP = "10.0.0.12"


def pack(message: Message) -> list[AnyPb]:
    item = AnyPb()
    item.Pack(message)
    return [item]


def dataplane() -> DataPlane:
    """catalog, reachable by name and by its service address (a domain like any other)."""
    plane = DataPlane()
    plane.apply(types.CLUSTER, pack(pb.Cluster(name=CLUSTER)))
    plane.apply(types.ENDPOINTS, pack(pb.ClusterLoadAssignment(
        cluster_name=CLUSTER, endpoints=[pb.Endpoint(address="127.0.0.9", port=8080)])))  # fmt: skip
    plane.apply(types.ROUTES, pack(pb.VirtualHost(
        name="catalog", domains=["catalog", SERVICE_IP], routes=[pb.Route(
            name="r", clusters=[pb.WeightedCluster(cluster=CLUSTER, weight=100)])])))  # fmt: skip
    return plane


def head(host: str, original_dst: tuple[str, int] | None) -> RequestHead:
    return RequestHead(
        method="GET", path="/", host=host, http_version="1.1", original_dst=original_dst
    )


def test_host_header_wins_when_it_names_a_service() -> None:
    decision = OutboundRouter(dataplane()).resolve(head("catalog", ("192.0.2.7", 80)))
    assert isinstance(decision, Forward)
    assert (decision.cluster, decision.address) == (CLUSTER, "127.0.0.9")


def test_unknown_host_routes_by_the_dialled_service_address() -> None:
    decision = OutboundRouter(dataplane()).resolve(head("some-alias", (SERVICE_IP, 8080)))
    assert isinstance(decision, Forward)
    assert (decision.cluster, decision.address, decision.port) == (CLUSTER, "127.0.0.9", 8080)


def test_destination_outside_the_mesh_passes_through_to_where_the_app_was_going() -> None:
    decision = OutboundRouter(dataplane()).resolve(head("example.org", ("192.0.2.7", 443)))
    assert decision == Forward(address="192.0.2.7", port=443, cluster=PASSTHROUGH)


def test_without_interception_an_unknown_host_is_still_no_route() -> None:
    decision = OutboundRouter(dataplane()).resolve(head("example.org", None))
    assert isinstance(decision, LocalReply)
    assert decision.flags == "NR"
