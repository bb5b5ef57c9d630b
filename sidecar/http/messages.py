"""Pure construction of the heads the proxy sends: the forwarded request, relayed and local replies.

Sans-IO like `http1`: these take parsed heads and return headers or bytes. The engine calls them
once per exchange; each is written to build its result in one pass (they are on the hot path).
"""

from __future__ import annotations

import itertools
import os
import random
from collections.abc import Sequence

from sidecar.contract import MESH_HEADER_PREFIX, PEER_HEADER, RequestHead
from sidecar.http.http1 import (
    CHUNKED,
    HOP_BY_HOP,
    UNTIL_CLOSE,
    BodyKind,
    Framing,
    Headers,
    RequestStart,
    ResponseStart,
    connection_tokens,
    framing_headers,
    header_values,
    host_without_port,
    serialize_request_head,
    serialize_response_head,
    split_target,
)

FLAGS_HEADER = b"x-lightmesh-response-flags"
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"

# Request ids: version-4-shaped UUIDs made of 58 random bits drawn once per process and a
# 62-bit counter from a random start. uuid4() costs a getrandom syscall per request (5% of the
# sidecar's CPU in the first profile); ids need uniqueness, not unpredictability.
_ID_SEED = random.Random(os.urandom(16))
_ID_PREFIX = b"%08x-%04x-4%03x-" % (
    _ID_SEED.getrandbits(32),
    _ID_SEED.getrandbits(16),
    _ID_SEED.getrandbits(12),
)
_ID_COUNTER = itertools.count(_ID_SEED.getrandbits(61))
_ID_MASK = (1 << 62) - 1

# Request headers the engine itself re-creates or must not forward (besides hop-by-hop ones).
# x-forwarded-client-cert is only ever written by an inbound listener from a verified certificate
# (sidecar/routing/router.py); one from a client is a forgery (Envoy's SANITIZE).
_DROPPED_REQUEST = HOP_BY_HOP | {b"expect", b"x-forwarded-for", b"x-forwarded-client-cert"}


def _named_fields(connection: list[bytes]) -> set[bytes]:
    """Fields named by Connection header values, beyond the always hop-by-hop ones."""
    if not connection:
        return set()
    named = {t.strip().lower() for value in connection for t in value.split(b",")}
    named.discard(b"")
    return named - HOP_BY_HOP


def new_request_id() -> bytes:
    """A fresh request id: a version-4, RFC 4122 variant UUID in text form."""
    n = next(_ID_COUNTER) & _ID_MASK
    return b"%s%04x-%012x" % (_ID_PREFIX, 0x8000 | (n >> 48), n & 0xFFFFFFFFFFFF)


def forwarded_head(start: RequestStart, *, peer: str) -> RequestHead:
    """The request head as it will be forwarded: hop-by-hop gone, forwarding headers added.

    Raises ParseError for a target that is neither origin- nor absolute-form.
    """
    path, authority = split_target(start.target)
    headers: Headers = []
    forwarded_for: list[bytes] = []
    connection: list[bytes] = []
    host = b""
    mesh_peer = b""
    has_proto = has_id = False
    for item in start.headers:
        name = item[0]
        if name in _DROPPED_REQUEST:
            if name == b"x-forwarded-for":
                forwarded_for.append(item[1])
            elif name == b"connection":
                connection.append(item[1])
            continue
        if name == b"host":
            if authority is not None:
                continue  # absolute-form: the URI's authority replaces Host (RFC 9112 3.2.2)
            host = item[1]
        elif name == b"x-forwarded-proto":
            has_proto = True
        elif name == b"x-request-id":
            has_id = True
        elif name.startswith(MESH_HEADER_PREFIX):
            # Only sidecars write these; the one a calling sidecar announces is kept aside for
            # telemetry, the rest (and anything an app or client wrote) goes no further.
            if name == PEER_HEADER:
                mesh_peer = item[1]
            continue
        headers.append(item)
    named = _named_fields(connection)
    if named:
        # Rare: Connection names end-to-end-looking fields; they are hop-by-hop too.
        headers = [item for item in headers if item[0] not in named]
        if b"x-forwarded-for" in named:
            forwarded_for = []
        has_proto = has_proto and b"x-forwarded-proto" not in named
        has_id = has_id and b"x-request-id" not in named
        if b"host" in named and authority is None:
            host = b""
    if authority is not None:
        host_value = authority.rpartition("@")[2]
        headers.insert(0, (b"host", host_value.encode("latin-1")))
        host_name = host_without_port(host_value)
    else:
        host_name = host_without_port(host.decode("latin-1"))
    if peer:
        forwarded_for.append(peer.encode("latin-1"))
    if forwarded_for:
        headers.append((b"x-forwarded-for", b", ".join(forwarded_for)))
    if start.upgrade:
        headers += [(b"connection", b"upgrade"), (b"upgrade", start.upgrade)]
    if not has_proto:
        headers.append((b"x-forwarded-proto", b"http"))
    if not has_id:
        headers.append((b"x-request-id", new_request_id()))
    return RequestHead(
        method=start.method,
        path=path,
        host=host_name,
        http_version=start.http_version,
        headers=headers,
        peer=peer,
        mesh_peer=mesh_peer,
    )


