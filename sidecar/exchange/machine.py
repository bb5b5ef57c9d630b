"""One HTTP exchange as a sans-IO state machine: events in, actions out (h11's `_state.py` model).

An `ExchangeMachine` is made per request head. Its driver (sidecar/listeners/exchange.py, asyncio)
feeds it events — the request's body and end, the upstream connected or not, upstream bytes, a
timer fired, a connection lost — and carries out the actions each event returns, in order: write
downstream, connect upstream, write upstream, close or release the upstream connection, wake me
after, mirror, tunnel, finish (telemetry and the downstream connection's fate). The machine does
no I/O and keeps no handles: it can be run from a test script (tests/unit/sidecar/exchange/) as
well as from a socket, and an HTTP/2 stream (issue 16) drives the same events.

Rules:
- At most one upstream attempt is current; `attempt` numbers them, and a connect result for
  another number is stale and ignored. Events a phase does not expect are ignored (a late timer,
  bytes after the end); every phase change is checked against `TRANSITIONS` (a bug raises).
- The request body as sent is kept (`replay`) while it fits in REPLAY_LIMIT, so a later attempt can
  re-send the whole request; a larger body streams without a copy and makes the exchange
  single-attempt. Body bytes read before a connection is bound wait in `unsent` (reading the
  client pauses beyond REPLAY_LIMIT).
- A retry is made for a failure the route's retry policy covers (connect failure, reset,
  per-try timeout, a retriable status in the response head before anything is relayed), within
  the cluster's retry budget (the decision's `retrier` picks the endpoint and the backoff), and
  for a 503 carrying the never-processed mark from a trusted mesh peer, whatever the method
  (a refused stream). An idle pooled connection that breaks before any response byte is replaced
  once, transparently, only for an idempotent request held whole.
- An inbound connect failure to the app before any request byte was written is answered with the
  never-processed mark, so the calling sidecar may send the request elsewhere.
- The route timeout bounds all attempts and backoffs together; the per-try timeout one attempt;
  both stop at the response head. A fault delay holds the request before the first attempt.
- Nothing is written downstream after a response head except that response's body. `finish` runs
  once; `Finish` is the last action of an exchange.
- The plain path pays for no policy: retry bookkeeping (`Policies`) is made at the first retry,
  mirror/edits/delay state only for a route that has them, the replay buffer only for a body; the
  relay of a whole response in one read is a single write of the upstream's own bytes.

HTTP/1 framing is confined to a few seams an HTTP/2 stream replaces with its own: the client-side
bytes (`_local_reply`, `_response_head`, `_chunk` and `end_of_body` of the relayed body, the
`CONTINUE` interim, and the verbatim relay of a whole response) and the request body's chunking
upstream. The upstream response arrives as the codec's events (`ResponseStart`, `Data`,
`EndOfMessage`) through `response_events`; `upstream_data` is the HTTP/1 parser in front of it.

Phases and transitions (`TRANSITIONS` is the checked table):

    RESOLVE  --head: local reply, body unread----------------> DRAIN
    RESOLVE  --head: local reply | bad head-------------------> DONE
    RESOLVE  --head: forward with fault delay-----------------> DELAY
    RESOLVE  --head: forward----------------------------------> CONNECT
    DRAIN    --body end | drain limit | failed | client lost--> DONE
    DELAY    --delay timer-----------------------------------> CONNECT
    CONNECT  --connected------------------------------------> WAIT
    CONNECT  --connect failed | try timeout, retried---------> BACKOFF
    WAIT     --whole response in one read--------------------> DONE
    WAIT     --response head---------------------------------> RELAY
    WAIT     --101 to an upgrade request---------------------> TUNNEL
    WAIT     --stale pooled connection reset-----------------> CONNECT
    WAIT     --failure | retriable status | mark, retried----> BACKOFF
    BACKOFF  --backoff timer---------------------------------> CONNECT
    CONNECT, WAIT, BACKOFF --failure not retried | route timeout--> DRAIN | DONE
    any but DONE, TUNNEL   --request failed | client lost-----> DONE
    RELAY    --response end | upstream broke-----------------> DONE
    TUNNEL   --both directions ended-------------------------> DONE
"""

from __future__ import annotations

import dataclasses
import enum
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol

from lightmesh.protocols import http_status_of_grpc
from lightmesh.response_flags import ResponseFlag
from sidecar.contract import (
    MESH_HEADER_PREFIX,
    Completed,
    Decision,
    Forward,
    LocalReply,
    RequestHead,
)
from sidecar.errors import (
    UpstreamConnectFailure,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamReset,
    UpstreamTimeout,
    rescue,
)
from sidecar.http.grpc import MessageCounter, is_grpc, status_of, trailers_only
from sidecar.http.http1 import (
    HOP_BY_HOP,
    LAST_CHUNK,
    UNPROCESSED,
    BodyKind,
    Data,
    EndOfMessage,
    Framing,
    ParseError,
    RequestStart,
    ResponseEvent,
    ResponseParser,
    ResponseStart,
    end_of_body,
)
from sidecar.http.http2 import HTTP_VERSION as HTTP2
from sidecar.http.http2 import response_headers, trailer_fields
from sidecar.http.messages import (
    CONTINUE,
    FLAGS_HEADER,
    downstream_framing,
    expects_continue,
    forwarded_head,
    local_reply,
    relayed_response_head,
    switching_protocols_head,
    upstream_request,
)
from sidecar.policies.retry import IDEMPOTENT, Failure

if TYPE_CHECKING:
    from sidecar.policies.headers import HeaderEdits
    from sidecar.policies.retry import RetryPolicy

# Request body bytes kept for re-sending on another attempt (a retry buffer; larger bodies stream
# without a copy and make the exchange single-attempt).
REPLAY_LIMIT = 64 * 1024
# A local reply drains at most this much unread request body before giving up on keep-alive.
MAX_DRAIN_BYTES = 256 * 1024

_CHUNKED = BodyKind.CHUNKED


