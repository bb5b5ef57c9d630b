"""Workload identity end to end: the control plane's CA signs each sidecar's CSR over a TLS config
channel; certificates rotate; the private key never leaves the sidecar's 0600 files."""

from __future__ import annotations

import os
import socket
import ssl
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from cryptography import x509

from controlplane.ca import verify_chain
from lightmeshctl.demo.mesh import LocalMesh, http_get, wait_for

pytestmark = pytest.mark.integration


def certs(mesh: LocalMesh, name: str) -> dict[str, object]:
    reply = http_get(f"{mesh.workloads[name].admin}/certs")
    assert reply.status == 200
    data: dict[str, object] = reply.json()
    return data


def installed(mesh: LocalMesh, name: str, *, rotations: int = 1) -> dict[str, object]:
    wait_for(
        lambda: int(certs(mesh, name)["rotations"]) >= rotations,  # type: ignore[call-overload]
        timeout=30,
        what=f"{name}: {rotations} certificate(s) installed",
    )
    return certs(mesh, name)


def start(mesh: LocalMesh, name: str, *args: str) -> Path:
    identity_dir = mesh.work_dir / f"{name}-identity"
    mesh.start_workload(
        name,
        service=name,
        namespace="shop",
        sidecar_args=(
            "--service-account",
            f"{name}-sa",
            "--identity-dir",
            str(identity_dir),
            *args,
        ),
    )
    return identity_dir


def test_sidecar_gets_a_spiffe_certificate_from_the_control_plane_ca(mesh: LocalMesh) -> None:
    mesh.start_control_plane()
    identity_dir = start(mesh, "catalog")
    mesh.wait_ready()
    state = installed(mesh, "catalog")["certificate"]
    assert isinstance(state, dict)
    assert state["identity"] == "spiffe://cluster.local/ns/shop/sa/catalog-sa"

    chain = (identity_dir / "cert.pem").read_bytes()
    leaf = x509.load_pem_x509_certificates(chain)[0]
    assert f"{leaf.serial_number:x}" == state["serial"]
    verify_chain(chain, (mesh.state_dir / "root.pem").read_bytes())
    for name in ("cert.pem", "key.pem", "roots.pem"):
        assert stat.S_IMODE(os.stat(identity_dir / name).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(mesh.state_dir / "ca.pem").st_mode) == 0o600

    shown = subprocess.run(
        [sys.executable, "-m", "lightmeshctl.cli", "proxy-config", "certs",
         "--admin", mesh.workloads["catalog"].admin],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    assert "identity:   spiffe://cluster.local/ns/shop/sa/catalog-sa" in shown
    assert f"serial:     {state['serial']}" in shown
    assert "PRIVATE" not in shown

    # The certificate is usable for TLS exactly as the data plane will use it.
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(identity_dir / "cert.pem", identity_dir / "key.pem")


def test_private_keys_never_leave_their_files(mesh: LocalMesh) -> None:
    mesh.start_control_plane()
    identity_dir = start(mesh, "catalog")
    mesh.wait_ready()
    installed(mesh, "catalog")
    workload = mesh.workloads["catalog"]
    key_body = _key_body(identity_dir / "key.pem")
    ca_key_body = _key_body(mesh.state_dir / "ca.pem")
    surfaces = [
        http_get(f"{workload.admin}{path}").body.decode()
        for path in ("/certs", "/config_dump", "/metrics")
    ]
    surfaces += [
        http_get(f"{mesh.debug_url}{path}").body.decode() for path in ("/metrics", "/debug/proxies")
    ]
    surfaces += [p.log.read_text() for p in mesh._processes]
    for text in surfaces:
        assert key_body not in text
        assert ca_key_body not in text


def _key_body(path: Path) -> str:
    text = path.read_text()
    start = text.index("PRIVATE KEY-----") + len("PRIVATE KEY-----")
    # Any 40-character run of the base64 body would betray the key.
    return text[start:].strip().splitlines()[1][:40]


def test_certificates_rotate_before_they_expire(mesh: LocalMesh) -> None:
    mesh.start_control_plane()
    start(mesh, "catalog", "--cert-ttl", "10")
    mesh.wait_ready()
    first = installed(mesh, "catalog")["certificate"]
    # Renewal at ~80% of 10 s: the second certificate arrives before the first expires.
    second = installed(mesh, "catalog", rotations=2)["certificate"]
    assert isinstance(first, dict) and isinstance(second, dict)
    assert second["serial"] != first["serial"]
    assert float(second["not_after"]) > float(first["not_after"])  # type: ignore[arg-type]
    assert certs(mesh, "catalog")["failed_requests"] == 0


def test_a_wrong_token_gets_no_certificate_but_config_still_flows(
    mesh: LocalMesh, tmp_path: Path
) -> None:
    mesh.start_control_plane()
    forged = tmp_path / "forged-token"
    forged.write_text("not-the-bootstrap-token\n")
    start(mesh, "catalog", "--token-file", str(forged))
    mesh.wait_ready()
    wait_for(
        lambda: int(certs(mesh, "catalog")["failed_requests"]) >= 1,  # type: ignore[call-overload]
        timeout=20,
        what="a refused certificate request",
    )
    assert certs(mesh, "catalog")["certificate"] is None
    assert "bootstrap token not accepted" in mesh.control_plane.log.read_text()  # type: ignore[union-attr]


def test_config_stream_is_tls_and_the_ca_survives_a_restart(mesh: LocalMesh) -> None:
    mesh.start_control_plane()
    root = (mesh.state_dir / "root.pem").read_bytes()
    context = ssl.create_default_context(cafile=str(mesh.state_dir / "root.pem"))
    context.set_alpn_protocols(["h2"])
    with (
        socket.create_connection(("127.0.0.1", mesh.cp_port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        assert tls.version() in ("TLSv1.2", "TLSv1.3")
    assert mesh.control_plane is not None
    mesh.control_plane.stop()
    mesh.start_control_plane()
    assert (mesh.state_dir / "root.pem").read_bytes() == root


def test_the_key_directory_goes_away_with_the_sidecar(mesh: LocalMesh) -> None:
    mesh.start_control_plane()
    # No --identity-dir: the sidecar makes a private temporary directory for its key.
    mesh.start_workload("ephemeral-keys", service="ephemeral-keys")
    mesh.wait_ready()
    installed(mesh, "ephemeral-keys")
    pattern = "lightmesh-ephemeral-keys-*"
    temp = Path(tempfile.gettempdir())
    assert len(list(temp.glob(pattern))) == 1
    sidecar = mesh.workloads["ephemeral-keys"].sidecar
    assert sidecar is not None
    assert sidecar.stop() == 0
    assert list(temp.glob(pattern)) == []
