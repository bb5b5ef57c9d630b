"""Real TLS handshakes with workload certificates from the mesh CA: both sides verify each other
and read the peer's SPIFFE ID; foreign and expired certificates are refused."""

from __future__ import annotations

import asyncio
import datetime
import ssl
from pathlib import Path

import pytest

from controlplane.ca import CAMaterial, CertificateAuthority, new_root
from lightmesh.spiffe import peer_identity
from sidecar.identity.keygen import generate
from sidecar.identity.manager import Identity
from sidecar.identity.tls import ALPN_HTTP11, TLSContexts

NOW = datetime.datetime.now(datetime.UTC)


def issue(
    material: CAMaterial,
    directory: Path,
    account: str,
    *,
    ttl: float = 3600,
    now: datetime.datetime = NOW,
) -> Identity:
    generated = generate()
    ca = CertificateAuthority(material, trust_domain="cluster.local", clock=lambda: now)
    signed = ca.sign_csr(
        generated["csr_pem"].encode(),
        spiffe_id=ca.spiffe_id("shop", account),
        ttl=datetime.timedelta(seconds=ttl),
    )
    directory.mkdir()
    (directory / "key.pem").write_text(generated["key_pem"])
    (directory / "cert.pem").write_bytes(signed.chain_pem)
    (directory / "roots.pem").write_bytes(ca.root_pem)
    return Identity(
        spiffe_id=ca.spiffe_id("shop", account),
        serial=f"{signed.serial:x}",
        issued_at=now.timestamp(),
        not_after=signed.not_after.timestamp(),
        cert_file=directory / "cert.pem",
        key_file=directory / "key.pem",
        bundle_file=directory / "roots.pem",
        roots=(),
    )


async def handshake(server: TLSContexts, client: TLSContexts) -> tuple[str, str, str | None]:
    """(identity the server saw, identity the client saw, negotiated ALPN). With TLS 1.3 the
    client learns of a refused certificate only as a closed connection: SSLError or EOF."""
    seen: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.set_result(peer_identity(writer.get_extra_info("ssl_object")))
        writer.write(b"ok")
        await writer.drain()
        writer.close()

    listener = await asyncio.start_server(on_connect, "127.0.0.1", 0, ssl=server.server)
    port = listener.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client.client)
        try:
            client_saw = peer_identity(writer.get_extra_info("ssl_object"))
            alpn = writer.get_extra_info("ssl_object").selected_alpn_protocol()
            if await reader.read() != b"ok":
                raise ConnectionError("the server closed the connection: refused")
        finally:
            writer.close()
        return await asyncio.wait_for(seen, 5), client_saw, alpn
    finally:
        listener.close()


@pytest.fixture
def ca() -> CAMaterial:
    return new_root("cluster.local", now=NOW)


async def test_sidecars_verify_each_other(ca: CAMaterial, tmp_path: Path) -> None:
    server = TLSContexts.build(issue(ca, tmp_path / "s", "catalog"))
    client = TLSContexts.build(issue(ca, tmp_path / "c", "frontend"))
    server_saw, client_saw, alpn = await handshake(server, client)
    assert server_saw == "spiffe://cluster.local/ns/shop/sa/frontend"
    assert client_saw == "spiffe://cluster.local/ns/shop/sa/catalog"
    assert alpn == ALPN_HTTP11


async def test_a_certificate_from_another_ca_is_refused(ca: CAMaterial, tmp_path: Path) -> None:
    other = new_root("cluster.local", now=NOW)
    server = TLSContexts.build(issue(ca, tmp_path / "s", "catalog"))
    impostor = TLSContexts.build(issue(other, tmp_path / "c", "frontend"))
    with pytest.raises((ssl.SSLError, ConnectionError)):
        await handshake(server, impostor)


async def test_an_expired_certificate_is_refused(ca: CAMaterial, tmp_path: Path) -> None:
    server = TLSContexts.build(issue(ca, tmp_path / "s", "catalog"))
    long_ago = NOW - datetime.timedelta(days=2)
    expired = TLSContexts.build(issue(ca, tmp_path / "c", "frontend", ttl=60, now=long_ago))
    with pytest.raises((ssl.SSLError, ConnectionError)):
        await handshake(server, expired)
