"""The world as the translator sees it: one immutable, versioned view of all resources and services."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from controlplane.model import DestinationRule, Service, VirtualService
from controlplane.security import AuthorizationPolicy, PeerAuthentication


@dataclass(frozen=True, slots=True, kw_only=True)
class World:
    """Everything translation needs; `revision` increases with every change the store accepts."""

    revision: int = 0
    virtual_services: tuple[VirtualService, ...] = ()
    destination_rules: tuple[DestinationRule, ...] = ()
    services: Mapping[str, Service] = field(default_factory=dict)  # by FQDN
    peer_authentications: tuple[PeerAuthentication, ...] = ()
    authorization_policies: tuple[AuthorizationPolicy, ...] = ()
    # PEM of the trust roots sidecars verify peers with (two during a root rotation).
    trust_bundle: str = ""
    # The CA's trust domain: the host of the SPIFFE IDs it issues (for secure naming).
    trust_domain: str = "cluster.local"


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeInfo:
    """Identity of one sidecar, as far as translation cares."""

    id: str
    workload: str
    namespace: str
    labels: tuple[tuple[str, str], ...] = ()
    service_account: str = "default"
