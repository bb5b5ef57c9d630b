"""Translation of a world into one sidecar's config."""

from controlplane.model import (
    DestinationRule,
    HTTPMatch,
    HTTPRoute,
    ResourceKey,
    RouteDestination,
    Service,
    ServiceEndpoint,
    StringMatch,
    Subset,
    TrafficPolicy,
    VirtualService,
)
from controlplane.snapshots import SnapshotCache, version_of
from controlplane.translate import translate
from controlplane.world import NodeInfo, World
from lightmesh import types
from lightmesh.v1 import config_pb2 as pb

CATALOG = "catalog.shop.svc.cluster.local"
NODE = NodeInfo(id="frontend-1.shop", workload="frontend", namespace="shop")


def endpoint(port: int, version: str) -> ServiceEndpoint:
    return ServiceEndpoint(
        address="127.0.0.1",
        port=port,
        workload=f"catalog-{version}",
        labels=(("version", version),),
    )


def world(*resources: object) -> World:
    service = Service(
        name="catalog", namespace="shop", endpoints=(endpoint(2, "v2"), endpoint(1, "v1"))
    )
    return World(
        revision=1,
        virtual_services=tuple(r for r in resources if isinstance(r, VirtualService)),
        destination_rules=tuple(r for r in resources if isinstance(r, DestinationRule)),
        services={CATALOG: service},
    )


RULE = DestinationRule(
    key=ResourceKey("DestinationRule", "shop", "catalog"),
    host=CATALOG,
    policy=TrafficPolicy(lb_policy="RANDOM"),
    subsets=(
        Subset(name="v1", labels=(("version", "v1"),), policy=TrafficPolicy(connect_timeout=0.25)),
        Subset(name="v2", labels=(("version", "v2"),)),
    ),
)
SPLIT = VirtualService(
    key=ResourceKey("VirtualService", "shop", "catalog"),
    hosts=(CATALOG,),
    http=(
        HTTPRoute(
            name="jason",
            matches=(HTTPMatch(headers=(("end-user", StringMatch(kind="exact", value="jason")),)),),
            destinations=(RouteDestination(host=CATALOG, subset="v2"),),
        ),
        HTTPRoute(
            destinations=(
                RouteDestination(host=CATALOG, subset="v1", weight=90),
                RouteDestination(host=CATALOG, subset="v2", weight=10),
            ),
            timeout=2.0,
        ),
    ),
)


def test_service_without_rules_gets_one_cluster_and_a_default_route() -> None:
    config = translate(world(), NODE)
    (cluster,) = config[types.CLUSTER]
    assert isinstance(cluster, pb.Cluster)
    assert (cluster.name, cluster.lb_policy, cluster.connect_timeout_ms) == (
        f"outbound||{CATALOG}",
        pb.PEAK_EWMA,
        10_000,
    )
    (routes,) = config[types.ROUTES]
    assert isinstance(routes, pb.RouteConfiguration)
    (vhost,) = routes.virtual_hosts
    assert list(vhost.domains) == [CATALOG, "catalog.shop.svc", "catalog.shop", "catalog"]
    assert [(c.cluster, c.weight) for c in vhost.routes[0].clusters] == [
        (f"outbound||{CATALOG}", 100)
    ]


def test_short_name_only_for_sidecars_in_the_same_namespace() -> None:
    other = NodeInfo(id="x.other", workload="x", namespace="other")
    (routes,) = translate(world(), other)[types.ROUTES]
    assert isinstance(routes, pb.RouteConfiguration)
    assert "catalog" not in routes.virtual_hosts[0].domains


def test_subsets_select_endpoints_by_label_and_inherit_policy() -> None:
    config = translate(world(RULE), NODE)
    clusters = {c.name: c for c in config[types.CLUSTER] if isinstance(c, pb.Cluster)}
    assert clusters[f"outbound|v1|{CATALOG}"].connect_timeout_ms == 250
    assert clusters[f"outbound|v1|{CATALOG}"].lb_policy == pb.RANDOM  # inherited from the host
    assignments = {
        a.cluster_name: [e.port for e in a.endpoints]
        for a in config[types.ENDPOINTS]
        if isinstance(a, pb.ClusterLoadAssignment)
    }
    assert assignments == {
        f"outbound||{CATALOG}": [1, 2],
        f"outbound|v1|{CATALOG}": [1],
        f"outbound|v2|{CATALOG}": [2],
    }


def test_virtual_service_routes_in_order_with_weights_and_timeout() -> None:
    (routes,) = translate(world(RULE, SPLIT), NODE)[types.ROUTES]
    assert isinstance(routes, pb.RouteConfiguration)
    (vhost,) = routes.virtual_hosts
    assert vhost.origin == "VirtualService shop/catalog"
    first, second = vhost.routes
    assert first.name == "jason"
    assert first.matches[0].headers[0].name == "end-user"
    assert first.matches[0].headers[0].value.exact == "jason"
    assert [(c.cluster, c.weight) for c in second.clusters] == [
        (f"outbound|v1|{CATALOG}", 90),
        (f"outbound|v2|{CATALOG}", 10),
    ]
    assert (second.name, second.timeout_ms) == ("http[1]", 2000)


def test_versions_are_content_hashes_stable_across_translations() -> None:
    a = translate(world(RULE, SPLIT), NODE)
    b = translate(world(RULE, SPLIT), NODE)
    assert {t: version_of(r) for t, r in a.items()} == {t: version_of(r) for t, r in b.items()}
    c = translate(world(RULE), NODE)
    assert version_of(c[types.ROUTES]) != version_of(a[types.ROUTES])
    assert version_of(c[types.CLUSTER]) == version_of(a[types.CLUSTER])


def test_snapshot_cache_reports_only_changed_types() -> None:
    cache = SnapshotCache()
    assert set(cache.set(NODE.id, translate(world(RULE), NODE))) == set(types.PUSH_ORDER)
    assert cache.set(NODE.id, translate(world(RULE), NODE)) == []
    assert cache.set(NODE.id, translate(world(RULE, SPLIT), NODE)) == [types.ROUTES]


def test_service_virtual_ips_are_domains_of_its_virtual_host() -> None:
    base = world()
    service = base.services[CATALOG]
    with_ips = World(
        revision=1,
        virtual_services=(),
        destination_rules=(),
        services={
            CATALOG: Service(
                name=service.name,
                namespace=service.namespace,
                endpoints=service.endpoints,
                addresses=("10.0.0.12", "fd00::12"),
            )
        },
    )
    (routes,) = translate(with_ips, NODE)[types.ROUTES]
    assert isinstance(routes, pb.RouteConfiguration)
    assert list(routes.virtual_hosts[0].domains)[-2:] == ["10.0.0.12", "fd00::12"]
