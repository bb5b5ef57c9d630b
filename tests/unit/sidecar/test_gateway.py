"""A gateway server's TLS context from pushed PEM or files, and the fingerprint that says when to
build it again (rotation)."""

from __future__ import annotations

import os
import ssl
from pathlib import Path

import pytest

from lightmesh.v1 import config_pb2 as pb
from sidecar.gateway import build_context, fingerprint
from tests.support.certs import EdgeCA, write_pair

CA = EdgeCA("Unit Root")
CERT, KEY = CA.issue("shop.example.com", dns=("shop.example.com",))


def test_a_pushed_pair_builds_a_server_context_requiring_tls_1_2() -> None:
    context = build_context(
        pb.GatewayTls(mode=pb.GATEWAY_TLS_SIMPLE, cert_chain_pem=CERT, private_key_pem=KEY)
    )
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert context.verify_mode == ssl.CERT_NONE


def test_mutual_requires_client_certificates_of_its_ca() -> None:
    tls = pb.GatewayTls(
        mode=pb.GATEWAY_TLS_MUTUAL, cert_chain_pem=CERT, private_key_pem=KEY, ca_pem=CA.pem
    )
    context = build_context(tls)
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert [c["subject"] for c in context.get_ca_certs()] == [((("commonName", "Unit Root"),),)]
    tls.ca_pem = ""
    with pytest.raises(ValueError, match="client CA"):
        build_context(tls)


def test_unusable_credentials_raise() -> None:
    with pytest.raises(ValueError, match="Secret shop/x not found"):
        build_context(
            pb.GatewayTls(mode=pb.GATEWAY_TLS_SIMPLE, credential_error="Secret shop/x not found")
        )
    other_key = CA.issue("other")[1]
    with pytest.raises(ssl.SSLError):
        build_context(
            pb.GatewayTls(
                mode=pb.GATEWAY_TLS_SIMPLE, cert_chain_pem=CERT, private_key_pem=other_key
            )
        )
    with pytest.raises(ValueError, match="no certificate"):
        build_context(pb.GatewayTls(mode=pb.GATEWAY_TLS_SIMPLE))


def test_file_credentials_fingerprint_changes_when_the_files_do(tmp_path: Path) -> None:
    write_pair(tmp_path, CERT, KEY)
    tls = pb.GatewayTls(
        mode=pb.GATEWAY_TLS_SIMPLE,
        cert_file=str(tmp_path / "tls.crt"),
        key_file=str(tmp_path / "tls.key"),
    )
    build_context(tls)
    before = fingerprint(tls)
    assert fingerprint(tls) == before
    write_pair(tmp_path, *CA.issue("shop.example.com", dns=("shop.example.com",)))
    assert fingerprint(tls) != before
    os.remove(tmp_path / "tls.key")
    assert "missing" not in before and fingerprint(tls) != before
    with pytest.raises(FileNotFoundError):
        build_context(tls)


def test_pushed_credentials_fingerprint_by_content() -> None:
    tls = pb.GatewayTls(mode=pb.GATEWAY_TLS_SIMPLE, cert_chain_pem=CERT, private_key_pem=KEY)
    same = pb.GatewayTls(mode=pb.GATEWAY_TLS_SIMPLE, cert_chain_pem=CERT, private_key_pem=KEY)
    assert fingerprint(tls) == fingerprint(same)
    same.min_protocol_version = "TLSV1_3"
    assert fingerprint(tls) != fingerprint(same)
