"""Mutual TLS between sidecars and the policies on it, with real processes and real handshakes.

Two workloads in namespace `shop` (frontend, catalog), each with its own certificate from the
control plane's CA. Requests go from the test through frontend's outbound listener, over mTLS to
catalog's inbound listener, and the catalog app echoes what it received. Policies are YAML files
in the control plane's config directory (the file source), changed while the mesh runs.
"""

from __future__ import annotations

import datetime
import socket
import ssl
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from controlplane.ca import CertificateAuthority, FileCAStore, new_root
from lightmeshctl.demo.mesh import LocalMesh, http_get, wait_for

pytestmark = pytest.mark.integration

FRONTEND = "spiffe://cluster.local/ns/shop/sa/frontend-sa"
CATALOG = "spiffe://cluster.local/ns/shop/sa/catalog-sa"


WORKLOADS = ("frontend", "catalog")


def start_pair(mesh: LocalMesh, *args: str) -> None:
    mesh.start_control_plane()
    for name in WORKLOADS:
        identity_dir = mesh.work_dir / f"{name}-identity"
        mesh.start_workload(
            name,
            service=name,
            namespace="shop",
            sidecar_args=(
                "--service-account", f"{name}-sa", "--identity-dir", str(identity_dir), *args,
            ),
        )  # fmt: skip
    mesh.wait_ready()
    for name in ("frontend", "catalog"):
        wait_for(
            lambda n=name: http_get(f"{mesh.workloads[n].admin}/certs").json()["certificate"],
            timeout=30,
            what=f"{name}: certificate installed",
        )
    # A sidecar that connects before the other has registered gets the route to it in a later
    # push (local mode): wait until frontend routes to catalog.
    wait_for(lambda: call(mesh)[0] == 200, timeout=30, what="frontend routes to catalog")


def call(mesh: LocalMesh, path: str = "/", **headers: str) -> tuple[int, dict[str, object]]:
    reply = http_get(
        f"http://catalog.shop{path}", proxy=mesh.workloads["frontend"].outbound, headers=headers
    )
    try:
        body = reply.json()
    except ValueError:
        body = {
            "raw": reply.body.decode("latin-1"),
            "flags": {k.lower(): v for k, v in reply.headers.items()}.get(
                "x-lightmesh-response-flags"
            ),
        }
    return reply.status, body


def apply(mesh: LocalMesh, name: str, text: str) -> None:
    (mesh.config_dir / f"{name}.yaml").write_text(text)


def peer_auth(mode: str) -> str:
    return f"""
apiVersion: lightmesh.io/v1alpha1
kind: PeerAuthentication
metadata: {{name: catalog-mtls, namespace: shop}}
spec:
  selector: {{matchLabels: {{app: catalog}}}}
  mtls: {{mode: {mode}}}
"""


def inbound_mode(mesh: LocalMesh, name: str) -> str:
    return str(http_get(f"{mesh.workloads[name].admin}/certs").json()["mtls"]["inbound_mode"])


def wait_mode(mesh: LocalMesh, mode: str) -> None:
    wait_for(
        lambda: inbound_mode(mesh, "catalog") == mode,
        timeout=20,
        what=f"catalog inbound mode {mode}",
    )


def xfcc(body: dict[str, object]) -> str:
    headers = body["headers"]
    assert isinstance(headers, dict)
    return str(headers.get("x-forwarded-client-cert", ""))


def plaintext_get(port: int) -> bytes:
    """One plaintext request straight to an inbound listener: the answer, or b"" if closed."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: catalog\r\nConnection: close\r\n\r\n")
        data = b""
        try:
            while chunk := sock.recv(65536):
                data += chunk
        except ConnectionResetError:
            pass
        return data


def foreign_client_context(tmp_path: Path) -> ssl.SSLContext:
    """A client certificate for a plausible identity, signed by a CA the mesh does not trust."""
    now = datetime.datetime.now(datetime.UTC)
    material = new_root("cluster.local", now=now)
    ca_cert = x509.load_pem_x509_certificate(material.cert_pem)
    ca_key = serialization.load_pem_private_key(material.key_pem, password=None)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "forged")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(FRONTEND)]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    )
    cert_file, key_file = tmp_path / "forged.pem", tmp_path / "forged.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # we only want to see whether the server accepts us
    context.load_cert_chain(cert_file, key_file)
    context.set_alpn_protocols(["lightmesh-http/1.1"])
    return context


def expired_client_context(mesh: LocalMesh, tmp_path: Path) -> ssl.SSLContext:
    """A certificate of the mesh's own CA naming frontend, which expired yesterday."""
    material = FileCAStore(mesh.state_dir / "ca.pem").load()
    assert material is not None
    two_days_ago = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=2)
    ca = CertificateAuthority(material, trust_domain="cluster.local", clock=lambda: two_days_ago)
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .sign(key, hashes.SHA256())
    )
    signed = ca.sign_csr(
        csr.public_bytes(serialization.Encoding.PEM),
        spiffe_id=FRONTEND,
        ttl=datetime.timedelta(hours=1),
    )
    cert_file, key_file = tmp_path / "expired.pem", tmp_path / "expired.key"
    cert_file.write_bytes(signed.chain_pem)
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.load_cert_chain(cert_file, key_file)
    return context


