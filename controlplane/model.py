"""Typed world state of the control plane: validated resources and the service registry.

Everything here is immutable; sources produce these values and the store versions them. Pure.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, NamedTuple

CLUSTER_DOMAIN = "cluster.local"

MatchKind = Literal["exact", "prefix", "regex"]
LbPolicyName = Literal["ROUND_ROBIN", "LEAST_REQUEST", "RANDOM"]


class ResourceKey(NamedTuple):
    """Identity of a resource: kind, namespace, name."""

    kind: str
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True, kw_only=True)
class StringMatch:
    """One of exact / prefix / regex (full match)."""

    kind: MatchKind
    value: str


@dataclass(frozen=True, slots=True, kw_only=True)
class HTTPMatch:
    """One `match` entry: every present field must match."""

    uri: StringMatch | None = None
    method: StringMatch | None = None
    headers: tuple[tuple[str, StringMatch], ...] = ()
    query_params: tuple[tuple[str, StringMatch], ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class RouteDestination:
    """A weighted destination; `host` is resolved to a service FQDN."""

    host: str
    subset: str = ""
    port: int | None = None
    weight: int = 100


@dataclass(frozen=True, slots=True, kw_only=True)
class HTTPRoute:
    """One entry of a VirtualService's ordered `http` list."""

    name: str = ""
    matches: tuple[HTTPMatch, ...] = ()
    destinations: tuple[RouteDestination, ...] = ()
    timeout: float | None = None  # seconds


@dataclass(frozen=True, slots=True, kw_only=True)
class VirtualService:
    """Routing rules for requests addressed to `hosts` (resolved to FQDNs)."""

    key: ResourceKey
    hosts: tuple[str, ...]
    http: tuple[HTTPRoute, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class TrafficPolicy:
    """Per-destination policy; unset fields inherit (subset → host → defaults)."""

    lb_policy: LbPolicyName | None = None
    connect_timeout: float | None = None  # seconds


@dataclass(frozen=True, slots=True, kw_only=True)
class Subset:
    """A named group of a service's endpoints, selected by labels."""

    name: str
    labels: tuple[tuple[str, str], ...] = ()
    policy: TrafficPolicy = field(default_factory=TrafficPolicy)


@dataclass(frozen=True, slots=True, kw_only=True)
class DestinationRule:
    """Policies and subsets for one destination service (`host` resolved to an FQDN)."""

    key: ResourceKey
    host: str
    policy: TrafficPolicy = field(default_factory=TrafficPolicy)
    subsets: tuple[Subset, ...] = ()


Resource = VirtualService | DestinationRule


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceEndpoint:
    """One instance of a service: where its sidecar's inbound listener is."""

    address: str
    port: int
    workload: str
    labels: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Service:
    """A service and its current endpoints."""

    name: str
    namespace: str
    endpoints: tuple[ServiceEndpoint, ...] = ()
    # Virtual IPs the service is dialled at (Kubernetes ClusterIPs): an intercepted connection
    # to one of them routes to this service even when its Host header names no service.
    addresses: tuple[str, ...] = ()

    @property
    def fqdn(self) -> str:
        """The service's fully qualified name."""
        return f"{self.name}.{self.namespace}.svc.{CLUSTER_DOMAIN}"


def resolve_host(host: str, namespace: str) -> str:
    """Resolve a host as written in a resource to a service FQDN.

    `catalog` (relative to the resource's namespace), `catalog.shop`, `catalog.shop.svc` and
    `catalog.shop.svc.cluster.local` name the same service; other dotted names are kept as they are.
    """
    host = host.lower().rstrip(".")
    parts = host.split(".")
    if len(parts) == 1:
        return f"{host}.{namespace}.svc.{CLUSTER_DOMAIN}"
    if len(parts) == 2:
        return f"{host}.svc.{CLUSTER_DOMAIN}"
    if len(parts) == 3 and parts[2] == "svc":
        return f"{host}.{CLUSTER_DOMAIN}"
    return host
