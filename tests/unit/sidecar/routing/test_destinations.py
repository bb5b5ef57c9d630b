"""The accept-time decision for intercepted connections: HTTP, TCP to a cluster, or passthrough."""

from lightmesh import types
from lightmesh.v1 import config_pb2 as pb
from sidecar.config.apply import DataPlane
from sidecar.contract import Forward, LocalReply
from sidecar.routing.destinations import PASSTHROUGH, build_destinations
from sidecar.routing.router import OutboundRouter
from tests.support.config import pack

WEB = "outbound||web.shop.svc.cluster.local"
DB = "outbound||db.shop.svc.cluster.local"
CONFIG = [
    pb.VirtualHost(name="web.shop.svc.cluster.local", domains=["web", "10.0.0.10"]),
    pb.VirtualHost(
        name="db.shop.svc.cluster.local",
        domains=["db", "10.0.0.20", "fd00::20"],
        tcp_routes=[pb.TcpRoute(port=5432, cluster=DB)],
    ),
]


def test_classify_original_destinations() -> None:
    table = build_destinations(CONFIG, {WEB: ["10.1.0.5"], DB: ["10.1.0.7"]})
    assert table.classify(("10.0.0.10", 80)) is None  # a service address: HTTP
    assert table.classify(("10.0.0.20", 8080)) is None  # same service, a port not declared TCP
    assert table.classify(("10.0.0.20", 5432)) == DB
    assert table.classify(("fd00::20", 5432)) == DB
    assert table.classify(("10.1.0.5", 15006)) is None  # an endpoint's address: HTTP
    # A db endpoint dialled directly (headless service) at the declared port: raw TCP to it.
    assert table.classify(("10.1.0.7", 5432)) == PASSTHROUGH
    assert table.classify(("10.1.0.7", 8080)) is None
    assert table.classify(("192.0.2.7", 443)) == PASSTHROUGH
    assert table.classify(("192.0.2.7", 5432)) == PASSTHROUGH  # the port alone means nothing


def test_empty_config_passes_everything_through() -> None:
    assert build_destinations([], {}).classify(("10.0.0.1", 80)) == (PASSTHROUGH)


def dataplane(db_endpoints: list[pb.Endpoint]) -> DataPlane:
    plane = DataPlane()
    plane.apply(types.CLUSTER, pack(pb.Cluster(name=WEB), pb.Cluster(name=DB)))
    plane.apply(types.ENDPOINTS, pack(
        pb.ClusterLoadAssignment(cluster_name=WEB, endpoints=[pb.Endpoint(address="10.1.0.5", port=15006)]),
        pb.ClusterLoadAssignment(cluster_name=DB, endpoints=db_endpoints),
    ))  # fmt: skip
    plane.apply(types.ROUTES, pack(*CONFIG))
    return plane


def test_declared_tcp_port_is_load_balanced_over_its_endpoints() -> None:
    router = OutboundRouter(dataplane([
        pb.Endpoint(address="10.1.0.7", port=5432), pb.Endpoint(address="10.1.0.8", port=5432)]))  # fmt: skip
    picks = [router.divert(("10.0.0.20", 5432)) for _ in range(4)]
    assert all(isinstance(p, Forward) and p.cluster == DB for p in picks)
    assert sorted((p.address, p.port) for p in picks if isinstance(p, Forward)) == [
        ("10.1.0.7", 5432), ("10.1.0.7", 5432), ("10.1.0.8", 5432), ("10.1.0.8", 5432)]  # fmt: skip


def test_router_divert_http_passthrough_and_no_endpoint() -> None:
    router = OutboundRouter(dataplane([]))
    assert router.divert(("10.0.0.10", 80)) is None
    assert router.divert(("10.1.0.5", 8080)) is None
    assert router.divert(("192.0.2.7", 443)) == Forward(
        address="192.0.2.7", port=443, cluster=PASSTHROUGH
    )
    refused = router.divert(("10.0.0.20", 5432))
    assert isinstance(refused, LocalReply) and refused.flags == "UH"
