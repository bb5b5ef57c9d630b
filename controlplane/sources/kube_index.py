"""Index of watched Kubernetes objects → validated resources and services, one object at a time.
Pure.

Objects arrive as plain JSON mappings (list items and watch events). Each `apply`/`delete`
validates only that object (the shared `Ledger` re-checks what references it) and rebuilds only
the services it feeds: a Service, the service of an EndpointSlice, or the services whose endpoints
point at a Pod (labels select subsets). A resource whose new version is invalid keeps its last
accepted version serving, exactly as in the file source. The returned `Delta` says what changed.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from controlplane.model import (
    Resource,
    ResourceKey,
    Service,
    ServiceEndpoint,
    TlsSecret,
    is_tcp_port,
)
from controlplane.schema import API_VERSION, ISTIO_GROUPS
from controlplane.schema import KINDS as SCHEMA_KINDS
from controlplane.sources.ledger import REJECTED, Ledger
from controlplane.validate import Problem, parse_document, parse_export_to
from controlplane.world import SECRET, SERVICE
from lightmesh.protocols import agreed_protocol, port_protocol, speaks_h2

ORIGIN = "kubernetes"

_OURS = (
    "VirtualService",
    "DestinationRule",
    "PeerAuthentication",
    "AuthorizationPolicy",
    "Sidecar",
    "Gateway",
    "ServiceEntry",
    "RequestAuthentication",
    "HTTPLocalRateLimitPolicy",
)


def istio_kind(kind: str) -> str:
    """The watched kind of a mesh kind's Istio-group objects ("VirtualService.istio")."""
    return f"{kind}.istio"


def mesh_kind(watched: str) -> str:
    """The mesh kind of a watched kind (itself, or the kind of an Istio-group one)."""
    return watched.removesuffix(".istio")


def _istio_api_version(kind: str) -> str:
    group, _, storage = ISTIO_GROUPS[kind]
    return f"{group}/{storage}"


# watched kind -> (apiVersion, API path of the cluster-wide collection). Istio-group kinds
# (".istio") are watched only when the control plane is told to (`--istio-api`: their CRDs, from
# Istio or crds/istio/, must exist).
KINDS: dict[str, tuple[str, str]] = {
    **{kind: (API_VERSION, f"/apis/{API_VERSION}/{SCHEMA_KINDS[kind][0]}") for kind in _OURS},
    **{
        istio_kind(kind): (
            _istio_api_version(kind),
            f"/apis/{_istio_api_version(kind)}/{SCHEMA_KINDS[kind][0]}",
        )
        for kind in _OURS
        if kind in ISTIO_GROUPS
    },
    "Service": ("v1", "/api/v1/services"),
    "EndpointSlice": ("discovery.k8s.io/v1", "/apis/discovery.k8s.io/v1/endpointslices"),
    "Pod": ("v1", "/api/v1/pods"),
    # Gateway credentials (credentialName): watched only in the gateways' namespaces.
    "Secret": ("v1", "/api/v1/secrets"),
}
SCOPED_KINDS = ("Secret",)
MESH_KINDS = _OURS
ISTIO_KINDS = tuple(istio_kind(kind) for kind in _OURS if kind in ISTIO_GROUPS)


def watched_kinds(*, istio: bool) -> tuple[str, ...]:
    """The kinds a Kubernetes source lists and watches (Secrets apart: see SCOPED_KINDS)."""
    return tuple(k for k in KINDS if (istio or k not in ISTIO_KINDS) and k not in SCOPED_KINDS)


def tls_secret(obj: Obj) -> TlsSecret | None:
    """A Secret's TLS material (tls.crt, tls.key, ca.crt), or None when it holds none: only
    what a Gateway's credentialName can use is kept, never the Secret's other keys."""
    data = obj.get("data") or {}
    fields = {}
    for name in ("tls.crt", "tls.key", "ca.crt"):
        value = data.get(name)
        if value:
            try:
                fields[name] = base64.b64decode(value).decode("ascii")
            except (ValueError, UnicodeDecodeError):
                fields[name] = ""  # not PEM: the gateway reports the credential unusable
    if not fields:
        return None
    meta = obj.get("metadata") or {}
    return TlsSecret(
        key=ResourceKey(SECRET, meta.get("namespace", ""), meta.get("name", "")),
        cert_chain=fields.get("tls.crt", ""),
        private_key=fields.get("tls.key", ""),
        ca=fields.get("ca.crt", ""),
    )