class Phase:
    """Where the exchange is (the response side; the request side is `request_complete`).

    Plain singletons rather than an Enum: an Enum member hashes in Python, and every phase
    change looks its successors up (`next`, from TRANSITIONS).
    """

    __slots__ = ("name", "next")

    def __init__(self, name: str) -> None:
        self.name = name
        self.next: frozenset[Phase] = frozenset()

    def __repr__(self) -> str:
        return self.name


RESOLVE = Phase("RESOLVE")  # the head is in, nothing decided yet
DRAIN = Phase("DRAIN")  # a local reply waits for the request body's end
DELAY = Phase("DELAY")  # fault injection holds the request
CONNECT = Phase("CONNECT")  # the current attempt waits for its upstream connection
WAIT = Phase("WAIT")  # the request is (being) sent; no response head yet
BACKOFF = Phase("BACKOFF")  # between two attempts
RELAY = Phase("RELAY")  # a response head went downstream; its body follows
TUNNEL = Phase("TUNNEL")  # after a 101: bytes spliced both ways by the driver
DONE = Phase("DONE")  # finished; every event is ignored
PHASES = (RESOLVE, DRAIN, DELAY, CONNECT, WAIT, BACKOFF, RELAY, TUNNEL, DONE)


class Timer(enum.IntEnum):
    """The machine's timers; the driver holds at most one handle per kind."""

    DELAY = 0  # fault delay before the first attempt
    ROUTE = 1  # the route timeout (all attempts and backoffs)
    TRY = 2  # the retry policy's per-try timeout (the current attempt)
    BACKOFF = 3  # the wait before the next attempt


# phase -> the phases it may go to; `_go` checks every change against it.
TRANSITIONS: dict[Phase, frozenset[Phase]] = {
    RESOLVE: frozenset({DRAIN, DONE, DELAY, CONNECT}),
    DRAIN: frozenset({DONE}),
    DELAY: frozenset({CONNECT, DONE}),
    CONNECT: frozenset({WAIT, BACKOFF, DRAIN, DONE}),
    WAIT: frozenset({DONE, RELAY, TUNNEL, CONNECT, BACKOFF, DRAIN}),
    BACKOFF: frozenset({CONNECT, DRAIN, DONE}),
    RELAY: frozenset({DONE}),
    TUNNEL: frozenset({DONE}),
    DONE: frozenset(),
}
for _phase, _next in TRANSITIONS.items():
    _phase.next = _next


class StateError(AssertionError):
    """A phase change the table does not allow: a bug in the machine."""


# --- actions (what the driver does, in order) ---


class Action:
    """Base of the actions an event returns."""

    __slots__ = ()

    def __repr__(self) -> str:
        names: tuple[str, ...] = self.__slots__
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in names)
        return f"{type(self).__name__}({fields})"

    def __eq__(self, other: object) -> bool:  # for test scripts
        names: tuple[str, ...] = self.__slots__
        return type(other) is type(self) and all(
            getattr(self, name) == getattr(other, name) for name in names
        )

    __hash__ = None  # type: ignore[assignment]


class WriteDown(Action):
    """Write bytes to the client."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data


class WriteUp(Action):
    """Write bytes to the current upstream connection."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data


class Connect(Action):
    """Get an upstream connection to `target` for attempt `attempt`: an idle pooled one unless
    `fresh`, else a new one; answer with `upstream_connected` or `upstream_connect_failed`."""

    __slots__ = ("attempt", "fresh", "target")

    def __init__(self, target: Forward, fresh: bool, attempt: int) -> None:
        self.target = target
        self.fresh = fresh
        self.attempt = attempt


class CloseUp(Action):
    """Let the current upstream connection go (stop connecting): back to the pool for
    `idle_timeout` if `reuse`, else closed."""

    __slots__ = ("idle_timeout", "reuse")

    def __init__(self, reuse: bool, idle_timeout: float | None = None) -> None:
        self.reuse = reuse
        self.idle_timeout = idle_timeout


class Wake(Action):
    """Call `timer_fired(timer)` after `delay` seconds (replacing that timer); None: cancel it."""

    __slots__ = ("delay", "timer")

    def __init__(self, timer: Timer, delay: float | None) -> None:
        self.timer = timer
        self.delay = delay


class ReadDown(Action):
    """Resume (`on`) or pause reading the client: body bytes wait for an upstream connection."""

    __slots__ = ("on",)

    def __init__(self, on: bool) -> None:
        self.on = on


class Mirror(Action):
    """Send a fire-and-forget copy of the request (head as forwarded, `body` as sent)."""

    __slots__ = ("body", "framing", "head", "target")

    def __init__(self, target: Forward, head: RequestHead, framing: Framing, body: bytes) -> None:
        self.target = target
        self.head = head
        self.framing = framing
        self.body = body


class Tunnel(Action):
    """Write `data` (the 101 head and the first tunnelled bytes, `tail` of them) to the client,
    then splice both connections; answer with `tunnel_ended`."""

    __slots__ = ("data", "tail")

    def __init__(self, data: bytes, tail: int) -> None:
        self.data = data
        self.tail = tail


class HeadDown(Action):
    """HTTP/2 client: send a response header block (`end`: the response ends with it)."""

    __slots__ = ("end", "headers")

    def __init__(self, headers: list[tuple[bytes, bytes]], end: bool) -> None:
        self.headers = headers
        self.end = end


class EndDown(Action):
    """HTTP/2 client: end the response (with `trailers` if any) once its data is sent."""

    __slots__ = ("trailers",)

    def __init__(self, trailers: list[tuple[bytes, bytes]]) -> None:
        self.trailers = trailers


class EndUp(Action):
    """HTTP/2 upstream: end the request stream once its data is sent."""

    __slots__ = ()


class Finish(Action):
    """Record `completed`; then, unless the connection became a tunnel (`hand_back` False), hand
    the downstream connection back: serve the next request if `keep_alive`, else close (reset if
    `abort`)."""

    __slots__ = ("abort", "completed", "hand_back", "keep_alive")

    def __init__(
        self, completed: Completed, keep_alive: bool, abort: bool, hand_back: bool
    ) -> None:
        self.completed = completed
        self.keep_alive = keep_alive
        self.abort = abort
        self.hand_back = hand_back


