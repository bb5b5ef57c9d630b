"""Fetching a jwksUri over a real loopback HTTP server: the whole body is read, however it is
split on the wire, and an oversized one is refused."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web

from controlplane.sources.jwks import MAX_JWKS_BYTES, FetchError, fetch_jwks
from tests.support.jwks import Issuer
from tests.support.servers import serving

KEYS = Issuer("https://issuer.test").jwks()


async def _in_chunks(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"content-type": "application/json"})
    response.enable_chunked_encoding()
    await response.prepare(request)
    half = len(KEYS) // 2
    await response.write(KEYS[:half].encode())
    await asyncio.sleep(0.05)  # the second chunk arrives after the first was read
    await response.write(KEYS[half:].encode())
    await response.write_eof()
    return response


async def _too_large(_: web.Request) -> web.Response:
    return web.Response(body=b" " * (MAX_JWKS_BYTES + 10), content_type="application/json")


def _app() -> web.Application:
    app = web.Application()
    app.router.add_get("/chunks", _in_chunks)
    app.router.add_get("/large", _too_large)
    return app


async def test_a_jwks_sent_in_chunks_is_read_whole() -> None:
    async with serving(_app()) as port:
        assert await fetch_jwks(f"http://127.0.0.1:{port}/chunks") == KEYS


async def test_a_jwks_larger_than_the_limit_is_refused() -> None:
    async with serving(_app()) as port:
        with pytest.raises(FetchError, match="larger than"):
            await fetch_jwks(f"http://127.0.0.1:{port}/large")
