"""Real HTTP clients through the proxy engine: Python `requests` and `httpx`, curl and wrk.

Each client talks to a real listener in front of a real aiohttp app, both as a plain server
(origin-form, Host header) and as an HTTP proxy (absolute-form targets), with keep-alive,
uploads and streamed downloads.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import requests
from aiohttp import web

from sidecar.contract import Completed, Decision, Forward, RequestHead
from sidecar.listeners.engine import ProxyListener, start_proxy
from tests.support.servers import PATTERN_BLOCK, download_pattern, serving, upload_digest

DEADLINE = 20.0  # bound on every client call; never reached when things work
MB = 1024 * 1024


def _app() -> web.Application:
    async def hello(request: web.Request) -> web.Response:
        return web.Response(text=f"hello {request.query.get('n', '')}".strip())

    async def download(request: web.Request) -> web.StreamResponse:
        return await download_pattern(request, chunked=True)

    app = web.Application(client_max_size=16 * MB)
    app.router.add_get("/hello", hello)
    app.router.add_post("/upload", upload_digest)
    app.router.add_get("/download", download)
    return app


def _expected(size: int) -> str:
    digest = hashlib.sha256()
    for offset in range(0, size, len(PATTERN_BLOCK)):
        digest.update(PATTERN_BLOCK[: size - offset])
    return digest.hexdigest()


@pytest.fixture
async def proxy() -> AsyncIterator[tuple[ProxyListener, list[Completed]]]:
    records: list[Completed] = []
    async with serving(_app()) as port:
        target = Forward(address="127.0.0.1", port=port, cluster="app")

        def resolve(head: RequestHead) -> Decision:
            return target

        listener = await start_proxy(
            "127.0.0.1", 0, resolver=resolve, recorder=records.append, listener="clients"
        )
        try:
            yield listener, records
        finally:
            await listener.close(drain_timeout=1.0)


async def test_requests_keep_alive_upload_download_and_proxy_mode(
    proxy: tuple[ProxyListener, list[Completed]],
) -> None:
    listener, records = proxy
    base = f"http://127.0.0.1:{listener.port}"
    payload = b"r" * (3 * MB)

    def run() -> list[object]:
        with requests.Session() as session:
            out: list[object] = [
                session.get(f"{base}/hello?n={i}", timeout=DEADLINE).text for i in range(3)
            ]
            out.append(session.post(f"{base}/upload", data=payload, timeout=DEADLINE).json())
            with session.get(
                f"{base}/download?size={2 * MB}", stream=True, timeout=DEADLINE
            ) as resp:
                digest = hashlib.sha256()
                for chunk in resp.iter_content(64 * 1024):
                    digest.update(chunk)
                out.append(digest.hexdigest())
            # As an HTTP proxy: requests sends absolute-form targets.
            proxied = session.get(
                "http://app.example/hello?n=p", proxies={"http": base}, timeout=DEADLINE
            )
            out.append(proxied.text)
        return out

    results = await asyncio.to_thread(run)
    assert results[:3] == ["hello 0", "hello 1", "hello 2"]
    assert results[3] == {"size": len(payload), "sha256": hashlib.sha256(payload).hexdigest()}
    assert results[4] == _expected(2 * MB)
    assert results[5] == "hello p"
    assert [r.status for r in records] == [200] * 6
    assert records[-1].host == "app.example"


async def test_httpx_async_client_keep_alive_streaming_and_proxy_mode(
    proxy: tuple[ProxyListener, list[Completed]],
) -> None:
    listener, records = proxy
    base = f"http://127.0.0.1:{listener.port}"

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(32):
            yield b"h" * (64 * 1024)

    timeout = httpx.Timeout(DEADLINE)
    async with httpx.AsyncClient(timeout=timeout) as client:
        texts = [(await client.get(f"{base}/hello?n={i}")).text for i in range(3)]
        uploaded = (await client.post(f"{base}/upload", content=chunks())).json()
        digest = hashlib.sha256()
        async with client.stream("GET", f"{base}/download?size={MB}") as resp:
            async for chunk in resp.aiter_bytes():
                digest.update(chunk)
    async with httpx.AsyncClient(timeout=timeout, proxy=base) as via_proxy:
        proxied = (await via_proxy.get("http://app.example/hello?n=p")).text
    assert texts == ["hello 0", "hello 1", "hello 2"]
    expected_upload = hashlib.sha256(b"h" * (2 * MB)).hexdigest()
    assert uploaded == {"size": 2 * MB, "sha256": expected_upload}
    assert digest.hexdigest() == _expected(MB)
    assert proxied == "hello p"
    assert all(r.flags == "" for r in records)


async def test_curl_keep_alive_and_chunked_upload(
    proxy: tuple[ProxyListener, list[Completed]], tmp_path: Path
) -> None:
    listener, _ = proxy
    base = f"http://127.0.0.1:{listener.port}"
    payload = tmp_path / "payload"
    payload.write_bytes(b"c" * MB)
    process = await asyncio.create_subprocess_exec(
        "/usr/bin/curl", "-sS", "--max-time", str(DEADLINE),
        # Two URLs on one invocation share a keep-alive connection.
        f"{base}/hello?n=1", "-o", str(tmp_path / "one"),
        f"{base}/hello?n=2", "-o", str(tmp_path / "two"),
        "-w", "%{num_connects}\n",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stdout, stderr = await process.communicate()
    assert process.returncode == 0, stderr
    assert stdout.split() == [b"1", b"0"]  # the second request reused the connection
    assert (tmp_path / "one").read_text() == "hello 1"
    assert (tmp_path / "two").read_text() == "hello 2"
    process = await asyncio.create_subprocess_exec(
        "/usr/bin/curl", "-sS", "--max-time", str(DEADLINE),
        "-H", "Transfer-Encoding: chunked", "--data-binary", f"@{payload}", f"{base}/upload",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stdout, stderr = await process.communicate()
    assert process.returncode == 0, stderr
    assert b'"size": 1048576' in stdout


async def test_wrk_load_has_no_errors(proxy: tuple[ProxyListener, list[Completed]]) -> None:
    """A short closed-loop run (1 s, 4 connections): every response is a 200."""
    wrk = shutil.which("wrk")
    if wrk is None:
        pytest.skip("wrk is not installed (make test installs it: scripts/install-netns-tools.sh)")
    listener, records = proxy
    process = await asyncio.create_subprocess_exec(
        wrk, "-t1", "-c4", "-d1s", "--timeout", "5s", f"http://127.0.0.1:{listener.port}/hello",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    async with asyncio.timeout(DEADLINE):
        stdout, stderr = await process.communicate()
    assert process.returncode == 0, stderr
    text = stdout.decode()
    assert "Non-2xx" not in text, text
    assert "Socket errors" not in text, text
    match = re.search(r"(\d+) requests in", text)
    assert match is not None, text
    assert int(match.group(1)) > 0
    # wrk may hang up with requests in flight when its time is up (recorded as DC).
    assert {r.status for r in records if r.flags != "DC"} == {200}
