"""Incremental views: the store's change sets, scoping (exportTo, Sidecar), shared translations,
and the invariant that a view refreshed change by change equals a translation from scratch."""

import random

from controlplane.model import (
    DestinationRule,
    EgressHost,
    HTTPRoute,
    ResourceKey,
    RouteDestination,
    Service,
    ServiceEndpoint,
    Sidecar,
    Subset,
    VirtualService,
)
from controlplane.snapshots.resources import TranslationCache
from controlplane.snapshots.views import OutboundView, Translator
from controlplane.store import Store
from controlplane.translate import scope_of, translate
from controlplane.world import NodeInfo, service_key
from lightmesh import types

ALICE = NodeInfo(id="a", workload="a", namespace="alice")
BOB = NodeInfo(id="b", workload="b", namespace="bob")


def svc(name: str, namespace: str, *ports: int, export_to: tuple[str, ...] = ()) -> Service:
    return Service(
        name=name,
        namespace=namespace,
        export_to=export_to,
        endpoints=tuple(
            ServiceEndpoint(address="127.0.0.1", port=p, workload=f"{name}-{p}", labels=(("v", str(p % 2)),))
            for p in ports
        ),
    )  # fmt: skip


def fqdn(name: str, namespace: str) -> str:
    return f"{name}.{namespace}.svc.cluster.local"


def put(store: Store, *values: object, at: float = 0.0) -> object:
    changes = {}
    for value in values:
        key = service_key(value) if isinstance(value, Service) else value.key  # type: ignore[attr-defined]
        changes[key] = value
    return store.update("test", changes, at=at)  # type: ignore[arg-type]


def names(store: Store, node: NodeInfo) -> dict[str, list[str]]:
    config = translate(store.world, node)
    return {
        types.SHORT_NAMES[t]: [getattr(m, "name", "") or getattr(m, "cluster_name", "") for m in ms]
        for t, ms in config.items()
        if t != types.INBOUND
    }


def test_store_reports_changed_keys_and_hosts_and_ignores_no_ops() -> None:
    store = Store()
    seen = []
    store.subscribe(seen.append)
    first = svc("catalog", "shop", 1)
    change = put(store, first, at=5.0)
    assert change is not None and seen == [change]
    assert change.keys == {service_key(first)}  # type: ignore[attr-defined]
    assert change.hosts == {fqdn("catalog", "shop")}  # type: ignore[attr-defined]
    assert change.at == 5.0  # type: ignore[attr-defined]
    version = store.version(service_key(first))
    assert put(store, svc("catalog", "shop", 1)) is None  # equal value: nothing changed
    assert store.version(service_key(first)) == version
    vs = VirtualService(key=ResourceKey("VirtualService", "shop", "v"), hosts=(fqdn("x", "shop"),))
    change = put(store, vs)
    assert change.hosts == {fqdn("x", "shop")}  # type: ignore[attr-defined]
    moved = VirtualService(key=vs.key, hosts=(fqdn("y", "shop"),))
    assert put(store, moved).hosts == {fqdn("x", "shop"), fqdn("y", "shop")}  # type: ignore[attr-defined]
    assert store.update("test", {vs.key: None}, at=0).hosts == {fqdn("y", "shop")}  # type: ignore[union-attr]


def test_first_source_by_name_wins_a_shared_key() -> None:
    store = Store()
    store.update("kubernetes", {service_key(svc("c", "s")): svc("c", "s", 1)}, at=0)
    assert store.update("files", {service_key(svc("c", "s")): svc("c", "s", 2)}, at=0) is not None
    assert store.world.services[fqdn("c", "s")].endpoints[0].port == 2
    assert store.update("kubernetes", {service_key(svc("c", "s")): None}, at=0) is None