END_UP = EndUp()
PAUSE_DOWN = ReadDown(False)
RESUME_DOWN = ReadDown(True)
# The common CloseUps, made once (a cluster idle timeout makes its own).
CLOSE_UP = CloseUp(False)
RELEASE_UP = CloseUp(True)


class Shared(Protocol):
    """What the machine needs of its listener: the resolver, the clock, whether it drains."""

    @property
    def clock(self) -> Callable[[], float]:
        """The monotonic clock (seconds)."""

    @property
    def draining(self) -> bool:
        """The listener is draining: no connection is kept alive."""

    @property
    def hide_mesh_headers(self) -> bool:
        """The inbound listener: the app's responses lose every x-lightmesh-* header, and local
        replies carry the mesh's headers only to a calling sidecar (ListenerState)."""

    def resolve(self, head: RequestHead) -> Decision:
        """The router's decision for `head`."""


class Policies:
    """Per-exchange state of the route's policies, made only when a route uses one."""

    __slots__ = ("attempt_started", "edits", "flags", "mirror", "tried")

    def __init__(self, started: float) -> None:
        self.tried: list[str] = []  # "address:port" of the endpoints tried
        self.attempt_started = started  # when the current attempt began (retry accounting)
        self.edits: HeaderEdits | None = None  # response header edits
        self.mirror: Forward | None = None  # a copy to send once the request is complete
        self.flags = ""  # DI, URX: flags beyond the one the exchange ends with


