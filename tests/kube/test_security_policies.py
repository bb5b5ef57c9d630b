"""PeerAuthentication and AuthorizationPolicy through a real kube-apiserver: the CRDs' schemas,
kubectl short names, status conditions, and a sidecar enforcing what was applied."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest

from lightmeshctl.demo.mesh import LocalMesh, http_get, wait_for
from tests.support.kube import KubeCluster, KubectlError

pytestmark = pytest.mark.kube


def condition(kube: KubeCluster, kind: str, name: str, namespace: str) -> dict[str, Any] | None:
    obj = kube.kubectl_json("get", kind, name, "-n", namespace)
    for found in obj.get("status", {}).get("conditions", []):
        if found["type"] == "Accepted":
            return found  # type: ignore[no-any-return]
    return None


def plaintext_get(port: int, path: str) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        data = b""
        try:
            while chunk := sock.recv(65536):
                data += chunk
        except ConnectionResetError:
            pass
        return data


def test_kubectl_applied_policies_are_validated_and_enforced(
    kube: KubeCluster, crds: None, namespace: str, tmp_path: Path
) -> None:
    # The API server's schema rejects what is structurally wrong, before the control plane sees it.
    with pytest.raises(KubectlError, match="Unsupported value"):
        kube.kubectl(
            "apply", "-f", "-",
            input=f"""
apiVersion: lightmesh.io/v1alpha1
kind: PeerAuthentication
metadata: {{name: wrong, namespace: {namespace}}}
spec: {{mtls: {{mode: SOMETIMES}}}}
""",
        )  # fmt: skip
    empty = tmp_path / "files"
    empty.mkdir()
    with LocalMesh(config_dir=empty, work_dir=tmp_path / "mesh") as mesh:
        mesh.start_control_plane(extra_args=("--kubeconfig", str(kube.kubeconfig)))
        mesh.start_workload("catalog", service="catalog", namespace=namespace)
        mesh.wait_ready()
        workload = mesh.workloads["catalog"]
        kube.kubectl(
            "apply", "-f", "-",
            input=f"""
apiVersion: lightmesh.io/v1alpha1
kind: PeerAuthentication
metadata: {{name: strict, namespace: {namespace}}}
spec:
  selector: {{matchLabels: {{app: catalog}}}}
  mtls: {{mode: STRICT}}
---
apiVersion: lightmesh.io/v1alpha1
kind: AuthorizationPolicy
metadata: {{name: deny-admin, namespace: {namespace}}}
spec:
  action: DENY
  rules: [{{to: [{{operation: {{paths: ["/admin*"]}}}}]}}]
---
apiVersion: lightmesh.io/v1alpha1
kind: AuthorizationPolicy
metadata: {{name: bad-principal, namespace: {namespace}}}
spec:
  rules: [{{from: [{{source: {{principals: ["spiffe://cluster.local/ns/x/sa/y"]}}}}]}}]
""",
        )  # fmt: skip
        wait_for(
            lambda: http_get(f"{workload.admin}/certs").json()["mtls"]["inbound_mode"] == "STRICT",
            timeout=30,
            what="STRICT reached the sidecar",
        )
        assert plaintext_get(workload.inbound_port, "/") == b""
        wait_for(
            lambda: (
                (condition(kube, "ap", "bad-principal", namespace) or {}).get("status") == "False"
            ),
            timeout=30,
            what="the invalid policy marked not Accepted",
        )
        bad = condition(kube, "ap", "bad-principal", namespace)
        assert bad is not None
        assert "spec.rules[0].from[0].source.principals[0]" in bad["message"]
        for kind, name in (("pa", "strict"), ("ap", "deny-admin")):
            wait_for(
                lambda k=kind, n=name: (
                    (condition(kube, k, n, namespace) or {}).get("status") == "True"
                ),
                timeout=30,
                what=f"{kind}/{name} Accepted",
            )
        # Back to PERMISSIVE: plaintext is served, and the DENY rule still answers /admin.
        kube.kubectl("patch", "pa", "strict", "-n", namespace, "--type=merge",
                     "-p", '{"spec": {"mtls": {"mode": "PERMISSIVE"}}}')  # fmt: skip
        wait_for(
            lambda: plaintext_get(workload.inbound_port, "/").startswith(b"HTTP/1.1 200"),
            timeout=30,
            what="PERMISSIVE serves plaintext",
        )
        assert plaintext_get(workload.inbound_port, "/admin/x").startswith(b"HTTP/1.1 403")
        columns = kube.kubectl("get", "lightmesh", "-n", namespace).stdout
        assert "PERMISSIVE" in columns and "DENY" in columns
