"""The world as translation reads it: every accepted resource and service, indexed by host.

The store owns one `World` and changes it one key at a time (`put`), which returns the hosts whose
routing inputs changed, so translation recomputes only those. Tests build one directly from lists
(the constructor). Pure.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeAlias

from controlplane.model import (
    AuthorizationPolicy,
    DestinationRule,
    PeerAuthentication,
    Resource,
    ResourceKey,
    Service,
    Sidecar,
    TlsSecret,
    VirtualService,
    visible,
)
from controlplane.security import ROOT_NAMESPACE
from lightmesh.protocols import agreed_protocol

SERVICE = "Service"
# Kubernetes TLS Secrets of the gateways' namespaces (Gateway credentialName).
SECRET = "Secret"  # noqa: S105 (a kind name, not a password)
# Keys of the mesh-wide settings the store holds beside resources.
TRUST_BUNDLE = ResourceKey("Mesh", "", "trust-bundle")
TRUST_DOMAIN = ResourceKey("Mesh", "", "trust-domain")
# The keys a RequestAuthentication's jwksUri served, as the control plane last fetched them
# (controlplane/sources/jwks.py): ResourceKey(JWKS, "", uri) -> the JWKS JSON text.
JWKS = "Jwks"


def jwks_key(uri: str) -> ResourceKey:
    """The store key of the keys fetched from one jwksUri."""
    return ResourceKey(JWKS, "", uri)


Value: TypeAlias = "Resource | Service | TlsSecret | str"


def service_key(service: Service) -> ResourceKey:
    """The store key of a service."""
    return ResourceKey(SERVICE, service.namespace, service.name)


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeInfo:
    """Identity of one sidecar, as far as translation cares."""

    id: str
    workload: str
    namespace: str
    labels: tuple[tuple[str, str], ...] = ()
    service_account: str = "default"
    # An ingress gateway (`lightmesh gateway`): receives the listeners of its Gateways.
    gateway: bool = False


class World:
    """Accepted resources and services with the indexes translation needs."""

    def __init__(
        self,
        *,
        revision: int = 0,
        virtual_services: Iterable[VirtualService] = (),
        destination_rules: Iterable[DestinationRule] = (),
        services: Mapping[str, Service] | None = None,
        peer_authentications: Iterable[PeerAuthentication] = (),
        authorization_policies: Iterable[AuthorizationPolicy] = (),
        sidecars: Iterable[Sidecar] = (),
        trust_bundle: str = "",
        trust_domain: str = "cluster.local",
        default_export_to: tuple[str, ...] = ("*",),
    ) -> None:
        self.revision = revision
        self.default_export_to = default_export_to
        self.trust_bundle = trust_bundle
        self.trust_domain = trust_domain
        self.jwks: dict[str, str] = {}  # jwksUri -> the JWKS fetched from it
        self.services: dict[str, Service] = {}  # by FQDN
        self.resources: dict[ResourceKey, Resource] = {}
        self.secrets: dict[ResourceKey, TlsSecret] = {}
        self._vs_by_host: dict[str, set[ResourceKey]] = {}
        self._dr_by_host: dict[str, set[ResourceKey]] = {}
        self._by_namespace: dict[tuple[str, str], set[ResourceKey]] = {}  # (kind, ns) -> keys
        # (namespace, workload) -> the FQDNs of the services with an endpoint of that workload:
        # what the workload's inbound sidecar speaks to its app (`app_protocol`).
        self._services_of_workload: dict[tuple[str, str], set[str]] = {}
        for service in (services or {}).values():
            self.put(service_key(service), service)
        resources: list[Resource] = [
            *virtual_services,
            *destination_rules,
            *peer_authentications,
            *authorization_policies,
            *sidecars,
        ]
        for resource in resources:
            self.put(resource.key, resource)

    # --- changes (the store's side) ---

    def put(self, key: ResourceKey, value: Value | None) -> set[str]:
        """Set or (None) remove one key; return the hosts whose translation inputs changed."""
        if key == TRUST_BUNDLE:
            self.trust_bundle = value if isinstance(value, str) else ""
            return set()
        if key == TRUST_DOMAIN:
            self.trust_domain = value if isinstance(value, str) else "cluster.local"
            return set(self.hosts())  # every cluster's secure-naming identities
        if key.kind == JWKS:
            if isinstance(value, str):
                self.jwks[key.name] = value
            else:
                self.jwks.pop(key.name, None)
            return set()
        if key.kind == SERVICE:
            return self._put_service(key, value if isinstance(value, Service) else None)
        if key.kind == SECRET:
            if isinstance(value, TlsSecret):
                self.secrets[key] = value
            else:
                self.secrets.pop(key, None)
            return set()  # read by gateway views only, which refresh on every change
        old = self.resources.pop(key, None)
        touched: set[str] = set()
        if old is not None:
            touched |= self._unindex(old)
        if value is not None and not isinstance(value, str | Service | TlsSecret):
            self.resources[key] = value
            touched |= self._index(value)
        return touched

    def _put_service(self, key: ResourceKey, service: Service | None) -> set[str]:
        host = f"{key.name}.{key.namespace}.svc.cluster.local"
        old = self.services.pop(host, None)
        if old is not None:
            for workload in {e.workload for e in old.endpoints}:
                _discard(self._services_of_workload, (old.namespace, workload), host)
        if service is not None:
            self.services[service.fqdn] = service
            for workload in {e.workload for e in service.endpoints}:
                self._services_of_workload.setdefault((service.namespace, workload), set()).add(
                    service.fqdn
                )
        return {host}

    def _index(self, resource: Resource) -> set[str]:
        key = resource.key
        self._by_namespace.setdefault((key.kind, key.namespace), set()).add(key)
        if isinstance(resource, VirtualService):
            if not resource.for_mesh:
                return set()  # bound to gateways only: no sidecar routes by it
            for host in resource.hosts:
                self._vs_by_host.setdefault(host, set()).add(key)
            return set(resource.hosts)
        if isinstance(resource, DestinationRule):
            self._dr_by_host.setdefault(resource.host, set()).add(key)
            return {resource.host}
        return set()

    def _unindex(self, resource: Resource) -> set[str]:
        key = resource.key
        _discard(self._by_namespace, (key.kind, key.namespace), key)
        if isinstance(resource, VirtualService):
            if not resource.for_mesh:
                return set()
            for host in resource.hosts:
                _discard(self._vs_by_host, host, key)
            return set(resource.hosts)
        if isinstance(resource, DestinationRule):
            _discard(self._dr_by_host, resource.host, key)
            return {resource.host}
        return set()

    # --- reads (translation's side) ---

    def app_protocol(self, namespace: str, workload: str) -> str:
        """The protocol the Services with an endpoint of `workload` agree its app speaks
        ("grpc", "http2", "http"; "": none declares one, or they disagree)."""
        hosts = self._services_of_workload.get((namespace, workload), ())
        protocols = [self.services[h].protocol for h in hosts]
        return "" if "" in protocols else agreed_protocol(protocols)

    def hosts(self) -> set[str]:
        """Every host something routes for: the services and the VirtualServices' hosts."""
        return set(self.services) | set(self._vs_by_host)

    def in_namespace(self, kind: str, namespace: str) -> list[Resource]:
        """Resources of one kind in one namespace, by name."""
        keys = sorted(self._by_namespace.get((kind, namespace), ()))
        return [self.resources[k] for k in keys]

    def of_kind(self, kind: str) -> list[Resource]:
        """Every resource of one kind, by namespace and name."""
        return [
            self.resources[k]
            for (k_kind, _), keys in sorted(self._by_namespace.items())
            if k_kind == kind
            for k in sorted(keys)
        ]

    def export_to(self, export_to: tuple[str, ...]) -> tuple[str, ...]:
        """An exportTo with the mesh default applied."""
        return export_to or self.default_export_to

    def virtual_service(self, host: str, namespace: str) -> VirtualService | None:
        """The VirtualService that routes `host` for sidecars of `namespace`: the first (by
        namespace/name) of those exported to it."""
        for key in sorted(self._vs_by_host.get(host, ())):
            vs = self.resources[key]
            if isinstance(vs, VirtualService) and visible(
                self.export_to(vs.export_to), owner=key.namespace, viewer=namespace
            ):
                return vs
        return None

    def destination_rule(self, host: str, namespace: str) -> DestinationRule | None:
        """The DestinationRule of `host` for sidecars of `namespace`, Istio's lookup order: one in
        the sidecar's namespace, then one in the host's namespace, then any other exported to it
        (by namespace/name)."""
        candidates = []
        for key in self._dr_by_host.get(host, ()):
            rule = self.resources[key]
            if isinstance(rule, DestinationRule) and visible(
                self.export_to(rule.export_to), owner=key.namespace, viewer=namespace
            ):
                own = key.namespace == namespace
                rank = 0 if own else 1 if key.namespace == host_namespace(host) else 2
                candidates.append((rank, key, rule))
        return min(candidates, key=lambda c: (c[0], c[1]))[2] if candidates else None

    def service_visible(self, service: Service, namespace: str) -> bool:
        """Whether a service is exported to sidecars of `namespace`."""
        return visible(self.export_to(service.export_to), owner=service.namespace, viewer=namespace)

    def sidecar_for(self, namespace: str, labels: Mapping[str, str]) -> Sidecar | None:
        """Istio's Sidecar selection: one of the namespace selecting the workload's labels, else
        the namespace's without selector, else the mesh-wide one in the root namespace."""
        own = [s for s in self.in_namespace("Sidecar", namespace) if isinstance(s, Sidecar)]
        for sidecar in own:
            if sidecar.selector is not None and all(
                labels.get(k) == v for k, v in sidecar.selector
            ):
                return sidecar
        for sidecar in own:
            if sidecar.selector is None:
                return sidecar
        for mesh_wide in self.in_namespace("Sidecar", ROOT_NAMESPACE):
            if isinstance(mesh_wide, Sidecar) and mesh_wide.selector is None:
                return mesh_wide
        return None

    # --- compatibility views (debug, metrics, tests) ---

    @property
    def virtual_services(self) -> tuple[VirtualService, ...]:
        """Every VirtualService, by key."""
        return tuple(r for r in self.of_kind("VirtualService") if isinstance(r, VirtualService))

    @property
    def destination_rules(self) -> tuple[DestinationRule, ...]:
        """Every DestinationRule, by key."""
        return tuple(r for r in self.of_kind("DestinationRule") if isinstance(r, DestinationRule))

    @property
    def peer_authentications(self) -> tuple[PeerAuthentication, ...]:
        """Every PeerAuthentication, by key."""
        kind = "PeerAuthentication"
        return tuple(r for r in self.of_kind(kind) if isinstance(r, PeerAuthentication))

    @property
    def authorization_policies(self) -> tuple[AuthorizationPolicy, ...]:
        """Every AuthorizationPolicy, by key."""
        kind = "AuthorizationPolicy"
        return tuple(r for r in self.of_kind(kind) if isinstance(r, AuthorizationPolicy))


def host_namespace(host: str) -> str:
    """The namespace of a service FQDN ("" for other hosts)."""
    parts = host.split(".")
    return parts[1] if len(parts) >= 3 and parts[2] == "svc" else ""


def _discard(index: dict[Any, set[Any]], at: Any, key: Any) -> None:
    keys = index.get(at)
    if keys is not None:
        keys.discard(key)
        if not keys:
            del index[at]