def test_export_to_limits_services_and_rules_to_namespaces() -> None:
    store = Store()
    put(
        store,
        svc("public", "shop", 1),
        svc("private", "shop", 1, export_to=(".",)),
        svc("for-bob", "shop", 1, export_to=("bob",)),
        svc("mine", "alice", 1),
    )
    assert names(store, ALICE)["ROUTES"] == [
        fqdn("mine", "alice"), fqdn("public", "shop"),
    ]  # fmt: skip
    assert names(store, BOB)["ROUTES"] == [
        fqdn("for-bob", "shop"), fqdn("mine", "alice"), fqdn("public", "shop"),
    ]  # fmt: skip
    own = NodeInfo(id="s", workload="s", namespace="shop")
    assert fqdn("private", "shop") in names(store, own)["ROUTES"]
    # A DestinationRule exported only to bob gives subsets to bob alone.
    rule = DestinationRule(
        key=ResourceKey("DestinationRule", "bob", "public"),
        host=fqdn("public", "shop"),
        subsets=(Subset(name="v1", labels=(("v", "1"),)),),
        export_to=(".",),
    )
    put(store, rule)
    assert f"outbound|v1|{fqdn('public', 'shop')}" in names(store, BOB)["CLUSTERS"]
    assert f"outbound|v1|{fqdn('public', 'shop')}" not in names(store, ALICE)["CLUSTERS"]


def test_default_export_to_can_make_everything_namespace_private() -> None:
    store = Store(default_export_to=(".",))
    put(store, svc("catalog", "shop", 1), svc("mine", "alice", 1))
    assert names(store, ALICE)["ROUTES"] == [fqdn("mine", "alice")]


def test_sidecar_egress_narrows_routes_but_keeps_the_clusters_routes_need() -> None:
    store = Store()
    split = VirtualService(
        key=ResourceKey("VirtualService", "shop", "front"),
        hosts=(fqdn("front", "shop"),),
        http=(HTTPRoute(destinations=(RouteDestination(host=fqdn("back", "shop")),)),),
    )
    sidecar = Sidecar(
        key=ResourceKey("Sidecar", "alice", "default"),
        selector=None,
        egress=(EgressHost(namespace="alice", host="*"), EgressHost(namespace="shop", host=fqdn("front", "shop"))),
    )  # fmt: skip
    put(
        store,
        svc("front", "shop", 1),
        svc("back", "shop", 2),
        svc("other", "shop", 3),
        svc("mine", "alice", 4),
    )
    put(store, split, sidecar)
    got = names(store, ALICE)
    assert got["ROUTES"] == [fqdn("front", "shop"), fqdn("mine", "alice")]
    assert sorted(got["CLUSTERS"]) == sorted(
        f"outbound||{fqdn(n, ns)}"
        for n, ns in (("front", "shop"), ("back", "shop"), ("mine", "alice"))
    )  # back comes along: front's routes send to it
    assert len(names(store, BOB)["ROUTES"]) == 4  # no Sidecar in bob: everything exported


def test_workload_selector_sidecar_beats_the_namespace_one_and_root_is_the_default() -> None:
    store = Store()
    everything = EgressHost(namespace="*", host="*")
    own = EgressHost(namespace="alice", host="*")
    root = Sidecar(
        key=ResourceKey("Sidecar", "lightmesh-system", "default"), selector=None, egress=(own,)
    )
    narrow = Sidecar(
        key=ResourceKey("Sidecar", "alice", "web"), selector=(("app", "web"),), egress=(everything,)
    )
    put(store, root, narrow)  # fmt: skip
    web = NodeInfo(id="w", workload="w", namespace="alice", labels=(("app", "web"),))
    assert store.world.sidecar_for("alice", dict(web.labels)) == narrow
    assert store.world.sidecar_for("alice", {}) == root
    assert store.world.sidecar_for("bob", {}) == root


