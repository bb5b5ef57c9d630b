"""The mesh's own headers (x-lightmesh-*) through a real inbound listener as sidecar/app.py wires
it (the real InboundRouter, `hide_mesh_headers`), in front of a real aiohttp app on loopback.

Nothing under the prefix reaches the app, whatever the caller sent; nothing the app writes under
it reaches the caller; and the listener's own marks (response flags, never-processed) go only to
a caller that is a sidecar, never to a client outside the mesh.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from sidecar.contract import Completed
from sidecar.listeners.engine import ProxyListener, start_proxy
from sidecar.routing.router import InboundRouter
from tests.support.servers import closed_port, serving

FORGED = {
    "x-lightmesh-peer": "admin;kube-system;admin;v1",
    "x-lightmesh-unprocessed": "1",
    "x-lightmesh-response-flags": "UF",
    "x-lightmesh-anything-new": "x",
}
PEER = {"x-lightmesh-peer": "frontend;default;frontend;v1"}


def echo_app(*, forge: bool = False) -> web.Application:
    """Answers with the header names it received; `forge`: also writes mesh headers itself."""

    async def handle(request: web.Request) -> web.Response:
        names = sorted({name.lower() for name in request.headers})
        headers = FORGED if forge else {}
        return web.Response(text=json.dumps(names), headers=headers)

    app = web.Application()
    app.router.add_get("/{tail:.*}", handle)
    return app


async def inbound(app_port: int, records: list[Completed]) -> ProxyListener:
    router = InboundRouter(app_host="127.0.0.1", app_port=app_port)
    return await start_proxy(
        "127.0.0.1",
        0,
        resolver=router.resolve,
        recorder=records.append,
        listener="inbound",
        hide_mesh_headers=True,
    )


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as client:
        yield client


async def get(
    session: aiohttp.ClientSession, port: int, headers: dict[str, str]
) -> tuple[int, dict[str, str], str]:
    async with session.get(f"http://127.0.0.1:{port}/x", headers=headers) as response:
        return (
            response.status,
            {k.lower(): v for k, v in response.headers.items()},
            await response.text(),
        )


async def test_the_app_never_sees_a_mesh_header(session: aiohttp.ClientSession) -> None:
    records: list[Completed] = []
    async with serving(echo_app()) as app_port:
        listener = await inbound(app_port, records)
        try:
            status, _, body = await get(session, listener.port, {**FORGED, "x-app": "1"})
        finally:
            await listener.close(1.0)
    assert status == 200
    names = json.loads(body)
    assert "x-app" in names
    assert [n for n in names if n.startswith("x-lightmesh-")] == []
    # Kept aside for telemetry, which believes it only over mutual TLS (plaintext here).
    (done,) = records
    assert done.head is not None and done.head.mesh_peer == FORGED["x-lightmesh-peer"].encode()
    assert done.head.peer_identity == ""


async def test_the_app_cannot_write_a_mesh_header_to_its_caller(
    session: aiohttp.ClientSession,
) -> None:
    async with serving(echo_app(forge=True)) as app_port:
        listener = await inbound(app_port, [])
        try:
            # Twice: the second response may take the verbatim relay path on a kept-alive pair.
            replies = [await get(session, listener.port, PEER) for _ in range(2)]
        finally:
            await listener.close(1.0)
    for status, headers, _ in replies:
        assert status == 200
        assert [n for n in headers if n.startswith("x-lightmesh-")] == []


async def test_local_replies_carry_mesh_headers_only_to_a_calling_sidecar(
    session: aiohttp.ClientSession,
) -> None:
    """The app refuses connections: 503 UF marked never-processed to a sidecar; to a client
    outside the mesh the same 503 without any x-lightmesh-* header."""
    listener = await inbound(closed_port(), [])
    try:
        outsider = await get(session, listener.port, {})
        sidecar = await get(session, listener.port, PEER)
    finally:
        await listener.close(1.0)
    assert outsider[0] == 503
    assert [n for n in outsider[1] if n.startswith("x-lightmesh-")] == []
    assert sidecar[0] == 503
    assert sidecar[1]["x-lightmesh-response-flags"] == "UF"
    assert sidecar[1]["x-lightmesh-unprocessed"] == "1"
