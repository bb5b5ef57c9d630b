"""gRPC over HTTP/2 as the proxy sees it: timeouts, status codes, trailers-only replies. Pure.

The proxy does not decode gRPC messages; it reads the few headers that carry call semantics:
`content-type: application/grpc*` says the caller speaks gRPC, `grpc-timeout` is the caller's
deadline (a positive integer of at most 8 digits and a unit, gRPC's PROTOCOL-HTTP2 spec), and
`grpc-status` in the response head (a trailers-only response) or trailers is the call's outcome.
A reply made by the proxy itself is sent to a gRPC caller as a trailers-only response whose
status follows gRPC's HTTP-to-gRPC mapping (doc/http-grpc-status-mapping.md), with two flags that
say more than their HTTP status: a proxy timeout is DEADLINE_EXCEEDED, an overflow is
RESOURCE_EXHAUSTED.
"""

from __future__ import annotations

from lightmesh.response_flags import ResponseFlag

GRPC_CONTENT_TYPE = b"application/grpc"

# gRPC status codes (grpc/status.h), by number and by retryOn name.
OK = 0
CANCELLED = 1
UNKNOWN = 2
DEADLINE_EXCEEDED = 4
PERMISSION_DENIED = 7
RESOURCE_EXHAUSTED = 8
UNIMPLEMENTED = 12
INTERNAL = 13
UNAVAILABLE = 14
UNAUTHENTICATED = 16

# grpc-timeout units, in seconds.
_UNITS = {
    ord("H"): 3600.0,
    ord("M"): 60.0,
    ord("S"): 1.0,
    ord("m"): 1e-3,
    ord("u"): 1e-6,
    ord("n"): 1e-9,
}
_MAX_DIGITS = 8


class GrpcTimeoutError(ValueError):
    """A grpc-timeout header that is not `1*8DIGIT unit`."""


class MessageCounter:
    """Counts the gRPC messages of one direction of a call as its bytes pass, in whatever pieces
    they come: each message is a 5-byte prefix (compressed flag, 4-byte big-endian length) and
    that many bytes. The proxy reads nothing else of them."""

    __slots__ = ("_head", "_left", "count")

    def __init__(self) -> None:
        self.count = 0  # messages begun
        self._left = 0  # bytes of the current message's payload still to come
        self._head = b""  # the part of a prefix received so far

    def feed(self, data: bytes) -> None:
        """The next bytes of the stream."""
        pos, size = 0, len(data)
        while pos < size:
            left = self._left
            if left:
                step = min(left, size - pos)
                self._left = left - step
                pos += step
                continue
            need = 5 - len(self._head)
            piece = data[pos : pos + need]
            pos += len(piece)
            head = self._head + piece
            if len(head) < 5:
                self._head = head
                return
            self._head = b""
            self.count += 1
            self._left = int.from_bytes(head[1:5], "big")


def is_grpc(headers: list[tuple[bytes, bytes]]) -> bool:
    """Whether a request's content-type says gRPC (application/grpc, +proto, +json, ...)."""
    for name, value in headers:
        if name == b"content-type":
            return value[:16].lower() == GRPC_CONTENT_TYPE
    return False


def parse_timeout(value: bytes) -> float:
    """Seconds of a grpc-timeout value ("100m" -> 0.1); raises GrpcTimeoutError."""
    value = value.strip()
    digits = value[:-1]
    if not value or not digits.isdigit() or len(digits) > _MAX_DIGITS:
        raise GrpcTimeoutError(f"grpc-timeout {value!r}: want 1 to 8 digits and a unit")
    unit = _UNITS.get(value[-1])
    if unit is None:
        raise GrpcTimeoutError(f"grpc-timeout {value!r}: unknown unit (H, M, S, m, u or n)")
    return int(digits) * unit


def format_timeout(seconds: float) -> bytes:
    """A grpc-timeout value for `seconds` (at least 1 ns), in the finest unit that fits 8 digits."""
    nanos = max(int(seconds * 1e9), 1)
    for unit, scale in ((b"n", 1), (b"u", 1_000), (b"m", 1_000_000), (b"S", 1_000_000_000)):
        amount = -(-nanos // scale)  # round up: never shorten the caller's deadline to zero
        if amount < 10**_MAX_DIGITS:
            return b"%d%s" % (amount, unit)
    minutes = -(-nanos // 60_000_000_000)
    if minutes < 10**_MAX_DIGITS:
        return b"%dM" % minutes
    return b"%dH" % min(-(-nanos // 3_600_000_000_000), 10**_MAX_DIGITS - 1)


def request_timeout(headers: list[tuple[bytes, bytes]]) -> float | None:
    """The caller's deadline in seconds from its grpc-timeout header; None if absent or bad
    (a bad one is ignored, as gRPC servers treat it: no deadline)."""
    for name, value in headers:
        if name == b"grpc-timeout":
            try:
                return parse_timeout(value)
            except GrpcTimeoutError:
                return None
    return None


def status_of(headers: list[tuple[bytes, bytes]]) -> int | None:
    """The grpc-status in a header block (trailers, or a trailers-only head); None if absent."""
    for name, value in headers:
        if name == b"grpc-status":
            value = value.strip()
            return int(value) if value.isdigit() else UNKNOWN
    return None


def status_for_reply(http_status: int, flags: str) -> int:
    """The gRPC status of a reply the proxy made itself (HTTP status and response flags)."""
    names = flags.split(",")
    if ResponseFlag.UT in names:
        return DEADLINE_EXCEEDED
    if ResponseFlag.UO in names:
        return RESOURCE_EXHAUSTED
    if http_status == 400:
        return INTERNAL
    if http_status == 401:
        return UNAUTHENTICATED
    if http_status == 403:
        return PERMISSION_DENIED
    if http_status == 404:
        return UNIMPLEMENTED
    if http_status in (429, 502, 503, 504):
        return UNAVAILABLE
    return UNKNOWN


def _percent_encode(message: str) -> bytes:
    """grpc-message encoding: printable ASCII but '%' as is, everything else %XX of UTF-8."""
    out = bytearray()
    for byte in message.encode("utf-8"):
        if 0x20 <= byte <= 0x7E and byte != 0x25:
            out.append(byte)
        else:
            out += b"%%%02X" % byte
    return bytes(out)


def trailers_only(
    http_status: int,
    message: str,
    flags: str,
    extra: tuple[tuple[bytes, bytes], ...] = (),
    *,
    code: int | None = None,
) -> list[tuple[bytes, bytes]]:
    """The header block of a trailers-only reply (HTTP 200, the status in grpc-status): `code`,
    else the status of `http_status` and `flags`."""
    if code is None:
        code = status_for_reply(http_status, flags)
    headers = [
        (b"content-type", GRPC_CONTENT_TYPE),
        (b"grpc-status", b"%d" % code),
        (b"grpc-message", _percent_encode(message)),
    ]
    headers.extend(extra)
    return headers
