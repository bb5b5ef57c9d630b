"""Certificate service policy: who may ask, and for how long."""

import asyncio
import datetime
from pathlib import Path

import pytest

from controlplane.ca import CertificateAuthority, new_root
from controlplane.certs import (
    BootstrapTokenAuthenticator,
    CertificateService,
    Unauthenticated,
    bearer_token,
    load_or_create_token,
)
from lightmesh.v1 import discovery_pb2 as pb


def test_bootstrap_token_holder_names_its_identity() -> None:
    auth = BootstrapTokenAuthenticator("s3cret")
    request = pb.CertificateRequest(namespace="shop", service_account="catalog")
    assert asyncio.run(auth.authenticate("s3cret", request)) == ("shop", "catalog")
    with pytest.raises(Unauthenticated, match="not accepted"):
        asyncio.run(auth.authenticate("guess", request))
    bad = pb.CertificateRequest(namespace="Shop/../x", service_account="catalog")
    with pytest.raises(Unauthenticated, match="namespace"):
        asyncio.run(auth.authenticate("s3cret", bad))


def test_token_file_is_created_once_private(tmp_path: Path) -> None:
    path = tmp_path / "state" / "bootstrap-token"
    token = load_or_create_token(path)
    assert len(token) >= 32
    assert path.stat().st_mode & 0o777 == 0o600
    assert load_or_create_token(path) == token


def test_requested_lifetimes_are_capped() -> None:
    ca = CertificateAuthority(
        new_root("td", now=datetime.datetime.now(datetime.UTC)), trust_domain="td"
    )
    service = CertificateService(
        ca, BootstrapTokenAuthenticator("t"), default_ttl=datetime.timedelta(hours=1)
    )
    assert service.ttl(0) == datetime.timedelta(hours=1)
    assert service.ttl(1) == datetime.timedelta(seconds=10)
    assert service.ttl(30) == datetime.timedelta(seconds=30)
    assert service.ttl(10**9) == datetime.timedelta(hours=24)


def test_bearer_token_from_metadata() -> None:
    assert bearer_token((("authorization", "Bearer abc"), ("x", "y"))) == "abc"
    assert bearer_token((("authorization", "Basic abc"),)) == ""
    assert bearer_token(None) == ""
