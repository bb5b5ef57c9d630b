"""In-process aiohttp servers for tests: an application served on a free 127.0.0.1 port."""

import contextlib
import hashlib
import socket
from collections.abc import AsyncIterator

from aiohttp import web


@contextlib.asynccontextmanager
async def serving(app: web.Application) -> AsyncIterator[int]:
    """Serve `app` on 127.0.0.1; yields the port; cleans up (1 s shutdown grace) on exit."""
    runner = web.AppRunner(app, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


# One 64 KiB block of every byte value: downloads repeat it, so receivers can check content.
PATTERN_BLOCK = bytes(range(256)) * 256


async def upload_digest(request: web.Request) -> web.Response:
    """Handler: read the whole request body as it streams in; answer its size and SHA-256."""
    digest = hashlib.sha256()
    size = 0
    async for chunk in request.content.iter_chunked(256 * 1024):
        digest.update(chunk)
        size += len(chunk)
    return web.json_response({"size": size, "sha256": digest.hexdigest()})


async def download_pattern(request: web.Request, *, chunked: bool = False) -> web.StreamResponse:
    """Handler: stream `?size=N` bytes of PATTERN_BLOCK, with Content-Length or chunked."""
    size = int(request.query["size"])
    response = web.StreamResponse()
    if chunked:
        response.enable_chunked_encoding()
    else:
        response.content_length = size
    await response.prepare(request)
    for offset in range(0, size, len(PATTERN_BLOCK)):
        await response.write(PATTERN_BLOCK[: size - offset])
    await response.write_eof()
    return response


def closed_port() -> int:
    """A port nobody listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
