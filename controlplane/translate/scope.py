"""What a sidecar can use: Istio's visibility (exportTo) narrowed by its Sidecar resource. Pure.

- A service is seen by the sidecars of the namespaces it is exported to (its
  `networking.istio.io/exportTo` annotation, else the mesh default `--default-export-to`).
- A VirtualService or DestinationRule applies to the sidecars of the namespaces it is exported to
  (`spec.exportTo`, same default); a host without a service is routed when a VirtualService of it
  is seen.
- A Sidecar resource selecting the workload narrows the routed hosts to its `egress[].hosts`.
- Names a sidecar subscribes to explicitly (on-demand) are routed too, when they are seen.
- Every routed host brings the clusters its routes send to (`host_dependencies`), so a route never
  points at a cluster the sidecar was not given; those come without the egress narrowing.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from controlplane.model import Sidecar, VirtualService
from controlplane.world import World


@dataclass(frozen=True, slots=True)
class ScopeKey:
    """Sidecars with equal keys receive equal outbound config (they share one view)."""

    namespace: str
    sidecar: Sidecar | None = None
    extra_hosts: frozenset[str] = frozenset()
    # An ingress gateway's labels (the Gateways selecting them): its view is a GatewayView.
    gateway: tuple[tuple[str, str], ...] | None = None


def routes_host(world: World, scope: ScopeKey, host: str) -> bool:
    """Whether sidecars of `scope` get a VirtualHost for `host`."""
    service = world.services.get(host)
    if service is not None:
        if not world.service_visible(service, scope.namespace):
            return False
        owner = service.namespace
    else:
        vs = world.virtual_service(host, scope.namespace)
        if vs is None:
            return False
        owner = vs.key.namespace
    if scope.sidecar is None or host in scope.extra_hosts:
        return True
    return scope.sidecar.selects(host, owner, scope.namespace)


def cluster_visible(world: World, namespace: str, host: str) -> bool:
    """Whether sidecars of `namespace` may get the clusters of `host` (a service they see)."""
    service = world.services.get(host)
    return service is not None and world.service_visible(service, namespace)


def host_dependencies(world: World, namespace: str, host: str) -> frozenset[str]:
    """The hosts whose clusters the VirtualHost of `host` routes to (for sidecars of `namespace`),
    whether or not they exist or are visible yet (`cluster_visible` decides that per cluster)."""
    vs: VirtualService | None = world.virtual_service(host, namespace)
    hosts = set(vs.destination_hosts()) if vs is not None else set()
    hosts.add(host)
    return frozenset(hosts)


def routed_hosts(world: World, scope: ScopeKey) -> list[str]:
    """Every host sidecars of `scope` get a VirtualHost for, sorted."""
    return sorted(h for h in world.hosts() | scope.extra_hosts if routes_host(world, scope, h))


def cluster_hosts(world: World, scope: ScopeKey, routed: Iterable[str]) -> list[str]:
    """Every host sidecars of `scope` get clusters for, sorted."""
    found: set[str] = set()
    for host in routed:
        found |= host_dependencies(world, scope.namespace, host)
    return sorted(h for h in found if cluster_visible(world, scope.namespace, h))
