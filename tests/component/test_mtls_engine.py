"""The proxy engine with mutual TLS, on both event loops: an outbound listener originating mTLS
to an inbound listener that sniffs TLS from plaintext on one port, with real certificates of a
real CA and real handshakes over loopback."""

from __future__ import annotations

import asyncio
import datetime
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from aiohttp import web

from controlplane.ca import CAMaterial, new_root
from sidecar.config.apply import DataPlane
from sidecar.contract import Completed, Forward, RequestHead
from sidecar.identity.tls import MeshTLS
from sidecar.listeners.engine import EngineSettings, ProxyListener, start_proxy
from sidecar.routing.router import InboundRouter
from tests.component.test_tls_contexts import issue
from tests.support.servers import serving

SNI = "catalog.shop.svc.cluster.local"
BOUND = 10.0  # seconds: a hang fails the test instead of blocking it


def _ignore(_: Completed) -> None:
    pass


@dataclass
class Pair:
    outbound: ProxyListener
    inbound: ProxyListener
    client: MeshTLS
    server: MeshTLS
    mode: list[str]
    material: CAMaterial
    tmp: Path
    # What the outbound resolver answers (tests may replace it) and what it recorded.
    target: list[Forward]
    completed: list[Completed]


async def _echo(request: web.Request) -> web.Response:
    return web.json_response({"xfcc": request.headers.get("x-forwarded-client-cert", "")})


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[Pair]:
    material = new_root("cluster.local", now=datetime.datetime.now(datetime.UTC))
    client, server = MeshTLS(), MeshTLS()
    client.rotated(issue(material, tmp_path / "frontend", "frontend"))
    server.rotated(issue(material, tmp_path / "catalog", "catalog"))
    mode = ["PERMISSIVE"]
    app = web.Application()
    app.router.add_get("/{tail:.*}", _echo)
    async with serving(app) as app_port:
        router = InboundRouter(
            app_host="127.0.0.1",
            app_port=app_port,
            dataplane=DataPlane(),
            own_identity=lambda: server.identity,
        )
        settings = EngineSettings(idle_timeout=0.3, head_timeout=0.3)
        inbound = await start_proxy(
            "127.0.0.1",
            0,
            resolver=router.resolve,
            recorder=_ignore,
            listener="inbound",
            settings=settings,
            inbound_tls=server,
            mtls_mode=lambda: mode[0],
        )
        target = [Forward(address="127.0.0.1", port=inbound.port, cluster="c", tls_server_name=SNI)]
        completed: list[Completed] = []

        def resolve(head: RequestHead) -> Forward:
            return target[0]

        outbound = await start_proxy(
            "127.0.0.1",
            0,
            resolver=resolve,
            recorder=completed.append,
            listener="outbound",
            client_tls=lambda: client.client,
        )
        yield Pair(outbound, inbound, client, server, mode, material, tmp_path, target, completed)
        await outbound.close(drain_timeout=1.0)
        await inbound.close(drain_timeout=1.0)


async def get(port: int, path: str = "/", *, keep: asyncio.StreamWriter | None = None) -> bytes:
    """One request on a fresh connection: the raw response (b"" if the connection was closed)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: catalog\r\nConnection: close\r\n\r\n".encode())
        return await asyncio.wait_for(reader.read(), BOUND)
    except ConnectionResetError:
        return b""
    finally:
        writer.close()


class KeepAlive:
    """A client connection that sends requests one after another."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> KeepAlive:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    async def get(self, path: str = "/") -> tuple[int, dict[str, str]]:
        self.writer.write(f"GET {path} HTTP/1.1\r\nHost: catalog\r\n\r\n".encode())
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), BOUND)
        status = int(head.split(b" ", 2)[1])
        length = 0
        for line in head.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.lower() == b"content-length":
                length = int(value)
        body = await asyncio.wait_for(self.reader.readexactly(length), BOUND)
        return status, json.loads(body)

    def close(self) -> None:
        self.writer.close()


async def test_one_handshake_serves_many_requests_and_the_app_sees_the_caller(pair: Pair) -> None:
    client = await KeepAlive.open(pair.outbound.port)
    try:
        for _ in range(20):
            status, body = await client.get("/items")
            assert status == 200
            assert body["xfcc"] == (
                "By=spiffe://cluster.local/ns/shop/sa/catalog;"
                "URI=spiffe://cluster.local/ns/shop/sa/frontend"
            )
    finally:
        client.close()
    assert pair.server.handshakes == 1