def tls_get(port: int, context: ssl.SSLContext) -> bytes:
    """One request over TLS; b"" when the handshake or the connection fails."""
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
            context.wrap_socket(raw, server_hostname="catalog.shop.svc.cluster.local") as tls,
        ):
            tls.sendall(b"GET / HTTP/1.1\r\nHost: catalog\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := tls.recv(65536):
                data += chunk
            return data
    except (ssl.SSLError, OSError):
        return b""


def test_sidecars_speak_mtls_and_the_app_sees_the_verified_caller(mesh: LocalMesh) -> None:
    start_pair(mesh)
    status, body = call(mesh, "/", **{"x-forwarded-client-cert": "By=x;URI=spiffe://forged"})
    assert status == 200, body
    # The caller as the certificate says, never as a header the client wrote.
    assert xfcc(body) == f"By={CATALOG};URI={FRONTEND}"
    assert "forged" not in xfcc(body)
    # Both ends report the hop as mutual TLS: the source side from its upstream connection.
    for name, reporter in (("frontend", "source"), ("catalog", "destination")):
        assert request_series(mesh, name, reporter=reporter, mtls="true"), name


def request_series(mesh: LocalMesh, workload: str, **labels: str) -> list[str]:
    """The lightmesh_requests_total lines of `workload`'s /metrics having all of `labels`."""
    text = http_get(f"{mesh.workloads[workload].admin}/metrics").body.decode()
    wanted = [f'{k}="{v}"' for k, v in labels.items()]
    return [
        line
        for line in text.splitlines()
        if line.startswith("lightmesh_requests_total{") and all(w in line for w in wanted)
    ]


def test_secure_naming_refuses_a_sidecar_presenting_another_service_account(
    mesh: LocalMesh,
) -> None:
    """catalog is registered at 127.0.0.2:<its inbound port>, where a rogue sidecar listens with
    a valid mesh certificate of service account rogue-sa: frontend must refuse to talk to it."""
    mesh.start_control_plane()
    frontend = mesh.start_workload(
        "frontend",
        service="frontend",
        namespace="shop",
        sidecar_args=("--service-account", "frontend-sa"),
    )
    catalog = mesh.start_workload(
        "catalog",
        service="catalog",
        namespace="shop",
        sidecar_args=("--service-account", "catalog-sa", "--advertise", "127.0.0.2"),
    )
    mesh.wait_ready()
    mesh.start_workload(
        "rogue",
        service="rogue",
        namespace="shop",
        sidecar_args=(
            "--service-account", "rogue-sa",
            "--bind", "127.0.0.2", "--inbound-port", str(catalog.inbound_port),
        ),
    )  # fmt: skip
    refused = "lightmesh_upstream_secure_naming_refused_total{"

    def refused_count() -> float:
        text = http_get(f"{frontend.admin}/metrics").body.decode()
        lines = [line for line in text.splitlines() if line.startswith(refused)]
        return sum(float(line.rsplit(" ", 1)[1]) for line in lines)

    def refused_by_name() -> bool:
        status, body = call(mesh)
        assert status != 200, body  # never served by the rogue
        return refused_count() >= 1

    # Polled (bounded) until the rogue has its certificate: before that its handshake fails.
    wait_for(refused_by_name, timeout=30, what="rogue refused by secure naming")
    status, body = call(mesh)
    # A connect failure (retried by the default policy, which runs out: URX).
    assert (status, body["flags"]) == (503, "UF,URX"), body
    assert 'destination_service="catalog.shop.svc.cluster.local"' in "".join(
        line
        for line in http_get(f"{frontend.admin}/metrics").body.decode().splitlines()
        if line.startswith(refused)
    )


def test_strict_refuses_plaintext_and_foreign_certificates_permissive_serves_both(
    mesh: LocalMesh, tmp_path: Path
) -> None:
    start_pair(mesh)
    port = mesh.workloads["catalog"].inbound_port
    # PERMISSIVE (the default): plaintext and mesh mTLS are both served.
    assert plaintext_get(port).startswith(b"HTTP/1.1 200")
    assert call(mesh)[0] == 200

    apply(mesh, "catalog-mtls", peer_auth("STRICT"))
    wait_mode(mesh, "STRICT")
    assert plaintext_get(port) == b""
    assert tls_get(port, foreign_client_context(tmp_path)) == b""
    assert tls_get(port, expired_client_context(mesh, tmp_path)) == b""
    # The same client code with frontend's real certificate is served: the refusals above are
    # the certificates' doing.
    own = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    own.check_hostname = False
    own.verify_mode = ssl.CERT_NONE
    identity_dir = mesh.work_dir / "frontend-identity"
    own.load_cert_chain(identity_dir / "cert.pem", identity_dir / "key.pem")
    assert tls_get(port, own).startswith(b"HTTP/1.1 200")
    status, body = call(mesh)
    assert status == 200, body
    assert xfcc(body).endswith(f"URI={FRONTEND}")
    certs = http_get(f"{mesh.workloads['catalog'].admin}/certs").json()
    assert certs["mtls"]["refused_plaintext"] >= 1
    assert certs["mtls"]["failed_handshakes"] >= 2

    apply(mesh, "catalog-mtls", peer_auth("PERMISSIVE"))
    wait_mode(mesh, "PERMISSIVE")
    assert plaintext_get(port).startswith(b"HTTP/1.1 200")


def test_authorization_deny_and_allow_rules_admit_exactly_what_they_say(mesh: LocalMesh) -> None:
    start_pair(mesh)
    apply(
        mesh,
        "deny-admin",
        """
apiVersion: lightmesh.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: shop}
spec:
  selector: {matchLabels: {app: catalog}}
  action: DENY
  rules:
  - to: [{operation: {paths: ["/admin*"]}}]
""",
    )
    wait_for(lambda: call(mesh, "/admin/x")[0] == 403, timeout=20, what="DENY applied")
    status, body = call(mesh, "/admin/x")
    assert (status, body["flags"]) == (403, "RBAC"), body
    assert call(mesh, "/items")[0] == 200

    # ALLOW only frontend's identity on GET /items: anything else (other path, plaintext
    # caller without an identity) is denied.
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
    to: [{{operation: {{methods: [GET], paths: ["/items"]}}}}]
""",
    )
    wait_for(lambda: call(mesh, "/other")[0] == 403, timeout=20, what="ALLOW applied")
    assert call(mesh, "/items")[0] == 200
    assert call(mesh, "/admin/x")[0] == 403  # DENY still first
    assert plaintext_get(mesh.workloads["catalog"].inbound_port).startswith(b"HTTP/1.1 403")


def test_certificates_rotating_under_load_fail_no_request(mesh: LocalMesh) -> None:
    start_pair(mesh, "--cert-ttl", "10")
    apply(mesh, "catalog-mtls", peer_auth("STRICT"))
    wait_mode(mesh, "STRICT")
    admin = mesh.workloads["catalog"].admin
    first = int(http_get(f"{admin}/certs").json()["rotations"])
    failures: list[tuple[int, object]] = []
    sent = 0
    deadline = time.monotonic() + 60
    # Bounded in count and time; stops once catalog's certificate rotated twice more.
    while sent < 200_000 and time.monotonic() < deadline:
        status, body = call(mesh, "/items")
        sent += 1
        if status != 200:
            failures.append((status, body))
        if sent % 20 == 0 and int(http_get(f"{admin}/certs").json()["rotations"]) >= first + 2:
            break
    assert int(http_get(f"{admin}/certs").json()["rotations"]) >= first + 2, sent
    assert failures == []
    status, body = call(mesh)
    assert xfcc(body).endswith(f"URI={FRONTEND}")


def test_private_keys_stay_out_of_logs_dumps_and_metrics_after_mtls_traffic(
    mesh: LocalMesh,
) -> None:
    start_pair(mesh)
    apply(mesh, "catalog-mtls", peer_auth("STRICT"))
    wait_mode(mesh, "STRICT")
    for _ in range(20):
        assert call(mesh, "/items")[0] == 200
    keys = [key_body(mesh.work_dir / f"{name}-identity" / "key.pem") for name in WORKLOADS]
    keys.append(key_body(mesh.state_dir / "ca.pem"))
    surfaces = [
        http_get(f"{mesh.workloads[name].admin}{path}").body.decode()
        for name in WORKLOADS
        for path in ("/certs", "/config_dump", "/metrics")
    ]
    surfaces += [p.log.read_text() for p in mesh._processes]
    for text in surfaces:
        for key in keys:
            assert key not in text


def key_body(path: Path) -> str:
    """40 characters of a PEM private key's base64 body: enough to betray it anywhere."""
    text = path.read_text()
    start = text.index("PRIVATE KEY-----") + len("PRIVATE KEY-----")
    return text[start:].strip().splitlines()[1][:40]
