"""RequestAuthentication (lightmesh.io and security.istio.io) and HTTPLocalRateLimitPolicy through a
real kube-apiserver: the CRDs refuse what is structurally wrong naming the field, the control
plane marks what is semantically wrong not Accepted naming the field, and a sidecar enforces what
was accepted (401 for a bad token, 403 without one where a principal is required)."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest

from lightmeshctl.demo.mesh import LocalMesh, http_get, wait_for
from tests.support.jwks import Issuer
from tests.support.kube import KubeCluster, KubectlError

pytestmark = pytest.mark.kube

ISSUER = Issuer("https://issuer.kube.test", alg="ES256")


def condition(kube: KubeCluster, kind: str, name: str, namespace: str) -> dict[str, Any]:
    obj = kube.kubectl_json("get", kind, name, "-n", namespace)
    for found in obj.get("status", {}).get("conditions", []):
        if found["type"] == "Accepted":
            return found  # type: ignore[no-any-return]
    return {}


def get(port: int, token: str = "") -> bytes:
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(f"GET / HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
        return data


@pytest.mark.parametrize(
    ("manifest", "message"),
    [
        ("kind: HTTPLocalRateLimitPolicy\napiVersion: lightmesh.io/v1alpha1\n"
         "spec: {selector: {matchLabels: {app: a}}, total: {requestsPerSecond: 0}}",
         "spec.total.requestsPerSecond: Invalid value: 0"),
        ("kind: RequestAuthentication\napiVersion: security.istio.io/v1\n"
         "spec: {jwtRules: [{issuer: i, jwksURL: 'https://i/k'}]}",
         'unknown field "spec.jwtRules[0].jwksURL"'),
        ("kind: RequestAuthentication\napiVersion: lightmesh.io/v1alpha1\n"
         "spec: {jwtRules: [{jwksUri: 'https://i/k'}]}",
         "spec.jwtRules[0].issuer: Required value"),
        ("kind: HTTPLocalRateLimitPolicy\napiVersion: lightmesh.io/v1alpha1\n"
         "spec: {selector: {matchLabels: {app: a}}, overrides: [{requestsPerSecond: 1, "
         "clientRefs: [{kind: Pod, name: p}]}]}",
         'spec.overrides[0].clientRefs[0].kind: Unsupported value: "Pod"'),
    ],
    ids=["rate-zero", "unknown-field", "no-issuer", "client-kind"],
)  # fmt: skip
def test_the_api_server_refuses_structural_errors_naming_the_field(
    kube: KubeCluster, crds: None, istio_crds: None, namespace: str, manifest: str, message: str
) -> None:
    with pytest.raises(KubectlError, match=message.replace("[", r"\[").replace("]", r"\]")):
        kube.kubectl("apply", "-n", namespace, "-f", "-",
                     input=f"{manifest}\nmetadata: {{name: bad}}\n")  # fmt: skip


def test_applied_resources_are_validated_marked_and_enforced(
    kube: KubeCluster, crds: None, istio_crds: None, namespace: str, tmp_path: Path
) -> None:
    empty = tmp_path / "files"
    empty.mkdir()
    jwks = json.dumps(ISSUER.jwks())  # a YAML string holding the JSON text
    with LocalMesh(config_dir=empty, work_dir=tmp_path / "mesh") as mesh:
        mesh.start_control_plane(extra_args=("--kubeconfig", str(kube.kubeconfig), "--istio-api"))
        mesh.start_workload("catalog", service="catalog", namespace=namespace)
        mesh.wait_ready()
        workload = mesh.workloads["catalog"]
        kube.kubectl("apply", "-n", namespace, "-f", "-", input=f"""
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: jwt}}
spec:
  selector: {{matchLabels: {{app: catalog}}}}
  jwtRules: [{{issuer: "{ISSUER.name}", jwks: {jwks}}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: require-jwt}}
spec:
  selector: {{matchLabels: {{app: catalog}}}}
  rules: [{{from: [{{source: {{requestPrincipals: ["*"]}}}}]}}]
---
apiVersion: lightmesh.io/v1alpha1
kind: HTTPLocalRateLimitPolicy
metadata: {{name: limit}}
spec:
  targetRef: {{group: apps, kind: Deployment, name: catalog}}
  total: {{requestsPerSecond: 1000}}
---
apiVersion: lightmesh.io/v1alpha1
kind: RequestAuthentication
metadata: {{name: bad-uri}}
spec:
  jwtRules: [{{issuer: other, jwksUri: "ftp://issuer/keys"}}]
---
apiVersion: lightmesh.io/v1alpha1
kind: HTTPLocalRateLimitPolicy
metadata: {{name: bad-target}}
spec:
  targetRef: {{group: policy.linkerd.io, kind: Server, name: web}}
  total: {{requestsPerSecond: 5}}
""")  # fmt: skip
        for kind, name, field in (
            ("ra", "bad-uri", "spec.jwtRules[0].jwksUri: 'ftp://issuer/keys' is not an http(s) URL"),
            ("httplocalratelimitpolicies", "bad-target", "spec.targetRef.kind: 'Server' is not supported"),
        ):  # fmt: skip
            wait_for(lambda k=kind, n=name: condition(kube, k, n, namespace).get("status") == "False",
                     timeout=30, what=f"{kind}/{name} not Accepted")  # fmt: skip
            assert field in condition(kube, kind, name, namespace)["message"]
        for kind, name in (("requestauthentications.security.istio.io", "jwt"),
                           ("authorizationpolicies.security.istio.io", "require-jwt"),
                           ("httplocalratelimitpolicies", "limit")):  # fmt: skip
            wait_for(lambda k=kind, n=name: condition(kube, k, n, namespace).get("status") == "True",
                     timeout=30, what=f"{kind}/{name} Accepted")  # fmt: skip

        wait_for(lambda: get(workload.inbound_port).startswith(b"HTTP/1.1 403"), timeout=30,
                 what="a principal required")  # fmt: skip
        assert get(workload.inbound_port, ISSUER.token()).startswith(b"HTTP/1.1 200")
        assert get(workload.inbound_port, ISSUER.token(lifetime=-600)).startswith(b"HTTP/1.1 401")
        dump = http_get(f"{workload.admin}/config_dump").body
        assert b'"rateLimit"' in dump and b'"requestsPerSecond": 1000' in dump
