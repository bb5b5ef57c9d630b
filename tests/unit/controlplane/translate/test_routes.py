"""A VirtualService's routes as one VirtualHost: Istio's match.port reaches the sidecar."""

from controlplane.model import HTTPMatch, HTTPRoute, ResourceKey, RouteDestination, VirtualService
from controlplane.translate.routes import virtual_host

HOST = "catalog.shop.svc.cluster.local"


def test_match_port_reaches_the_route_match_and_its_absence_means_any() -> None:
    service = VirtualService(
        key=ResourceKey("VirtualService", "shop", "catalog"),
        hosts=(HOST,),
        http=(
            HTTPRoute(
                matches=(HTTPMatch(port=8080),),
                destinations=(RouteDestination(host=HOST, subset="v2"),),
            ),
            HTTPRoute(destinations=(RouteDestination(host=HOST, subset="v1"),)),
        ),
    )
    vhost = virtual_host(HOST, service, None, namespace="shop")
    by_port, rest = vhost.routes
    assert [m.port for m in by_port.matches] == [8080]
    assert list(rest.matches) == []
    assert by_port.clusters[0].cluster == f"outbound|v2|{HOST}"


def test_match_entries_for_gateways_only_are_left_out_of_the_sidecars_routes() -> None:
    edge_only = HTTPMatch(port=443, gateways=("shop/edge",))
    both = HTTPMatch(port=8080, gateways=("shop/edge", "mesh"))
    service = VirtualService(
        key=ResourceKey("VirtualService", "shop", "catalog"),
        hosts=(HOST,),
        http=(
            HTTPRoute(matches=(edge_only,), destinations=(RouteDestination(host=HOST),)),
            HTTPRoute(matches=(edge_only, both), destinations=(RouteDestination(host=HOST),)),
            HTTPRoute(destinations=(RouteDestination(host=HOST, subset="v1"),)),
        ),
    )
    routes = virtual_host(HOST, service, None, namespace="shop").routes
    assert [r.name for r in routes] == ["http[1]", "http[2]"]
    assert [m.port for m in routes[0].matches] == [8080]
