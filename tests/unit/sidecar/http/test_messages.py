"""Unit tests of the pure head builders (sidecar/http/messages.py) and of parser reuse."""

from __future__ import annotations

import uuid

import pytest

from sidecar.http.http1 import (
    CHUNKED,
    NO_BODY,
    UNPROCESSED,
    UNTIL_CLOSE,
    BodyKind,
    Data,
    EndOfMessage,
    Framing,
    ParseError,
    RequestParser,
    RequestStart,
    ResponseParser,
    ResponseStart,
    check_request_head,
    response_framing,
)
from sidecar.http.messages import (
    downstream_framing,
    forwarded_head,
    local_reply,
    new_request_id,
    relayed_response_head,
    upstream_request,
)


def start_of(raw: bytes) -> RequestStart:
    (start, *_) = RequestParser().feed(raw)
    assert isinstance(start, RequestStart)
    return start


def test_forwarded_head_strips_hop_by_hop_and_adds_forwarding_fields() -> None:
    start = start_of(
        b"GET /a?b=1 HTTP/1.1\r\nHost: Catalog:8080\r\nConnection: keep-alive, X-Secret\r\n"
        b"X-Secret: 1\r\nKeep-Alive: 5\r\nX-Forwarded-For: 10.0.0.1\r\nExpect: 100-continue\r\n"
        b"X-Kept: yes\r\n\r\n"
    )
    head = forwarded_head(start, peer="127.0.0.9")
    names = [k for k, _ in head.headers]
    assert (head.host, head.path, head.method) == ("catalog", "/a?b=1", "GET")
    assert {b"connection", b"x-secret", b"keep-alive", b"expect"}.isdisjoint(names)
    assert head.header(b"x-forwarded-for") == b"10.0.0.1, 127.0.0.9"
    assert head.header(b"x-forwarded-proto") == b"http"
    assert head.header(b"x-kept") == b"yes"
    assert uuid.UUID(head.header(b"x-request-id").decode()).version == 4  # type: ignore[union-attr]