# Istio's annotation on a Service: the namespaces whose sidecars see it.
EXPORT_TO_ANNOTATION = "networking.istio.io/exportTo"
# The annotation the injector puts on pods that got a sidecar (they can terminate mutual TLS).
INJECTED_ANNOTATION = "lightmesh.io/status"


def collection_path(kind: str, namespace: str | None = None) -> str:
    """API path of a kind's collection, cluster-wide or in one namespace."""
    path = KINDS[kind][1]
    if namespace is None:
        return path
    prefix, _, plural = path.rpartition("/")
    return f"{prefix}/namespaces/{namespace}/{plural}"


Obj = Mapping[str, Any]


@dataclass(frozen=True, slots=True, kw_only=True)
class StatusUpdate:
    """The `Accepted` condition a mesh resource should carry, when it does not yet."""

    kind: str
    namespace: str
    name: str
    generation: int
    accepted: bool
    message: str
    api_version: str = API_VERSION  # the object's group/version (Istio's for its groups)


ObjKey = tuple[str, str]  # namespace, name


def _key(obj: Obj) -> ObjKey:
    meta = obj.get("metadata", {})
    return meta.get("namespace", ""), meta.get("name", "")


@dataclass(slots=True, kw_only=True)
class Delta:
    """What one object (or a relist) changed."""

    resources: dict[ResourceKey, Resource | None] = field(default_factory=dict)
    services: dict[ResourceKey, Service | None] = field(default_factory=dict)
    secrets: dict[ResourceKey, TlsSecret | None] = field(default_factory=dict)
    evaluated: set[ResourceKey] = field(default_factory=set)  # mesh keys whose status may change

    def merge(self, other: Delta) -> None:
        """Add `other` into this one."""
        self.resources.update(other.resources)
        self.services.update(other.services)
        self.secrets.update(other.secrets)
        self.evaluated |= other.evaluated