def changes(rng: random.Random) -> list[object]:
    """A random sequence of services, VirtualServices, DestinationRules, Sidecars and deletions."""
    out: list[object] = []
    spaces = ("alice", "bob", "shop")
    for _ in range(60):
        name, ns = rng.choice("abcd"), rng.choice(spaces)
        roll = rng.random()
        export = rng.choice(((), (".",), ("bob",), ("*",)))
        if roll < 0.35:
            out.append(svc(name, ns, *rng.sample(range(1, 9), rng.randint(0, 3)), export_to=export))
        elif roll < 0.55:
            dest = fqdn(rng.choice("abcd"), rng.choice(spaces))
            out.append(VirtualService(
                key=ResourceKey("VirtualService", ns, name), hosts=(fqdn(name, ns),), export_to=export,
                http=(HTTPRoute(destinations=(RouteDestination(host=dest),)),),
            ))  # fmt: skip
        elif roll < 0.7:
            out.append(DestinationRule(
                key=ResourceKey("DestinationRule", ns, name), host=fqdn(rng.choice("abcd"), rng.choice(spaces)),
                subsets=(Subset(name="odd", labels=(("v", "1"),)),), export_to=export,
            ))  # fmt: skip
        elif roll < 0.8:
            egress = tuple(
                EgressHost(namespace=rng.choice(("*", *spaces)), host=rng.choice(("*", fqdn(rng.choice("abcd"), "shop"))))
                for _ in range(rng.randint(1, 2))
            )  # fmt: skip
            out.append(Sidecar(key=ResourceKey("Sidecar", ns, "s"), selector=None, egress=egress))
        else:
            kind = rng.choice(("Service", "VirtualService", "DestinationRule", "Sidecar"))
            out.append(ResourceKey(kind, ns, "s" if kind == "Sidecar" else name))
    return out


def test_views_refreshed_change_by_change_equal_translation_from_scratch() -> None:
    """The incremental pipeline's invariant, over random worlds: only the touched hosts are
    recomputed, and the result is what a full translation gives."""
    for seed in range(12):
        rng = random.Random(seed)
        store = Store()
        translator = Translator(store.world, store.version, TranslationCache())
        views: dict[str, OutboundView] = {}
        for step in changes(rng):
            if isinstance(step, ResourceKey):
                change = store.update("test", {step: None}, at=0)
            else:
                change = put(store, step)
            for node in (ALICE, BOB):
                scope = scope_of(store.world, node)
                view = views.get(node.id)
                if view is None or view.scope != scope:
                    view = views[node.id] = OutboundView(scope)
                    view.refresh(translator, sorted(store.world.hosts()), at=0)
                elif change is not None:
                    view.refresh(translator, sorted(change.hosts), at=0)  # type: ignore[attr-defined]
                expected = names(store, node)
                got = {
                    types.SHORT_NAMES[t]: sorted(s.current.versions) for t, s in view.sets.items()
                }
                assert got == {k: sorted(v) for k, v in expected.items()}, (seed, step)


def test_views_of_one_namespace_share_translations() -> None:
    store = Store()
    put(store, *(svc(f"s{i}", "shop", i) for i in range(1, 20)))
    cache = TranslationCache()
    translator = Translator(store.world, store.version, cache)
    first = OutboundView(scope_of(store.world, ALICE))
    first.refresh(translator, sorted(store.world.hosts()), at=0)
    built = cache.builds
    second = OutboundView(scope_of(store.world, BOB))  # other namespace, same resources
    second.refresh(translator, sorted(store.world.hosts()), at=0)
    assert cache.builds == built
    host = fqdn("s3", "shop")
    assert (
        first.sets[types.CLUSTER].current.resources[f"outbound||{host}"]
        is (second.sets[types.CLUSTER].current.resources[f"outbound||{host}"])
    )
    # One endpoint change: one translation, only that cluster's endpoints change.
    before = dict(first.sets[types.ENDPOINTS].current.versions)
    change = put(store, svc("s3", "shop", 3, 4))
    changed = first.refresh(translator, sorted(change.hosts), at=1)  # type: ignore[attr-defined]
    assert [s.type_url for s in changed] == [types.ENDPOINTS]
    after = first.sets[types.ENDPOINTS].current.versions
    assert {n for n in after if after[n] != before.get(n)} == {f"outbound||{host}"}