def test_mesh_headers_are_never_forwarded_and_the_peer_announcement_is_kept_aside() -> None:
    start = start_of(
        b"GET / HTTP/1.1\r\nHost: a\r\nX-Lightmesh-Peer: frontend;shop;frontend;v1\r\n"
        b"x-lightmesh-unprocessed: 1\r\nX-Lightmesh-Response-Flags: UF\r\nX-Lightmesh-Future: x\r\n"
        b"X-Lightmeshy: kept\r\n\r\n"
    )
    head = forwarded_head(start, peer="127.0.0.9")
    assert not [k for k, _ in head.headers if k.startswith(b"x-lightmesh-")]
    assert head.header(b"x-lightmeshy") == b"kept"  # only the mesh's own prefix
    assert head.mesh_peer == b"frontend;shop;frontend;v1"
    assert forwarded_head(start_of(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"), peer="").mesh_peer == b""


def test_connection_can_name_forwarding_fields_which_are_then_regenerated() -> None:
    start = start_of(
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: X-Request-Id, X-Forwarded-For\r\n"
        b"X-Request-Id: spoofed\r\nX-Forwarded-For: 6.6.6.6\r\n\r\n"
    )
    head = forwarded_head(start, peer="127.0.0.1")
    assert head.header(b"x-forwarded-for") == b"127.0.0.1"
    assert head.header(b"x-request-id") not in (None, b"spoofed")


def test_absolute_form_authority_replaces_host() -> None:
    head = forwarded_head(
        start_of(b"GET http://user@Svc:81/p HTTP/1.1\r\nHost: other\r\n\r\n"), peer=""
    )
    assert (head.host, head.path) == ("svc", "/p")
    assert [v for k, v in head.headers if k == b"host"] == [b"Svc:81"]


def test_upstream_request_is_serialised_from_the_edited_head() -> None:
    start = start_of(b"POST /old HTTP/1.0\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc")
    head = forwarded_head(start, peer="")
    head.path = "/new"
    head.headers.append((b"x-edit", b"1"))
    wire = upstream_request(head, start.framing)
    assert wire.startswith(b"POST /new HTTP/1.1\r\n")
    assert b"x-edit: 1\r\n" in wire
    assert wire.endswith(b"\r\n\r\n")


def test_request_ids_are_unique_uuid4_text() -> None:
    ids = {new_request_id() for _ in range(10_000)}
    assert len(ids) == 10_000
    for text in list(ids)[:100]:
        parsed = uuid.UUID(text.decode())
        assert (parsed.version, parsed.variant) == (4, uuid.RFC_4122)


@pytest.mark.parametrize(
    ("upstream", "http11", "expected"),
    [
        (NO_BODY, True, NO_BODY),
        (Framing(BodyKind.LENGTH, 5), False, Framing(BodyKind.LENGTH, 5)),
        (CHUNKED, True, CHUNKED),
        (CHUNKED, False, UNTIL_CLOSE),
        (UNTIL_CLOSE, True, CHUNKED),
    ],
)
def test_downstream_framing(upstream: Framing, http11: bool, expected: Framing) -> None:
    assert downstream_framing(upstream, http11=http11) == expected


def test_relayed_response_head_reframes_and_states_connection() -> None:
    head = ResponseStart(
        status=200,
        reason=b"OK",
        http_version="1.1",
        headers=[
            (b"content-length", b"5"),
            (b"connection", b"keep-alive, x-hop"),
            (b"x-hop", b"1"),
            (b"x-kept", b"2"),
        ],
        keep_alive=True,
        framing=Framing(BodyKind.LENGTH, 5),
    )
    wire = relayed_response_head(head, CHUNKED, keep_alive=False, http11=True)
    assert wire.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"content-length" not in wire
    assert b"x-hop" not in wire
    assert b"transfer-encoding: chunked\r\n" in wire
    assert b"connection: close\r\n" in wire
    assert b"x-kept: 2\r\n" in wire


def test_the_never_processed_mark_never_passes_a_sidecar_either_way() -> None:
    # An app can neither forge it toward a client sidecar nor send it upstream.
    start = start_of(b"POST / HTTP/1.1\r\nHost: a\r\nX-Lightmesh-Unprocessed: 1\r\n\r\n")
    assert forwarded_head(start, peer="127.0.0.1").header(UNPROCESSED) is None
    head = ResponseStart(
        status=503,
        reason=b"Service Unavailable",
        http_version="1.1",
        headers=[(b"content-length", b"0"), (UNPROCESSED, b"1")],
        keep_alive=True,
        framing=Framing(BodyKind.LENGTH, 0),
    )
    wire = relayed_response_head(head, Framing(BodyKind.LENGTH, 0), keep_alive=True, http11=True)
    assert UNPROCESSED not in wire.lower()


def test_local_reply_for_head_has_no_body() -> None:
    wire = local_reply(404, b"no\n", flags="NR", keep_alive=True, http11=False, head_only=True)
    assert wire.endswith(b"\r\n\r\n")
    assert b"x-lightmesh-response-flags: NR\r\n" in wire
    assert b"connection: keep-alive\r\n" in wire
    assert b"content-length: 3\r\n" in wire


@pytest.mark.parametrize(
    ("fields", "framing"),
    [
        ([(b"content-length", b"0")], NO_BODY),
        ([(b"content-length", b" 7 ")], Framing(BodyKind.LENGTH, 7)),
        ([(b"transfer-encoding", b"gzip"), (b"transfer-encoding", b"chunked")], None),
        ([(b"transfer-encoding", b"chunked")], CHUNKED),
    ],
)
def test_check_request_head_returns_the_framing(
    fields: list[tuple[bytes, bytes]], framing: Framing | None
) -> None:
    result = check_request_head([(b"host", b"a"), *fields], http_version="1.1")
    if framing is None:
        assert (result.kind, result.codings) == (BodyKind.CHUNKED, b"gzip, chunked")
    else:
        assert result == framing


def test_check_request_head_refuses_te_in_http10() -> None:
    with pytest.raises(ParseError):
        check_request_head([(b"transfer-encoding", b"chunked")], http_version="1.0")


def test_response_framing_without_chunked_last_is_until_close() -> None:
    fields = [(b"transfer-encoding", b"chunked, gzip")]
    assert response_framing(fields, method="GET", status=200) == UNTIL_CLOSE
    assert response_framing(fields, method="HEAD", status=200) == NO_BODY


def test_response_parser_is_reused_after_a_length_framed_response_only() -> None:
    parser = ResponseParser("GET")
    events = parser.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert [type(e) for e in events] == [ResponseStart, Data, EndOfMessage]
    assert parser.reset("GET")
    events = parser.feed(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n")
    assert isinstance(events[0], ResponseStart) and events[0].status == 201
    assert isinstance(events[-1], EndOfMessage)
    # A HEAD response ends where llhttp does not know it ends: not reusable.
    parser.reset("HEAD")
    parser.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n")
    assert parser.done
    assert not parser.reset("GET")
