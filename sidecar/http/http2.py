"""HTTP/2 as the exchange machine sees it: the preface, and heads mapped to and from its events.

Sans-IO and pure, like `http1`: the HTTP/2 framing itself is the `h2` package's state machine,
driven by the listeners (sidecar/listeners/h2down.py) and the upstream pool
(sidecar/upstream/h2pool.py). What is here is the seam to the exchange machine: a request's header
block becomes the same `RequestStart` an HTTP/1 head does (`:authority` as Host, `:path` as the
target, http_version "2"), so routing, retries, timeouts and telemetry see one kind of request;
a forwarded `RequestHead` becomes a request header block again; a response header block becomes
a `ResponseStart`. Connection-specific fields (RFC 9113 8.2.2) never cross into HTTP/2.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import hpack
import hpack.hpack
import hpack.table
from hyperframe.frame import Frame, RstStreamFrame

from sidecar.contract import MESH_HEADER_PREFIX, RequestHead
from sidecar.http.http1 import (
    CHUNKED,
    HOP_BY_HOP,
    NO_BODY,
    BodyKind,
    Framing,
    Headers,
    ParseError,
    RequestStart,
    ResponseStart,
)

# The client connection preface (RFC 9113 3.4): what an h2c client with prior knowledge sends first.
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
ALPN_H2 = "h2"

HTTP_VERSION = "2"

# Fields that must not appear in HTTP/2 (RFC 9113 8.2.2); `te` is allowed only as "trailers".
_CONNECTION_SPECIFIC = HOP_BY_HOP


class _Silent:
    """A logger that drops debug records without a call into logging."""

    def debug(self, *args: object, **kwargs: object) -> None:
        """Nothing."""


def _quiet_hpack() -> None:
    """hpack logs every header it encodes or decodes at debug level: ~77 calls into logging per
    proxied gRPC call, about a tenth of the codec's CPU (measured), even with debug off. Unless
    debug logging is on for it, its module loggers are replaced by one that does nothing."""
    for module in (hpack.hpack, hpack.table):
        logger = getattr(module, "log", None)
        if isinstance(logger, logging.Logger) and not logger.isEnabledFor(logging.DEBUG):
            module.log = _Silent()  # type: ignore[attr-defined]


_quiet_hpack()


def _integer(value: int, prefix_bits: int, first: int) -> bytes:
    """An HPACK integer (RFC 7541 5.1) in a `prefix_bits` prefix; `first` holds the first
    byte's other bits."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first | value,))
    out = bytearray((first | limit,))
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _string(data: bytes) -> bytes:
    """An HPACK string literal, not Huffman-coded (RFC 7541 5.2)."""
    return _integer(len(data), 7, 0) + data


_STATIC_FIELDS: dict[tuple[bytes, bytes], int] = {}
_STATIC_NAMES: dict[bytes, int] = {}
for _index, (_name, _value) in enumerate(hpack.table.HeaderTable.STATIC_TABLE, start=1):
    _STATIC_FIELDS.setdefault((_name, _value), _index)
    _STATIC_NAMES.setdefault(_name, _index)

MEMO_LIMIT = 4096  # header fields whose encoding is kept (then the memo starts over)
MEMO_VALUE_LIMIT = 256  # longer values are encoded each time, not kept
_MEMO: dict[tuple[bytes, bytes], bytes] = {}
# Fields whose value is new on every request (a deadline left, ids of the request and its trace):
# kept, they would only push the stable fields out of the memo.
_VOLATILE = frozenset(
    (
        b"grpc-timeout",
        b"x-request-id",
        b"traceparent",
        b"tracestate",
        b"x-b3-traceid",
        b"x-b3-spanid",
        b"x-b3-parentspanid",
    )
)


def encode_field(name: bytes, value: bytes, *, never_index: bool = False) -> bytes:
    """One header field as the proxy sends it (RFC 7541 6): the static table's index when it
    holds the field, else a literal that is not added to the dynamic table (its name by static
    index where it can be), never indexed for a sensitive field."""
    index = _STATIC_FIELDS.get((name, value))
    if index is not None:
        return _integer(index, 7, 0x80)
    first = 0x10 if never_index else 0x00
    index = _STATIC_NAMES.get(name, 0)
    head = _integer(index, 4, first) if index else bytes((first,)) + _string(name)
    return head + _string(value)