def expects_continue(start: RequestStart) -> bool:
    """A 1.1 client waiting for 100 Continue before it sends its body."""
    if start.framing.kind is BodyKind.NONE or start.http_version != "1.1":
        return False
    expect = b",".join(header_values(start.headers, b"expect")).strip().lower()
    return expect == b"100-continue"


def upstream_request(head: RequestHead, framing: Framing) -> bytes:
    """The request head sent upstream (always HTTP/1.1, chunked re-announced if needed).

    Serialised from `head` after the resolver ran, so its edits of path and headers apply.
    """
    extra = framing_headers(framing) if framing.kind is BodyKind.CHUNKED else []
    return serialize_request_head(head.method, head.path, head.headers + extra)


def downstream_framing(upstream: Framing, *, http11: bool) -> Framing:
    """Re-frame an upstream body for the client: 1.0 clients cannot take chunked."""
    if upstream.kind is BodyKind.NONE or upstream.kind is BodyKind.LENGTH:
        return upstream
    if not http11:
        return UNTIL_CLOSE
    return upstream if upstream.kind is BodyKind.CHUNKED else CHUNKED


def connection_header(*, keep_alive: bool, http11: bool) -> Headers:
    """The Connection header the client needs to know whether we keep the connection."""
    if not keep_alive:
        return [(b"connection", b"close")]
    return [] if http11 else [(b"connection", b"keep-alive")]


def relayed_response_head(
    head: ResponseStart,
    framing: Framing,
    *,
    keep_alive: bool,
    http11: bool,
    hide_mesh: bool = False,
) -> bytes:
    """The upstream's response head as sent to the client, framed by `framing`; `hide_mesh`:
    without any x-lightmesh-* header (the upstream is an app, which cannot speak for the mesh)."""
    keep_length = framing.kind is BodyKind.NONE or framing.kind is BodyKind.LENGTH
    headers: Headers = []
    connection: list[bytes] = []
    for item in head.headers:
        name = item[0]
        if name in HOP_BY_HOP:
            if name == b"connection":
                connection.append(item[1])
        elif hide_mesh and name.startswith(MESH_HEADER_PREFIX):
            continue
        elif keep_length or name != b"content-length":
            headers.append(item)
    named = _named_fields(connection)
    if named:
        headers = [item for item in headers if item[0] not in named]
    if framing.kind is BodyKind.CHUNKED:
        headers += framing_headers(framing)
    if not keep_alive:
        headers.append((b"connection", b"close"))
    elif not http11:
        headers.append((b"connection", b"keep-alive"))
    return serialize_response_head(head.status, headers, reason=head.reason)


def switching_protocols_head(head: ResponseStart) -> bytes:
    """The 101 head sent to the client: the upstream's, with Connection/Upgrade restated."""
    upgrade = b", ".join(header_values(head.headers, b"upgrade"))
    named = connection_tokens(head.headers)
    headers = [(k, v) for k, v in head.headers if k not in HOP_BY_HOP and k not in named]
    headers.append((b"connection", b"upgrade"))
    if upgrade:
        headers.append((b"upgrade", upgrade))
    return serialize_response_head(101, headers, reason=head.reason)


def local_reply(
    status: int,
    body: bytes,
    *,
    flags: str,
    keep_alive: bool,
    http11: bool,
    head_only: bool,
    extra: Sequence[tuple[bytes, bytes]] = (),
) -> bytes:
    """A whole response produced by the proxy itself (no body bytes for HEAD); `extra` headers
    are the decision's own (a redirect's Location)."""
    headers: Headers = [
        (b"content-type", b"text/plain"),
        (b"content-length", str(len(body)).encode("ascii")),
        *extra,
    ]
    if flags:
        headers.append((FLAGS_HEADER, flags.encode("ascii")))
    headers += connection_header(keep_alive=keep_alive, http11=http11)
    head = serialize_response_head(status, headers)
    return head if head_only else head + body
