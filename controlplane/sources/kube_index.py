"""Index of watched Kubernetes objects → validated resources and services. Pure.

Objects arrive as plain JSON mappings (list items and watch events). A resource whose new version
is invalid keeps its last accepted version serving, exactly as in the file source; services are
built from Service objects, their EndpointSlices (ready endpoints only) and the Pods those
endpoints point at (labels select subsets).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from controlplane.model import (
    Resource,
    ResourceKey,
    Service,
    ServiceEndpoint,
    is_tcp_port,
    resolve_host,
)
from controlplane.schema import API_VERSION
from controlplane.validate import Parsed, Problem, check_references, parse_document

ORIGIN = "kubernetes"

# kind -> (apiVersion, API path of the cluster-wide collection)
KINDS: dict[str, tuple[str, str]] = {
    "VirtualService": (API_VERSION, f"/apis/{API_VERSION}/virtualservices"),
    "DestinationRule": (API_VERSION, f"/apis/{API_VERSION}/destinationrules"),
    "PeerAuthentication": (API_VERSION, f"/apis/{API_VERSION}/peerauthentications"),
    "AuthorizationPolicy": (API_VERSION, f"/apis/{API_VERSION}/authorizationpolicies"),
    "Service": ("v1", "/api/v1/services"),
    "EndpointSlice": ("discovery.k8s.io/v1", "/apis/discovery.k8s.io/v1/endpointslices"),
    "Pod": ("v1", "/api/v1/pods"),
}
MESH_KINDS = ("VirtualService", "DestinationRule", "PeerAuthentication", "AuthorizationPolicy")
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


ObjKey = tuple[str, str]  # namespace, name


def _key(obj: Obj) -> ObjKey:
    meta = obj.get("metadata", {})
    return meta.get("namespace", ""), meta.get("name", "")


class KubeIndex:
    """The latest version of every watched object, and what the mesh makes of them."""

    def __init__(self) -> None:
        self._objects: dict[str, dict[ObjKey, Obj]] = {kind: {} for kind in KINDS}
        self._good: dict[ResourceKey, Resource] = {}

    def replace(self, kind: str, objects: Iterable[Obj], namespace: str | None = None) -> None:
        """Replace every object of `kind` (after a list or relist), or only those of one
        namespace when watching namespace by namespace."""
        current = self._objects[kind]
        kept = {k: o for k, o in current.items() if namespace is not None and k[0] != namespace}
        self._objects[kind] = kept | {_key(o): o for o in objects}
        if kind in MESH_KINDS:
            present = {ResourceKey(kind, *k) for k in self._objects[kind]}
            for key in [k for k in self._good if k.kind == kind and k not in present]:
                del self._good[key]

    def apply(self, kind: str, obj: Obj) -> None:
        """An object was added or modified."""
        self._objects[kind][_key(obj)] = obj

    def delete(self, kind: str, obj: Obj) -> None:
        """An object was deleted."""
        self._objects[kind].pop(_key(obj), None)
        if kind in MESH_KINDS:
            self._good.pop(ResourceKey(kind, *_key(obj)), None)

    def _evaluate(self) -> list[tuple[str, ObjKey, Obj, Parsed]]:
        """Every mesh object validated (schema, semantics, then references), in a stable order.

        A resource whose references do not resolve comes back without a resource, like an
        invalid one: it is reported and not served.
        """
        parsed = [
            (
                kind,
                key,
                obj,
                parse_document({**obj, "apiVersion": KINDS[kind][0], "kind": kind}, origin=ORIGIN),
            )
            for kind in MESH_KINDS
            for key, obj in sorted(self._objects[kind].items())
        ]
        candidates = {p.key: p.resource for *_, p in parsed if p.key and p.resource is not None}
        broken = check_references(candidates, origin=lambda _: ORIGIN)
        return [
            (kind, key, obj, Parsed(key=p.key, resource=None, problems=broken[p.key]))
            if p.key in broken
            else (kind, key, obj, p)
            for kind, key, obj, p in parsed
        ]

    def resources(self) -> tuple[dict[ResourceKey, Resource], tuple[Problem, ...]]:
        """Accepted resources (last good version where the current one is invalid) and problems."""
        problems: list[Problem] = []
        for _, _, _, parsed in self._evaluate():
            problems += parsed.problems
            if parsed.key is not None and parsed.resource is not None:
                self._good[parsed.key] = parsed.resource
            elif parsed.key in self._good:
                problems.append(
                    Problem(
                        origin=ORIGIN,
                        resource=str(parsed.key),
                        path="",
                        message="rejected; the last accepted version keeps serving",
                    )
                )
        return dict(self._good), tuple(problems)

    def status_updates(self) -> list[StatusUpdate]:
        """Mesh resources whose `Accepted` condition is missing or out of date."""
        updates = []
        for kind, (namespace, name), obj, parsed in self._evaluate():
            accepted = parsed.resource is not None
            message = (
                "accepted"
                if accepted
                else "; ".join(
                    ": ".join(x for x in (p.path, p.message) if x) for p in parsed.problems
                )
            )
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
                    kind=kind,
                    namespace=namespace,
                    name=name,
                    generation=generation,
                    accepted=accepted,
                    message=message,
                )
            )
        return updates

    def services(self) -> dict[str, Service]:
        """Services by FQDN with their ready endpoints."""
        pods = self._objects["Pod"]
        endpoints: dict[ObjKey, list[ServiceEndpoint]] = {}
        for slice_obj in self._objects["EndpointSlice"].values():
            namespace = slice_obj.get("metadata", {}).get("namespace", "")
            labels = slice_obj.get("metadata", {}).get("labels") or {}
            service = labels.get("kubernetes.io/service-name")
            ports = slice_obj.get("ports") or []
            if not service or not ports or ports[0].get("port") is None:
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
                endpoints.setdefault((namespace, service), []).append(
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
        services = {}
        for (namespace, name), obj in sorted(self._objects["Service"].items()):
            found = sorted(endpoints.get((namespace, name), []), key=lambda e: (e.address, e.port))
            spec = obj.get("spec") or {}
            ips = spec.get("clusterIPs") or [spec.get("clusterIP")]
            services[resolve_host(name, namespace)] = Service(
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
            )
        return services
