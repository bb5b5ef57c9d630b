"""The ingress gateway (`lightmesh gateway`) as real processes on loopback, with real clients.

A control plane (file source), meshed workloads (demo app + sidecar, in namespace `shop`, with
mutual TLS STRICT) and one gateway process whose ports are the servers of the Gateways selecting
its labels. Requests come from outside the mesh: `requests`, `curl` and `openssl s_client` with
certificates made here (tests/integration/gateway_certs.py), so nothing of the mesh's own TLS
helps the client.
"""

from __future__ import annotations

import json
import shutil
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from controlplane.ca import CertificateAuthority, FileCAStore
from lightmeshctl.demo.mesh import LocalMesh, free_port, http_get, wait_for
from tests.support.certs import EdgeCA, write_pair
from tests.support.edge import (
    handshake_in_pieces,
    https_get,
    https_status,
    presented_serial,
    presented_subject,
    rotate_under_load,
    s_client,
)
from tests.support.jwks import Issuer

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
    start_gateway_in(mesh, "shop")


def start_gateway_in(mesh: LocalMesh, namespace: str) -> None:
    gateway = mesh.start_gateway(namespace=namespace)
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
    # The workload's sidecar saw the gateway's own workload certificate.
    seen = requests.get(f"{base}/", headers=host, timeout=5).json()["headers"]
    assert "URI=spiffe://cluster.local/ns/shop/sa/ingressgateway" in seen["x-forwarded-client-cert"]
    assert seen["x-forwarded-proto"] == "http"
    assert answered_by(f"{base}/catalog/items", headers=host) == "catalog"
    # A host the Gateway does not serve, or the VirtualService does not route: 404 (NR).
    other = requests.get(f"{base}/", headers={"Host": "other.example.com"}, timeout=5)
    assert other.status_code == 404
    assert other.headers.get("x-lightmesh-response-flags") == "NR"
    # proxy-status shows the gateway's listeners synced.
    table = subprocess.run(
        [sys.executable, "-m", "lightmeshctl.cli", "proxy-status", "--control-plane", mesh.debug_url],
        capture_output=True, text=True, timeout=30, check=True,
    ).stdout  # fmt: skip
    header, *rows = table.splitlines()
    assert header.split()[-1] == "GATEWAY"
    (row,) = [r for r in rows if r.startswith("ingressgateway")]
    assert row.split()[-2] == "SYNCED"
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


def test_a_port_in_use_is_listened_on_once_it_is_free(mesh: LocalMesh) -> None:
    port = free_port()
    squatter = socket.create_server(("127.0.0.1", port))
    apply(mesh, "gateway", http_gateway(port))
    start_shop(mesh)
    start_gateway(mesh)
    log = mesh.work_dir / "logs" / "ingressgateway.log"
    wait_for(lambda: "gateway_port_failed" in log.read_text(), timeout=30, what="bind failure")
    squatter.close()
    host = {"Host": "shop.example.com"}
    wait_for(lambda: _status(f"http://127.0.0.1:{port}/", host) == 200, timeout=30, what="bound")


def _status(url: str, headers: dict[str, str]) -> int:
    try:
        return requests.get(url, headers=headers, timeout=2).status_code
    except requests.RequestException:
        return 0


# --- HTTPS: certificates chosen by SNI ---


def https_gateway(port: int, certs: Path) -> str:
    return f"""
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: shop-gateway, namespace: shop}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
    - port: {{number: {port}, name: https-shop, protocol: HTTPS}}
      hosts: ["shop/shop.example.com"]
      tls: {{mode: SIMPLE, credentialName: "{certs / "shop"}"}}
    - port: {{number: {port}, name: https-admin, protocol: HTTPS}}
      hosts: ["shop/admin.example.com"]
      tls: {{mode: SIMPLE, credentialName: "{certs / "admin"}"}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: shop, namespace: shop}}
spec:
  hosts: ["shop.example.com"]
  gateways: ["shop-gateway"]
  http:
    - route: [{{destination: {{host: frontend}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: admin, namespace: shop}}
spec:
  hosts: ["admin.example.com"]
  gateways: ["shop/shop-gateway"]
  http:
    - route: [{{destination: {{host: catalog}}}}]
"""


