"""The ingress gateway with a real kube-apiserver: Gateway credentialName as Kubernetes TLS Secrets
(watched only in the gateway's namespace), rotated under a bounded load without a failed request,
and PASSTHROUGH by SNI to a TLS backend outside the mesh (its EndpointSlice points at it).

Backends are local processes on this machine's primary address (the API server rejects loopback
endpoint addresses); the control plane, the gateway and the clients are real processes, the
clients `requests` and `openssl s_client`.
"""

from __future__ import annotations

import base64
import http.server
import json
import ssl
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from lightmeshctl.demo.mesh import LocalMesh, free_port, http_get, wait_for
from tests.support.certs import EdgeCA
from tests.support.edge import https_get, https_status, presented_serial, rotate_under_load
from tests.support.kube import KubeCluster, advertise_address

pytestmark = pytest.mark.kube

# Bound of the load while the Secret is rotated (each request a new TLS connection).
ROTATION_REQUESTS = 400


def tls_secret(namespace: str, name: str, cert: str, key: str) -> str:
    def b64(text: str) -> str:
        return base64.b64encode(text.encode()).decode()

    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "kubernetes.io/tls",
            "metadata": {"name": name, "namespace": namespace},
            "data": {"tls.crt": b64(cert), "tls.key": b64(key)},
        }
    )


def backend_service(namespace: str, name: str, address: str, port: int) -> str:
    return f"""
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  ports: [{{name: https, port: 443, targetPort: {port}}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {name}-1
  namespace: {namespace}
  labels: {{kubernetes.io/service-name: {name}}}
addressType: IPv4
ports: [{{name: https, port: {port}, protocol: TCP}}]
endpoints:
  - addresses: ["{address}"]
"""


def gateway_resources(namespace: str, https: int, passthrough: int) -> str:
    return f"""
apiVersion: lightmesh.io/v1alpha1
kind: Gateway
metadata: {{name: edge, namespace: {namespace}}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
    - port: {{number: {https}, name: https, protocol: HTTPS}}
      hosts: ["shop.example.com"]
      tls: {{mode: SIMPLE, credentialName: shop-cert}}
    - port: {{number: {passthrough}, name: tls, protocol: TLS}}
      hosts: ["db.example.com"]
      tls: {{mode: PASSTHROUGH}}
---
apiVersion: lightmesh.io/v1alpha1
kind: VirtualService
metadata: {{name: shop, namespace: {namespace}}}
spec:
  hosts: ["shop.example.com"]
  gateways: ["edge"]
  http:
    - route: [{{destination: {{host: shop}}}}]
---
apiVersion: lightmesh.io/v1alpha1
kind: VirtualService
metadata: {{name: db, namespace: {namespace}}}
spec:
  hosts: ["db.example.com"]
  gateways: ["edge"]
  tls:
    - match: [{{sniHosts: ["db.example.com"]}}]
      route: [{{destination: {{host: db}}}}]
"""


