"""gRPC as the proxy reads it: grpc-timeout, statuses, and trailers-only replies."""

from __future__ import annotations

import pytest

from sidecar.http.grpc import (
    DEADLINE_EXCEEDED,
    INTERNAL,
    PERMISSION_DENIED,
    RESOURCE_EXHAUSTED,
    UNAVAILABLE,
    UNIMPLEMENTED,
    UNKNOWN,
    GrpcTimeoutError,
    format_timeout,
    is_grpc,
    parse_timeout,
    request_timeout,
    status_for_reply,
    status_of,
    trailers_only,
)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (b"1H", 3600.0),
        (b"2M", 120.0),
        (b"3S", 3.0),
        (b"100m", 0.1),
        (b"250u", 0.00025),
        (b"99999999n", 0.099999999),
        (b" 5S ", 5.0),
    ],
)
def test_grpc_timeout_values(value: bytes, seconds: float) -> None:
    assert parse_timeout(value) == pytest.approx(seconds)


@pytest.mark.parametrize("value", [b"", b"S", b"10", b"123456789S", b"-1S", b"1.5S", b"10s", b"1X"])
def test_bad_grpc_timeouts_are_refused_and_ignored_as_deadlines(value: bytes) -> None:
    with pytest.raises(GrpcTimeoutError):
        parse_timeout(value)
    assert request_timeout([(b"grpc-timeout", value)]) is None


@pytest.mark.parametrize("seconds", [0.0, 1e-9, 0.0004, 0.5, 1.0, 99.9, 7200.0, 1e9])
def test_formatted_timeouts_parse_back_never_shorter(seconds: float) -> None:
    text = format_timeout(seconds)
    assert len(text) <= 9
    back = parse_timeout(text)
    assert back >= seconds * (1 - 1e-12)  # rounded up, float noise aside
    assert back <= max(seconds * 1.001, 1e-9) or seconds >= 1e8  # in the finest unit that fits


def test_grpc_is_told_by_its_content_type() -> None:
    assert is_grpc([(b"content-type", b"application/grpc")])
    assert is_grpc([(b"content-type", b"application/grpc+proto")])
    assert not is_grpc([(b"content-type", b"application/json")])
    assert not is_grpc([])


@pytest.mark.parametrize(
    ("status", "flags", "code"),
    [
        (504, "UT", DEADLINE_EXCEEDED),
        (503, "UO", RESOURCE_EXHAUSTED),
        (503, "UF,URX", UNAVAILABLE),
        (503, "UH", UNAVAILABLE),
        (404, "NR", UNIMPLEMENTED),
        (403, "RBAC", PERMISSION_DENIED),
        (400, "DPE", INTERNAL),
        (500, "", UNKNOWN),
    ],
)
def test_replies_of_the_proxy_map_to_grpc_statuses(status: int, flags: str, code: int) -> None:
    assert status_for_reply(status, flags) == code


def test_a_trailers_only_reply_says_status_and_message() -> None:
    block = trailers_only(503, "no healthy upstream in c — 100%", "UH")
    assert block == [
        (b"content-type", b"application/grpc"),
        (b"grpc-status", b"14"),
        (b"grpc-message", b"no healthy upstream in c %E2%80%94 100%25"),
    ]
    assert status_of(block) == UNAVAILABLE
    assert status_of([(b"grpc-status", b"x")]) == UNKNOWN
    assert status_of([]) is None


@pytest.mark.parametrize("piece", [1, 2, 3, 5, 7, 64, 10_000])
def test_messages_are_counted_in_any_split(piece: int) -> None:
    from sidecar.http.grpc import MessageCounter

    stream = b"".join(
        b"\x00" + len(body).to_bytes(4, "big") + body for body in (b"", b"a", b"hello" * 300, b"")
    )
    counter = MessageCounter()
    for start in range(0, len(stream), piece):
        counter.feed(stream[start : start + piece])
    assert counter.count == 4