async def test_after_a_rotation_new_connections_present_the_new_certificate(pair: Pair) -> None:
    first = await KeepAlive.open(pair.outbound.port)
    second = await KeepAlive.open(pair.outbound.port)
    try:
        assert (await first.get())[0] == 200  # one pooled upstream connection, old certificate
        pair.client.rotated(issue(pair.material, pair.tmp / "frontend-2", "frontend-v2"))
        # Two requests at once: one reuses the pooled connection, the other needs a new one.
        results = await asyncio.gather(first.get(), second.get())
    finally:
        first.close()
        second.close()
    callers = sorted(body["xfcc"].rpartition("/sa/")[2] for _, body in results)
    assert callers == ["frontend", "frontend-v2"]
    assert pair.server.handshakes == 2


async def test_strict_closes_plaintext_permissive_serves_it(pair: Pair) -> None:
    assert (await get(pair.inbound.port)).startswith(b"HTTP/1.1 200")
    pair.mode[0] = "STRICT"
    assert await get(pair.inbound.port) == b""
    assert pair.server.refused_plaintext == 1
    client = await KeepAlive.open(pair.outbound.port)
    try:
        assert (await client.get())[0] == 200  # mTLS is still served
    finally:
        client.close()


async def test_disable_serves_plaintext_only(pair: Pair) -> None:
    pair.mode[0] = "DISABLE"
    # TLS is not terminated: the ClientHello is closed at once, the outbound side sees its
    # handshake fail (503), and plaintext is served.
    assert (await get(pair.outbound.port)).startswith(b"HTTP/1.1 503")
    assert (await get(pair.inbound.port)).startswith(b"HTTP/1.1 200")
    assert pair.server.handshakes == 0
    assert pair.server.failed_handshakes == 1


async def test_a_client_hello_before_our_first_certificate_is_closed_at_once(pair: Pair) -> None:
    # A sidecar is an endpoint as soon as it connects to the control plane, before its
    # certificate arrives: a mutual-TLS peer must fail fast (a connect failure, retried
    # elsewhere), not wait out its handshake timeout against an HTTP parser waiting for a head.
    unready = MeshTLS()
    app = web.Application()
    app.router.add_get("/{tail:.*}", _echo)
    async with serving(app) as app_port:
        router = InboundRouter(app_host="127.0.0.1", app_port=app_port, dataplane=DataPlane())
        inbound = await start_proxy(
            "127.0.0.1", 0, resolver=router.resolve, recorder=_ignore, listener="inbound",
            inbound_tls=unready,
        )  # fmt: skip
        try:
            pair.target[0] = Forward(
                address="127.0.0.1", port=inbound.port, cluster="c", tls_server_name=SNI,
                connect_timeout=3600.0,
            )  # fmt: skip
            reply = await asyncio.wait_for(get(pair.outbound.port), BOUND)
            assert reply.startswith(b"HTTP/1.1 503")
            assert b"x-lightmesh-response-flags: UF" in reply
            assert unready.failed_handshakes == 1
            assert (await get(inbound.port)).startswith(b"HTTP/1.1 200")  # plaintext meanwhile
        finally:
            await inbound.close(drain_timeout=1.0)


async def test_a_foreign_ca_is_refused_at_the_handshake(pair: Pair) -> None:
    other = new_root("cluster.local", now=datetime.datetime.now(datetime.UTC))
    pair.client.set_roots(pair.material.cert_pem.decode())  # it still trusts the server
    pair.client.rotated(issue(other, pair.tmp / "forged", "frontend"))
    assert (await get(pair.outbound.port)).startswith(b"HTTP/1.1 503")
    assert pair.server.failed_handshakes >= 1
    assert pair.server.handshakes == 0


async def test_silent_and_stalled_connections_are_closed_by_the_sweeper(pair: Pair) -> None:
    silent_reader, silent = await asyncio.open_connection("127.0.0.1", pair.inbound.port)
    stalled_reader, stalled = await asyncio.open_connection("127.0.0.1", pair.inbound.port)
    stalled.write(b"\x16\x03\x01\x02\x00\x01")  # the start of a ClientHello, never finished
    try:
        # Each is closed by the listener (idle timeout, handshake within the head timeout).
        assert await asyncio.wait_for(silent_reader.read(), BOUND) == b""
        assert await asyncio.wait_for(stalled_reader.read(), BOUND) == b""
    finally:
        silent.close()
        stalled.close()