class MemoEncoder(hpack.Encoder):
    """An HPACK encoder that never inserts into the dynamic table, so a field's encoding depends
    on the field alone and is computed once per process (kept in a bounded memo).

    Measured under `python -m bench grpc --profile 10`: hpack's encoder was ~18% of a sidecar
    hop's CPU (its table search and insert for every field of every block). The price is bytes:
    a repeated field not in the static table costs its literal in every block instead of one
    byte, about 100 bytes per gRPC request on a link between sidecars. A peer's smaller
    SETTINGS_HEADER_TABLE_SIZE still gets its size update at the start of the next block.
    """

    def encode(self, headers: Iterable[Any], huffman: bool = True) -> bytes:
        del huffman  # literals go uncompressed: the memo pays for what Huffman saved
        parts: list[bytes] = []
        if self.header_table.resized:
            parts.append(self._encode_table_size_change())
            self.header_table.resized = False
        memo = _MEMO
        for header in headers:
            name, value = header[0], header[1]
            if not isinstance(name, bytes):
                name = name.encode("utf-8")
            if not isinstance(value, bytes):
                value = value.encode("utf-8")
            sensitive = (
                not header.indexable
                if isinstance(header, hpack.HeaderTuple)
                else len(header) > 2 and bool(header[2])
            )
            if sensitive:
                parts.append(encode_field(name, value, never_index=True))
                continue
            key = (name, value)
            field = memo.get(key)
            if field is None:
                field = encode_field(name, value)
                if len(value) <= MEMO_VALUE_LIMIT and name not in _VOLATILE:
                    if len(memo) >= MEMO_LIMIT:
                        memo.clear()
                    memo[key] = field
            parts.append(field)
        return b"".join(parts)


class MeshH2Connection(h2.connection.H2Connection):
    """h2's connection with two costs of its hot path taken out (both measured with py-spy
    under the gRPC bench): the memoising encoder above, and the `repr()` of every received
    frame that h2 builds for its trace log even when nothing logs (~5% of a hop's CPU)."""

    def __init__(self, config: h2.config.H2Configuration) -> None:
        super().__init__(config=config)
        self.encoder = MemoEncoder()

    def _receive_frame(self, frame: Frame) -> list[h2.events.Event]:
        # h2's own handling of a received frame, minus its eager trace line: a stream closed
        # by our reset gets a reset back; one whose id is too low is a stream error after a
        # reset and a connection error otherwise.
        try:
            frames, events = self._frame_dispatch_table[frame.__class__](frame)
            received: list[h2.events.Event] = events
        except h2.exceptions.StreamClosedError as error:
            if not self._stream_is_closed_by_reset(error.stream_id):
                raise
            reset = RstStreamFrame(error.stream_id)
            reset.error_code = error.error_code
            self._prepare_for_sending([reset])
            return list(error._events)
        except h2.exceptions.StreamIDTooLowError as error:
            if self._stream_is_closed_by_reset(error.stream_id):
                reset = RstStreamFrame(error.stream_id)
                reset.error_code = h2.errors.ErrorCodes.STREAM_CLOSED
                self._prepare_for_sending([reset])
                return []
            if self._stream_is_closed_by_end(error.stream_id):
                raise h2.exceptions.StreamClosedError(error.stream_id) from error
            raise
        self._prepare_for_sending(frames)
        return received


def new_connection(*, client_side: bool) -> MeshH2Connection:
    """An HTTP/2 connection with the proxy's codec settings."""
    return MeshH2Connection(h2_config(client_side=client_side))


def h2_config(*, client_side: bool) -> h2.config.H2Configuration:
    """The codec settings of every HTTP/2 connection the proxy runs.

    Header names and values stay bytes. What a peer sends is validated (h2's checks, the
    HTTP/2 rules a proxy must enforce); what we send is not validated again: it is built from
    validated input (an HTTP/1.1 head llhttp parsed, or an HTTP/2 block h2 checked), and the
    outbound checks cost about a tenth of the codec.
    """
    return h2.config.H2Configuration(
        client_side=client_side,
        header_encoding=None,
        validate_outbound_headers=False,
        normalize_outbound_headers=False,
    )


def send_within_window(conn: h2.connection.H2Connection, stream_id: int, buffer: bytearray) -> None:
    """Send as much of `buffer` on the stream as its and the connection's flow-control windows
    allow, in frames of at most the peer's size; what was sent leaves `buffer`. Raises h2's
    StreamClosedError / ProtocolError for a stream that can no longer send."""
    while buffer:
        room = min(conn.local_flow_control_window(stream_id), conn.max_outbound_frame_size)
        if room <= 0:
            return
        conn.send_data(stream_id, bytes(buffer[:room]))
        del buffer[:room]


def preface_state(data: bytes) -> bool | None:
    """Whether a connection's first bytes are the HTTP/2 preface: True, False, or None when too
    few have arrived to tell (a prefix of the preface)."""
    if len(data) >= len(PREFACE):
        return data.startswith(PREFACE)
    return None if PREFACE.startswith(data) else False


