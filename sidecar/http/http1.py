"""HTTP/1.1 message parsing and framing shared by the proxy engine and the admin server.

Sans-IO: parsers take bytes and return events, serializers return bytes. Nothing here touches a
socket: the Protocol-based engine feeds it from data_received, the admin server from a stream.
Parsing is done by httptools (llhttp); this module adapts its callbacks into an event list.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from urllib.parse import urlsplit

import httptools

from lightmesh.response_flags import ResponseFlag
from sidecar.contract import RequestHead
from sidecar.errors import ProxyError

# Bytes allowed before a head is complete; larger heads are refused rather than buffered
# (Envoy's default max_request_headers_kb is 60).
MAX_HEAD_BYTES = 60 * 1024
# Header fields allowed in one request head (Envoy's max_headers_count default).
MAX_HEADERS = 100

# Transfer codings a request may list before its final "chunked" (RFC 9110 8.4.1, RFC 9112 7).
KNOWN_CODINGS = frozenset({b"chunked", b"gzip", b"x-gzip", b"deflate", b"compress", b"x-compress"})

# The mesh's never-processed mark: a server-side sidecar sets it on its own 503 when it could not
# deliver the request to its app (nothing reached the app), and the client-side sidecar that
# reads it may send the request to another endpoint whatever its method. It is hop-by-hop between
# two sidecars: no sidecar forwards it, either way, so an app can neither send nor receive it.
UNPROCESSED = b"x-lightmesh-unprocessed"

# Connection-scoped headers (RFC 9110 7.6.1) that a proxy must not forward, and the mesh's own
# hop-by-hop mark. Proxy-Authorization is deliberately absent: in the mesh it is end-to-end.
# Transfer-Encoding is re-framed by the engine.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        UNPROCESSED,
    }
)

Headers = list[tuple[bytes, bytes]]


class ParseError(ProxyError):
    """The peer sent bytes that are not valid (or not unambiguous) HTTP/1.x. From a client it is
    answered `status` (h11's status hint); from an upstream it becomes an UpstreamProtocolError."""

    status = 400
    flag = ResponseFlag.DPE
    text = "bad request"


class HeadTooLarge(ParseError):
    """The request head has more bytes or more header fields than allowed."""

    status = 431
    text = "request header fields too large"


class TargetTooLong(ParseError):
    """The request target is longer than the server is willing to interpret."""

    status = 414
    text = "request target too long"


class BadTarget(ParseError):
    """The request target is neither origin-form nor absolute-form."""

    text = "bad request target"


class BodyKind(enum.Enum):
    """How a message body is delimited on the wire."""

    NONE = enum.auto()
    LENGTH = enum.auto()
    CHUNKED = enum.auto()
    UNTIL_CLOSE = enum.auto()


@dataclass(frozen=True, slots=True)
class Framing:
    """Body delimitation of one message.

    `length` is only meaningful for LENGTH. `codings` is the Transfer-Encoding to announce for
    CHUNKED; codings before "chunked" (e.g. gzip) are not undone by the proxy, so they must be
    re-announced when the body is forwarded.
    """

    kind: BodyKind
    length: int = 0
    codings: bytes = b"chunked"


NO_BODY = Framing(BodyKind.NONE)
CHUNKED = Framing(BodyKind.CHUNKED)
UNTIL_CLOSE = Framing(BodyKind.UNTIL_CLOSE)


# Events are not frozen: a frozen dataclass's __init__ costs ~2x (object.__setattr__ per field)
# and one of each is made per request on the hot path; nothing mutates them.
@dataclass(slots=True, kw_only=True)
class RequestStart:
    """A request head, as received (header names lower-cased)."""

    method: str
    target: bytes
    http_version: str
    headers: Headers
    keep_alive: bool
    framing: Framing
    # The Upgrade header of a bodiless request asking to switch protocols (e.g. b"websocket");
    # empty otherwise. Such a request is forwarded with its Upgrade; a 101 turns into a tunnel.
    upgrade: bytes = b""


@dataclass(slots=True, kw_only=True)  # not frozen, like RequestStart
class ResponseStart:
    """A final (non-1xx) response head, as received (header names lower-cased)."""

    status: int
    reason: bytes
    http_version: str
    headers: Headers
    keep_alive: bool
    framing: Framing


@dataclass(slots=True)  # not frozen, like RequestStart
class Data:
    """A piece of message body, already de-chunked."""

    data: bytes


@dataclass(frozen=True, slots=True)
class EndOfMessage:
    """The current message is complete; `trailers`: its trailer fields (HTTP/2 trailers, which
    carry gRPC's status; HTTP/1 chunked trailers are not parsed)."""

    trailers: tuple[tuple[bytes, bytes], ...] = ()


END = EndOfMessage()

RequestEvent = RequestStart | Data | EndOfMessage
ResponseEvent = ResponseStart | Data | EndOfMessage


def header_values(headers: Headers, name: bytes) -> list[bytes]:
    """All values of a header (name in lower case)."""
    return [value for key, value in headers if key == name]


def connection_tokens(headers: Headers) -> set[bytes]:
    """Lower-case tokens of all Connection headers."""
    tokens: set[bytes] = set()
    for value in header_values(headers, b"connection"):
        tokens.update(t.strip().lower() for t in value.split(b","))
    tokens.discard(b"")
    return tokens


def _chunked(codings: list[bytes]) -> Framing:
    """Framing of a chunked body whose Transfer-Encoding header values are `codings`."""
    joined = b", ".join(v.strip() for v in codings)
    return CHUNKED if joined.lower() == b"chunked" else Framing(BodyKind.CHUNKED, codings=joined)


_FRAMING_FIELDS = (b"content-length", b"transfer-encoding")


def check_request_head(headers: Headers, *, http_version: str) -> Framing:
    """Refuse a head that a proxy and a server could frame differently (request smuggling);
    return the request's body framing.

    llhttp already refuses Content-Length with Transfer-Encoding, duplicate or malformed
    Content-Length, a final coding other than chunked, obs-fold, whitespace before the colon,
    bare CR or LF and control characters. This closes the gaps it leaves: Transfer-Encoding in
    HTTP/1.0, empty, unknown or repeated codings, repeated Host, and versions other than 1.x.
    One pass over the fields: this runs for every request.
    """
    if http_version != "1.1" and http_version != "1.0":
        raise ParseError(f"unsupported HTTP version {http_version}")
    codings: list[bytes] = []
    length = b""
    lengths = hosts = 0
    for name, value in headers:
        if name == b"host":
            hosts += 1
        elif name == b"content-length":
            lengths += 1
            length = value.strip(b" \t")
            if not length.isdigit():
                raise ParseError("invalid Content-Length")
        elif name == b"transfer-encoding":
            codings.append(value)
        elif b"_" in name and name.replace(b"_", b"-") in _FRAMING_FIELDS:
            # CGI-style servers read Transfer_Encoding as Transfer-Encoding.
            raise ParseError(f"ambiguous header name {name!r}")
    if hosts > 1:
        raise ParseError("more than one Host header")
    if lengths > 1:
        raise ParseError("more than one Content-Length header")
    if codings:
        if lengths or http_version == "1.0":
            raise ParseError("Transfer-Encoding with Content-Length or in HTTP/1.0")
        names = [c.strip(b" \t").lower() for c in b",".join(codings).split(b",")]
        if (
            names[-1] != b"chunked"
            or names.count(b"chunked") != 1
            or not KNOWN_CODINGS.issuperset(names)
        ):
            raise ParseError("invalid Transfer-Encoding")
        return _chunked(codings)
    if lengths:
        size = int(length)
        return Framing(BodyKind.LENGTH, size) if size else NO_BODY
    return NO_BODY


def response_has_body(method: str, status: int) -> bool:
    """HEAD responses and 1xx/204/304 never carry a body whatever their headers say."""
    return not (method == "HEAD" or status < 200 or status == 204 or status == 304)


def response_framing(headers: Headers, *, method: str, status: int) -> Framing:
    """Body framing of a response to `method` (one pass over the fields)."""
    if not response_has_body(method, status):
        return NO_BODY
    codings: list[bytes] = []
    length: bytes | None = None
    for name, value in headers:
        if name == b"content-length":
            if length is None:
                length = value
        elif name == b"transfer-encoding":
            codings.append(value)
    if codings:
        # Not chunked-last means "read until close" (RFC 9112 6.3 rule 4).
        last = b",".join(codings).rpartition(b",")[2].strip().lower()
        return _chunked(codings) if last == b"chunked" else UNTIL_CLOSE
    return UNTIL_CLOSE if length is None else Framing(BodyKind.LENGTH, int(length))


def split_target(target: bytes) -> tuple[str, str | None]:
    """Reduce a request target to origin-form; return it and the URI's host if absolute-form."""
    text = target.decode("latin-1")
    if text.startswith("/") or text == "*":
        return text, None
    parts = urlsplit(text)
    if not parts.scheme or not parts.netloc:
        raise BadTarget(f"unsupported request target {text!r}")
    path = parts.path or "/"
    if parts.query:
        path = f"{path}?{parts.query}"
    return path, parts.netloc


def host_without_port(authority: str) -> str:
    """Lower-case host part of an authority ("Catalog:80" -> "catalog", "[::1]:80" -> "::1")."""
    authority = authority.rpartition("@")[2].strip().lower()
    if authority.startswith("["):
        return authority[1 : authority.find("]")] if "]" in authority else authority[1:]
    return authority.partition(":")[0]


def _status_line(status: int, reason: bytes) -> bytes:
    if not reason:
        try:
            reason = HTTPStatus(status).phrase.encode("ascii")
        except ValueError:
            reason = b"Unknown"
    return b"HTTP/1.1 %d %s\r\n" % (status, reason)


def _header_block(headers: Headers) -> bytes:
    lines = [b"%s: %s\r\n" % field for field in headers]
    lines.append(b"\r\n")
    return b"".join(lines)


def framing_headers(framing: Framing) -> Headers:
    """The headers that announce `framing` (none for close-delimited or bodiless messages)."""
    if framing.kind is BodyKind.CHUNKED:
        return [(b"transfer-encoding", framing.codings)]
    if framing.kind is BodyKind.LENGTH:
        return [(b"content-length", str(framing.length).encode("ascii"))]
    return []


def serialize_request_head(method: str, path: str, headers: Headers) -> bytes:
    """An HTTP/1.1 request head; `headers` must already include framing headers."""
    return f"{method} {path} HTTP/1.1\r\n".encode("latin-1") + _header_block(headers)


def serialize_response_head(status: int, headers: Headers, *, reason: bytes = b"") -> bytes:
    """An HTTP/1.1 response head; `headers` must already include framing headers."""
    return _status_line(status, reason) + _header_block(headers)


LAST_CHUNK = b"0\r\n\r\n"


def end_of_body(framing: Framing) -> bytes:
    """What terminates a body under `framing` on the wire."""
    return LAST_CHUNK if framing.kind is BodyKind.CHUNKED else b""


class _Collector:
    """httptools callback target: accumulates the pieces of the message being parsed."""

    def __init__(self, *, max_headers: int = MAX_HEADERS, max_target: int = 0) -> None:
        self.max_target = max_target  # 0: no limit of its own (responses have no target)
        self.events: list[RequestEvent | ResponseEvent] = []
        self.target = bytearray()
        self.reason = bytearray()
        self.headers: Headers = []
        self.trailers: Headers | None = None  # trailer fields of the current message, if any
        self.in_head = True  # the next bytes belong to a head (also between messages)
        self.in_message = False  # a message has begun and not yet ended
        self.message_start = 0  # index in `events` where the current message's events begin
        self.max_headers = max_headers
        self.head_complete_hook: Callable[[], None] | None = None
        self.begun = 0
        # What a callback raised; httptools only reports that "a callback failed".
        self.error: ParseError | None = None

    def on_message_begin(self) -> None:
        self.begun += 1
        self.target.clear()
        self.reason.clear()
        self.headers = []
        self.trailers = None
        self.in_head = True
        self.in_message = True
        self.message_start = len(self.events)

    def on_url(self, url: bytes) -> None:
        self.target += url  # may arrive in several pieces
        if self.max_target and len(self.target) > self.max_target:
            self.fail(TargetTooLong(f"request target longer than {self.max_target} bytes"))

    def on_status(self, status: bytes) -> None:
        self.reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.in_head:
            self.headers.append((name.lower(), value))
            if len(self.headers) > self.max_headers:
                self.fail(HeadTooLarge(f"more than {self.max_headers} header fields"))
        else:  # a chunked body's trailer section: kept for the message's end
            trailers = self.trailers
            if trailers is None:
                trailers = self.trailers = []
            trailers.append((name.lower(), value))
            if len(trailers) > self.max_headers:
                self.fail(HeadTooLarge(f"more than {self.max_headers} trailer fields"))

    def on_headers_complete(self) -> None:
        self.in_head = False
        if self.head_complete_hook is not None:
            try:
                self.head_complete_hook()
            except ParseError as exc:
                self.fail(exc)

    def on_body(self, body: bytes) -> None:
        self.events.append(Data(body))

    def on_message_complete(self) -> None:
        self.in_head = True
        self.in_message = False
        trailers = self.trailers
        if trailers is None:
            self.events.append(END)
        else:
            self.trailers = None
            self.events.append(EndOfMessage(tuple(trailers)))

    def fail(self, error: ParseError) -> None:
        """Stop the parser from a callback, remembering why."""
        self.error = error
        raise error


class RequestParser:
    """Incremental request parser for one downstream connection (handles pipelining).

    Invariant: a request whose bytes turn out to be invalid produces no event at all, so a head
    that arrived together with its fault is never forwarded. After a request asking for Upgrade
    the parser pauses: what follows is held until the engine knows whether protocols switched.
    """

    def __init__(
        self, *, max_head_bytes: int = MAX_HEAD_BYTES, max_headers: int = MAX_HEADERS
    ) -> None:
        # A target longer than half the head limit is answered 414 (RFC 9110 15.5.15: it is the
        # target that is at fault), as soon as that much of it has arrived; a head too large
        # for its fields is 431.
        self._collector = _Collector(max_headers=max_headers, max_target=max_head_bytes // 2)
        self._collector.head_complete_hook = self._on_head
        self._parser = httptools.HttpRequestParser(self._collector)
        self._max_head_bytes = max_head_bytes
        self._head_bytes = 0
        # Body-phase bytes that produced no body event: chunk extensions and trailer fields,
        # which httptools buffers; bounded like a head.
        self._silent_bytes = 0
        self.method = ""
        # Set once the input is broken. Events parsed before the error are still returned, so
        # pipelined requests ahead of the garbage are answered before the 400.
        self.error: ParseError | None = None
        # Bytes after an Upgrade request's head, held while paused (None: not paused).
        self._held: bytearray | None = None

    @property
    def paused(self) -> bool:
        """Whether the parser stopped after an Upgrade request (see `resume` and `detach`)."""
        return self._held is not None

    @property
    def in_message(self) -> bool:
        """Whether part of a request has been parsed but not its end."""
        return self._collector.in_message or bool(self._held)

    def feed(self, data: bytes) -> list[RequestEvent]:
        """Parse `data`; return the events it completes (check `error` afterwards)."""
        if self.error is not None:
            return []
        if self._held is not None:
            self._held += data
            return []
        collector = self._collector
        try:
            while data:
                if collector.in_head:
                    # Feed at most what the head may still take, so a huge head is refused
                    # without being buffered; a completed head resets the count.
                    room = self._max_head_bytes - self._head_bytes
                    if room <= 0:
                        raise HeadTooLarge("request head too large")
                    piece, data = (data, b"") if len(data) <= room else (data[:room], data[room:])
                    self._head_bytes += len(piece)
                    rest = self._feed_parser(piece)
                else:
                    piece, data = data, b""
                    seen = len(collector.events)
                    rest = self._feed_parser(piece)
                    if len(collector.events) > seen:
                        self._silent_bytes = 0
                    else:
                        self._silent_bytes += len(piece)
                        if self._silent_bytes > self._max_head_bytes:
                            raise HeadTooLarge("chunk extensions or trailer section too large")
                if rest is not None:
                    self._held = bytearray(rest + data)
                    break
        except ParseError as exc:
            self.error = exc
            del collector.events[collector.message_start :]  # nothing of the broken request
        events = collector.events
        collector.events = []
        collector.message_start = 0
        return events  # type: ignore[return-value]

    def resume(self) -> list[RequestEvent]:
        """The upstream did not switch protocols: parse what followed the request as HTTP."""
        held, self._held = self._held, None
        return self.feed(bytes(held)) if held else []

    def detach(self) -> bytes:
        """The upstream switched protocols: take the bytes that followed the request's head."""
        held = bytes(self._held or b"")
        self._held = None
        self.error = ParseError("the connection switched protocols")
        return held

    def _on_head(self) -> None:
        collector = self._collector
        self._head_bytes = 0
        headers = collector.headers
        parser = self._parser
        self.method = parser.get_method().decode("ascii")
        version = parser.get_http_version()
        framing = check_request_head(headers, http_version=version)
        upgrade = b""
        if parser.should_upgrade() and self.method != "CONNECT":
            if framing.kind is not BodyKind.NONE:
                # llhttp does not parse the body of an Upgrade request: it would be read as the
                # next request. Refuse rather than guess.
                raise ParseError("Upgrade request with a body")
            upgrade = b", ".join(header_values(headers, b"upgrade"))
        collector.events.append(
            RequestStart(
                method=self.method,
                target=bytes(collector.target),
                http_version=version,
                headers=headers,
                keep_alive=parser.should_keep_alive(),
                framing=framing,
                upgrade=upgrade,
            )
        )

    def _feed_parser(self, data: bytes) -> bytes | None:
        """Feed llhttp; return the bytes after the head if it stopped at an Upgrade request."""
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            if self.method == "CONNECT":
                raise ParseError("CONNECT is not supported") from upgrade
            self._parser = httptools.HttpRequestParser(self._collector)
            return data[upgrade.args[0] :]
        except httptools.HttpParserError as exc:
            raise self._collector.error or ParseError(str(exc)) from exc
        return None


class ResponseParser:
    """Parser for one response (plus any 1xx heads before it) to a request of `method`."""

    def __init__(self, method: str) -> None:
        self._method = method
        self._collector = _Collector()
        self._collector.head_complete_hook = self._on_head
        self._parser = httptools.HttpResponseParser(self._collector)
        self._interim = False
        self._done = False
        self._ended = 0  # messages (interim or final) whose end we have seen
        self.framing: Framing | None = None
        self.received = 0  # bytes fed, to tell "nothing came back" from "died mid-way"
        # After a 101: the bytes that followed its head, already in the new protocol.
        self.upgrade_tail = b""
        # Bytes beyond the final response: the connection is out of sync and must not be reused.
        self.trailing_data = False

    @property
    def done(self) -> bool:
        """Whether the final response is complete."""
        return self._done

    def reset(self, method: str) -> bool:
        """Get ready for the next response on the same connection; False if this parser cannot
        (llhttp only ends where we do for Content-Length and chunked bodies)."""
        framing = self.framing
        if (
            not self._done
            or self.trailing_data
            or framing is None
            or (framing.kind is not BodyKind.LENGTH and framing.kind is not BodyKind.CHUNKED)
            or not self._collector.in_head
        ):
            return False
        self._method = method
        self._interim = False
        self._done = False
        self._ended = 0
        self._collector.begun = 0
        self._collector.events = []
        self.framing = None
        self.received = 0
        return True

    def feed(self, data: bytes) -> list[ResponseEvent]:
        """Parse `data`; return the events it completes (nothing after the final message)."""
        self.received += len(data)
        if self._done:
            self.trailing_data = self.trailing_data or bool(data)
            return []
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            self.upgrade_tail = data[upgrade.args[0] :]  # a 101 with Connection: upgrade
        except httptools.HttpParserError as exc:
            if not self._done:  # errors after the final message are junk we ignore
                raise ParseError(str(exc)) from exc
        if self.framing is None and self.received > MAX_HEAD_BYTES:
            # Checked after parsing: one read may hold a small head and a large body.
            raise ParseError("response head too large")
        return self._take_events()

    def feed_eof(self) -> list[ResponseEvent]:
        """The upstream closed: ends a close-delimited body, otherwise the message is truncated."""
        if self._done:
            return []
        if self.framing is not None and self.framing.kind is BodyKind.UNTIL_CLOSE:
            self._done = True
            return [*self._take_events(), END]
        raise ParseError("upstream closed before the response was complete")

    def _take_events(self) -> list[ResponseEvent]:
        out: list[ResponseEvent] = []
        for event in self._collector.events:
            if self._done:
                # A body after a bodiless response (HEAD, 204) means the upstream is confused.
                self.trailing_data = self.trailing_data or isinstance(event, Data)
                continue
            if isinstance(event, EndOfMessage):
                self._ended += 1
                if self._interim:  # end of a 1xx head: the real response follows
                    self._interim = False
                    continue
                self._done = True
            out.append(event)  # type: ignore[arg-type]
        self._collector.events = []
        if self._done and self._collector.begun > self._ended:
            self.trailing_data = True
        return out

    def _on_head(self) -> None:
        collector = self._collector
        status = self._parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            # Interim responses are consumed here; Expect is answered by the engine itself.
            self._interim = True
            return
        headers = collector.headers
        self.framing = response_framing(headers, method=self._method, status=status)
        collector.events.append(
            ResponseStart(
                status=status,
                reason=bytes(collector.reason),
                http_version=self._parser.get_http_version(),
                headers=headers,
                keep_alive=self._parser.should_keep_alive(),
                framing=self.framing,
            )
        )
        if self.framing.kind is BodyKind.NONE:
            # llhttp does not know the request was HEAD and would wait for a body.
            collector.events.append(END)


def request_head(start: RequestStart, *, peer: str) -> RequestHead:
    """The routing view of a request head, target reduced to origin-form.

    An absolute-form target's authority wins over the Host header (RFC 9112 3.2.2).
    """
    path, authority = split_target(start.target)
    if authority is None:
        hosts = header_values(start.headers, b"host")
        authority = hosts[0].decode("latin-1") if hosts else ""
    return RequestHead(
        method=start.method,
        path=path,
        host=host_without_port(authority),
        http_version=start.http_version,
        headers=list(start.headers),
        peer=peer,
    )
