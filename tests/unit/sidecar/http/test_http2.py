"""HTTP/2 heads to and from the exchange machine's events, and the preface that tells h2c."""

from __future__ import annotations

import hpack
import pytest

from sidecar.contract import RequestHead
from sidecar.http import http2
from sidecar.http.http1 import CHUNKED, NO_BODY, BodyKind, ParseError
from sidecar.http.http2 import (
    PREFACE,
    MemoEncoder,
    preface_state,
    request_headers,
    request_start,
    response_headers,
    response_start,
    trailer_fields,
)


@pytest.mark.parametrize(
    ("data", "state"),
    [
        (PREFACE, True),
        (PREFACE + b"\x00\x00\x12\x04", True),
        (PREFACE[:1], None),  # "P" could still be either
        (PREFACE[:10], None),
        (b"", None),
        (b"PRI * HTTP/1.1\r\n", False),
        (b"POST / HTTP/1.1\r\n", False),  # diverges at the second byte
        (b"GET / HTTP/1.1\r\nhost: a\r\n\r\n", False),
        (b"\x16\x03\x01", False),
    ],
)
def test_the_preface_is_told_from_http1_as_soon_as_the_bytes_allow(
    data: bytes, state: bool | None
) -> None:
    assert preface_state(data) is state


def test_a_request_block_becomes_the_machine_s_request_start() -> None:
    start = request_start(
        [
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":authority", b"catalog:8080"),
            (b":path", b"/a?b=1"),
            (b"te", b"trailers"),
            (b"content-length", b"3"),
            (b"x-a", b"1"),
        ],
        end_stream=False,
    )
    assert start.method == "POST" and start.target == b"/a?b=1" and start.http_version == "2"
    assert start.headers == [(b"host", b"catalog:8080"), (b"content-length", b"3"), (b"x-a", b"1")]
    assert start.framing.kind is BodyKind.LENGTH and start.framing.length == 3
    assert (
        request_start([(b":method", b"GET"), (b":path", b"/")], end_stream=True).framing is NO_BODY
    )
    # A body of unknown length is chunked towards an HTTP/1.1 upstream.
    assert (
        request_start([(b":method", b"POST"), (b":path", b"/")], end_stream=False).framing
        is CHUNKED
    )


@pytest.mark.parametrize(
    "headers",
    [
        [(b":method", b"CONNECT"), (b":authority", b"a:443")],
        [(b":method", b"GET")],
        [(b":method", b"GET"), (b":path", b"/"), (b"connection", b"keep-alive")],
        [(b":method", b"GET"), (b":path", b"/"), (b"te", b"gzip")],
        [(b":method", b"GET"), (b":path", b"/"), (b"transfer-encoding", b"chunked")],
    ],
)
def test_requests_an_http1_upstream_could_not_be_given_are_refused(
    headers: list[tuple[bytes, bytes]],
) -> None:
    with pytest.raises(ParseError):
        request_start(headers, end_stream=True)


def test_a_forwarded_head_becomes_a_request_block_with_te_trailers() -> None:
    head = RequestHead(
        method="POST",
        path="/svc/M",
        host="catalog",
        http_version="2",
        headers=[(b"host", b"catalog:80"), (b"content-type", b"application/grpc"),
                 (b"x-request-id", b"1")],
    )  # fmt: skip
    assert request_headers(head) == [
        (b":method", b"POST"),
        (b":scheme", b"http"),
        (b":authority", b"catalog:80"),
        (b":path", b"/svc/M"),
        (b"te", b"trailers"),
        (b"content-type", b"application/grpc"),
        (b"x-request-id", b"1"),
    ]


def test_response_blocks_both_ways() -> None:
    head = response_start(
        [(b":status", b"200"), (b"content-length", b"2"), (b"x-a", b"1")],
        end_stream=False,
        method="GET",
    )
    assert head.status == 200 and head.framing.length == 2 and head.headers[-1] == (b"x-a", b"1")
    assert response_start([(b":status", b"204")], end_stream=False, method="GET").framing is NO_BODY
    with pytest.raises(ParseError):
        response_start([(b"x", b"1")], end_stream=True, method="GET")
    block = response_headers(
        503,
        [(b"connection", b"close"), (b"transfer-encoding", b"chunked"),
         (b"x-lightmesh-response-flags", b"UF"), (b"x-b", b"2")],
        hide_mesh=True,
        prefix=b"x-lightmesh-",
    )  # fmt: skip
    assert block == [(b":status", b"503"), (b"x-b", b"2")]
    assert trailer_fields([(b":status", b"1"), (b"grpc-status", b"0"), (b"te", b"x")]) == [
        (b"grpc-status", b"0")
    ]


def test_cookie_crumbs_are_joined_into_one_field() -> None:
    start = request_start(
        [(b":method", b"GET"), (b":path", b"/"), (b"cookie", b"a=1"), (b"x", b"y"),
         (b"cookie", b"b=2")],
        end_stream=True,
    )  # fmt: skip
    assert start.headers == [(b"x", b"y"), (b"cookie", b"a=1; b=2")]


def test_the_memo_encoder_s_blocks_decode_to_the_fields_sent_and_never_fill_a_table() -> None:
    encoder, decoder = MemoEncoder(), hpack.Decoder()
    fields = [
        (b":method", b"POST"),  # whole field in the static table
        (b":path", b"/shop.Catalog/Get"),  # static name, literal value
        (b"content-type", b"application/grpc"),
        (b"x-long", b"v" * 300),  # literal name; a value too long to keep
        (b"x-index", b"i" * 20),
    ]
    for _ in range(3):  # the second and third blocks come from the memo
        assert decoder.decode(encoder.encode(fields), raw=True) == fields
    assert len(decoder.header_table.dynamic_entries) == 0
    assert (b"x-long", b"v" * 300) not in http2._MEMO
    assert (b"x-index", b"i" * 20) in http2._MEMO
    encoder.encode([(b"grpc-timeout", b"999m")])  # new on every request: not kept
    assert (b"grpc-timeout", b"999m") not in http2._MEMO
    assert encoder.encode([(b":method", b"POST")]) == b"\x83"
    # `age` (static index 21) overflows the 4-bit name prefix, 130 bytes the 7-bit length one.
    assert decoder.decode(encoder.encode([(b"age", b"a" * 130)]), raw=True) == [
        (b"age", b"a" * 130)
    ]


def test_the_memo_encoder_keeps_sensitive_fields_never_indexed_and_signals_a_smaller_table() -> (
    None
):
    encoder, decoder = MemoEncoder(), hpack.Decoder()
    block = encoder.encode([hpack.NeverIndexedHeaderTuple(b"authorization", b"secret")])
    assert block[0] & 0xF0 == 0x10  # literal never indexed (RFC 7541 6.2.3)
    [field] = decoder.decode(block, raw=True)
    assert (field, field.indexable) == ((b"authorization", b"secret"), False)
    encoder.header_table_size = 256  # the peer's SETTINGS_HEADER_TABLE_SIZE
    block = encoder.encode([(b":method", b"GET")])
    assert block[0] & 0xE0 == 0x20  # a dynamic table size update first (RFC 7541 6.3)
    assert decoder.decode(block, raw=True) == [(b":method", b"GET")]
    assert encoder.encode([(b":method", b"GET")]) == b"\x82"