class _Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = json.dumps({"service": "db", "tls": True}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def tls_backend(tmp_path: Path) -> Iterator[tuple[str, int, Path]]:
    """An HTTPS server outside the mesh with a certificate for db.example.com (its own CA)."""
    address = advertise_address()
    assert address, "no non-loopback address on this machine for endpoint addresses"
    ca = EdgeCA("Database Root")
    cert, key = ca.issue("db.example.com", dns=("db.example.com",))
    with tempfile.TemporaryDirectory() as directory:
        Path(directory, "c.pem").write_text(cert)
        Path(directory, "k.pem").write_text(key)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(Path(directory, "c.pem"), Path(directory, "k.pem"))
    server = http.server.ThreadingHTTPServer((address, 0), _Hello)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    ca_file = tmp_path / "db-ca.pem"
    ca_file.write_text(ca.pem)
    yield address, server.server_address[1], ca_file
    server.shutdown()
    server.server_close()


def test_secret_credentials_rotate_without_a_failed_request_and_passthrough_by_sni(
    kube: KubeCluster,
    crds: None,
    namespace: str,
    tmp_path: Path,
    tls_backend: tuple[str, int, Path],
) -> None:
    address, db_port, db_ca = tls_backend
    edge = EdgeCA("Edge Root")
    ca_file = tmp_path / "edge.pem"
    ca_file.write_text(edge.pem)
    first_cert, first_key = edge.issue("shop.example.com", dns=("shop.example.com",))
    https, passthrough = free_port(), free_port()
    empty = tmp_path / "files"
    empty.mkdir()
    with LocalMesh(config_dir=empty, work_dir=tmp_path / "mesh") as mesh:
        shop_port = free_port()
        mesh.spawn(
            "shop",
            ["-m", "lightmeshctl.demo.app", "--name", "shop", "--version", "v1",
             "--workload", "shop-v1", "--host", address, "--port", str(shop_port)],
        )  # fmt: skip
        kube.kubectl(
            "apply", "-f", "-",
            input="\n---\n".join([
                backend_service(namespace, "shop", address, shop_port),
                backend_service(namespace, "db", address, db_port),
                gateway_resources(namespace, https, passthrough),
                tls_secret(namespace, "shop-cert", first_cert, first_key),
                # A Secret of the same name in another namespace is never read.
                tls_secret("default", "shop-cert", "not a certificate", "nor a key"),
            ]),
        )  # fmt: skip
        mesh.start_control_plane(
            extra_args=(
                "--kubeconfig", str(kube.kubeconfig), "--gateway-namespace", namespace,
            )
        )  # fmt: skip
        # In a cluster the gateway's stream is vouched for by a TokenReview of its ServiceAccount
        # token (it is sent its Secrets' keys only then), as its projected token is in a pod.
        kube.kubectl("create", "serviceaccount", "ingressgateway", "-n", namespace)
        token = kube.kubectl(
            "create", "token", "ingressgateway", "-n", namespace, "--audience=lightmesh",
            "--duration=1h",
        ).stdout.strip()  # fmt: skip
        token_file = tmp_path / "gateway-token"
        token_file.write_text(token + "\n")
        gateway = mesh.start_gateway(namespace=namespace, args=("--token-file", str(token_file)))
        # The mesh's root, for gateways to mount (they are not injected).
        root = (mesh.state_dir / "root.pem").read_text()
        wait_for(
            lambda: kube.kubectl(
                "get", "configmap", "lightmesh-ca-root", "-n", namespace,
                "-o", "jsonpath={.data.root\\.pem}", check=False,
            ).stdout == root,
            timeout=30,
            what="the root ConfigMap in the gateway namespace",
        )  # fmt: skip
        wait_for(
            lambda: https_status(https, "shop.example.com", ca_file) == 200,
            timeout=60,
            what="gateway serves the Secret",
        )
        assert https_get(https, "shop.example.com", ca_file).json()["service"] == "shop"
        # The gateway's config dump and the control plane's debug page show the listener, never
        # the private key.
        dump = http_get(f"{gateway.admin}/config_dump").body.decode()
        assert "GATEWAY" in dump and "PRIVATE KEY" not in dump
        (node,) = [p["id"] for p in mesh.proxies() if p["id"].startswith("ingressgateway")]
        debug = http_get(f"{mesh.debug_url}/debug/config/{node}").json()
        assert debug["GATEWAY"]["resources"] and "PRIVATE KEY" not in json.dumps(debug)

        # PASSTHROUGH: the client's TLS reaches the backend untouched (its own certificate, its
        # own CA), routed by SNI.
        through = https_get(passthrough, "db.example.com", db_ca)
        assert through.json() == {"service": "db", "tls": True}
        with pytest.raises(requests.RequestException):
            https_get(passthrough, "other.example.com", db_ca)

        # Rotation: a new certificate in the Secret while a bounded load runs, each request on a
        # new connection (a new handshake), until 20 requests after the new certificate is seen
        # (at most ROTATION_REQUESTS): nothing may fail.
        name = "shop.example.com"
        before = presented_serial(https, name)
        outcomes, after = rotate_under_load(
            lambda: https_get(https, name, ca_file).status_code,  # each a new connection
            lambda: kube.kubectl(
                "apply",
                "-f",
                "-",
                input=tls_secret(namespace, "shop-cert", *edge.issue(name, dns=(name,))),
            ),
            lambda: presented_serial(https, name) not in ("", before),
            most=ROTATION_REQUESTS,
        )
        assert after == 20, f"the load ended before the rotation: {outcomes}"
        assert set(outcomes) == {"200"}, outcomes
        # A broken Secret keeps the last good certificate serving.
        kube.kubectl(
            "apply", "-f", "-", input=tls_secret(namespace, "shop-cert", "garbage", "garbage")
        )
        wait_for(
            lambda: (
                https_status(https, "shop.example.com", ca_file) == 200
                and "gateway_certificate_failed" in _log(mesh)
            ),
            timeout=30,
            what="the broken Secret is logged (and the last good certificate still served)",
        )
        assert https_get(https, "shop.example.com", ca_file).status_code == 200


def _log(mesh: LocalMesh) -> str:
    return (mesh.work_dir / "logs" / "ingressgateway.log").read_text()
