"""Service ports declared non-HTTP: Kubernetes Service → model → translated TCP routes."""

import pytest

from controlplane.model import is_tcp_port
from controlplane.sources.kube_index import KubeIndex
from controlplane.translate import translate
from controlplane.world import NodeInfo, World
from lightmesh import types
from lightmesh.v1 import config_pb2 as pb

NODE = NodeInfo(id="frontend-1.shop", workload="frontend", namespace="shop")


@pytest.mark.parametrize(
    ("name", "app_protocol", "tcp"),
    [
        ("http", "", False),
        ("web", "", False),
        ("", "", False),
        ("tcp", "", True),
        ("tcp-db", "", True),
        ("mysql", "", True),
        ("postgres-main", "", True),
        ("redis", "", True),
        ("mongo", "", True),
        ("tls-external", "", True),
        ("tcp", "http", False),  # appProtocol wins over the name
        ("web", "kubernetes.io/h2c", False),
        ("web", "kubernetes.io/ws", True),  # not one of http/http2/grpc/h2c
        ("web", "https", True),
        ("web", "HTTP2", False),
        ("grpc-api", "grpc", False),
        ("web", "mysql", True),
    ],
)
def test_istio_protocol_selection(name: str, app_protocol: str, tcp: bool) -> None:
    assert is_tcp_port(name, app_protocol) is tcp


def test_declared_tcp_ports_become_tcp_routes_on_the_service_addresses() -> None:
    index = KubeIndex()
    index.replace("Service", [
        {"metadata": {"name": "db", "namespace": "shop"},
         "spec": {"clusterIP": "10.0.0.20", "ports": [
             {"name": "http", "port": 8080},
             {"name": "postgres", "port": 5432},
             {"name": "admin", "port": 9000, "appProtocol": "redis"}]}},
        {"metadata": {"name": "headless", "namespace": "shop"},
         "spec": {"clusterIP": "None", "ports": [{"name": "tcp", "port": 7000}]}},
    ])  # fmt: skip
    services = index.services()
    db = services["db.shop.svc.cluster.local"]
    assert db.tcp_ports == (5432, 9000)
    world = World(revision=1, virtual_services=(), destination_rules=(), services=services)
    by_name = {
        v.name: v for v in translate(world, NODE)[types.ROUTES] if isinstance(v, pb.VirtualHost)
    }
    assert [(r.port, r.cluster) for r in by_name["db.shop.svc.cluster.local"].tcp_routes] == [
        (5432, "outbound||db.shop.svc.cluster.local"),
        (9000, "outbound||db.shop.svc.cluster.local"),
    ]
    # No virtual IP: the sidecar recognises connections to its endpoints' addresses instead.
    assert [r.port for r in by_name["headless.shop.svc.cluster.local"].tcp_routes] == [7000]
