"""Translation: world + sidecar identity → that sidecar's config, as protobuf resources. Pure.

Each resource is translated on its own from the few inputs it depends on (`clusters.py`,
`routes.py`, `inbound.py`), within what the sidecar can use (`scope.py`), so the incremental
pipeline recomputes only what a change touches. `translate` builds one sidecar's whole config from
scratch with the same functions: the reference the incremental views are tested against.
"""

from __future__ import annotations

from google.protobuf.message import Message

from controlplane.translate.clusters import (
    cluster_host,
    cluster_name,
    host_assignments,
    host_clusters,
)
from controlplane.translate.gateway import gateway_of
from controlplane.translate.inbound import inbound_policy
from controlplane.translate.routes import virtual_host
from controlplane.translate.scope import ScopeKey, cluster_hosts, cluster_visible, routed_hosts
from controlplane.world import NodeInfo, World
from lightmesh import types

__all__ = ["ProxyConfig", "cluster_host", "cluster_name", "scope_of", "translate"]

ProxyConfig = dict[str, list[Message]]


def scope_of(world: World, node: NodeInfo, extra_hosts: frozenset[str] = frozenset()) -> ScopeKey:
    """The scope a sidecar's outbound config is computed for."""
    if node.gateway:
        return ScopeKey(namespace=node.namespace, gateway=node.labels)
    sidecar = world.sidecar_for(node.namespace, dict(node.labels))
    return ScopeKey(namespace=node.namespace, sidecar=sidecar, extra_hosts=extra_hosts)


def translate(world: World, node: NodeInfo) -> ProxyConfig:
    """Return the complete config of one sidecar, keyed by type URL (resources sorted by name)."""
    if node.gateway:
        return translate_gateway(world, node)
    scope = scope_of(world, node)
    routed = routed_hosts(world, scope)
    clusters: list[Message] = []
    assignments: list[Message] = []
    for host in cluster_hosts(world, scope, routed):
        service = world.services[host]
        rule = world.destination_rule(host, node.namespace)
        clusters += host_clusters(service, rule, trust_domain=world.trust_domain)
        assignments += host_assignments(service, rule)
    vhosts: list[Message] = [
        virtual_host(
            host,
            world.virtual_service(host, node.namespace),
            world.services.get(host),
            namespace=node.namespace,
        )
        for host in routed
    ]
    return {
        types.CLUSTER: sorted(clusters, key=lambda c: c.name),  # type: ignore[attr-defined]
        types.ENDPOINTS: sorted(assignments, key=lambda a: a.cluster_name),  # type: ignore[attr-defined]
        types.ROUTES: vhosts,
        types.INBOUND: [inbound_policy(world, node)],
        types.GATEWAY: [],
    }


def translate_gateway(world: World, node: NodeInfo) -> ProxyConfig:
    """The complete config of an ingress gateway: its listeners and their clusters."""
    config = gateway_of(world, node.namespace, dict(node.labels))
    clusters: list[Message] = []
    assignments: list[Message] = []
    for host in sorted(config.destinations):
        if not cluster_visible(world, node.namespace, host):
            continue
        service = world.services[host]
        rule = world.destination_rule(host, node.namespace)
        clusters += host_clusters(service, rule, trust_domain=world.trust_domain)
        assignments += host_assignments(service, rule)
    return {
        types.CLUSTER: sorted(clusters, key=lambda c: c.name),  # type: ignore[attr-defined]
        types.ENDPOINTS: sorted(assignments, key=lambda a: a.cluster_name),  # type: ignore[attr-defined]
        types.ROUTES: [],
        types.INBOUND: [inbound_policy(world, node)],
        types.GATEWAY: list(config.listeners),
    }
