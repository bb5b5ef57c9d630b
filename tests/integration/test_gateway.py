"""The ingress gateway (`lightmesh gateway`) as real processes on loopback, with real clients.

A control plane (file source), meshed workloads (demo app + sidecar, in namespace `shop`, with
mutual TLS STRICT) and one gateway process whose ports are the servers of the Gateways selecting
its labels. Requests come from outside the mesh: `requests`, `curl` and `openssl s_client` with
certificates made here (tests/integration/gateway_certs.py), so nothing of the mesh's own TLS
helps the client.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest
import requests

from lightmeshctl.demo.mesh import LocalMesh, free_port, http_get, wait_for

pytestmark = pytest.mark.integration

STRICT = """
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: shop}
spec:
  mtls: {mode: STRICT}
"""


def apply(mesh: LocalMesh, name: str, text: str) -> None:
    (mesh.config_dir / f"{name}.yaml").write_text(text)


def http_gateway(port: int) -> str:
    return f"""
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: shop-gateway, namespace: shop}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
    - port: {{number: {port}, name: http, protocol: HTTP}}
      hosts: ["shop/*.example.com"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: shop, namespace: shop}}
spec:
  hosts: ["shop.example.com"]
  gateways: ["shop-gateway"]
  http:
    - match: [{{uri: {{prefix: /catalog}}}}]
      route: [{{destination: {{host: catalog}}}}]
    - route: [{{destination: {{host: frontend}}}}]
"""


def start_shop(mesh: LocalMesh) -> None:
    """Control plane, frontend and catalog in `shop` (STRICT), each with a certificate."""
    apply(mesh, "strict", STRICT)
    mesh.start_control_plane()
    for name in ("frontend", "catalog"):
        mesh.start_workload(
            name,
            service=name,
            namespace="shop",
            sidecar_args=("--service-account", f"{name}-sa"),
        )
    mesh.wait_ready()


def start_gateway(mesh: LocalMesh) -> None:
    gateway = mesh.start_gateway(namespace="shop")
    wait_for(
        lambda: http_get(f"{gateway.admin}/certs").json()["certificate"],
        timeout=30,
        what="gateway: certificate installed",
    )


def answered_by(url: str, **kwargs: object) -> str:
    reply = requests.get(url, timeout=5, **kwargs)  # type: ignore[arg-type]
    reply.raise_for_status()
    return str(reply.json()["service"])


def test_http_gateway_routes_by_virtual_service_with_mesh_mtls_to_strict_workloads(
    mesh: LocalMesh,
) -> None:
    port = free_port()
    apply(mesh, "gateway", http_gateway(port))
    start_shop(mesh)
    start_gateway(mesh)
    base = f"http://127.0.0.1:{port}"
    host = {"Host": "shop.example.com"}
    wait_for(
        lambda: requests.get(f"{base}/", headers=host, timeout=2).status_code == 200,
        timeout=30,
        what="gateway routes shop.example.com",
    )
    # The workloads are STRICT: only a client with a mesh certificate (the gateway's) gets in.
    assert answered_by(f"{base}/", headers=host) == "frontend"
    assert answered_by(f"{base}/catalog/items", headers=host) == "catalog"
    # A host the Gateway does not serve, or the VirtualService does not route: 404 (NR).
    other = requests.get(f"{base}/", headers={"Host": "other.example.com"}, timeout=5)
    assert other.status_code == 404
    assert other.headers.get("x-lightmesh-response-flags") == "NR"
    # The VirtualService is bound to the gateway only: sidecars do not route shop.example.com.
    through_sidecar = http_get(
        "http://shop.example.com/", proxy=mesh.workloads["frontend"].outbound
    )
    assert through_sidecar.status == 404
    # curl, as a user would.
    if shutil.which("curl"):
        out = subprocess.run(
            ["curl", "-sS", "-H", "Host: shop.example.com", f"{base}/catalog"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        assert '"service": "catalog"' in out.stdout or '"service":"catalog"' in out.stdout


def test_gateway_follows_gateway_changes_opening_and_closing_ports(mesh: LocalMesh) -> None:
    first, second = free_port(), free_port()
    apply(mesh, "gateway", http_gateway(first))
    start_shop(mesh)
    start_gateway(mesh)
    host = {"Host": "shop.example.com"}
    wait_for(
        lambda: _status(f"http://127.0.0.1:{first}/", host) == 200,
        timeout=30,
        what="first port",
    )
    apply(mesh, "gateway", http_gateway(second))
    wait_for(
        lambda: _status(f"http://127.0.0.1:{second}/", host) == 200,
        timeout=30,
        what="second port",
    )
    wait_for(
        lambda: _status(f"http://127.0.0.1:{first}/", host) == 0, timeout=30, what="first closed"
    )


def _status(url: str, headers: dict[str, str]) -> int:
    try:
        return requests.get(url, headers=headers, timeout=2).status_code
    except requests.RequestException:
        return 0
