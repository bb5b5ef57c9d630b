"""The Kubernetes side of `bench controlplane`: a real kube-apiserver + etcd (the same
`KubeCluster` the tests use, tests/support/kube.py), filled with the mesh through the API.

Namespaces, Pods (objects only: no kubelet runs them), Services, EndpointSlices and the mesh
resources are created with plain HTTP requests (admin client certificate), many at a time; the
changes the scenarios make are merge patches, as `kubectl patch` would send.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import aiohttp

from bench.cp_mesh import (
    CHANGED_SERVICE,
    WEIGHTS,
    Mesh,
    destination_rule,
    kube_endpoint_slice,
    kube_pod,
    kube_service,
    slice_endpoints,
    virtual_service,
)
from tests.support.kube import KubeCluster, build_binaries

CONCURRENCY = 16
REQUEST_TIMEOUT = 60.0
CRDS = (
    "virtualservices.lightmesh.io",
    "destinationrules.lightmesh.io",
    "peerauthentications.lightmesh.io",
    "authorizationpolicies.lightmesh.io",
)
_COLLECTIONS = {
    "Pod": "/api/v1/namespaces/{ns}/pods",
    "Service": "/api/v1/namespaces/{ns}/services",
    "EndpointSlice": "/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices",
    "VirtualService": "/apis/lightmesh.io/v1alpha1/namespaces/{ns}/virtualservices",
    "DestinationRule": "/apis/lightmesh.io/v1alpha1/namespaces/{ns}/destinationrules",
}


def collection(obj: dict[str, Any]) -> str:
    """API path of the collection `obj` is created in."""
    return _COLLECTIONS[obj["kind"]].format(ns=obj["metadata"]["namespace"])


class KubeMesh:
    """A running cluster holding the mesh; `close()` stops it."""

    def __init__(self, mesh: Mesh, work: Path) -> None:
        self.mesh = mesh
        self._work = work
        self.cluster: KubeCluster | None = None
        self._session: aiohttp.ClientSession | None = None
        self.startup_seconds = 0.0
        self.populate_seconds = 0.0
        self.objects = 0

    @property
    def kubeconfig(self) -> Path:
        """The admin kubeconfig the control plane is started with."""
        assert self.cluster is not None  # noqa: S101 - after start()
        return self.cluster.kubeconfig

    async def start(self) -> None:
        """Build (if needed) and start the cluster, install the CRDs, create the mesh."""
        bin_dir = await asyncio.to_thread(build_binaries)
        self.cluster = await asyncio.to_thread(KubeCluster.start, self._work / "kube", bin_dir)
        self.startup_seconds = self.cluster.startup_seconds
        await asyncio.to_thread(self.cluster.kubectl, "apply", "-f", "crds/")
        await asyncio.to_thread(
            self.cluster.kubectl,
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            *(f"crd/{name}" for name in CRDS),
        )
        self._session = aiohttp.ClientSession(
            base_url=self.cluster.server,
            timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT),
            connector=aiohttp.TCPConnector(ssl=self.cluster.ssl_context(), limit=CONCURRENCY),
        )
        began = asyncio.get_running_loop().time()
        await self._populate()
        self.populate_seconds = asyncio.get_running_loop().time() - began

    async def _populate(self) -> None:
        mesh = self.mesh
        namespaces = sorted({mesh.namespace(s) for s in range(mesh.services)})
        await self._create_all(
            "/api/v1/namespaces", ({"metadata": {"name": ns}} for ns in namespaces)
        )
        pods = [kube_pod(mesh, p) for p in range(mesh.proxies + 1)]  # + the extra proxy
        services = range(mesh.services)
        for batch in (
            pods,
            [kube_service(mesh, s) for s in services],
            [kube_endpoint_slice(mesh, s) for s in services],
            [destination_rule(mesh, s) for s in services],
            [virtual_service(mesh, s, WEIGHTS[0]) for s in services],
        ):
            await self._create_all(None, batch)

    async def _create_all(self, path: str | None, objects: Iterable[dict[str, Any]]) -> None:
        gate = asyncio.Semaphore(CONCURRENCY)

        async def create(obj: dict[str, Any]) -> None:
            async with gate:
                await self._request("POST", path or collection(obj), obj)
                self.objects += 1

        await asyncio.gather(*(create(obj) for obj in objects))

    async def _request(
        self, method: str, path: str, body: dict[str, Any], *, patch: bool = False
    ) -> None:
        assert self._session is not None  # noqa: S101 - after start()
        headers = {"Content-Type": "application/merge-patch+json" if patch else "application/json"}
        for attempt in range(5):
            async with self._session.request(
                method, path, data=json.dumps(body), headers=headers
            ) as response:
                if response.status < 300:
                    await response.read()
                    return
                text = (await response.text())[:300]
                # 429/5xx under a burst of creations: back off and retry.
                if response.status not in (429, 500, 503, 504) or attempt == 4:
                    raise RuntimeError(f"{method} {path}: HTTP {response.status}: {text}")
            await asyncio.sleep(0.2 * 2**attempt)

    async def set_weight(self, weight: int) -> None:
        """Patch the changed service's VirtualService to send `weight`% to v1."""
        obj = virtual_service(self.mesh, CHANGED_SERVICE, weight)
        path = f"{collection(obj)}/{self.mesh.service_name(CHANGED_SERVICE)}"
        await self._request("PATCH", path, {"spec": obj["spec"]}, patch=True)

    async def set_extra(self, state: bool | None) -> None:
        """The extra proxy in the changed service's EndpointSlice: ready, not ready, or absent."""
        mesh = self.mesh
        obj = kube_endpoint_slice(mesh, CHANGED_SERVICE)
        path = f"{collection(obj)}/{mesh.service_name(CHANGED_SERVICE)}"
        endpoints = slice_endpoints(mesh, CHANGED_SERVICE, extra=state)
        await self._request("PATCH", path, {"endpoints": endpoints}, patch=True)

    async def close(self) -> None:
        """Stop the cluster."""
        if self._session is not None:
            await self._session.close()
        if self.cluster is not None:
            await asyncio.to_thread(self.cluster.stop)