class ExchangeMachine:
    """One request and its response (or local reply); see the module docstring."""

    __slots__ = (
        "attempt",
        "attempts",
        "conn_requests",
        "continue_sent",
        "down_h2",
        "failure",
        "framing",
        "fresh",
        "grpc",
        "grpc_status",
        "head",
        "inspect",
        "keep_alive",
        "live",
        "out",
        "parser",
        "pending_reply",
        "phase",
        "policies",
        "received",
        "replay",
        "request_bytes",
        "request_complete",
        "request_data",
        "request_messages",
        "response_bytes",
        "response_messages",
        "reused",
        "sent_upstream",
        "shared",
        "start",
        "start_time",
        "started",
        "status",
        "target",
        "timers",
        "unsent",
        "unsent_bytes",
        "up_h2",
        "upstream_keep_alive",
        "upstream_tls",
        "whole",
    )

    # Set where they start to matter, not here (each assignment costs on every request): the
    # attempt's fields by `_start_attempt` and `upstream_connected`, the response's at its head.
    pending_reply: LocalReply | None  # a local reply waiting for the body's end (DRAIN)
    request_data: bytes  # the serialised upstream request head
    inspect: bool  # look at the response head before relaying it
    unsent_bytes: int  # the size of `unsent`
    fresh: bool  # the attempt's connection is new and gets the request from `replay`
    parser: ResponseParser | None  # the HTTP/1 codec of the attempt's connection
    received: int  # response bytes on it
    reused: bool  # its connection came out of the idle pool
    conn_requests: int  # requests sent on its connection, this one included
    keep_alive: bool  # the client's connection is kept after the response
    upstream_keep_alive: bool  # the upstream's too

    def __init__(self, start: RequestStart, shared: Shared, complete: bool) -> None:
        self.start = start
        self.shared = shared
        self.started = shared.clock()
        self.start_time = time.time()
        self.out: list[Action] = []  # actions not yet taken by the driver
        self.phase = RESOLVE
        self.request_complete = complete  # the request's end has been read
        self.failure: ParseError | None = None  # the request body broke
        self.head: RequestHead | None = None
        self.target: Forward | None = None
        self.policies: Policies | None = None
        self.continue_sent = False
        # Request bytes were written to some upstream connection: an app may have seen them.
        self.sent_upstream = False
        self.request_bytes = 0
        self.response_bytes = 0
        self.status = 0
        self.framing: Framing | None = None  # downstream framing of the response body
        self.whole = True  # the body as sent so far is held in `replay`
        self.replay: bytearray | None = None  # made at the first body byte
        self.unsent: list[bytes] | None = None  # body bytes waiting for a connection
        self.timers = 0  # bits of the Timer kinds armed
        # The current attempt (numbered from 1; 0: none yet).
        self.attempts = 0  # attempts started (a stale-connection replacement is not one)
        self.attempt = 0
        self.live = False  # it holds (or is getting) a connection
        self.upstream_tls = False  # the last bound upstream connection was mutual TLS
        # HTTP/2 on either side (the seams in "HTTP/1 framing" take the HTTP/2 branch); a gRPC
        # caller gets the proxy's own replies as gRPC statuses, and its call's status is recorded.
        self.down_h2 = start.http_version == HTTP2
        self.up_h2 = False
        self.grpc = self.down_h2 and is_grpc(start.headers)
        self.grpc_status = ""
        # gRPC messages each way (Istio's request/response message counters); gRPC only.
        self.request_messages = MessageCounter() if self.grpc else None
        self.response_messages = MessageCounter() if self.grpc else None

    @property
    def done(self) -> bool:
        """Whether the exchange finished (FINISH was returned)."""
        return self.phase is DONE

    def expects(self, attempt: int) -> bool:
        """Whether attempt `attempt` still waits for its connection (else the driver pools it)."""
        return attempt == self.attempt and self.phase is CONNECT

    def _go(self, phase: Phase) -> None:
        if phase not in self.phase.next:
            self._refuse(phase)
        self.phase = phase

    def _refuse(self, phase: Phase) -> None:
        raise StateError(f"exchange: {self.phase.name} -> {phase.name} is not a transition")

    # --- events of the request side ---

    def begin(
        self, peer: str = "", peer_identity: str = "", original_dst: tuple[str, int] | None = None
    ) -> list[Action]:
        """The request head (event) from `peer` (its verified SPIFFE ID with mutual TLS; where an
        intercepted connection was going): resolve it, then answer or forward."""
        try:
            head = forwarded_head(self.start, peer=peer)
        except ParseError as error:
            self._answer(rescue(error), keep=False)
            return self.out
        head.peer_identity = peer_identity
        head.original_dst = original_dst
        self.head = head
        decision = self.shared.resolve(head)
        if isinstance(decision, LocalReply):
            self._reply(decision)
        else:
            self._forward(decision, head)
        return self.out

    def request_body(self, data: bytes) -> list[Action]:
        """A piece of the request body (de-chunked)."""
        self.request_bytes += len(data)
        if self.request_messages is not None:
            self.request_messages.feed(data)
        phase = self.phase
        if phase is DRAIN:
            if self.request_bytes > MAX_DRAIN_BYTES and self.pending_reply is not None:
                self._answer(self.pending_reply, keep=False)
        elif phase is not DONE:
            if self.start.framing.kind is _CHUNKED and not self.up_h2:
                data = _chunk(data)
            self._send_body(data)
        return self.out

    def request_end(self) -> list[Action]:
        """The request is complete."""
        self.request_complete = True
        phase = self.phase
        if phase is DRAIN:
            if self.pending_reply is not None:
                keep = self.start.keep_alive and not self.shared.draining
                self._answer(self.pending_reply, keep=keep)
            return self.out
        if phase is DONE:
            return self.out
        if self.up_h2:
            if phase is WAIT or phase is RELAY:
                self.out.append(END_UP)  # else sent once a connection is bound
        elif self.start.framing.kind is _CHUNKED:
            self._send_body(LAST_CHUNK)
        policies = self.policies
        if policies is not None and policies.mirror is not None:
            self._send_mirror(policies)
        return self.out

    def request_failed(self, error: ParseError) -> list[Action]:
        """The request broke mid-body (bad bytes or the client's EOF): refuse, never forward."""
        phase = self.phase
        if phase is DONE:
            return self.out
        self.failure = error
        if phase is DRAIN and self.pending_reply is not None:
            self._answer(self.pending_reply, keep=False)
        elif phase is RELAY or phase is TUNNEL:
            # Too late for a refusal: the upstream saw a truncated request; reset both.
            self._finish(flags=error.flag, keep=False, abort=True)
        else:
            self._drop_attempt()
            self._answer(rescue(error), keep=False)
        return self.out

    def downstream_lost(self) -> list[Action]:
        """The client went away mid-exchange."""
        if self.phase is not DONE:
            self._finish(flags=ResponseFlag.DC, keep=False)
        return self.out

    # --- events of the upstream side ---

    def upstream_connected(
        self, attempt: int, parser: ResponseParser | None, tls: bool, reused: bool, requests: int
    ) -> list[Action]:
        """Attempt `attempt` has its connection (`requests` sent on it, this one included; the
        driver resets `parser`, the connection's HTTP/1 codec, for this request)."""
        if attempt != self.attempt or self.phase is not CONNECT:
            return self.out  # stale: the driver pools the connection again
        self.phase = WAIT  # `_go`: CONNECT -> WAIT is a transition
        self.parser = parser
        self.upstream_tls = tls
        self.reused = reused
        self.conn_requests = requests
        self.sent_upstream = True
        if self.up_h2:
            # The driver opened the stream with the head: the body so far, and its end.
            body = self._request_so_far()
            if body:
                self.out.append(WriteUp(body))
            if self.request_complete:
                self.out.append(END_UP)
            return self.out
        self.out.append(WriteUp(self._request_so_far()))
        return self.out

    def upstream_connect_failed(self, attempt: int, error: UpstreamError) -> list[Action]:
        """Attempt `attempt` could not connect."""
        if attempt == self.attempt and self.phase is CONNECT:
            self._attempt_failed(error, Failure.CONNECT)
        return self.out

    def upstream_data(self, data: bytes) -> list[Action]:
        """Bytes of the response on the current attempt's connection (HTTP/1: parsed here)."""
        phase = self.phase
        if phase is not WAIT and phase is not RELAY:
            return self.out
        self.received += len(data)
        parser = self.parser
        if parser is None:
            return self.out
        try:
            events = parser.feed(data)
        except ParseError as exc:
            self._upstream_broke(UpstreamProtocolError(str(exc)))
            return self.out
        if events:
            self.response_events(events, data)
        return self.out

    def upstream_response(self, events: list[ResponseEvent]) -> list[Action]:
        """Response events of an HTTP/2 upstream stream (its codec is the connection's)."""
        phase = self.phase
        if phase is WAIT or phase is RELAY:
            self.received += 1  # something came back: not a stale connection
            self.response_events(events)
        return self.out

    def upstream_refused(self, reason: str) -> list[Action]:
        """The HTTP/2 upstream refused the stream before processing it (REFUSED_STREAM, or a
        GOAWAY that left it out): retried like a refused connection, whatever the method."""
        if self.phase is WAIT:
            self._attempt_failed(UpstreamReset(reason), Failure.REFUSED)
        return self.out

    def upstream_eof(self) -> list[Action]:
        """The upstream closed its half: ends a close-delimited body, else the exchange broke."""
        phase = self.phase
        if (phase is WAIT or phase is RELAY) and self.parser is not None:
            try:
                events = self.parser.feed_eof()
            except ParseError as exc:
                self._upstream_broke(UpstreamReset(str(exc)))
            else:
                if events:
                    self.response_events(events)
        return self.out

    def upstream_lost(self, reason: str) -> list[Action]:
        """The current attempt's connection is gone before the response completed."""
        phase = self.phase
        if phase is WAIT or phase is RELAY:
            self._upstream_broke(UpstreamReset(reason))
        return self.out

    def timer_fired(self, timer: Timer) -> list[Action]:
        """A timer the machine set (`Wake`) fired."""
        bit = 1 << timer
        if not self.timers & bit:
            return self.out  # cancelled meanwhile
        self.timers &= ~bit
        phase = self.phase
        if timer is Timer.ROUTE:
            # The route timeout bounds all attempts, so no retry.
            if phase is CONNECT or phase is WAIT or phase is BACKOFF:
                self._upstream_failed(UpstreamTimeout())
        elif timer is Timer.TRY:
            if phase is CONNECT or phase is WAIT:
                self._attempt_failed(UpstreamTimeout(), Failure.TIMEOUT)
        elif timer is Timer.BACKOFF:
            if phase is BACKOFF:
                if self.policies is not None:
                    self.policies.attempt_started = self.shared.clock()
                self._start_attempt(fresh=True)
        elif phase is DELAY:
            self._dispatch()
        return self.out

    def tunnel_ended(self, *, sent: int, received: int) -> list[Action]:
        """Both directions of the tunnel ended (or one broke); `sent` client bytes went up,
        `received` upstream bytes came down (the first tunnelled bytes included)."""
        if self.phase is TUNNEL:
            self.request_bytes += sent
            self.response_bytes = received
            self._finish(flags="", keep=False)
        return self.out

    # --- local replies ---

    def _reply(self, reply: LocalReply) -> None:
        """Answer from the proxy; the unread body is drained first unless that cannot work."""
        start = self.start
        if self.down_h2:
            # A stream is answered at once (the rest of its body is refused with the stream's
            # reset), never drained: a streaming caller may not end its request first.
            self._answer(reply, keep=True)
            return
        # A client still waiting for 100 Continue never sends its body: draining would hang.
        awaiting = not self.continue_sent and expects_continue(start)
        keep = start.keep_alive and not self.shared.draining and not awaiting
        if keep and not self.request_complete and self.failure is None:
            self.pending_reply = reply  # answered at the body's end (see `request_end`)
            self._go(DRAIN)
            return
        self._answer(reply, keep=keep and self.request_complete and self.failure is None)

    def _answer(self, reply: LocalReply, *, keep: bool) -> None:
        """Write a local reply and end the exchange."""
        self.pending_reply = None
        payload = (reply.body + "\n").encode("utf-8")
        said = reply
        if not self._says_mesh_headers():
            said = LocalReply(
                status=reply.status,
                body=reply.body,
                headers=tuple(h for h in reply.headers if not h[0].startswith(MESH_HEADER_PREFIX)),
            )
        self.status = reply.status
        if self.down_h2:
            self._answer_h2(reply, said.headers, payload)
        else:
            self.out.append(WriteDown(_local_reply(self.start, said, payload, keep=keep)))
            self.response_bytes = len(payload)
        self._finish(flags=reply.flags, keep=keep, cluster=reply.cluster)

    def _answer_h2(
        self, reply: LocalReply, extra: tuple[tuple[bytes, bytes], ...], payload: bytes
    ) -> None:
        """A local reply on an HTTP/2 stream (`extra`: its headers the caller may see): a
        trailers-only gRPC status to a gRPC caller."""
        flags = reply.flags if self._says_mesh_headers() else ""
        said = ((FLAGS_HEADER, flags.encode("ascii")),) if flags else ()
        if self.grpc:
            # HTTP 200 as gRPC wants; a never-processed mark keeps its 503 for the calling sidecar.
            marked = any(name == UNPROCESSED for name, _ in extra)
            status = b"%d" % reply.status if marked else b"200"
            block = trailers_only(reply.status, reply.body, reply.flags, code=reply.grpc_status)
            headers = [(b":status", status), *block]
            headers.extend(said)
            headers.extend(extra)
            self.grpc_status = headers[2][1].decode("ascii")
            self.out.append(HeadDown(headers, end=True))
            return
        head_only = self.start.method == "HEAD"
        headers = [
            (b":status", b"%d" % reply.status),
            (b"content-type", b"text/plain"),
            (b"content-length", b"%d" % len(payload)),
            *said,
            *extra,
        ]
        self.out.append(HeadDown(headers, end=head_only))
        if not head_only:
            self.response_bytes = len(payload)
            self.out.append(WriteDown(payload))
            self.out.append(EndDown([]))

    def _says_mesh_headers(self) -> bool:
        """Whether a local reply may carry the mesh's headers: always on the outbound listener
        (its client is this pod's app), on the inbound one only to a calling sidecar."""
        if not self.shared.hide_mesh_headers:
            return True
        head = self.head
        return head is not None and bool(head.peer_identity or head.mesh_peer)

    # --- forwarding ---

    def _forward(self, target: Forward, head: RequestHead) -> None:
        """Send the request to `target` through attempts."""
        self.target = target
        start = self.start
        self.up_h2 = target.http2
        if expects_continue(start):
            # Like Envoy, answer 100 ourselves and keep Expect away from the upstream.
            self.out.append(WriteDown(CONTINUE))
            self.continue_sent = True
        self.request_data = b"" if self.up_h2 else upstream_request(head, start.framing)
        if target.delay:
            # Fault injection: hold the request (its body is buffered meanwhile), then forward.
            self._policies().flags = ResponseFlag.DI
            self._go(DELAY)
            self._wake(Timer.DELAY, target.delay)
            return
        self._dispatch()

    def _dispatch(self) -> None:
        """Arm the route timeout, start the first attempt, and the mirror copy if any."""
        target = self.target
        if target is None:
            return
        if target.timeout is not None:
            self._wake(Timer.ROUTE, target.timeout)
        edits = target.response_headers
        policy = target.retry
        self.inspect = edits is not None or (policy is not None and _retries_on_status(policy))
        if edits is not None:
            self._policies().edits = edits
        self._start_attempt(fresh=False)
        if target.mirror is not None:
            policies = self._policies()
            policies.mirror = target.mirror
            if self.request_complete:
                self._send_mirror(policies)

    def _policies(self) -> Policies:
        policies = self.policies
        if policies is None:
            policies = self.policies = Policies(self.started)
        return policies

    def _start_attempt(self, *, fresh: bool, count: bool = True) -> None:
        """Start the next attempt at `target`: a fresh one re-sends the request from `replay`."""
        target = self.target
        if target is None:
            return
        if count:
            self.attempts += 1
        self.attempt += 1
        self.fresh = fresh
        self.live = True
        self.parser = None
        self.received = 0
        if CONNECT not in self.phase.next:  # `_go`, inlined on the hot path
            self._refuse(CONNECT)
        self.phase = CONNECT
        policy = target.retry
        if policy is not None and policy.per_try_timeout is not None:
            self._wake(Timer.TRY, policy.per_try_timeout)
        self.out.append(Connect(target, fresh, self.attempt))

    def _wake(self, timer: Timer, delay: float) -> None:
        self.timers |= 1 << timer
        self.out.append(Wake(timer, delay))

    def _cancel(self, timer: Timer) -> None:
        bit = 1 << timer
        if self.timers & bit:
            self.timers &= ~bit
            self.out.append(Wake(timer, None))

    def _send_mirror(self, policies: Policies) -> None:
        """Send the mirror copy: only of a request whose body was held whole (≤ REPLAY_LIMIT)."""
        mirror, policies.mirror = policies.mirror, None
        head = self.head
        if mirror is None or head is None or not self.whole or self.failure is not None:
            return
        body = bytes(self.replay) if self.replay is not None else b""
        self.out.append(Mirror(mirror, head, self.start.framing, body))

    def _send_body(self, piece: bytes) -> None:
        """Body bytes as they go on the wire: to the current connection, or held until one."""
        if self.whole:
            replay = self.replay
            if replay is None:
                if len(piece) <= REPLAY_LIMIT:
                    self.replay = bytearray(piece)
                else:
                    self.whole = False
            elif len(replay) + len(piece) <= REPLAY_LIMIT:
                replay += piece
            else:
                self.whole = False
                self.replay = None
        phase = self.phase
        if phase is WAIT or phase is RELAY:
            self.out.append(WriteUp(piece))
            return
        unsent = self.unsent
        if unsent is None:
            unsent = self.unsent = []
            self.unsent_bytes = 0
        unsent.append(piece)
        before = self.unsent_bytes
        self.unsent_bytes += len(piece)
        if self.unsent_bytes > REPLAY_LIMIT >= before:
            self.out.append(PAUSE_DOWN)

    def _request_so_far(self) -> bytes:
        """What a newly bound connection is sent: the head and the body read so far."""
        if self.fresh:
            body = bytes(self.replay) if self.replay is not None else b""
        else:
            body = b"".join(self.unsent) if self.unsent else b""
        if self.unsent:
            self._clear_unsent()
        return self.request_data + body if body else self.request_data

    def _clear_unsent(self) -> None:
        if self.unsent:
            self.unsent = None
            if self.unsent_bytes > REPLAY_LIMIT:
                self.out.append(RESUME_DOWN)
            self.unsent_bytes = 0

    def _head_arrived(self) -> None:
        """A response head came: the timeouts (route and per try) no longer apply."""
        if self.timers:
            self._cancel(Timer.ROUTE)
            self._cancel(Timer.TRY)

    def _drop_attempt(self) -> None:
        """Abandon the current attempt (its connection is closed)."""
        if self.timers:
            self._cancel(Timer.TRY)
        if self.live:
            self.live = False
            self.out.append(CLOSE_UP)
        # Body held for a connection that will not come; a retry re-sends from `replay`.
        self._clear_unsent()

    def _upstream_failed(self, error: UpstreamError) -> None:
        """No response head will come: answer with the error's status and flags."""
        self._drop_attempt()
        if self.timers:
            self._cancel(Timer.ROUTE)
            self._cancel(Timer.BACKOFF)
        # Flags noted along the way (URX, DI) are said in the reply's flags header too.
        also = ""
        if self.policies is not None:
            also, self.policies.flags = self.policies.flags, ""
        reply = rescue(error, also=also)
        target = self.target
        if (
            target is not None
            and target.mark_unprocessed
            and not self.sent_upstream
            and isinstance(error, UpstreamConnectFailure)
        ):
            # Nothing reached the app: say so to the calling sidecar (hop-by-hop mark).
            reply = dataclasses.replace(reply, headers=(*reply.headers, (UNPROCESSED, b"1")))
        self._reply(reply)

    def _attempt_failed(self, error: UpstreamError, failure: Failure) -> None:
        """The current attempt got no response head: retry if the policy allows, else answer."""
        if not self._retry(failure, error.status):
            self._upstream_failed(error)

    def _retry(self, failure: Failure, status: int) -> bool:
        """Start another attempt if the route's policy, the body held, and the cluster's retry
        budget allow it; False (nothing done) otherwise. `status`: the attempt's outcome."""
        target = self.target
        if target is None or self.failure is not None:
            return False
        policy = target.retry
        retrier = target.retrier
        if policy is None or retrier is None:
            return False
        tries = self.attempts
        sent = failure is not Failure.CONNECT
        if not policy.should_retry(
            attempt=tries, failure=failure, status=status, method=self.start.method, sent=sent
        ):
            if tries > 1 and tries > policy.attempts and policy.retriable(failure, status):
                self._add_flag(ResponseFlag.URX)  # retries were made and ran out
            return False
        if not self.whole or not self.request_complete:
            return False  # the body was not held whole: it cannot be sent again
        now = self.shared.clock()
        policies = self._policies()
        policies.tried.append(f"{target.address}:{target.port}")
        new = retrier.retry_target(target, tried=policies.tried, now=now)
        if new is None:
            return False  # the retry budget is spent
        retrier.attempt_finished(
            target,
            # A gRPC status is accounted as the HTTP status it stands for.
            status=http_status_of_grpc(status) if failure is Failure.GRPC else status,
            duration=now - policies.attempt_started,
            local_origin=failure is Failure.CONNECT or failure is Failure.REFUSED,
        )
        self.target = new
        self._drop_attempt()
        self._go(BACKOFF)
        self._wake(Timer.BACKOFF, retrier.retry_backoff(tries))
        return True

    def _add_flag(self, flag: str) -> None:
        """Note a response flag beyond the exchange's final one."""
        policies = self._policies()
        if flag not in policies.flags.split(","):
            policies.flags = f"{policies.flags},{flag}" if policies.flags else flag

    def _upstream_broke(self, error: UpstreamError) -> None:
        """The attempt's connection failed or sent garbage."""
        if self.phase is RELAY:
            # Too late for an error response: reset so the client sees the truncation.
            self._finish(flags=error.flag, keep=False, abort=True)
            return
        if (
            isinstance(error, UpstreamReset)
            and self.reused
            and not self.fresh
            and self.received == 0
            and self.whole
            and self.failure is None
            # An app may have read it before the connection broke: only a request that may be
            # repeated is sent again (never a POST an app may have seen).
            and self.start.method in IDEMPOTENT
        ):
            # The upstream closed an idle connection under us before reading the request: the
            # whole request is still in hand, so send it once more on a fresh connection.
            self._drop_attempt()
            self._start_attempt(fresh=True, count=False)
            return
        self._attempt_failed(error, Failure.RESET)

    # --- the response side ---

    def response_events(self, events: list[ResponseEvent], data: bytes = b"") -> None:
        """Response events of one upstream read (`data`: its bytes), sent downstream in one
        write."""
        first = events[0]
        waiting = self.phase is WAIT
        if waiting and type(first) is ResponseStart:
            if first.status == 503 and self._never_processed(first):
                return
            if self.inspect and self._inspect_head(first):
                return
            if (
                not self.down_h2
                and len(data) == self.received
                and type(events[-1]) is EndOfMessage
                and (self.policies is None or self.policies.edits is None)
                and self._relay_verbatim(first, data)
            ):
                return
        if self.down_h2:
            self._relay_h2(events)
            return
        out: list[bytes] = []
        framing = self.framing
        for event in events:
            if type(event) is Data:
                data = event.data
                self.response_bytes += len(data)
                if framing is not None and framing.kind is _CHUNKED:
                    data = _chunk(data)
                out.append(data)
            elif type(event) is ResponseStart:
                if event.status == 101:
                    if not self.start.upgrade:  # 101 only answers a request that asked for it
                        self._upstream_broke(UpstreamProtocolError("unexpected 101"))
                    else:
                        self._tunnel(event)
                    return
                framing = self._response_head(event, out)
            else:  # EndOfMessage
                if framing is not None:
                    trailers = event.trailers  # type: ignore[union-attr]
                    if trailers:
                        self._trailers_seen(trailers)
                        if framing.kind is _CHUNKED:
                            out.append(_last_chunk(trailer_fields(list(trailers))))
                        else:
                            out.append(end_of_body(framing))
                    else:
                        out.append(end_of_body(framing))
                self.out.append(WriteDown(b"".join(out)))
                self._response_complete()
                return
        if out:
            self.out.append(WriteDown(b"".join(out)))

    def _relay_h2(self, events: list[ResponseEvent]) -> None:
        """Relay response events to an HTTP/2 client: head, data and end (trailers) as frames."""
        out = self.out
        for index, event in enumerate(events):
            kind = type(event)
            if kind is Data:
                data = event.data  # type: ignore[union-attr]
                self.response_bytes += len(data)
                if self.response_messages is not None:
                    self.response_messages.feed(data)
                out.append(WriteDown(data))
            elif kind is ResponseStart:
                head: ResponseStart = event  # type: ignore[assignment]
                if head.status == 101:  # no upgrade over HTTP/2
                    self._upstream_broke(UpstreamProtocolError("unexpected 101"))
                    return
                self._head_arrived()
                self._go(RELAY)
                self.status = head.status
                self.keep_alive = True
                self.upstream_keep_alive = head.keep_alive
                if self.grpc:
                    self._trailers_seen(head.headers)  # a trailers-only response's status
                rest = events[index + 1 :]
                # A head the response ends with goes as one frame (a gRPC trailers-only reply).
                end = bool(rest) and type(rest[0]) is EndOfMessage and not rest[0].trailers
                out.append(
                    HeadDown(
                        response_headers(
                            head.status,
                            head.headers,
                            hide_mesh=self.shared.hide_mesh_headers,
                            prefix=MESH_HEADER_PREFIX,
                        ),
                        end,
                    )
                )
                if end:
                    self._response_complete()
                    return
            else:  # EndOfMessage
                trailers = list(event.trailers)  # type: ignore[union-attr]
                if trailers:
                    self._trailers_seen(trailers)
                out.append(EndDown(trailer_fields(trailers)))
                self._response_complete()
                return

    def _trailers_seen(self, fields: Sequence[tuple[bytes, bytes]]) -> None:
        """Note the call's gRPC status from a trailer (or trailers-only head) block."""
        if self.grpc or self.up_h2:
            code = status_of(list(fields))
            if code is not None:
                self.grpc_status = str(code)

    def _never_processed(self, head: ResponseStart) -> bool:
        """A 503 that the endpoint's sidecar marked never-processed (its app refused the
        connection): retried like a refused stream, whatever the method (True: retried).

        Believed only from a mesh sidecar: over mutual TLS (a verified mesh identity), or from a
        cluster the control plane says is all sidecars. The mark is hop-by-hop, so it is dropped
        from what the client gets when the response is relayed after all.
        """
        target = self.target
        if target is None or not (self.upstream_tls or target.meshed):
            return False
        for name, value in head.headers:
            if name == UNPROCESSED:
                return value.strip() == b"1" and self._retry(Failure.REFUSED, head.status)
        return False

    def _inspect_head(self, head: ResponseStart) -> bool:
        """Before a response head is relayed: retry on its status (True: the attempt was given
        up for another), or apply the route's response header edits."""
        status = head.status
        target = self.target
        policy = target.retry if target is not None else None
        if (
            policy is not None
            and status != 101
            and policy.retriable(Failure.STATUS, status)
            and self._retry(Failure.STATUS, status)
        ):
            return True
        if policy is not None and policy.grpc_codes:
            # A trailers-only gRPC response: its status is in the head, nothing is committed.
            code = status_of(head.headers)
            if (
                code is not None
                and policy.retriable(Failure.GRPC, code)
                and self._retry(Failure.GRPC, code)
            ):
                return True
        policies = self.policies
        if policies is not None and policies.edits is not None and status != 101:
            policies.edits.apply(head.headers)
        return False

    def _relay_verbatim(self, head: ResponseStart, data: bytes) -> bool:
        """Relay a whole response that came in one read as the upstream's own bytes, when they
        are exactly what the client must get; False (nothing done) otherwise.

        That is (HTTP/1 framing): HTTP/1.1, Content-Length framing, both sides kept alive, no
        hop-by-hop field but Connection: keep-alive (which an HTTP/1.0 client needs and a 1.1
        client ignores), and nothing before the final head (no 1xx) or after the body.
        """
        framing = head.framing
        start = self.start
        if (
            framing.kind is not BodyKind.LENGTH
            or head.http_version != "1.1"
            or not head.keep_alive
            or not start.keep_alive
            or self.shared.draining
            or (self.parser is not None and self.parser.trailing_data)
        ):
            return False
        keep_alive_named = False
        hide = self.shared.hide_mesh_headers
        for name, value in head.headers:
            if name in HOP_BY_HOP:
                if name != b"connection" or value.strip().lower() != b"keep-alive":
                    return False
                keep_alive_named = True
            elif hide and name.startswith(MESH_HEADER_PREFIX):
                return False  # to be dropped: not the upstream's bytes as they are
        if start.http_version != "1.1" and not keep_alive_named:
            return False
        head_end = len(data) - framing.length
        if head_end < 4 or data.find(b"\r\n\r\n") != head_end - 4:
            return False
        if self.timers:
            self._head_arrived()
        self.status = head.status
        self.keep_alive = True
        self.upstream_keep_alive = True
        self.framing = framing
        self.response_bytes = framing.length
        self.out.append(WriteDown(data))
        self._response_complete()
        return True

    def _response_head(self, head: ResponseStart, out: list[bytes]) -> Framing:
        """Start relaying a final response; returns the downstream framing of its body."""
        self._head_arrived()
        self._go(RELAY)
        start = self.start
        http11 = start.http_version == "1.1"
        framing = downstream_framing(head.framing, http11=http11)
        keep = (
            start.keep_alive
            and framing.kind is not BodyKind.UNTIL_CLOSE
            and not self.shared.draining
        )
        self.status = head.status
        self.keep_alive = keep
        self.upstream_keep_alive = head.keep_alive
        self.framing = framing
        out.append(
            relayed_response_head(
                head,
                framing,
                keep_alive=keep,
                http11=http11,
                hide_mesh=self.shared.hide_mesh_headers,
            )
        )
        return framing

    def _response_complete(self) -> None:
        """The response is relayed: pool the connection if it is clean, end the exchange."""
        request_done = self.request_complete and self.failure is None
        target = self.target
        if target is not None:
            limit = target.max_requests_per_connection
            parser = self.parser
            # Bytes beyond the response: the connection is out of sync, never reuse it.
            reuse = (
                self.upstream_keep_alive
                and request_done
                and not (parser is not None and parser.trailing_data)
                and not (limit and self.conn_requests >= limit)
            )
            idle = target.idle_timeout
            if idle is None:
                self.out.append(RELEASE_UP if reuse else CLOSE_UP)
            else:
                self.out.append(CloseUp(reuse, idle))
        self.live = False  # let go above: nothing for `_finish` to drop
        # An upstream that answered before reading the whole request: close the client too.
        self._finish(flags="", keep=self.keep_alive and request_done)

    def _tunnel(self, head: ResponseStart) -> None:
        """After a 101: relay raw bytes both ways until both sides have closed."""
        self._head_arrived()
        self._go(TUNNEL)
        self.live = False  # the connection is the tunnel's now
        self.status = 101
        tail = self.parser.upgrade_tail if self.parser is not None else b""
        self.out.append(Tunnel(switching_protocols_head(head) + tail, len(tail)))

    # --- the end ---

    def _finish(self, *, flags: str, keep: bool, abort: bool = False, cluster: str = "") -> None:
        """Record the exchange and hand the downstream connection back; runs once."""
        if self.phase is DONE:
            return
        if self.live or self.unsent:
            self._drop_attempt()
        if self.timers:
            for timer in Timer:
                self._cancel(timer)
        if DONE not in self.phase.next:  # `_go`, inlined on the hot path
            self._refuse(DONE)
        self.phase = DONE
        self.pending_reply = None
        policies = self.policies
        if policies is not None and policies.flags:
            extra = policies.flags
            flags = f"{flags},{extra}" if flags else extra
        shared = self.shared
        target = self.target
        head = self.head
        self.out.append(
            Finish(
                Completed(
                    method=self.start.method,
                    host=head.host if head is not None else "",
                    # A local reply's: the cluster it answered for (or none).
                    cluster=target.cluster if target is not None else cluster,
                    status=self.status,
                    flags=flags,
                    duration=shared.clock() - self.started,
                    request_bytes=self.request_bytes,
                    response_bytes=self.response_bytes,
                    upstream=f"{target.address}:{target.port}" if target is not None else "",
                    head=head,
                    start_time=self.start_time,
                    attempts=self.attempts,
                    upstream_tls=self.upstream_tls,
                    grpc_status=self.grpc_status,
                    request_messages=self.request_messages.count
                    if self.request_messages is not None
                    else 0,
                    response_messages=self.response_messages.count
                    if self.response_messages is not None
                    else 0,
                ),
                keep and not shared.draining,  # keep_alive
                abort,
                self.status != 101,  # hand_back
            )
        )


# --- HTTP/1 framing ---


def _chunk(data: bytes) -> bytes:
    """One chunk of a chunked body."""
    return b"%x\r\n%s\r\n" % (len(data), data)


def _local_reply(start: RequestStart, reply: LocalReply, payload: bytes, *, keep: bool) -> bytes:
    """A local reply as the client's HTTP/1 connection takes it."""
    return local_reply(
        reply.status,
        payload,
        flags=reply.flags,
        keep_alive=keep,
        http11=start.http_version == "1.1",
        head_only=start.method == "HEAD",
        extra=reply.headers,
    )


def _retries_on_status(policy: RetryPolicy) -> bool:
    """Whether `policy` may retry after a response head (so heads must be inspected)."""
    return (
        policy.on_5xx
        or policy.on_gateway
        or policy.on_4xx
        or bool(policy.status_codes)
        or bool(policy.grpc_codes)
    )


def _last_chunk(trailers: list[tuple[bytes, bytes]]) -> bytes:
    """The last chunk of a chunked body with its trailer section (HTTP/2 trailers relayed)."""
    return b"0\r\n" + b"".join(b"%s: %s\r\n" % field for field in trailers) + b"\r\n"