def curl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["curl", "-sS", "--max-time", "10", *args], capture_output=True, text=True, timeout=20
    )


@pytest.fixture
def edge_ca(tmp_path: Path) -> tuple[EdgeCA, Path]:
    ca = EdgeCA("Edge Test Root")
    path = tmp_path / "edge-ca.pem"
    path.write_text(ca.pem)
    return ca, path


def test_https_gateway_presents_the_certificate_of_each_sni_and_routes_by_host(
    mesh: LocalMesh, tmp_path: Path, edge_ca: tuple[EdgeCA, Path]
) -> None:
    ca, ca_file = edge_ca
    certs = tmp_path / "certs"
    ca.write_secret_dir(certs / "shop", "shop.example.com", dns=("shop.example.com",))
    ca.write_secret_dir(certs / "admin", "admin.example.com", dns=("admin.example.com",))
    port = free_port()
    apply(mesh, "gateway", https_gateway(port, certs))
    start_shop(mesh)
    start_gateway(mesh)
    wait_for(
        lambda: https_status(port, "shop.example.com", ca_file) == 200,
        timeout=30,
        what="gateway serves https://shop.example.com",
    )
    assert "CN = shop.example.com" in presented_subject(port, "shop.example.com")
    assert "CN = admin.example.com" in presented_subject(port, "admin.example.com")
    # requests verifies each certificate against the edge CA and the name it asked for.
    assert https_get(port, "shop.example.com", ca_file).json()["service"] == "frontend"
    assert https_get(port, "admin.example.com", ca_file).json()["service"] == "catalog"
    # The edge says how the client came, whatever the client claims.
    forged = https_get(port, "shop.example.com", ca_file, headers={"X-Forwarded-Proto": "ftp"})
    assert forged.json()["headers"]["x-forwarded-proto"] == "https"
    # curl, resolving the names to the gateway as DNS would.
    for name, service in (("shop.example.com", "frontend"), ("admin.example.com", "catalog")):
        out = curl(
            "--cacert", str(ca_file), "--resolve", f"{name}:{port}:127.0.0.1",
            f"https://{name}:{port}/",
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["service"] == service
    # A ClientHello that arrives a few bytes at a time is read whole before the server is chosen.
    assert handshake_in_pieces(port, "admin.example.com", ca_file) == "HTTP/1.1 200 OK"
    # An SNI no server takes: the handshake is refused.
    refused = curl(
        "--cacert", str(ca_file), "--resolve", f"nope.example.com:{port}:127.0.0.1",
        f"https://nope.example.com:{port}/",
    )  # fmt: skip
    assert refused.returncode != 0
    # Plain text on a TLS-only port is refused too.
    with pytest.raises(requests.RequestException):
        requests.get(f"http://127.0.0.1:{port}/", headers={"Host": "shop.example.com"}, timeout=5)
    # All counted, per port and outcome.
    metrics = http_get(f"{mesh.gateways['ingressgateway'].admin}/metrics").body.decode()
    counts = {
        outcome: _sample(
            metrics, "lightmesh_gateway_tls_handshakes_total", port=str(port), outcome=outcome
        )
        for outcome in ("ok", "failed", "plaintext_refused")
    }
    assert counts["ok"] >= 6 and counts["failed"] >= 1 and counts["plaintext_refused"] == 1, counts


def _sample(text: str, name: str, **labels: str) -> float:
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        if line.startswith(f"{name}{{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no sample {name}{{{wanted}}}")


# --- MUTUAL (client CA) and httpsRedirect ---


def mutual_gateway(https: int, http: int, certs: Path) -> str:
    return f"""
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: partners, namespace: shop}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
    - port: {{number: {https}, name: https, protocol: HTTPS}}
      hosts: ["shop/partners.example.com"]
      tls:
        mode: MUTUAL
        credentialName: "{certs / "partners"}"
        subjectAltNames: ["spiffe://partners.example/a"]
    - port: {{number: {http}, name: http, protocol: HTTP}}
      hosts: ["shop/partners.example.com"]
      tls: {{httpsRedirect: true}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: partners, namespace: shop}}
spec:
  hosts: ["partners.example.com"]
  gateways: ["partners"]
  http:
    - route: [{{destination: {{host: catalog}}}}]
"""


def test_mutual_tls_requires_a_client_certificate_of_the_client_ca_and_http_redirects(
    mesh: LocalMesh, tmp_path: Path, edge_ca: tuple[EdgeCA, Path]
) -> None:
    ca, ca_file = edge_ca
    clients = EdgeCA("Partner Client Root")
    certs = tmp_path / "certs"
    ca.write_secret_dir(
        certs / "partners", "partners.example.com", dns=("partners.example.com",), ca=clients
    )
    good_cert, good_key = clients.issue(
        "partner-a", uris=("spiffe://partners.example/a",), client=True
    )
    # Of the right CA, but not a name the server's subjectAltNames allow.
    other_cert, other_key = clients.issue(
        "partner-b", uris=("spiffe://partners.example/b",), client=True
    )
    rogue_cert, rogue_key = EdgeCA("Someone Else").issue("rogue", client=True)
    files = {}
    for name, text in {
        "good.crt": good_cert, "good.key": good_key, "rogue.crt": rogue_cert, "rogue.key": rogue_key,
        "other.crt": other_cert, "other.key": other_key,
    }.items():  # fmt: skip
        files[name] = tmp_path / name
        files[name].write_text(text)
    https, http = free_port(), free_port()
    apply(mesh, "gateway", mutual_gateway(https, http, certs))
    start_shop(mesh)
    start_gateway(mesh)
    name = "partners.example.com"
    with_cert = ("--cert", str(files["good.crt"]), "--key", str(files["good.key"]))
    resolve = ("--cacert", str(ca_file), "--resolve", f"{name}:{https}:127.0.0.1")
    url = f"https://{name}:{https}/orders"
    wait_for(
        lambda: curl(*resolve, *with_cert, url).returncode == 0,
        timeout=30,
        what="gateway serves partners over mutual TLS",
    )
    out = curl(*resolve, *with_cert, url)
    assert json.loads(out.stdout)["service"] == "catalog"
    # requests with the client certificate too.
    reply = https_get(
        https, name, ca_file, "/orders", cert=(str(files["good.crt"]), str(files["good.key"]))
    )
    assert reply.json()["service"] == "catalog"
    # Without a client certificate, or with one of another CA: refused in the handshake.
    assert curl(*resolve, url).returncode != 0
    rogue = curl(*resolve, "--cert", str(files["rogue.crt"]), "--key", str(files["rogue.key"]), url)
    assert rogue.returncode != 0
    other = curl(*resolve, "--cert", str(files["other.crt"]), "--key", str(files["other.key"]), url)
    assert other.returncode != 0, other.stdout
    with pytest.raises(requests.exceptions.SSLError):
        https_get(https, name, ca_file, "/orders")
    # openssl s_client with the client certificate: the request goes through.
    hello = s_client(
        https, name,
        "-CAfile", str(ca_file), "-cert", str(files["good.crt"]), "-key", str(files["good.key"]),
        "-quiet", "-verify_return_error",
        send=f"GET / HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n",
    )  # fmt: skip
    assert hello.stdout.startswith("HTTP/1.1 200"), hello.stderr
    # Plain HTTP on the redirect server: 301 to the same URL over https, whatever the path.
    redirect = requests.get(
        f"http://127.0.0.1:{http}/orders?id=7",
        headers={"Host": name},
        allow_redirects=False,
        timeout=5,
    )
    assert redirect.status_code == 301
    assert redirect.headers["location"] == f"https://{name}/orders?id=7"
    head = curl(
        "-o",
        "/dev/null",
        "-w",
        "%{http_code} %{redirect_url}",
        "-H",
        f"Host: {name}",
        f"http://127.0.0.1:{http}/",
    )
    assert head.stdout == f"301 https://{name}/"


# --- local mode: credential files rotated under load ---

ROTATION_REQUESTS = 400  # bound of the load; it ends 20 requests after the new certificate


def test_credential_files_rotate_without_a_failed_request(
    mesh: LocalMesh, tmp_path: Path, edge_ca: tuple[EdgeCA, Path]
) -> None:
    ca, ca_file = edge_ca
    certs = tmp_path / "certs"
    ca.write_secret_dir(certs / "shop", "shop.example.com", dns=("shop.example.com",))
    ca.write_secret_dir(certs / "admin", "admin.example.com", dns=("admin.example.com",))
    port = free_port()
    apply(mesh, "gateway", https_gateway(port, certs))
    start_shop(mesh)
    start_gateway(mesh)
    name = "shop.example.com"
    wait_for(lambda: https_status(port, name, ca_file) == 200, timeout=30, what="https")
    before = presented_serial(port, name)
    outcomes, after = rotate_under_load(
        lambda: https_get(port, name, ca_file).status_code,  # each a new connection
        # As a Secret volume update: new files renamed into place (key first: for a moment the
        # pair does not match, and the last good certificate must keep serving).
        lambda: write_pair(certs / "shop", *ca.issue(name, dns=(name,))),
        lambda: presented_serial(port, name) not in ("", before),
        most=ROTATION_REQUESTS,
    )
    assert after == 20, f"the load ended before the rotation: {outcomes}"
    assert set(outcomes) == {"200"}, outcomes


# --- examples/gateway/local: the demo shop over HTTPS ---

EXAMPLE = (
    Path(__file__).resolve().parents[2] / "examples" / "gateway" / "local" / "shop-gateway.yaml"
)


def test_the_local_example_exposes_the_demo_shop_over_https(
    mesh: LocalMesh, tmp_path: Path, edge_ca: tuple[EdgeCA, Path]
) -> None:
    ca, ca_file = edge_ca
    name = "shop.example.com"
    secret = ca.write_secret_dir(tmp_path / "shop", name, dns=(name,))
    https, http = free_port(), free_port()
    text = (
        EXAMPLE.read_text()
        .replace("8443", str(https))
        .replace("8080", str(http))
        .replace("/tmp/lightmesh-gateway/shop", str(secret))
    )
    apply(mesh, "shop-gateway", text)
    mesh.start_control_plane()
    mesh.start_workload("catalog", service="catalog")
    mesh.start_workload("frontend", service="frontend", call="catalog")
    mesh.wait_ready()
    start_gateway_in(mesh, "default")
    wait_for(lambda: https_status(https, name, ca_file) == 200, timeout=30, what="https")
    body = https_get(https, name, ca_file).json()
    assert body["service"] == "frontend" and body["upstream"]["service"] == "catalog"
    assert https_get(https, name, ca_file, "/catalog/items").json()["service"] == "catalog"
    redirect = requests.get(
        f"http://127.0.0.1:{http}/", headers={"Host": name}, allow_redirects=False, timeout=5
    )
    assert (redirect.status_code, redirect.headers["location"]) == (301, f"https://{name}/")


# --- Istio's own sample, as written (but for its port number) ---

BOOKINFO = (
    Path(__file__).resolve().parents[1]
    / "data" / "istio-samples" / "bookinfo" / "networking" / "bookinfo-gateway.yaml"
)  # fmt: skip


def test_istios_bookinfo_gateway_sample_routes_through_the_gateway(mesh: LocalMesh) -> None:
    port = free_port()
    text = BOOKINFO.read_text()
    assert "number: 8080" in text
    # Only the port changes (8080 may be taken on a shared machine); apiVersion, selector, "*"
    # hosts and the match list are Istio's.
    apply(mesh, "bookinfo-gateway", text.replace("number: 8080", f"number: {port}"))
    mesh.start_control_plane()
    mesh.start_workload("productpage-v1", service="productpage")
    mesh.wait_ready()
    start_gateway_in(mesh, "default")
    base = f"http://127.0.0.1:{port}"
    wait_for(lambda: _status(f"{base}/productpage", {}) == 200, timeout=30, what="bookinfo")
    for path in ("/productpage", "/static/css/x.css", "/login", "/api/v1/products/0"):
        reply = requests.get(f"{base}{path}", headers={"Host": "bookinfo.example"}, timeout=5)
        assert (reply.status_code, reply.json()["service"]) == (200, "productpage"), path
    missed = requests.get(f"{base}/admin", timeout=5)
    assert (missed.status_code, missed.headers.get("x-lightmesh-response-flags")) == (404, "NR")


# --- ISTIO_MUTUAL: mesh clients, the gateway's own workload certificate ---


def test_istio_mutual_server_takes_mesh_certificates_only(
    mesh: LocalMesh, tmp_path: Path, edge_ca: tuple[EdgeCA, Path]
) -> None:
    port = free_port()
    apply(
        mesh,
        "gateway",
        f"""
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: east-west, namespace: shop}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
    - port: {{number: {port}, name: tls, protocol: HTTPS}}
      hosts: ["shop/*"]
      tls: {{mode: ISTIO_MUTUAL}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: inside, namespace: shop}}
spec:
  hosts: ["catalog.shop.svc.cluster.local"]
  gateways: ["east-west"]
  http: [{{route: [{{destination: {{host: catalog}}}}]}}]
""",
    )
    start_shop(mesh)
    start_gateway(mesh)
    material = FileCAStore(mesh.state_dir / "ca.pem").load()
    assert material is not None
    authority = CertificateAuthority(material, trust_domain="cluster.local")
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .sign(key, hashes.SHA256())
    )
    signed = authority.sign_csr(
        csr.public_bytes(serialization.Encoding.PEM),
        spiffe_id="spiffe://cluster.local/ns/other/sa/remote",
    )
    (tmp_path / "mesh.crt").write_bytes(signed.chain_pem)
    (tmp_path / "mesh.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    name = "catalog.shop.svc.cluster.local"
    request = f"GET / HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n"
    mesh_client = (
        "-CAfile", str(mesh.state_dir / "root.pem"), "-verify_return_error", "-quiet",
        "-cert", str(tmp_path / "mesh.crt"), "-key", str(tmp_path / "mesh.key"),
    )  # fmt: skip
    wait_for(
        lambda: s_client(port, name, *mesh_client, send=request).stdout.startswith("HTTP/1.1 200"),
        timeout=30,
        what="a mesh client through the ISTIO_MUTUAL server",
    )
    # The gateway presented its own workload certificate (the mesh root verified it above).
    shown = s_client(port, name, *[a for a in mesh_client if a != "-quiet"]).stdout
    leaf = x509.load_pem_x509_certificate(
        shown[shown.index("-----BEGIN CERTIFICATE-----") :].encode()
    )
    uris = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert uris.get_values_for_type(x509.UniformResourceIdentifier) == [
        "spiffe://cluster.local/ns/shop/sa/ingressgateway"
    ]
    # A client certificate of another CA is refused.
    edge, _ = edge_ca
    cert, key_pem = edge.issue("outsider", client=True)
    (tmp_path / "out.crt").write_text(cert)
    (tmp_path / "out.key").write_text(key_pem)
    outsider = s_client(
        port, name, "-CAfile", str(mesh.state_dir / "root.pem"), "-quiet",
        "-cert", str(tmp_path / "out.crt"), "-key", str(tmp_path / "out.key"), send=request,
    )  # fmt: skip
    assert not outsider.stdout.startswith("HTTP/1.1 200")


# --- JWT at the gateway (RequestAuthentication and AuthorizationPolicy selecting it) ---


def test_the_shop_over_https_with_jwt_at_the_gateway_routing_on_a_claim(
    mesh: LocalMesh, tmp_path: Path, edge_ca: tuple[EdgeCA, Path]
) -> None:
    issuer = Issuer("https://login.example.com", alg="ES256")
    ca, ca_file = edge_ca
    name = "shop.example.com"
    secret = ca.write_secret_dir(tmp_path / "shop", name, dns=(name,))
    port = free_port()
    jwks = json.dumps(issuer.jwks())
    apply(
        mesh,
        "gateway",
        f"""
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: shop-gateway, namespace: shop}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
    - port: {{number: {port}, name: https, protocol: HTTPS}}
      hosts: ["shop/{name}"]
      tls: {{mode: SIMPLE, credentialName: "{secret}"}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: shop, namespace: shop}}
spec:
  hosts: ["{name}"]
  gateways: ["shop-gateway"]
  http:
    - match: [{{headers: {{x-jwt-team: {{exact: catalog}}}}}}]
      route: [{{destination: {{host: catalog}}}}]
    - route: [{{destination: {{host: frontend}}}}]
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: edge-jwt, namespace: shop}}
spec:
  selector: {{matchLabels: {{istio: ingressgateway}}}}
  jwtRules:
    - issuer: {issuer.name}
      jwks: {jwks}
      outputClaimToHeaders: [{{header: x-jwt-team, claim: team}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: edge-requires-jwt, namespace: shop}}
spec:
  selector: {{matchLabels: {{istio: ingressgateway}}}}
  rules: [{{from: [{{source: {{requestPrincipals: ["{issuer.name}/*"]}}}}]}}]
""",
    )
    start_shop(mesh)
    start_gateway(mesh)

    def get(token: str = "", **headers: str) -> requests.Response:
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return https_get(port, name, ca_file, headers=headers)

    wait_for(lambda: get(issuer.token()).status_code == 200, timeout=30, what="JWT at the edge")
    assert get(issuer.token()).json()["service"] == "frontend"
    # The claim is put in a header before routing: routed on it (and the client's own is replaced).
    routed = get(issuer.token(team="catalog"), **{"x-jwt-team": "frontend"})
    assert routed.json()["service"] == "catalog"
    missing = get()
    assert (missing.status_code, missing.headers.get("x-lightmesh-response-flags")) == (403, "RBAC")
    expired = get(issuer.token(lifetime=-600))
    assert expired.status_code == 401 and expired.headers["www-authenticate"].startswith("Bearer")
    assert get(Issuer(issuer.name, alg="ES256").token()).status_code == 401  # another key
    metrics = http_get(f"{mesh.gateways['ingressgateway'].admin}/metrics").body.decode()
    assert _sample(metrics, "lightmesh_inbound_refused_total", reason="unauthenticated") == 2


def test_rate_limit_per_gateway_route_over_a_bounded_run(mesh: LocalMesh) -> None:
    """An HTTPLocalRateLimitPolicy selecting the gateway gives its VirtualService route
    `catalog-api` a bucket of its own (2/s, burst 2); every other route takes the gateway's
    (20/s, burst 20). An interleaved bounded run on both routes: each passes at least its burst
    and at most rate x elapsed + burst, refusals are 429 RL, counted per route by the gateway."""
    port = free_port()
    named = http_gateway(port).replace(
        "    - match: [{uri: {prefix: /catalog}}]",
        "    - name: catalog-api\n      match: [{uri: {prefix: /catalog}}]",
    )
    assert "name: catalog-api" in named
    apply(mesh, "gateway", named + """---
apiVersion: lightmesh.io/v1alpha1
kind: HTTPLocalRateLimitPolicy
metadata: {name: edge-limit, namespace: shop}
spec:
  selector: {matchLabels: {istio: ingressgateway}}
  total: {requestsPerSecond: 20, burst: 20}
  routes:
    - name: catalog-api
      total: {requestsPerSecond: 2, burst: 2}
""")  # fmt: skip
    start_shop(mesh)
    start_gateway(mesh)
    base = f"http://127.0.0.1:{port}"
    host = {"Host": "shop.example.com"}
    admin = mesh.gateways["ingressgateway"].admin
    wait_for(lambda: b'"catalog-api"' in http_get(f"{admin}/config_dump").body
             and b'"rateLimit"' in http_get(f"{admin}/config_dump").body,
             timeout=30, what="gateway: routes and rate limit applied")  # fmt: skip
    assert not [p for p in mesh.problems() if "edge-limit" in str(p.get("resource", ""))]

    rounds = 30
    paths = {"catalog-api": ("/catalog/items", 2, 2), "rest": ("/", 20, 20)}
    outcomes: dict[str, list[tuple[int, str | None]]] = {name: [] for name in paths}
    started = time.monotonic()
    for _ in range(rounds):
        for name, (path, _, _) in paths.items():
            reply = requests.get(f"{base}{path}", headers=host, timeout=5)
            outcomes[name].append(
                (reply.status_code, reply.headers.get("x-lightmesh-response-flags"))
            )
    elapsed = time.monotonic() - started
    refused_by: dict[str, int] = {}
    for name, (_, rate, burst) in paths.items():
        passed = sum(1 for status, _ in outcomes[name] if status == 200)
        refused = [o for o in outcomes[name] if o[0] != 200]
        assert set(refused) <= {(429, "RL")}, (name, set(refused))
        assert min(rounds, burst) <= passed <= rate * elapsed + burst, (name, passed, elapsed)
        refused_by[name] = len(refused)
    metrics = http_get(f"{admin}/metrics").body.decode()
    assert _sample(metrics, "lightmesh_inbound_refused_total", reason="rate_limited") == sum(
        refused_by.values()
    )
    if refused_by["catalog-api"]:
        assert (
            _sample(metrics, "lightmesh_inbound_route_rate_limited_total", route="catalog-api")
            == refused_by["catalog-api"]
        )


# --- HTTP/2 and gRPC at the edge ---


def grpc_gateway(plain: int, tls: int, certs: Path) -> str:
    return f"""
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: grpc-gateway, namespace: shop}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
    - port: {{number: {plain}, name: grpc, protocol: GRPC}}
      hosts: ["shop/grpc.example.com"]
    - port: {{number: {tls}, name: https-grpc, protocol: HTTPS}}
      hosts: ["shop/grpc.example.com"]
      tls: {{mode: SIMPLE, credentialName: "{certs / "grpc"}"}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: pricing, namespace: shop}}
spec:
  hosts: ["grpc.example.com"]
  gateways: ["grpc-gateway"]
  http:
    - route: [{{destination: {{host: pricing}}}}]
"""


def test_grpc_clients_through_the_gateway_over_h2c_and_tls_alpn_h2(
    mesh: LocalMesh, tmp_path: Path, edge_ca: tuple[EdgeCA, Path]
) -> None:
    """A real grpcio client: prior-knowledge h2c on a GRPC server, h2 by ALPN on an HTTPS one;
    to a grpcio app behind its STRICT sidecar (mutual TLS from the gateway)."""
    import grpc  # the gateway process never imports it; the test client does

    from tests.support.grpc_echo import SERVICE

    ca, ca_file = edge_ca
    certs = tmp_path / "certs"
    ca.write_secret_dir(certs / "grpc", "grpc.example.com", dns=("grpc.example.com",))
    plain, tls = free_port(), free_port()
    apply(mesh, "gateway", grpc_gateway(plain, tls, certs))
    apply(mesh, "strict", STRICT)
    mesh.start_control_plane()
    app = ("-m", "tests.support.grpc_echo", "--port", "{port}", "--name", "pricing-a")
    mesh.start_workload("pricing-a", service="pricing", namespace="shop", app=app,
                        protocol="grpc", sidecar_args=("--service-account", "pricing-sa"))  # fmt: skip
    mesh.wait_ready()
    start_gateway(mesh)

    def identity(data: bytes) -> bytes:
        return data

    def call(channel: grpc.Channel, message: bytes) -> tuple[bytes, dict[str, str]]:
        unary = channel.unary_unary(
            f"/{SERVICE}/Unary", request_serializer=identity, response_deserializer=identity
        )
        reply, outcome = unary.with_call(message, metadata=(("x-echo", "1"),), timeout=5)
        return reply, dict(outcome.trailing_metadata())

    def answers(channel: grpc.Channel) -> bool:
        try:
            return call(channel, b"hi")[0] == b"hi"
        except grpc.RpcError:
            return False

    options = [("grpc.default_authority", "grpc.example.com")]
    with grpc.insecure_channel(f"127.0.0.1:{plain}", options=options) as channel:
        wait_for(lambda: answers(channel), timeout=30, what="gRPC over h2c through the gateway")
        reply, trailers = call(channel, b"big:2000000")
        assert len(reply) == 2_000_000 and trailers["x-trailer"] == "pricing-a"
        unary = channel.unary_unary(f"/{SERVICE}/Unary", request_serializer=identity,
                                    response_deserializer=identity)  # fmt: skip
        with pytest.raises(grpc.RpcError) as caught:
            unary(b"status:5", timeout=5)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]
    credentials = grpc.ssl_channel_credentials(root_certificates=ca_file.read_bytes())
    tls_options = [("grpc.ssl_target_name_override", "grpc.example.com"), *options]
    with grpc.secure_channel(f"127.0.0.1:{tls}", credentials, options=tls_options) as channel:
        wait_for(lambda: answers(channel), timeout=30, what="gRPC over TLS (ALPN h2)")
        assert call(channel, b"over tls")[0] == b"over tls"
    # ALPN: h2 for a client that offers it, http/1.1 for one that offers only that.
    assert [_alpn(tls, ca_file, offer) for offer in (["h2", "http/1.1"], ["http/1.1"])] == [
        "h2",
        "http/1.1",
    ]


