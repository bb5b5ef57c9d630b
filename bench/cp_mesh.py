"""The mesh `bench controlplane` builds: services, namespaces, proxies, and their resources. Pure.

S services `svc-0000`… spread round-robin over namespaces `bench-0`…; each has one
VirtualService (80/20 between subsets v1 and v2) and one DestinationRule (the two subsets),
in one file per service for the file source, or as objects for the Kubernetes source. N proxies
`px-00000`… are the endpoints: with N ≥ S proxy i serves service i mod S; with N < S it serves
every service j ≡ i (mod N), so every service has an endpoint in both sources (N must then be a
multiple of the number of namespaces, which keeps each proxy's services in its own namespace).
Proxy N ("the extra proxy") is the endpoint the endpoint-change and churn scenarios add and remove
on service 0.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from bench.cp_client import NodeSpec, Registration

POD_PORT = 8080
CHANGED_SERVICE = 0  # the service whose VirtualService weight and endpoints change
SCOPES = ("mesh", "namespace")  # who must receive a change (see Mesh.audience)
WEIGHTS = (80, 90)  # v1's weight before / after a change (alternating)


@dataclass(frozen=True, slots=True)
class Mesh:
    """The shape of the generated mesh."""

    proxies: int
    services: int
    namespaces: int = 10

    def __post_init__(self) -> None:
        if self.proxies < 1 or self.services < 1 or self.namespaces < 1:
            raise ValueError("proxies, services and namespaces must be at least 1")
        if self.proxies < self.services and self.proxies % self.namespaces:
            raise ValueError(
                f"{self.proxies} proxies for {self.services} services: with fewer proxies than "
                f"services the proxy count must be a multiple of the {self.namespaces} namespaces"
            )

    @classmethod
    def make(cls, proxies: int, services: int, namespaces: int = 10) -> Mesh:
        """A mesh with at most `namespaces` namespaces (fewer when there are fewer services)."""
        return cls(proxies, services, max(1, min(namespaces, services)))

    @property
    def extra(self) -> int:
        """Index of the proxy the endpoint scenarios add and remove."""
        return self.proxies

    def namespace(self, service: int) -> str:
        """Namespace of service `service`."""
        return f"bench-{service % self.namespaces}"

    def service_name(self, service: int) -> str:
        """Name of service `service`."""
        return f"svc-{service:04d}"

    def host(self, service: int) -> str:
        """The service's fully qualified host name."""
        return f"{self.service_name(service)}.{self.namespace(service)}.svc.cluster.local"

    def served_by(self, proxy: int) -> list[int]:
        """The services proxy `proxy` is an endpoint of (the extra proxy: the changed service)."""
        if proxy >= self.proxies:
            return [CHANGED_SERVICE]
        if self.proxies >= self.services:
            return [proxy % self.services]
        return list(range(proxy, self.services, self.proxies))

    def endpoints_of(self, service: int) -> list[int]:
        """The proxies serving `service` (the extra proxy not included)."""
        if self.proxies >= self.services:
            return list(range(service, self.proxies, self.services))
        return [service % self.proxies]

    def pod(self, proxy: int) -> str:
        """Pod (and workload) name of proxy `proxy`."""
        return f"px-{proxy:05d}"

    def proxy_namespace(self, proxy: int) -> str:
        """The namespace of a proxy: that of its (first) service."""
        return self.namespace(self.served_by(proxy)[0])

    def address(self, proxy: int) -> str:
        """A pod IP for proxy `proxy` (10.128.0.0/9; nothing ever dials it)."""
        return f"10.{128 + proxy // 65536}.{proxy // 256 % 256}.{proxy % 256}"

    def labels(self, proxy: int) -> dict[str, str]:
        """Pod labels: the service it serves and its version (subset)."""
        home = self.served_by(proxy)[0]
        version = "v2" if proxy >= self.proxies or (proxy // self.services) % 2 else "v1"
        return {"app": self.service_name(home), "version": version}

    def node(self, proxy: int, *, register: bool) -> NodeSpec:
        """What proxy `proxy` tells the control plane; `register` in local mode only."""
        namespace = self.proxy_namespace(proxy)
        return NodeSpec(
            id=f"{self.pod(proxy)}.{namespace}",
            workload=self.pod(proxy),
            namespace=namespace,
            labels=self.labels(proxy),
            service_account=self.service_name(self.served_by(proxy)[0]),
            registrations=tuple(
                Registration(self.service_name(s), self.address(proxy), POD_PORT)
                for s in self.served_by(proxy)
            )
            if register
            else (),
        )

    def audience(self, service: int, scope: str = "namespace") -> list[int]:
        """Proxies that must receive a change of `service`: every proxy ("mesh") or those of
        its namespace ("namespace"; scoping may spare the others, today's control plane sends
        to everyone)."""
        if scope == "mesh":
            return list(range(self.proxies))
        namespace = self.namespace(service)
        return [p for p in range(self.proxies) if self.proxy_namespace(p) == namespace]


# ------------------------------------------------------------------------ mesh resources


def virtual_service(mesh: Mesh, service: int, weight: int) -> dict[str, object]:
    """The service's VirtualService: `weight`% to v1, the rest to v2."""
    name = mesh.service_name(service)
    return {
        "apiVersion": "lightmesh.io/v1alpha1",
        "kind": "VirtualService",
        "metadata": {"name": name, "namespace": mesh.namespace(service)},
        "spec": {
            "hosts": [name],
            "http": [
                {
                    "name": "split",
                    "route": [
                        {"destination": {"host": name, "subset": "v1"}, "weight": weight},
                        {"destination": {"host": name, "subset": "v2"}, "weight": 100 - weight},
                    ],
                    "timeout": "5s",
                }
            ],
        },
    }


def destination_rule(mesh: Mesh, service: int) -> dict[str, object]:
    """The service's DestinationRule: subsets v1 and v2 by the version label."""
    name = mesh.service_name(service)
    return {
        "apiVersion": "lightmesh.io/v1alpha1",
        "kind": "DestinationRule",
        "metadata": {"name": name, "namespace": mesh.namespace(service)},
        "spec": {
            "host": name,
            "subsets": [
                {"name": "v1", "labels": {"version": "v1"}},
                {"name": "v2", "labels": {"version": "v2"}},
            ],
        },
    }


def service_file(mesh: Mesh, service: int, weight: int = WEIGHTS[0]) -> str:
    """The file-source file of one service: its VirtualService and DestinationRule (JSON is
    YAML, and keeps the generator free of formatting questions)."""
    docs = (virtual_service(mesh, service, weight), destination_rule(mesh, service))
    return "\n---\n".join(json.dumps(doc, indent=1) for doc in docs) + "\n"


def service_file_path(mesh: Mesh, service: int) -> str:
    """Relative path of that file under the config directory."""
    return f"{mesh.namespace(service)}/{mesh.service_name(service)}.yaml"


# ------------------------------------------------------------------------ Kubernetes objects


def kube_service(mesh: Mesh, service: int) -> dict[str, object]:
    """The Service object (a ClusterIP service, port 80 → 8080)."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": mesh.service_name(service), "namespace": mesh.namespace(service)},
        "spec": {
            "selector": {"app": mesh.service_name(service)},
            "ports": [{"name": "http", "port": 80, "targetPort": POD_PORT}],
        },
    }


def kube_pod(mesh: Mesh, proxy: int) -> dict[str, object]:
    """The Pod object of a proxy (no kubelet runs it; the index reads its labels)."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": mesh.pod(proxy),
            "namespace": mesh.proxy_namespace(proxy),
            "labels": mesh.labels(proxy),
            "annotations": {"lightmesh.io/status": "injected"},
        },
        "spec": {
            "serviceAccountName": mesh.service_name(mesh.served_by(proxy)[0]),
            "containers": [{"name": "app", "image": "example.invalid/bench:1"}],
        },
    }


def slice_endpoints(mesh: Mesh, service: int, *, extra: bool | None) -> list[dict[str, object]]:
    """The EndpointSlice's endpoints; `extra`: with the extra proxy ready (True), not ready
    (False), or absent (None)."""
    proxies = mesh.endpoints_of(service)
    states = [(p, True) for p in proxies]
    if extra is not None and service == CHANGED_SERVICE:
        states.append((mesh.extra, extra))
    return [
        {
            "addresses": [mesh.address(p)],
            "conditions": {"ready": ready},
            "targetRef": {
                "kind": "Pod",
                "name": mesh.pod(p),
                "namespace": mesh.namespace(service),
            },
        }
        for p, ready in states
    ]


def kube_endpoint_slice(mesh: Mesh, service: int) -> dict[str, object]:
    """The service's EndpointSlice, one endpoint per serving proxy."""
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": mesh.service_name(service),
            "namespace": mesh.namespace(service),
            "labels": {"kubernetes.io/service-name": mesh.service_name(service)},
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": POD_PORT, "protocol": "TCP"}],
        "endpoints": slice_endpoints(mesh, service, extra=None),
    }
