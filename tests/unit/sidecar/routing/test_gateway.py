"""A gateway port's compiled config: server choice by SNI / Host, wildcard route lookup."""

from __future__ import annotations

from lightmesh.v1 import config_pb2 as pb
from sidecar.contract import RequestHead
from sidecar.routing.gateway import compile_listener, https_location, lookup_order


def head(host: str, path: str = "/") -> RequestHead:
    return RequestHead(method="GET", path=path, host=host, http_version="1.1")


def route(cluster: str) -> pb.Route:
    return pb.Route(name=cluster, clusters=[pb.WeightedCluster(cluster=cluster, weight=100)])


LISTENER = compile_listener(
    pb.GatewayListener(
        name="port-443",
        port=443,
        servers=[
            pb.GatewayServer(
                name="a", hosts=["shop.example.com"], protocol="HTTPS",
                tls=pb.GatewayTls(mode=pb.GATEWAY_TLS_SIMPLE),
            ),
            pb.GatewayServer(
                name="b", hosts=["*.example.com"], protocol="HTTPS",
                tls=pb.GatewayTls(mode=pb.GATEWAY_TLS_MUTUAL),
            ),
            pb.GatewayServer(
                name="c", hosts=["db.internal"], protocol="TLS",
                tls=pb.GatewayTls(mode=pb.GATEWAY_TLS_PASSTHROUGH),
            ),
            pb.GatewayServer(name="d", hosts=["*"], protocol="HTTP", tls=pb.GatewayTls()),
        ],
        virtual_hosts=[
            pb.VirtualHost(name="443|shop", domains=["shop.example.com"], routes=[route("shop")]),
            pb.VirtualHost(name="443|wild", domains=["*.example.com"], routes=[route("wild")]),
            pb.VirtualHost(name="443|any", domains=["*"], routes=[route("any")]),
        ],
        tls_routes=[
            pb.TlsRoute(
                sni_hosts=["db.internal"], clusters=[pb.WeightedCluster(cluster="db", weight=1)]
            )
        ],
    ),
    max_regex=100,
)  # fmt: skip


def test_lookup_order_is_exact_then_longest_suffix_then_star() -> None:
    assert list(lookup_order("a.b.example.com")) == [
        "a.b.example.com", "*.b.example.com", "*.example.com", "*.com", "*",
    ]  # fmt: skip
    assert list(lookup_order("")) == ["*"]


def test_servers_are_chosen_by_sni_most_specific_first() -> None:
    assert LISTENER.server_for("shop.example.com", tls=True).name == "a"  # type: ignore[union-attr]
    assert LISTENER.server_for("admin.example.com", tls=True).name == "b"  # type: ignore[union-attr]
    assert LISTENER.server_for("db.internal", tls=True).passthrough  # type: ignore[union-attr]
    assert LISTENER.server_for("other.org", tls=True) is None
    # No SNI: the first terminating server; plain text is matched among plain servers only.
    assert LISTENER.server_for("", tls=True).name == "a"  # type: ignore[union-attr]
    assert LISTENER.server_for("shop.example.com", tls=False).name == "d"  # type: ignore[union-attr]


def test_routes_are_found_by_exact_then_wildcard_domain() -> None:
    table = LISTENER.routes
    for host, expected in (
        ("shop.example.com", "shop"),
        ("admin.example.com", "wild"),
        ("other.org", "any"),
    ):
        vhost, found = table.route(head(host))
        assert vhost is not None and found is not None
        assert found.clusters.names == [expected]


def test_tls_routes_by_sni_and_https_location() -> None:
    found = LISTENER.tls_route("db.internal")
    assert found is not None and found.clusters.names == ["db"]
    assert LISTENER.tls_route("x.internal") is None
    assert https_location(head("shop.example.com", "/a?b=1")) == b"https://shop.example.com/a?b=1"