async def test_a_pushed_bundle_with_a_second_root_admits_its_certificates(pair: Pair) -> None:
    """Root rotation: once both roots are in the pushed bundle, certificates of the new root are
    trusted on both sides, beside those of the old one."""
    new = new_root("cluster.local", now=datetime.datetime.now(datetime.UTC))
    both = pair.material.cert_pem.decode() + new.cert_pem.decode()
    pair.client.set_roots(both)
    pair.client.rotated(issue(new, pair.tmp / "frontend-new-root", "frontend"))
    assert (await get(pair.outbound.port)).startswith(b"HTTP/1.1 503")  # server: unknown root
    pair.server.set_roots(both)
    assert (await get(pair.outbound.port)).startswith(b"HTTP/1.1 200")
    pair.server.rotated(issue(new, pair.tmp / "catalog-new-root", "catalog"))
    client = await KeepAlive.open(pair.outbound.port)
    try:
        status, body = await client.get()
    finally:
        client.close()
    assert status == 200
    assert body["xfcc"].endswith("URI=spiffe://cluster.local/ns/shop/sa/frontend")


CATALOG_ID = "spiffe://cluster.local/ns/shop/sa/catalog"


async def test_the_source_side_record_says_whether_the_upstream_connection_was_mtls(
    pair: Pair,
) -> None:
    client = await KeepAlive.open(pair.outbound.port)
    try:
        assert (await client.get())[0] == 200  # a new connection
        assert (await client.get())[0] == 200  # the pooled one
    finally:
        client.close()
    assert [c.upstream_tls for c in pair.completed] == [True, True]
    pair.target[0] = replace(pair.target[0], tls_server_name="")  # plaintext (PERMISSIVE)
    assert (await get(pair.outbound.port)).startswith(b"HTTP/1.1 200")
    assert pair.completed[-1].upstream_tls is False


async def test_secure_naming_admits_the_expected_identity_and_refuses_another(
    pair: Pair,
) -> None:
    base = pair.target[0]
    pair.target[0] = replace(base, tls_identities=frozenset({CATALOG_ID, CATALOG_ID + "-v2"}))
    assert (await get(pair.outbound.port)).startswith(b"HTTP/1.1 200")
    # The server's certificate is valid (same CA) but names the wrong service account.
    pair.target[0] = replace(
        base, tls_identities=frozenset({"spiffe://cluster.local/ns/shop/sa/payments"})
    )
    assert (await get(pair.outbound.port)).startswith(b"HTTP/1.1 503")
    assert pair.completed[-1].flags == "UF"
    assert pair.outbound.wrong_identity == {SNI: 1}


async def test_a_mirror_copy_goes_over_mtls_to_a_strict_shadow(pair: Pair) -> None:
    pair.mode[0] = "STRICT"  # plaintext copies would be refused
    mirror = replace(pair.target[0], cluster="shadow")
    pair.target[0] = replace(pair.target[0], mirror=mirror)
    assert (await get(pair.outbound.port)).startswith(b"HTTP/1.1 200")
    mirrors = pair.outbound.mirrors
    for _ in range(200):  # bounded: the copy finishes on its own task
        if not mirrors.tasks:
            break
        await asyncio.sleep(0.02)
    assert (mirrors.sent, mirrors.failed) == (1, 0)
    assert pair.server.handshakes == 2  # the original's connection and the copy's
    assert pair.server.refused_plaintext == 0


async def test_a_mirror_copy_to_a_wrong_identity_fails_and_is_counted(pair: Pair) -> None:
    wrong = frozenset({"spiffe://cluster.local/ns/shop/sa/payments"})
    mirror = replace(pair.target[0], cluster="shadow", tls_identities=wrong)
    pair.target[0] = replace(pair.target[0], mirror=mirror)
    assert (await get(pair.outbound.port)).startswith(b"HTTP/1.1 200")  # the original is served
    mirrors = pair.outbound.mirrors
    for _ in range(200):
        if not mirrors.tasks:
            break
        await asyncio.sleep(0.02)
    assert (mirrors.sent, mirrors.failed) == (1, 1)
    assert pair.outbound.wrong_identity == {SNI: 1}
