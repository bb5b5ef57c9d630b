"""Views: the resources one scope of sidecars receives, kept current host by host. Pure.

An `OutboundView` holds the CLUSTER, ENDPOINTS and ROUTES sets of one `ScopeKey` (namespace,
Sidecar, on-demand names); every sidecar of that scope shares them (go-control-plane's NodeHash
idea: translate and serialize once, send to many). `refresh(hosts)` recomputes only the given
hosts: whether each is routed, its VirtualHost, which hosts its routes need clusters of, and the
clusters and endpoints of those. An `InboundView` holds the one InboundPolicy of an `InboundKey`.
Translations go through the cache, keyed by the versions of their inputs, so views of different
scopes that need the same resource share one translation.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from controlplane.model import ResourceKey
from controlplane.snapshots.resources import Resource, TranslationCache, make_resource
from controlplane.snapshots.sets import ResourceSet
from controlplane.translate.clusters import cluster_host, host_assignments, host_clusters
from controlplane.translate.gateway import gateway_of
from controlplane.translate.inbound import InboundKey, inbound_from_key
from controlplane.translate.routes import local_to, virtual_host
from controlplane.translate.scope import (
    ScopeKey,
    cluster_visible,
    host_dependencies,
    routes_host,
)
from controlplane.world import SERVICE, TRUST_BUNDLE, TRUST_DOMAIN, World, host_namespace
from lightmesh import types

Versions = Callable[[ResourceKey], int]


def _service_key(host: str) -> ResourceKey:
    name, namespace = ([*host.split("."), ""])[:2]
    return ResourceKey(SERVICE, namespace, name)


class Translator:
    """Per-resource translation through the shared cache."""

    def __init__(self, world: World, versions: Versions, cache: TranslationCache) -> None:
        self.world = world
        self._versions = versions
        self.cache = cache

    def virtual_host(self, host: str, namespace: str) -> Resource:
        """The VirtualHost of `host` for sidecars of `namespace`."""
        world = self.world
        vs = world.virtual_service(host, namespace)
        local = local_to(host, namespace)
        vs_key = vs.key if vs is not None else None
        service_key = _service_key(host)
        inputs = (
            self._versions(vs_key) if vs_key else 0,
            self._versions(service_key),
        )

        def build() -> Sequence[Resource]:
            message = virtual_host(
                host,
                vs,
                world.services.get(host),
                namespace=host_namespace(host) if local else "",
            )
            return (make_resource(types.ROUTES, host, message),)

        return self.cache.get(("vh", host, vs_key, local), inputs, build)[0]

    def clusters(self, host: str, namespace: str) -> tuple[Sequence[Resource], Sequence[Resource]]:
        """Clusters and endpoints of service `host` for sidecars of `namespace`."""
        world = self.world
        rule = world.destination_rule(host, namespace)
        rule_key = rule.key if rule is not None else None
        service = world.services[host]
        service_key = _service_key(host)
        inputs = (
            self._versions(service_key),
            self._versions(rule_key) if rule_key else 0,
            self._versions(TRUST_DOMAIN),
        )

        def build_clusters() -> Sequence[Resource]:
            return tuple(
                make_resource(types.CLUSTER, c.name, c)
                for c in host_clusters(service, rule, trust_domain=world.trust_domain)
            )

        def build_assignments() -> Sequence[Resource]:
            return tuple(
                make_resource(types.ENDPOINTS, a.cluster_name, a)
                for a in host_assignments(service, rule)
            )

        return (
            self.cache.get(("cl", host, rule_key), inputs, build_clusters),
            self.cache.get(("ep", host, rule_key), inputs[:2], build_assignments),
        )

    def inbound(self, key: InboundKey) -> Resource:
        """The InboundPolicy for one set of inputs."""
        inputs = (
            *(self._versions(k) for k in key.inputs(self.world)),
            self._versions(TRUST_BUNDLE),
        )

        def build() -> Sequence[Resource]:
            message = inbound_from_key(self.world, key)
            return (make_resource(types.INBOUND, types.INBOUND_NAME, message),)

        return self.cache.get(("in", key), inputs, build)[0]


# The GATEWAY set of every sidecar view: empty for ever, so one is shared.
_NO_GATEWAY = ResourceSet(types.GATEWAY)


class OutboundView:
    """CLUSTER, ENDPOINTS and ROUTES of one scope, refreshed host by host."""

    def __init__(self, scope: ScopeKey) -> None:
        self.scope = scope
        self.members: set[Any] = set()  # the streams served from it (the push stage's)
        self.sets = {t: ResourceSet(t) for t in (types.CLUSTER, types.ENDPOINTS, types.ROUTES)}
        self.sets[types.GATEWAY] = _NO_GATEWAY  # sidecars: always empty, never changes
        self._deps: dict[str, frozenset[str]] = {}  # routed host -> hosts it needs clusters of
        self._refs: Counter[str] = Counter()  # cluster host -> routed hosts needing it
        self._names: dict[str, tuple[str, ...]] = {}  # cluster host -> its cluster names

    def refresh(
        self, translator: Translator, hosts: Iterable[str], *, at: float
    ) -> list[ResourceSet]:
        """Recompute `hosts`; return the sets that changed (in push order)."""
        world = translator.world
        scope = self.scope
        namespace = scope.namespace
        routes: dict[str, Resource | None] = {}
        touched: set[str] = set()
        for host in hosts:
            old = self._deps.pop(host, frozenset())
            new: frozenset[str] = frozenset()
            if routes_host(world, scope, host):
                routes[host] = translator.virtual_host(host, namespace)
                new = host_dependencies(world, namespace, host)
                self._deps[host] = new
            elif host in self.sets[types.ROUTES].current.versions:
                routes[host] = None
            for gone in old - new:
                self._refs[gone] -= 1
                if self._refs[gone] <= 0:
                    del self._refs[gone]
            for added in new - old:
                self._refs[added] += 1
            touched |= old ^ new
            touched.add(host)
        clusters: dict[str, Resource | None] = {}
        endpoints: dict[str, Resource | None] = {}
        for host in touched:
            before = self._names.pop(host, ())
            names: tuple[str, ...] = ()
            if host in self._refs and cluster_visible(world, namespace, host):
                found, assignments = translator.clusters(host, namespace)
                clusters.update((r.name, r) for r in found)
                endpoints.update((r.name, r) for r in assignments)
                names = tuple(r.name for r in found)
                self._names[host] = names
            for name in set(before) - set(names):
                clusters[name] = endpoints[name] = None
        changed = []
        for type_url, changes in (
            (types.CLUSTER, clusters),
            (types.ENDPOINTS, endpoints),
            (types.ROUTES, routes),
        ):
            if changes and self.sets[type_url].update(changes, at=at):
                changed.append(self.sets[type_url])
        return changed

    def known_hosts(self) -> set[str]:
        """Hosts this view routes or has clusters of."""
        return set(self._deps) | set(self._names)


class InboundView:
    """The InboundPolicy of one set of inputs."""

    def __init__(self, key: InboundKey) -> None:
        self.key = key
        self.members: set[Any] = set()
        self.set = ResourceSet(types.INBOUND)

    def refresh(self, translator: Translator, *, at: float) -> bool:
        """Translate again if an input changed; return whether the resource changed."""
        return self.set.update({types.INBOUND_NAME: translator.inbound(self.key)}, at=at)


class GatewayView:
    """What an ingress gateway receives (one view per namespace and labels): its listeners
    (GATEWAY), no ROUTES (the listeners carry each port's routes), and the CLUSTER and ENDPOINTS
    of every host its routes send to.

    Gateways are few and their inputs (Gateways, VirtualServices bound to them, Secrets) are not
    indexed by host, so every flush recomputes the whole view; the sets send only what differs.
    """

    def __init__(self, scope: ScopeKey) -> None:
        self.scope = scope
        self.members: set[Any] = set()
        self.sets = {
            t: ResourceSet(t) for t in (types.CLUSTER, types.ENDPOINTS, types.ROUTES, types.GATEWAY)
        }

    def refresh(
        self, translator: Translator, hosts: Iterable[str], *, at: float
    ) -> list[ResourceSet]:
        """Recompute everything (`hosts` is ignored); return the sets that changed."""
        del hosts
        world = translator.world
        namespace = self.scope.namespace
        config = gateway_of(world, namespace, dict(self.scope.gateway or ()))
        wanted: dict[str, dict[str, Resource]] = {t: {} for t in self.sets}
        for listener in config.listeners:
            wanted[types.GATEWAY][listener.name] = make_resource(
                types.GATEWAY, listener.name, listener
            )
        for host in sorted(config.destinations):
            if not cluster_visible(world, namespace, host):
                continue
            found, assignments = translator.clusters(host, namespace)
            wanted[types.CLUSTER].update((r.name, r) for r in found)
            wanted[types.ENDPOINTS].update((r.name, r) for r in assignments)
        changed = []
        for type_url in types.PUSH_ORDER:
            resource_set = self.sets.get(type_url)
            if resource_set is None:
                continue
            new = wanted[type_url]
            changes: dict[str, Resource | None] = dict(new)
            changes.update((n, None) for n in resource_set.current.versions if n not in new)
            if changes and resource_set.update(changes, at=at):
                changed.append(resource_set)
        return changed

    def known_hosts(self) -> set[str]:
        """Hosts this view has clusters of."""
        return {cluster_host(n) for n in self.sets[types.CLUSTER].current.versions}