class KubeIndex:
    """The latest version of every watched object, and what the mesh makes of them."""

    def __init__(self) -> None:
        self._objects: dict[str, dict[ObjKey, Obj]] = {kind: {} for kind in KINDS}
        self._ledger = Ledger()
        self._slices_of: dict[ObjKey, set[ObjKey]] = {}  # service -> its EndpointSlices
        self._service_of: dict[ObjKey, ObjKey] = {}  # EndpointSlice -> its service
        self._pods_of: dict[ObjKey, set[ObjKey]] = {}  # EndpointSlice -> pods it targets
        self._services_of_pod: dict[ObjKey, set[ObjKey]] = {}  # pod -> services it backs
        self._service_problems: dict[ObjKey, Problem] = {}

    def replace(self, kind: str, objects: Iterable[Obj], namespace: str | None = None) -> Delta:
        """Replace every object of `kind` (after a list or relist), or only those of one
        namespace when watching namespace by namespace."""
        fresh = {_key(o): o for o in objects}
        current = self._objects[kind]
        gone = [
            o
            for k, o in current.items()
            if (namespace is None or k[0] == namespace) and k not in fresh
        ]
        delta = Delta()
        for obj in gone:
            delta.merge(self._change(kind, obj, deleted=True, commit=False))
        for obj in fresh.values():
            if current.get(_key(obj)) != obj:
                delta.merge(self._change(kind, obj, deleted=False, commit=False))
        if mesh_kind(kind) in MESH_KINDS:
            committed = self._ledger.commit()
            delta.resources.update(committed.served)
            delta.evaluated |= committed.evaluated
        return delta

    def apply(self, kind: str, obj: Obj) -> Delta:
        """An object was added or modified."""
        return self._change(kind, obj, deleted=False, commit=True)

    def delete(self, kind: str, obj: Obj) -> Delta:
        """An object was deleted."""
        return self._change(kind, obj, deleted=True, commit=True)

    def _change(self, kind: str, obj: Obj, *, deleted: bool, commit: bool) -> Delta:
        key = _key(obj)
        if deleted:
            self._objects[kind].pop(key, None)
        else:
            self._objects[kind][key] = obj
        delta = Delta()
        if mesh_kind(kind) in MESH_KINDS:
            resource_key = ResourceKey(mesh_kind(kind), *key)
            served = self._serving(resource_key)
            parsed = None
            if served is not None:
                watched, serving = served
                document = {**serving, "apiVersion": KINDS[watched][0], "kind": resource_key.kind}
                parsed = parse_document(document, origin=ORIGIN)
            self._ledger.submit(resource_key, parsed, origin=ORIGIN)
            if commit:
                committed = self._ledger.commit()
                delta.resources.update(committed.served)
                delta.evaluated |= committed.evaluated
            return delta
        if kind == "Secret":
            delta.secrets[ResourceKey(SECRET, *key)] = None if deleted else tls_secret(obj)
            return delta
        services: set[ObjKey] = set()
        if kind == "Service":
            services.add(key)
        elif kind == "EndpointSlice":
            services |= self._index_slice(key, None if deleted else obj)
        elif kind == "Pod":
            services |= self._services_of_pod.get(key, set())
        for service in services:
            delta.services[ResourceKey(SERVICE, *service)] = self._service(service)
        return delta

    def _serving(self, key: ResourceKey) -> tuple[str, Obj] | None:
        """The object that defines a mesh resource, and its watched kind: ours (lightmesh.io)
        when both groups hold one of that namespace and name, else Istio's."""
        for watched in (key.kind, istio_kind(key.kind)):
            obj = self._objects[watched].get((key.namespace, key.name))
            if obj is not None:
                return watched, obj
        return None

    def _index_slice(self, key: ObjKey, obj: Obj | None) -> set[ObjKey]:
        """Re-index one EndpointSlice; return the services it fed before and feeds now."""
        touched: set[ObjKey] = set()
        old_service = self._service_of.pop(key, None)
        if old_service is not None:
            touched.add(old_service)
            _drop(self._slices_of, old_service, key)
        for pod in self._pods_of.pop(key, set()):
            if old_service is not None:
                _drop(self._services_of_pod, pod, old_service)
        if obj is None:
            return touched
        namespace = key[0]
        name = (obj.get("metadata", {}).get("labels") or {}).get("kubernetes.io/service-name")
        if not name:
            return touched
        service = (namespace, name)
        touched.add(service)
        self._service_of[key] = service
        self._slices_of.setdefault(service, set()).add(key)
        pods = {
            (namespace, (e.get("targetRef") or {}).get("name", ""))
            for e in obj.get("endpoints") or []
            if (e.get("targetRef") or {}).get("kind") == "Pod"
        }
        self._pods_of[key] = pods
        for pod in pods:
            self._services_of_pod.setdefault(pod, set()).add(service)
        # The slices of one service can share pods: re-add the service for the others' pods.
        for other in self._slices_of.get(service, set()):
            for pod in self._pods_of.get(other, set()):
                self._services_of_pod.setdefault(pod, set()).add(service)
        return touched

    # --- mesh resources ---

    def resources(self) -> tuple[dict[ResourceKey, Resource], tuple[Problem, ...]]:
        """Accepted resources (last good version where the current one is invalid) and problems."""
        return self._ledger.served(), self.problems()

    def problems(self) -> tuple[Problem, ...]:
        """Current problems of mesh resources and Services."""
        return (
            *self._ledger.problems(),
            *(self._service_problems[k] for k in sorted(self._service_problems)),
        )

    def status_updates(self, keys: Iterable[ResourceKey] | None = None) -> list[StatusUpdate]:
        """Mesh resources (of `keys`, or all) whose `Accepted` condition is missing or out of
        date."""
        chosen = (
            sorted(keys)
            if keys is not None
            else sorted(
                {
                    ResourceKey(mesh_kind(k), *o)
                    for k in (*MESH_KINDS, *ISTIO_KINDS)
                    for o in self._objects[k]
                }
            )
        )
        updates = []
        for key in chosen:
            served = self._serving(key) if key.kind in MESH_KINDS else None
            verdict = self._ledger.verdict(key)
            if served is None or verdict is None:
                continue
            watched, obj = served
            accepted, problems = verdict
            described = "; ".join(
                ": ".join(x for x in (p.path, p.message) if x)
                for p in problems
                if p.message != REJECTED and (p.severity == "warning") == accepted
            )
            if accepted:
                message = f"accepted with warnings: {described}" if described else "accepted"
            else:
                message = described
            generation = int(obj.get("metadata", {}).get("generation") or 0)
            status = obj.get("status") or {}
            current: Mapping[str, Any] = next(
                (c for c in status.get("conditions") or [] if c.get("type") == "Accepted"), {}
            )
            if (
                current.get("status") == ("True" if accepted else "False")
                and current.get("message") == message
                and status.get("observedGeneration") == generation
            ):
                continue
            updates.append(
                StatusUpdate(
                    kind=key.kind,
                    namespace=key.namespace,
                    name=key.name,
                    generation=generation,
                    accepted=accepted,
                    message=message,
                    api_version=KINDS[watched][0],
                )
            )
        return updates

    # --- services ---

    def secrets(self) -> dict[ResourceKey, TlsSecret]:
        """The TLS Secrets watched, by key."""
        found = (tls_secret(o) for o in self._objects["Secret"].values())
        return {s.key: s for s in found if s is not None}

    def services(self) -> dict[str, Service]:
        """Services by FQDN with their ready endpoints."""
        found = (self._service(k) for k in sorted(self._objects["Service"]))
        return {s.fqdn: s for s in found if s is not None}

    def _service(self, key: ObjKey) -> Service | None:
        """One service with its ready endpoints (None: no such Service)."""
        obj = self._objects["Service"].get(key)
        if obj is None:
            self._service_problems.pop(key, None)
            return None
        namespace, name = key
        pods = self._objects["Pod"]
        found: list[ServiceEndpoint] = []
        for slice_key in sorted(self._slices_of.get(key, ())):
            slice_obj = self._objects["EndpointSlice"].get(slice_key) or {}
            ports = slice_obj.get("ports") or []
            if not ports or ports[0].get("port") is None:
                continue
            port = int(ports[0]["port"])
            for endpoint in slice_obj.get("endpoints") or []:
                conditions = endpoint.get("conditions") or {}
                # `ready` unset means ready; terminating endpoints are not ready.
                if conditions.get("ready") is False or not endpoint.get("addresses"):
                    continue
                ref = endpoint.get("targetRef") or {}
                pod = (
                    pods.get((namespace, ref.get("name", ""))) if ref.get("kind") == "Pod" else None
                )
                pod_meta = (pod or {}).get("metadata", {})
                pod_labels = pod_meta.get("labels") or {}
                annotations = pod_meta.get("annotations") or {}
                found.append(
                    ServiceEndpoint(
                        address=endpoint["addresses"][0],
                        port=port,
                        workload=ref.get("name", ""),
                        labels=tuple(sorted(pod_labels.items())),
                        sidecar=annotations.get(INJECTED_ANNOTATION) == "injected",
                        # Kubernetes runs a pod without serviceAccountName as "default".
                        service_account=(
                            ((pod or {}).get("spec") or {}).get("serviceAccountName") or "default"
                            if pod is not None
                            else ""
                        ),
                    )
                )
        found.sort(key=lambda e: (e.address, e.port))
        spec = obj.get("spec") or {}
        ips = spec.get("clusterIPs") or [spec.get("clusterIP")]
        return Service(
            name=name,
            namespace=namespace,
            endpoints=tuple(found),
            # A headless service ("None") has no virtual IP: its pods are dialled directly.
            addresses=tuple(ip for ip in ips if ip and ip != "None"),
            tcp_ports=tuple(
                int(port["port"])
                for port in spec.get("ports") or []
                if port.get("port") is not None
                and is_tcp_port(str(port.get("name") or ""), str(port.get("appProtocol") or ""))
            ),
            http2=_all_http2(spec.get("ports") or []),
            protocol=agreed_protocol(_protocols(spec.get("ports") or [])),
            export_to=self._export_to(key, obj),
        )

    def _export_to(self, key: ObjKey, obj: Obj) -> tuple[str, ...]:
        annotations = obj.get("metadata", {}).get("annotations") or {}
        raw = annotations.get(EXPORT_TO_ANNOTATION)
        self._service_problems.pop(key, None)
        if raw is None:
            return ()
        path = f"metadata.annotations[{EXPORT_TO_ANNOTATION}]"
        values = [v.strip() for v in str(raw).split(",") if v.strip()]
        try:
            if not values:
                raise ValueError(f"{path}: give '.', '*' or namespace names")
            return parse_export_to(values, path)
        except ValueError as error:
            where, _, message = str(error).partition(": ")
            self._service_problems[key] = Problem(
                origin=ORIGIN,
                resource=f"Service {key[0]}/{key[1]}",
                path=where,
                message=f"{message} (the mesh default applies)",
            )
            return ()


def _drop(index: dict[ObjKey, set[ObjKey]], at: ObjKey, value: ObjKey) -> None:
    values = index.get(at)
    if values is not None:
        values.discard(value)
        if not values:
            del index[at]


def _protocols(ports: list[Obj]) -> list[str]:
    return [
        port_protocol(str(port.get("name") or ""), str(port.get("appProtocol") or ""))
        for port in ports
    ]


def _all_http2(ports: list[Obj]) -> bool:
    """Whether every HTTP port of a Service is declared gRPC or HTTP/2 (and there is one)."""
    http = [p for p in _protocols(ports) if p != "tcp"]
    return bool(http) and all(speaks_h2(p) for p in http)
