"""A tiny HTTP/1.1 server for the sidecar's admin port (health, metrics, config dump).

It exists so the sidecar need not import aiohttp. It reuses the proxy's parser: keep-alive,
Content-Length responses only, request bodies read and discarded (admin calls carry none).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from sidecar.admin.streams import RequestStream, close_writer
from sidecar.contract import RequestHead
from sidecar.http.http1 import (
    BodyKind,
    Data,
    EndOfMessage,
    Framing,
    Headers,
    ParseError,
    RequestStart,
    request_head,
    serialize_response_head,
)

logger = logging.getLogger("sidecar.proxy")

# An admin connection idle this long is closed, so forgotten clients do not pin sockets.
IDLE_TIMEOUT = 60.0
# Admin requests have tiny bodies; anything larger is refused rather than read.
MAX_BODY_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True, kw_only=True)
class LocalResponse:
    """What an admin handler answers; Content-Length is added by the server."""

    status: int
    headers: Headers = field(default_factory=list)
    body: bytes = b""


Handler = Callable[[RequestHead], Awaitable[LocalResponse]]


def encode_response(
    response: LocalResponse, *, method: str, keep_alive: bool, http11: bool
) -> bytes:
    """The full response on the wire (no body bytes for HEAD)."""
    headers = [(k, v) for k, v in response.headers if k.lower() not in (b"content-length",)]
    headers.append((b"content-length", str(len(response.body)).encode("ascii")))
    if not keep_alive:
        headers.append((b"connection", b"close"))
    elif not http11:
        headers.append((b"connection", b"keep-alive"))
    head = serialize_response_head(response.status, headers)
    return head if method == "HEAD" else head + response.body


async def _skip_body(requests: RequestStream, framing: Framing) -> str:
    """Read past the request body: "ok", "too large" (not read further) or "broken"."""
    if framing.kind is BodyKind.LENGTH and framing.length > MAX_BODY_BYTES:
        return "too large"
    seen = 0
    while True:
        event = await requests.next_event()
        if isinstance(event, EndOfMessage):
            return "ok"
        if not isinstance(event, Data):
            return "broken"
        seen += len(event.data)
        if seen > MAX_BODY_BYTES:
            return "too large"


async def _serve_one(
    writer: asyncio.StreamWriter, requests: RequestStream, start: RequestStart, handler: Handler
) -> bool:
    """Answer one request; returns whether the connection stays open."""
    body = await _skip_body(requests, start.framing)
    keep_alive = start.keep_alive and body == "ok"
    # The peer's address, so handlers can keep some endpoints (/quitquitquit) to the pod itself.
    peer = writer.get_extra_info("peername")
    try:
        head = request_head(start, peer=str(peer[0]) if isinstance(peer, tuple) and peer else "")
    except ParseError:
        response = LocalResponse(status=400, body=b"bad request target\n")
        keep_alive = False
    else:
        if body == "too large":
            # RFC 9110 15.5.14: 413 Content Too Large (admin calls carry no body).
            response = LocalResponse(status=413, body=b"request body too large\n")
        else:
            try:
                response = await handler(head)
            except Exception as exc:
                logger.error("admin handler failed path=%s: %r", head.path, exc)
                response = LocalResponse(status=500, body=b"internal error\n")
    writer.write(
        encode_response(
            response,
            method=start.method,
            keep_alive=keep_alive,
            http11=start.http_version == "1.1",
        )
    )
    await writer.drain()
    return keep_alive


async def _serve_connection(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, handler: Handler
) -> None:
    requests = RequestStream(reader)
    try:
        while True:
            try:
                async with asyncio.timeout(IDLE_TIMEOUT):
                    start = await requests.next_event()
            except ParseError as error:
                # Its own status: 400, or 431/414 for a head or target over the limits.
                writer.write(
                    encode_response(
                        LocalResponse(status=error.status, body=f"{error.text}\n".encode()),
                        method="GET",
                        keep_alive=False,
                        http11=True,
                    )
                )
                await writer.drain()
                return
            if not isinstance(start, RequestStart):
                return  # clean close, idle timeout or a stream out of sync
            if not await _serve_one(writer, requests, start, handler):
                return
    except (ConnectionError, ParseError, TimeoutError):
        pass  # the client went away or misbehaved mid-body; nothing to answer
    finally:
        await close_writer(writer)


async def start_local_server(host: str, port: int, handler: Handler) -> asyncio.Server:
    """Serve `handler` on host:port (0 picks a free port); close the returned server to stop."""
    # Strong references to the connection tasks; each removes itself when done. Owning the
    # tasks avoids Python 3.11's start_server wrapper, which logs an error for cancelled ones.
    tasks: set[asyncio.Task[None]] = set()

    def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.get_running_loop().create_task(
            _serve_connection(reader, writer, handler), name="admin-connection"
        )
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    return await asyncio.start_server(on_connect, host, port)
