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
from controlplane.snapshots.resources import make_resource
from controlplane.snapshots.sets import ResourceSet
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
    (vhost,) = config[types.ROUTES]
    assert isinstance(vhost, pb.VirtualHost)
    assert list(vhost.domains) == [CATALOG, "catalog.shop.svc", "catalog.shop", "catalog"]
    assert [(c.cluster, c.weight) for c in vhost.routes[0].clusters] == [
        (f"outbound||{CATALOG}", 100)
    ]


def test_short_name_only_for_sidecars_in_the_same_namespace() -> None:
    other = NodeInfo(id="x.other", workload="x", namespace="other")
    (vhost,) = translate(world(), other)[types.ROUTES]
    assert isinstance(vhost, pb.VirtualHost)
    assert "catalog" not in vhost.domains


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
    (vhost,) = translate(world(RULE, SPLIT), NODE)[types.ROUTES]
    assert isinstance(vhost, pb.VirtualHost)
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


def versions(config: dict[str, list[object]]) -> dict[str, dict[str, str]]:
    out = {}
    for type_url, messages in config.items():
        resources = [make_resource(type_url, str(i), m) for i, m in enumerate(messages)]  # type: ignore[arg-type]
        out[type_url] = {r.name: r.version for r in resources}
    return out


def test_versions_are_content_hashes_stable_across_translations() -> None:
    a = versions(translate(world(RULE, SPLIT), NODE))  # type: ignore[arg-type]
    assert a == versions(translate(world(RULE, SPLIT), NODE))  # type: ignore[arg-type]
    c = versions(translate(world(RULE), NODE))  # type: ignore[arg-type]
    assert c[types.ROUTES] != a[types.ROUTES]
    assert c[types.CLUSTER] == a[types.CLUSTER]


def test_resource_set_versions_each_resource_and_logs_only_what_changed() -> None:
    routes = ResourceSet(types.ROUTES)
    (plain,) = translate(world(RULE), NODE)[types.ROUTES]
    (split,) = translate(world(RULE, SPLIT), NODE)[types.ROUTES]
    first = make_resource(types.ROUTES, CATALOG, plain)
    assert routes.update({CATALOG: first}, at=1.0)
    start = routes.current.tag
    assert not routes.update({CATALOG: make_resource(types.ROUTES, CATALOG, plain)}, at=2.0)
    assert routes.update({CATALOG: make_resource(types.ROUTES, CATALOG, split)}, at=3.0)
    assert routes.changed_since(start) == ({CATALOG}, 3.0)
    assert routes.current.versions[CATALOG] != first.version
    assert routes.changed_since(routes.current.tag) == (set(), None)
    assert routes.changed_since((routes.id + 1, 0)) is None  # another set: compare everything


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
    (vhost,) = translate(with_ips, NODE)[types.ROUTES]
    assert isinstance(vhost, pb.VirtualHost)
    assert list(vhost.domains)[-2:] == ["10.0.0.12", "fd00::12"]