def _alpn(port: int, ca_file: Path, offer: list[str]) -> str | None:
    context = ssl.create_default_context(cafile=str(ca_file))
    context.set_alpn_protocols(offer)
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    with context.wrap_socket(raw, server_hostname="grpc.example.com") as tls:
        return tls.selected_alpn_protocol()


def _claim_gateway(mesh: LocalMesh, token: str, *, namespace: str = "shop") -> str:
    """Open a config stream (grpcio) as a node claiming to be a gateway; the first outcome: the
    type URL of the first response, or the status the stream ended with."""
    import threading

    import grpc

    from lightmesh.types import GATEWAY
    from lightmesh.v1 import discovery_pb2 as pb
    from sidecar.config.client import METHOD

    node = pb.Node(id="intruder", namespace=namespace, service_account="default",
                   proxy_type="gateway", labels={"istio": "ingressgateway"})  # fmt: skip
    done = threading.Event()

    def outgoing() -> Iterator[pb.DeltaDiscoveryRequest]:
        yield pb.DeltaDiscoveryRequest(type_url=GATEWAY, node=node)
        done.wait(30)  # keep the stream open until the answer is read

    credentials = grpc.ssl_channel_credentials((mesh.state_dir / "root.pem").read_bytes())
    with grpc.secure_channel(f"127.0.0.1:{mesh.cp_port}", credentials) as channel:
        call = channel.stream_stream(
            METHOD,
            request_serializer=pb.DeltaDiscoveryRequest.SerializeToString,
            response_deserializer=pb.DeltaDiscoveryResponse.FromString,
        )
        metadata = (("authorization", f"Bearer {token}"),) if token else ()
        responses = call(outgoing(), metadata=metadata, timeout=20)
        try:
            return str(next(responses).type_url)
        except grpc.RpcError as error:
            return str(error.code().name)
        finally:
            done.set()
            responses.cancel()


def test_a_stream_gets_a_gateways_listeners_only_with_a_token_for_its_namespace(
    mesh: LocalMesh, edge_ca: tuple[EdgeCA, Path]
) -> None:
    """A gateway's listeners carry the private keys of its credentials: a stream that only says
    it is a gateway is refused; the bootstrap token (local mode; a TokenReview-ed ServiceAccount
    token in a cluster) vouches for the identity it claims."""
    _, certs = edge_ca
    apply(mesh, "gateway", https_gateway(free_port(), certs))
    start_shop(mesh)
    assert _claim_gateway(mesh, "") == "UNAUTHENTICATED"
    assert _claim_gateway(mesh, "not-the-bootstrap-token") == "UNAUTHENTICATED"
    token = (mesh.state_dir / "bootstrap-token").read_text().strip()
    assert _claim_gateway(mesh, token).endswith("GatewayListener")  # its listeners come
    log = (mesh.work_dir / "logs" / "controlplane.log").read_text()
    assert "gateway_refused" in log and "no bearer token" in log
