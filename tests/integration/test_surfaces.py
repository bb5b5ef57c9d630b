"""What a sidecar and the control plane expose, with real processes: the admin and debug ports
listen on loopback only whatever the bind address, the metrics ports serve only /metrics and
health, the mesh's x-lightmesh-* headers neither reach an app nor can be forged into telemetry or
authorization, and an over-long request target is answered 414.

"Another address" here is 127.0.0.2: a socket bound to 127.0.0.1 does not accept connections to
it, one bound to 0.0.0.0 does (tests/netns checks the same from another network namespace).
"""

from __future__ import annotations

import socket
import urllib.error
import urllib.request
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from lightmeshctl.demo.mesh import LocalMesh, http_get, wait_for
from tests.integration.test_mtls import FRONTEND, apply, call, start_pair

pytestmark = pytest.mark.integration

OTHER = "127.0.0.2"
FORGED = {"x-lightmesh-peer": "admin;kube-system;admin;v1", "x-lightmesh-unprocessed": "1"}


def refused(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(2)
        return sock.connect_ex((host, port)) != 0


def post(url: str) -> tuple[int, bytes]:
    request = urllib.request.Request(url, method="POST", data=b"")  # noqa: S310 - a test URL
    try:
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.read()


def mesh_headers(headers: dict[str, Any]) -> list[str]:
    return [name for name in headers if name.lower().startswith("x-lightmesh-")]


def destination_callers(mesh: LocalMesh, name: str) -> set[str]:
    text = http_get(f"{mesh.workloads[name].admin}/metrics").body.decode()
    return {
        sample.labels["source_workload"]
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "lightmesh_requests_total" and sample.labels["reporter"] == "destination"
    }


def test_admin_and_debug_listen_on_loopback_and_metrics_ports_serve_only_metrics_and_health(
    mesh: LocalMesh,
) -> None:
    mesh.start_control_plane(extra_args=("--host", "0.0.0.0"))
    # Its server certificate names "localhost" (and no address, with --host 0.0.0.0).
    catalog = mesh.start_workload(
        "catalog",
        service="catalog",
        sidecar_args=("--bind", "0.0.0.0", "--control-plane", f"localhost:{mesh.cp_port}"),
    )
    mesh.wait_ready()
    # The sidecar: inbound and metrics on every address, the admin port on 127.0.0.1 only.
    assert not refused(OTHER, catalog.inbound_port)
    assert refused(OTHER, catalog.admin_port)
    assert http_get(f"{catalog.admin}/config_dump").status == 200  # from inside "the pod"
    assert http_get(f"{catalog.admin}/logging").body == b"level: info\n"
    assert post(f"{catalog.admin}/logging?level=debug") == (200, b"level: debug\n")
    assert post(f"{catalog.admin}/logging?level=loud")[0] == 400
    public = f"http://{OTHER}:{catalog.metrics_port}"
    assert http_get(f"{public}/ready").status == 200
    assert http_get(f"{public}/healthz").status == 200
    assert b"# TYPE lightmesh_requests_total counter" in http_get(f"{public}/metrics").body
    for path in ("/config_dump", "/certs", "/quitquitquit", "/logging", "/"):
        assert http_get(f"{public}{path}").status == 404, path
    # The control plane: the debug port on 127.0.0.1 only, its metrics port on --host.
    assert refused(OTHER, mesh.cp_debug_port)
    assert http_get(f"{mesh.debug_url}/debug/proxies").status == 200
    cp_public = f"http://{OTHER}:{mesh.cp_metrics_port}"
    assert http_get(f"{cp_public}/ready").status == 200
    assert b"lightmesh_controlplane" in http_get(f"{cp_public}/metrics").body
    for path in ("/debug/proxies", "/debug/problems", "/debug/config/x"):
        assert http_get(f"{cp_public}{path}").status == 404, path


def test_proxy_status_and_proxy_config_work_on_the_loopback_ports(mesh: LocalMesh) -> None:
    import subprocess
    import sys

    mesh.start_control_plane()
    catalog = mesh.start_workload("catalog", service="catalog")
    mesh.wait_ready()
    cli = [sys.executable, "-m", "lightmeshctl.cli"]
    status = subprocess.run(
        [*cli, "proxy-status", "--control-plane", mesh.debug_url],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert status.returncode == 0 and "catalog-" in status.stdout, status.stderr
    config = subprocess.run(
        [*cli, "proxy-config", "certs", "--admin", catalog.admin],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert config.returncode == 0 and "identity:" in config.stdout, config.stderr


def test_no_app_sees_mesh_headers_and_forged_ones_change_no_telemetry_or_authorization(
    mesh: LocalMesh,
) -> None:
    start_pair(mesh)
    catalog = mesh.workloads["catalog"]
    # From frontend's app through both sidecars (mutual TLS): forged headers are dropped by
    # frontend's sidecar, which announces frontend; catalog's sidecar keeps that from its app.
    status, body = call(mesh, "/items", **FORGED)
    assert status == 200, body
    headers = body["headers"]
    assert isinstance(headers, dict) and mesh_headers(headers) == [], headers
    # A plaintext client outside the mesh, straight to catalog's inbound (PERMISSIVE).
    reply = http_get(f"{catalog.inbound}/items", headers={"Host": "catalog", **FORGED})
    assert reply.status == 200
    assert mesh_headers(reply.json()["headers"]) == [] and mesh_headers(reply.headers) == []
    # Telemetry: the verified caller is frontend; the plaintext one is unknown, never "admin".
    wait_for(
        lambda: destination_callers(mesh, "catalog") == {"frontend", "unknown"},
        timeout=10,
        what="catalog's destination series name frontend and unknown",
    )
    # Authorization: only frontend's certificate may call. A plaintext client announcing itself
    # as frontend is refused; frontend's own calls pass.
    apply(
        mesh,
        "allow-frontend",
        f"""
apiVersion: lightmesh.io/v1alpha1
kind: AuthorizationPolicy
metadata: {{name: allow-frontend, namespace: shop}}
spec:
  selector: {{matchLabels: {{app: catalog}}}}
  rules:
  - from: [{{source: {{principals: ["{FRONTEND.removeprefix("spiffe://")}"]}}}}]
""",
    )
    impostor = {"Host": "catalog", "x-lightmesh-peer": "frontend;shop;frontend;v1"}
    wait_for(
        lambda: http_get(f"{catalog.inbound}/items", headers=impostor).status == 403,
        timeout=20,
        what="ALLOW applied: the impostor refused",
    )
    assert call(mesh, "/items")[0] == 200


def test_an_overlong_request_target_is_414(mesh: LocalMesh) -> None:
    mesh.start_control_plane()
    catalog = mesh.start_workload("catalog", service="catalog")
    mesh.wait_ready()
    target = b"/" + b"a" * 40 * 1024
    with socket.create_connection(("127.0.0.1", catalog.inbound_port), timeout=5) as sock:
        sock.sendall(b"GET " + target + b" HTTP/1.1\r\nHost: catalog\r\n\r\n")
        data = b""
        try:
            while chunk := sock.recv(65536):
                data += chunk
        except ConnectionResetError:
            pass
    assert data.startswith(b"HTTP/1.1 414 "), data[:200]
