"""The CA: create-once storage, SPIFFE-only workload certificates, chains that verify."""

from __future__ import annotations

import datetime
import os
import stat
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from controlplane.ca import (
    CAError,
    CAMaterial,
    CertificateAuthority,
    FileCAStore,
    new_root,
    verify_chain,
)

NOW = datetime.datetime(2026, 11, 24, 12, 0, tzinfo=datetime.UTC)


def csr_for(*, uri: str = "spiffe://evil/ns/kube-system/sa/admin") -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "whatever")]))
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), False)
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def test_file_store_creates_once_with_0600_and_reloads(tmp_path: Path) -> None:
    path = tmp_path / "ca" / "ca.pem"
    first = CertificateAuthority.load_or_create(FileCAStore(path), trust_domain="cluster.local")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    second = CertificateAuthority.load_or_create(FileCAStore(path), trust_domain="cluster.local")
    assert first.root_pem == second.root_pem


def test_racing_creators_agree_on_one_root(tmp_path: Path) -> None:
    path = tmp_path / "ca.pem"
    roots: list[bytes] = []
    barrier = threading.Barrier(4)

    def start() -> None:
        barrier.wait()
        ca = CertificateAuthority.load_or_create(FileCAStore(path), trust_domain="td")
        roots.append(ca.root_pem)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(roots)) == 1


def test_workload_certificate_names_only_the_authenticated_identity() -> None:
    ca = CertificateAuthority(new_root("td", now=NOW), trust_domain="td", clock=lambda: NOW)
    signed = ca.sign_csr(
        csr_for(), spiffe_id=ca.spiffe_id("shop", "catalog"), ttl=datetime.timedelta(hours=1)
    )
    cert = x509.load_pem_x509_certificate(signed.chain_pem)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [
        "spiffe://td/ns/shop/sa/catalog"
    ]
    assert cert.not_valid_after_utc == NOW + datetime.timedelta(hours=1)
    assert signed.serial == cert.serial_number
    verify_chain(signed.chain_pem, ca.root_pem)


def test_refuses_foreign_trust_domain_and_bad_csr() -> None:
    ca = CertificateAuthority(new_root("td", now=NOW), trust_domain="td")
    with pytest.raises(CAError, match="trust domain"):
        ca.sign_csr(csr_for(), spiffe_id="spiffe://other/ns/a/sa/b")
    with pytest.raises(CAError, match="not a PEM certificate request"):
        ca.sign_csr(b"garbage", spiffe_id="spiffe://td/ns/a/sa/b")


def test_chain_from_another_ca_does_not_verify() -> None:
    ours = CertificateAuthority(new_root("td", now=NOW), trust_domain="td")
    theirs = CertificateAuthority(new_root("td", now=NOW), trust_domain="td")
    signed = theirs.sign_csr(csr_for(), spiffe_id="spiffe://td/ns/a/sa/b")
    with pytest.raises(CAError):
        verify_chain(signed.chain_pem, ours.root_pem)


def test_intermediate_under_a_user_root_signs_and_chains_to_that_root() -> None:
    user_root = new_root("td", now=NOW)
    # The user's root issues our intermediate (what an operator does with their own PKI).
    key = ec.generate_private_key(ec.SECP256R1())
    root_cert = x509.load_pem_x509_certificate(user_root.cert_pem)
    root_key = serialization.load_pem_private_key(user_root.key_pem, None)
    assert isinstance(root_key, ec.EllipticCurvePrivateKey)
    inter = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mesh intermediate")]))
        .issuer_name(root_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - datetime.timedelta(days=1))
        .not_valid_after(NOW + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(root_key, hashes.SHA256())
    )
    material = CAMaterial(
        cert_pem=inter.public_bytes(serialization.Encoding.PEM),
        key_pem=key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        chain_pem=user_root.cert_pem,
    )
    ca = CertificateAuthority(material, trust_domain="td", clock=lambda: NOW)
    assert ca.root_pem == user_root.cert_pem
    signed = ca.sign_csr(csr_for(), spiffe_id="spiffe://td/ns/a/sa/b")
    verify_chain(signed.chain_pem, ca.root_pem)
    # Leaf validity never outlives the intermediate.
    assert x509.load_pem_x509_certificates(signed.chain_pem)[0].not_valid_after_utc <= (
        inter.not_valid_after_utc
    )


def test_server_certificate_covers_names_and_addresses() -> None:
    ca = CertificateAuthority(new_root("td", now=NOW), trust_domain="td")
    chain, key_pem = ca.issue_server_certificate(["lightmesh.lightmesh-system.svc"], ["127.0.0.1"])
    cert = x509.load_pem_x509_certificate(chain)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["lightmesh.lightmesh-system.svc"]
    assert [str(a) for a in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert b"PRIVATE KEY" in key_pem
    verify_chain(chain, ca.root_pem)


def test_corrupt_store_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "ca.pem"
    path.write_bytes(b"not pem")
    with pytest.raises(CAError, match=str(path)):
        CertificateAuthority.load_or_create(FileCAStore(path), trust_domain="td")
