"""Where an intercepted connection goes, decided once from its original destination. Pure.

Envoy decides per listener (one per service port plus a catch-all); here one outbound listener
asks `Destinations.classify(original_dst)` on accept:
- a service address at a port declared non-HTTP → raw TCP to that service's cluster;
- an address the mesh knows (a service's virtual IP or an endpoint's IP, any other port) → the
  HTTP engine (Host-header routing, retries, metrics per request);
- anything else → raw TCP straight to where the app was going (Envoy's PassthroughCluster),
  never parsed as HTTP, so databases and TLS to external hosts work.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from lightmesh.v1 import config_pb2 as pb

# Envoy's name for the cluster of intercepted traffic to destinations outside the mesh.
PASSTHROUGH = "PassthroughCluster"


@dataclass(frozen=True, slots=True)
class Destinations:
    """The mesh's addresses, as the outbound listener's accept path needs them."""

    # Addresses whose traffic is HTTP unless (address, port) is in `tcp`.
    mesh: frozenset[str] = frozenset()
    # (service address, declared TCP port) → cluster.
    tcp: Mapping[tuple[str, int], str] = field(default_factory=dict)

    def classify(self, original_dst: tuple[str, int]) -> str | None:
        """None: HTTP; else the cluster to splice to (PASSTHROUGH: the original destination)."""
        cluster = self.tcp.get(original_dst)
        if cluster is not None:
            return cluster
        if original_dst[0] in self.mesh:
            return None
        return PASSTHROUGH


def build_destinations(
    vhosts: Iterable[pb.VirtualHost], endpoint_addresses: Mapping[str, Iterable[str]]
) -> Destinations:
    """The table from the virtual hosts (IP domains, TCP routes) and the endpoints' IPs (by
    cluster)."""
    mesh = {address for addresses in endpoint_addresses.values() for address in addresses}
    tcp: dict[tuple[str, int], str] = {}
    for vhost in vhosts:
        addresses = [d for d in vhost.domains if _is_ip(d)]
        mesh.update(addresses)
        for route in vhost.tcp_routes:
            for address in addresses:
                tcp[(address, route.port)] = route.cluster
            # An endpoint dialled directly at a declared TCP port (a headless service: the app
            # picked the pod itself) is raw TCP too, to the pod it chose.
            for address in endpoint_addresses.get(route.cluster, ()):
                tcp.setdefault((address, route.port), PASSTHROUGH)
    return Destinations(mesh=frozenset(mesh), tcp=tcp)


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True