def request_start(headers: Headers, *, end_stream: bool) -> RequestStart:
    """The `RequestStart` of an HTTP/2 request header block (names lower-case, as h2 checks).

    Raises ParseError for a block an HTTP/1 upstream could not be given: CONNECT, a missing
    pseudo-header, or a connection-specific field.
    """
    method = path = authority = b""
    fields: Headers = []
    cookies: list[bytes] = []
    length: bytes | None = None
    for name, value in headers:
        if name[:1] == b":":
            if name == b":method":
                method = value
            elif name == b":path":
                path = value
            elif name == b":authority":
                authority = value
            continue
        if name in _CONNECTION_SPECIFIC:
            if name == b"te" and value.strip().lower() == b"trailers":
                continue  # re-added towards an HTTP/2 upstream (gRPC requires it)
            raise ParseError(f"connection-specific field {name.decode('latin-1')!r} in HTTP/2")
        if name == b"host":
            if not authority:
                authority = value
            continue
        if name == b"content-length":
            length = value
        elif name == b"cookie":
            cookies.append(value)  # HTTP/2 may split it into crumbs (RFC 9113 8.2.3)
            continue
        fields.append((name, value))
    if cookies:
        fields.append((b"cookie", b"; ".join(cookies)))
    if method == b"CONNECT":
        raise ParseError("CONNECT is not supported")
    if not method or not path:
        raise ParseError("HTTP/2 request without :method or :path")
    if authority:
        fields.insert(0, (b"host", authority))
    framing: Framing
    if end_stream:
        framing = NO_BODY
    elif length is not None and length.strip().isdigit():
        framing = Framing(BodyKind.LENGTH, int(length))
    else:
        framing = CHUNKED  # towards HTTP/1: a body of unknown length
    return RequestStart(
        method=method.decode("latin-1"),
        target=path,
        http_version=HTTP_VERSION,
        headers=fields,
        keep_alive=True,
        framing=framing,
    )


def request_headers(
    head: RequestHead, *, scheme: bytes = b"http", te_trailers: bool = True
) -> Headers:
    """The header block of a request forwarded on HTTP/2 (`head` as the resolver left it)."""
    authority = b""
    fields: Headers = []
    for item in head.headers:
        name = item[0]
        if name == b"host":
            authority = item[1]
        elif name not in _CONNECTION_SPECIFIC:
            fields.append(item)
    block: Headers = [
        (b":method", head.method.encode("latin-1")),
        (b":scheme", scheme),
        (b":authority", authority or head.host.encode("latin-1")),
        (b":path", head.path.encode("latin-1")),
    ]
    if te_trailers:
        block.append((b"te", b"trailers"))
    block.extend(fields)
    return block


def response_start(headers: Headers, *, end_stream: bool, method: str) -> ResponseStart:
    """The `ResponseStart` of an HTTP/2 response header block. Raises ParseError without :status."""
    status = 0
    fields: Headers = []
    length: bytes | None = None
    for name, value in headers:
        if name == b":status":
            status = int(value) if value.isdigit() else 0
        elif name[:1] != b":":
            if name == b"content-length":
                length = value
            fields.append((name, value))
    if not 100 <= status < 600:
        raise ParseError("HTTP/2 response without a valid :status")
    framing: Framing
    if end_stream or method == "HEAD" or status in (204, 304):
        framing = NO_BODY
    elif length is not None and length.strip().isdigit():
        framing = Framing(BodyKind.LENGTH, int(length))
    else:
        framing = CHUNKED
    return ResponseStart(
        status=status,
        reason=b"",
        http_version=HTTP_VERSION,
        headers=fields,
        keep_alive=True,
        framing=framing,
    )


def response_headers(status: int, headers: Headers, *, hide_mesh: bool, prefix: bytes) -> Headers:
    """A response header block for an HTTP/2 client: connection-specific fields dropped (and the
    mesh's own with `hide_mesh`, those starting with `prefix`)."""
    block: Headers = [(b":status", b"%d" % status)]
    for item in headers:
        name = item[0]
        if name in _CONNECTION_SPECIFIC:
            continue
        if hide_mesh and name.startswith(prefix):
            continue
        block.append(item)
    return block


def reopen_after_goaway(conn: h2.connection.H2Connection) -> None:
    """Undo h2's end of the connection at a graceful GOAWAY (NO_ERROR), sent or received.

    h2 closes its connection state machine at any GOAWAY, after which it refuses to send or
    receive a frame of any stream; HTTP/2 lets the streams up to the GOAWAY's last stream id
    finish (RFC 9113 6.8), which is what a drain needs. The listeners and the pool refuse new
    streams themselves once a GOAWAY went either way.
    """
    machine = conn.state_machine
    if machine.state is h2.connection.ConnectionState.CLOSED:
        machine.state = (
            h2.connection.ConnectionState.CLIENT_OPEN
            if conn.config.client_side
            else h2.connection.ConnectionState.SERVER_OPEN
        )


def trailer_fields(headers: Headers) -> Headers:
    """Trailers as forwarded: no pseudo-header, no connection-specific field, none of the
    mesh's (which only ever travel in heads, so one in trailers is a forgery)."""
    return [
        item
        for item in headers
        if item[0][:1] != b":"
        and item[0] not in _CONNECTION_SPECIFIC
        and not item[0].startswith(MESH_HEADER_PREFIX)
    ]
