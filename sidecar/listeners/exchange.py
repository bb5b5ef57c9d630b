"""One HTTP exchange on a downstream connection: resolve, forward through upstream attempts, relay.

A downstream connection creates an `Exchange` per request head. It asks the resolver for a
decision, then either answers locally or runs an `Attempt`: bind a pooled (or new) upstream
connection, send the head — serialised after the resolver ran, so its edits of path and headers
apply — stream the body, and relay the response as it arrives, one downstream write per upstream
read. Everything runs in protocol callbacks: only a connect awaits (in a task), and a route
timeout is a timer handle.

An exchange may run several attempts. The request body as sent is kept in `replay` while it fits
in REPLAY_LIMIT, so a later attempt can re-send the whole request. A second attempt is made for a
stale pooled connection that failed before any response byte arrived (transparently), and for a
failure the route's retry policy covers: connect failure, reset, per-try timeout, or a retriable
status seen in the response head before anything is relayed. The decision's `retrier` picks the
retry's endpoint (a different one when it exists) and pays it from the cluster's retry budget;
the route `timeout` bounds all attempts and backoffs together.

Around the attempts: a fault `delay` holds the request before the first one (flag DI); a `mirror`
copy is sent once the request is complete (upstream/mirror.py); response header edits apply to the head
before it is relayed; a pooled connection is closed after `max_requests_per_connection`.

Rules: at most one attempt is current; events of a stale attempt are ignored. `finish` runs once
and hands the downstream connection back (keep alive or close). Nothing is written downstream
after a response head has been relayed except that response's body. A request without retries on
status, header edits, delay or mirror pays for none of them: `inspect` is False, and the relay of
a whole response in one read stays a single write of the upstream's bytes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import TYPE_CHECKING, Protocol

from lightmesh.response_flags import ResponseFlag
from sidecar.contract import MESH_HEADER_PREFIX, Completed, Forward, LocalReply, RequestHead
from sidecar.errors import (
    UpstreamConnectFailure,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamReset,
    UpstreamTimeout,
    rescue,
)
from sidecar.http.http1 import (
    HOP_BY_HOP,
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
from sidecar.http.messages import (
    CONTINUE,
    downstream_framing,
    expects_continue,
    forwarded_head,
    local_reply,
    relayed_response_head,
    switching_protocols_head,
    upstream_request,
)
from sidecar.listeners.splice import DOWN, Splice
from sidecar.listeners.state import PAUSE_UNSENT, PAUSE_UPSTREAM_FULL, ListenerState
from sidecar.policies.retry import IDEMPOTENT, Failure
from sidecar.upstream.pool import UpstreamConnection

if TYPE_CHECKING:
    from sidecar.policies.headers import HeaderEdits
    from sidecar.policies.retry import RetryPolicy

# Request body bytes kept for re-sending on another attempt (a retry buffer; larger bodies stream
# without a copy and make the exchange single-attempt).
REPLAY_LIMIT = 64 * 1024
# A local reply drains at most this much unread request body before giving up on keep-alive.
MAX_DRAIN_BYTES = 256 * 1024

_NO_BODY = BodyKind.NONE
_CHUNKED = BodyKind.CHUNKED


class Downstream(Protocol):
    """What an exchange needs of its downstream connection."""

    transport: asyncio.Transport
    peer: str
    peer_identity: str  # verified SPIFFE ID of a mutual-TLS client, "" otherwise
    original_dst: tuple[str, int] | None  # where an intercepted connection was going
    write_paused: bool

    def pause(self, reason: int) -> None:
        """Stop reading the client for `reason`."""

    def resume(self, reason: int) -> None:
        """`reason` no longer holds; read again if no other does."""

    def exchange_done(self, *, keep_alive: bool, abort: bool) -> None:
        """The exchange ended: serve the next request, or close (reset if `abort`)."""

    def start_tunnel(self, splice: Splice) -> bytes:
        """Stop parsing HTTP; route the connection through `splice`; the bytes held past the head."""


class Exchange:
    """One request and its response (or local reply)."""

    __slots__ = (
        "attempt",
        "attempt_started",
        "attempts",
        "backoff",
        "continue_sent",
        "down",
        "edits",
        "extra_flags",
        "failure",
        "finished",
        "framing",
        "head",
        "inspect",
        "keep_alive",
        "mirror",
        "pending_reply",
        "replay",
        "request_bytes",
        "request_complete",
        "request_data",
        "responding",
        "response_bytes",
        "sent_upstream",
        "start",
        "start_time",
        "started",
        "state",
        "status",
        "target",
        "timer",
        "tried",
        "try_timer",
        "unsent",
        "unsent_bytes",
        "upstream_keep_alive",
        "upstream_tls",
    )

    def __init__(
        self, down: Downstream, start: RequestStart, state: ListenerState, *, complete: bool
    ) -> None:
        self.down = down
        self.start = start
        self.state = state
        self.started = state.clock()
        self.start_time = time.time()
        self.request_complete = complete  # the request's end has been read
        self.head: RequestHead | None = None
        self.target: Forward | None = None
        self.attempt: Attempt | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.request_bytes = 0
        self.response_bytes = 0
        self.status = 0
        self.failure: ParseError | None = None  # the request body broke
        self.pending_reply: LocalReply | None = None  # a local reply waiting for the body's end
        self.continue_sent = False
        self.responding = False  # a response head has gone downstream
        # Request bytes were written to some upstream connection: an app may have seen them.
        self.sent_upstream = False
        self.finished = False
        self.keep_alive = False
        self.upstream_keep_alive = False
        self.framing: Framing | None = None  # downstream framing of the response body
        self.request_data = b""  # the serialised upstream request head
        self.replay: bytearray | None = bytearray()  # the body as sent, while it fits
        self.unsent: list[bytes] = []  # body bytes waiting for a connection
        self.unsent_bytes = 0
        # Retries and the route's other actions (see the module docstring).
        self.attempts = 0  # attempts started
        self.upstream_tls = False  # the last bound upstream connection was mutual TLS
        self.attempt_started = self.started
        self.try_timer: asyncio.TimerHandle | None = None  # perTryTimeout of the current attempt
        self.backoff: asyncio.TimerHandle | None = None  # the wait before the next attempt
        self.tried: list[str] | None = None  # "address:port" of the endpoints tried
        self.extra_flags = ""  # DI, URX: flags beyond the one the exchange ends with
        self.inspect = False  # look at the response head before relaying it
        self.edits: HeaderEdits | None = None  # response header edits
        self.mirror: Forward | None = None  # a copy to send once the request is complete
        state.active += 1

    # --- the request side (called by the downstream connection) ---

    def begin(self) -> None:
        """Resolve the request and answer or forward it."""
        try:
            head = forwarded_head(self.start, peer=self.down.peer)
        except ParseError as error:
            self.answer(rescue(error), keep=False)
            return
        down = self.down
        head.peer_identity = down.peer_identity
        head.original_dst = down.original_dst
        self.head = head
        decision = self.state.resolve(head)
        if isinstance(decision, LocalReply):
            self.reply(decision)
        else:
            self.forward(decision, head)

    def body(self, data: bytes) -> None:
        """A piece of the request body (de-chunked)."""
        self.request_bytes += len(data)
        if self.pending_reply is not None:
            if self.request_bytes > MAX_DRAIN_BYTES:
                self.answer(self.pending_reply, keep=False)
        elif not self.finished:
            if self.start.framing.kind is _CHUNKED:
                data = b"%x\r\n%s\r\n" % (len(data), data)
            self.send_body(data)

    def end(self) -> None:
        """The request is complete."""
        self.request_complete = True
        if self.pending_reply is not None:
            self.answer(self.pending_reply, keep=self.start.keep_alive and not self.state.draining)
        elif not self.finished and self.start.framing.kind is _CHUNKED:
            self.send_body(b"0\r\n\r\n")
        if self.mirror is not None and not self.finished:
            self.send_mirror()

    def fail(self, error: ParseError) -> None:
        """The request broke mid-body (bad bytes or the client's EOF): refuse, never forward."""
        if self.finished:
            return
        self.failure = error
        if self.pending_reply is not None:
            self.answer(self.pending_reply, keep=False)
            return
        if self.responding:
            # Too late for a refusal: the upstream saw a truncated request; reset both.
            self.finish(flags=error.flag, keep=False, abort=True)
            return
        self.drop_attempt()
        self.answer(rescue(error), keep=False)

    def downstream_lost(self) -> None:
        """The client went away mid-exchange."""
        if not self.finished:
            self.finish(flags=ResponseFlag.DC, keep=False)

    def downstream_paused(self, *, paused: bool) -> None:
        """The client's write buffer filled (or drained): throttle the upstream."""
        attempt = self.attempt
        if attempt is not None and attempt.conn is not None:
            if paused:
                attempt.conn.pause_reading()
            else:
                attempt.conn.resume_reading()

    # --- local replies ---

    def reply(self, reply: LocalReply) -> None:
        """Answer from the proxy; the unread body is drained first unless that cannot work."""
        start = self.start
        # A client still waiting for 100 Continue never sends its body: draining would hang.
        awaiting = not self.continue_sent and expects_continue(start)
        keep = start.keep_alive and not self.state.draining and not awaiting
        if keep and not self.request_complete and self.failure is None:
            self.pending_reply = reply  # answered at the body's end (see `end`)
            return
        self.answer(reply, keep=keep and self.request_complete and self.failure is None)

    def answer(self, reply: LocalReply, *, keep: bool) -> None:
        """Write a local reply and end the exchange."""
        self.pending_reply = None
        start = self.start
        payload = (reply.body + "\n").encode("utf-8")
        flags, extra = reply.flags, reply.headers
        if not self.says_mesh_headers():
            flags = ""
            extra = tuple(item for item in extra if not item[0].startswith(MESH_HEADER_PREFIX))
        self.down.transport.write(
            local_reply(
                reply.status,
                payload,
                flags=flags,
                keep_alive=keep,
                http11=start.http_version == "1.1",
                head_only=start.method == "HEAD",
                extra=extra,
            )
        )
        self.status = reply.status
        self.response_bytes = len(payload)
        self.finish(flags=reply.flags, keep=keep)

    def says_mesh_headers(self) -> bool:
        """Whether a local reply may carry the mesh's headers: always on the outbound listener
        (its client is this pod's app), on the inbound one only to a calling sidecar."""
        if not self.state.hide_mesh_headers:
            return True
        head = self.head
        return head is not None and bool(head.peer_identity or head.mesh_peer)

    # --- forwarding ---

    def forward(self, target: Forward, head: RequestHead) -> None:
        """Send the request to `target` through an attempt."""
        self.target = target
        start = self.start
        if expects_continue(start):
            # Like Envoy, answer 100 ourselves and keep Expect away from the upstream.
            self.down.transport.write(CONTINUE)
            self.continue_sent = True
        self.request_data = upstream_request(head, start.framing)
        if target.delay:
            # Fault injection: hold the request (its body is buffered meanwhile), then forward.
            self.extra_flags = ResponseFlag.DI
            self.timer = asyncio.get_running_loop().call_later(target.delay, self.dispatch)
            return
        self.dispatch()

    def dispatch(self) -> None:
        """Arm the route timeout, start the first attempt, and the mirror copy if any."""
        self.timer = None
        target = self.target
        if target is None or self.finished:
            return
        if target.timeout is not None:
            loop = asyncio.get_running_loop()
            self.timer = loop.call_later(target.timeout, self.timed_out)
        edits = target.response_headers
        policy = target.retry
        if edits is not None or (policy is not None and _retries_on_status(policy)):
            self.inspect = True
            self.edits = edits
        self.start_attempt()
        if target.mirror is not None:
            self.mirror = target.mirror
            if self.request_complete:
                self.send_mirror()

    def start_attempt(self) -> None:
        """Run the next attempt at `target` (a retry replays the request from `replay`)."""
        target = self.target
        if target is None:
            return
        retry = self.attempts > 0
        self.attempts += 1
        self.arm_try_timer(target)
        self.attempt = Attempt(self, target, retry=retry)
        self.attempt.run()

    def arm_try_timer(self, target: Forward) -> None:
        """Start the retry policy's perTryTimeout for the attempt about to run, if it has one."""
        policy = target.retry
        if policy is not None and policy.per_try_timeout is not None:
            loop = asyncio.get_running_loop()
            self.try_timer = loop.call_later(policy.per_try_timeout, self.try_timed_out)

    def send_mirror(self) -> None:
        """Send the mirror copy: only of a request whose body was held whole (≤ REPLAY_LIMIT)."""
        mirror, self.mirror = self.mirror, None
        head = self.head
        if mirror is None or head is None or self.replay is None or self.failure is not None:
            return
        state = self.state
        state.mirrors.send(mirror, head, self.start.framing, bytes(self.replay), pool=state.pool)

    def send_body(self, piece: bytes) -> None:
        """Body bytes as they go on the wire: to the current connection, or held until one."""
        replay = self.replay
        if replay is not None:
            if len(replay) + len(piece) <= REPLAY_LIMIT:
                replay += piece
            else:
                self.replay = None
        attempt = self.attempt
        if attempt is not None and attempt.conn is not None:
            attempt.conn.write(piece)
        else:
            self.unsent.append(piece)
            self.unsent_bytes += len(piece)
            if self.unsent_bytes > REPLAY_LIMIT:
                self.down.pause(PAUSE_UNSENT)

    def request_so_far(self, *, retry: bool) -> bytes:
        """What a newly bound connection is sent: the head and the body read so far."""
        body = bytes(self.replay or b"") if retry else b"".join(self.unsent)
        if self.unsent:
            self.unsent.clear()
            self.unsent_bytes = 0
            self.down.resume(PAUSE_UNSENT)
        return self.request_data + body if body else self.request_data

    def timed_out(self) -> None:
        """Forward.timeout passed before a response head: it bounds all attempts, so no retry."""
        self.timer = None
        if not self.finished and not self.responding:
            self.upstream_failed(UpstreamTimeout())

    def try_timed_out(self) -> None:
        """The retry policy's perTryTimeout passed before the current attempt's response head."""
        self.try_timer = None
        attempt = self.attempt
        if attempt is not None and not self.finished and not self.responding:
            self.attempt_failed(attempt, UpstreamTimeout(), Failure.TIMEOUT)

    def head_arrived(self) -> None:
        """A response head came: the timeouts (route and per try) no longer apply."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.try_timer is not None:
            self.try_timer.cancel()
            self.try_timer = None

    def drop_attempt(self) -> None:
        """Abandon the current attempt (its connection is closed)."""
        attempt, self.attempt = self.attempt, None
        if self.try_timer is not None:
            self.try_timer.cancel()
            self.try_timer = None
        if attempt is not None:
            attempt.cancel()
        self.down.resume(PAUSE_UPSTREAM_FULL)
        if self.unsent:
            # Held for a connection that will not come; a retry re-sends from `replay`.
            self.unsent.clear()
            self.unsent_bytes = 0
            self.down.resume(PAUSE_UNSENT)

    def upstream_failed(self, error: UpstreamError) -> None:
        """No response head will come: answer with the error's status and flags."""
        self.drop_attempt()
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.backoff is not None:
            self.backoff.cancel()
            self.backoff = None
        # Flags noted along the way (URX, DI) are said in the reply's flags header too.
        also, self.extra_flags = self.extra_flags, ""
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
        self.reply(reply)

    def attempt_failed(self, attempt: Attempt, error: UpstreamError, failure: Failure) -> None:
        """The current attempt got no response head: retry if the policy allows, else answer."""
        if attempt is not self.attempt or self.finished:
            return
        if not self.retry(failure, error.status):
            self.upstream_failed(error)

    def retry(self, failure: Failure, status: int) -> bool:
        """Start another attempt if the route's policy, the body held, and the cluster's retry
        budget allow it; False (nothing done) otherwise. `status`: the attempt's outcome."""
        target = self.target
        if target is None or self.responding or self.failure is not None:
            return False
        policy = target.retry
        retrier = target.retrier
        if policy is None or retrier is None:
            return False
        tries = self.attempts
        sent = failure is not Failure.CONNECT
        method = self.start.method
        if not policy.should_retry(
            attempt=tries, failure=failure, status=status, method=method, sent=sent
        ):
            if tries > 1 and tries > policy.attempts and policy.retriable(failure, status):
                self.add_flag(ResponseFlag.URX)  # retries were made and ran out
            return False
        if self.replay is None or not self.request_complete:
            return False  # the body was not held whole: it cannot be sent again
        now = self.state.clock()
        tried = self.tried
        if tried is None:
            tried = self.tried = []
        tried.append(f"{target.address}:{target.port}")
        new = retrier.retry_target(target, tried=tried, now=now)
        if new is None:
            return False  # the retry budget is spent
        retrier.attempt_finished(
            target,
            status=status,
            duration=now - self.attempt_started,
            local_origin=failure is Failure.CONNECT or failure is Failure.REFUSED,
        )
        self.target = new
        self.drop_attempt()
        loop = asyncio.get_running_loop()
        self.backoff = loop.call_later(retrier.retry_backoff(tries), self.retry_now)
        return True

    def retry_now(self) -> None:
        """The backoff passed: start the next attempt."""
        self.backoff = None
        if not self.finished:
            self.attempt_started = self.state.clock()
            self.start_attempt()

    def add_flag(self, flag: str) -> None:
        """Note a response flag beyond the exchange's final one."""
        if flag not in self.extra_flags.split(","):
            self.extra_flags = f"{self.extra_flags},{flag}" if self.extra_flags else flag

    def upstream_broke(self, attempt: Attempt, error: UpstreamError) -> None:
        """The attempt's connection failed or sent garbage."""
        if attempt is not self.attempt or self.finished:
            return
        if self.responding:
            # Too late for an error response: reset so the client sees the truncation.
            self.finish(flags=error.flag, keep=False, abort=True)
            return
        conn = attempt.conn
        stale = (
            isinstance(error, UpstreamReset)
            and conn is not None
            and conn.reused
            and not attempt.retry
            and attempt.received == 0
            and self.replay is not None
            and self.failure is None
            # An app may have read it before the connection broke: only a request that may be
            # repeated is sent again (never a POST an app may have seen).
            and self.start.method in IDEMPOTENT
        )
        if stale:
            # The upstream closed an idle connection under us before reading the request: the
            # whole request is still in hand, so send it once more on a fresh connection.
            self.drop_attempt()
            self.arm_try_timer(attempt.target)
            self.attempt = Attempt(self, attempt.target, retry=True)
            self.attempt.run()
            return
        self.attempt_failed(attempt, error, Failure.RESET)

    # --- the response side (called by the attempt) ---

    def relay(self, attempt: Attempt, events: list[ResponseEvent], data: bytes = b"") -> None:
        """Response events of one upstream read (`data`), sent downstream in one write."""
        first = events[0]
        if self.framing is None and type(first) is ResponseStart:
            if first.status == 503 and self.never_processed(attempt, first):
                return
            if self.inspect and self.inspect_head(attempt, first):
                return
        if (
            self.framing is None
            and self.edits is None
            and len(data) == attempt.received
            and type(events[-1]) is EndOfMessage
            and type(events[0]) is ResponseStart
            and self.relay_verbatim(attempt, events[0], data)
        ):
            return
        out: list[bytes] = []
        framing = self.framing
        for event in events:
            if isinstance(event, Data):
                data = event.data
                self.response_bytes += len(data)
                if framing is not None and framing.kind is _CHUNKED:
                    data = b"%x\r\n%s\r\n" % (len(data), data)
                out.append(data)
            elif isinstance(event, ResponseStart):
                if event.status == 101:
                    if not self.start.upgrade:  # 101 only answers a request that asked for it
                        self.upstream_broke(attempt, UpstreamProtocolError("unexpected 101"))
                    else:
                        self.tunnel(attempt, event)
                    return
                framing = self.response_head(event, out)
            else:  # EndOfMessage
                if framing is not None:
                    out.append(end_of_body(framing))
                self.down.transport.write(b"".join(out))
                self.response_complete(attempt)
                return
        if out:
            self.down.transport.write(b"".join(out))

    def never_processed(self, attempt: Attempt, head: ResponseStart) -> bool:
        """A 503 that the endpoint's sidecar marked never-processed (its app refused the
        connection): retried like a refused stream, whatever the method (True: retried).

        Believed only from a mesh sidecar: over mutual TLS (a verified mesh identity), or from a
        cluster the control plane says is all sidecars. The mark is hop-by-hop, so it is dropped
        from what the client gets when the response is relayed after all.
        """
        target = self.target
        conn = attempt.conn
        if target is None or conn is None or not (conn.tls or target.meshed):
            return False
        for name, value in head.headers:
            if name == UNPROCESSED:
                return value.strip() == b"1" and self.retry(Failure.REFUSED, head.status)
        return False

    def inspect_head(self, attempt: Attempt, head: ResponseStart) -> bool:
        """Before a response head is relayed: retry on its status (True: the attempt was given
        up for another), or apply the route's response header edits."""
        status = head.status
        target = self.target
        policy = target.retry if target is not None else None
        if (
            policy is not None
            and status != 101
            and policy.retriable(Failure.STATUS, status)
            and self.retry(Failure.STATUS, status)
        ):
            return True
        if self.edits is not None and status != 101:
            self.edits.apply(head.headers)
        return False

    def relay_verbatim(self, attempt: Attempt, head: ResponseStart, data: bytes) -> bool:
        """Relay a whole response that came in one read as the upstream's own bytes, when they
        are exactly what the client must get; False (nothing done) otherwise.

        That is: HTTP/1.1, Content-Length framing, both sides kept alive, no hop-by-hop field
        but Connection: keep-alive (which an HTTP/1.0 client needs and a 1.1 client ignores),
        and nothing before the final head (no 1xx) or after the body.
        """
        framing = head.framing
        start = self.start
        if (
            framing.kind is not BodyKind.LENGTH
            or head.http_version != "1.1"
            or not head.keep_alive
            or not start.keep_alive
            or self.state.draining
            or attempt.trailing_data()
        ):
            return False
        keep_alive_named = False
        hide = self.state.hide_mesh_headers
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
        self.head_arrived()
        self.responding = True
        self.status = head.status
        self.keep_alive = True
        self.upstream_keep_alive = True
        self.framing = framing
        self.response_bytes = framing.length
        self.down.transport.write(data)
        self.response_complete(attempt)
        return True

    def response_head(self, head: ResponseStart, out: list[bytes]) -> Framing:
        """Start relaying a final response; returns the downstream framing of its body."""
        self.head_arrived()
        start = self.start
        http11 = start.http_version == "1.1"
        framing = downstream_framing(head.framing, http11=http11)
        keep = (
            start.keep_alive
            and framing.kind is not BodyKind.UNTIL_CLOSE
            and not self.state.draining
        )
        self.responding = True
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
                hide_mesh=self.state.hide_mesh_headers,
            )
        )
        return framing

    def response_complete(self, attempt: Attempt) -> None:
        """The response is relayed: pool the connection if it is clean, end the exchange."""
        request_done = self.request_complete and self.failure is None
        conn = attempt.conn
        attempt.done = True
        attempt.conn = None
        self.attempt = None
        if conn is not None:
            pool = self.state.pool
            target = attempt.target
            limit = target.max_requests_per_connection
            if (
                self.upstream_keep_alive
                and request_done
                and not attempt.trailing_data()
                and not (limit and conn.requests >= limit)
            ):
                pool.release(conn, idle_timeout=target.idle_timeout)
            else:
                pool.discard(conn)
        self.down.resume(PAUSE_UPSTREAM_FULL)
        # An upstream that answered before reading the whole request: close the client too.
        self.finish(flags="", keep=self.keep_alive and request_done)

    def tunnel(self, attempt: Attempt, head: ResponseStart) -> None:
        """After a 101: relay raw bytes both ways until both sides have closed."""
        self.head_arrived()
        conn = attempt.conn
        if conn is None or conn.transport is None:
            return  # unreachable: a 101 arrived on the attempt's connection
        attempt.done = True
        attempt.conn = None
        self.attempt = None
        self.state.pool.detach(conn)
        conn.resume_reading()
        self.responding = True
        self.status = 101
        tail = attempt.upgrade_tail()
        self.down.transport.write(switching_protocols_head(head) + tail)
        splice = Splice(self.down.transport, conn.transport, on_end=self.tunnel_ended)
        splice.moved[1] = len(tail)
        splice.idle_since = self.state.clock()
        conn.owner = splice
        self.state.tunnels.add(splice)
        held = self.down.start_tunnel(splice)
        if held:
            splice.relay(DOWN, held)

    def tunnel_ended(self, splice: Splice) -> None:
        """Both directions of the tunnel ended (or one broke)."""
        self.state.tunnels.discard(splice)
        self.request_bytes += splice.moved[0]
        self.response_bytes = splice.moved[1]
        self.finish(flags="", keep=False)

    # --- the end ---

    def finish(self, *, flags: str, keep: bool, abort: bool = False) -> None:
        """Record the exchange and hand the downstream connection back; runs once."""
        if self.finished:
            return
        self.finished = True
        self.pending_reply = None
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.attempt is not None:
            self.drop_attempt()
        if self.backoff is not None:
            self.backoff.cancel()
            self.backoff = None
        if self.extra_flags:
            flags = f"{flags},{self.extra_flags}" if flags else self.extra_flags
        state = self.state
        state.active -= 1
        target = self.target
        state.record(
            Completed(
                method=self.start.method,
                host=self.head.host if self.head is not None else "",
                cluster=target.cluster if target is not None else "",
                status=self.status,
                flags=flags,
                duration=state.clock() - self.started,
                request_bytes=self.request_bytes,
                response_bytes=self.response_bytes,
                upstream=f"{target.address}:{target.port}" if target is not None else "",
                head=self.head,
                start_time=self.start_time,
                attempts=self.attempts,
                upstream_tls=self.upstream_tls,
            )
        )
        if self.status != 101:
            self.down.exchange_done(keep_alive=keep and not state.draining, abort=abort)


class Attempt:
    """One try at an upstream exchange: a connection, the request sent on it, its response."""

    __slots__ = ("conn", "connecting", "done", "exchange", "parser", "received", "retry", "target")

    def __init__(self, exchange: Exchange, target: Forward, *, retry: bool) -> None:
        self.exchange = exchange
        self.target = target
        self.retry = retry  # a second try: always on a fresh connection, replaying the request
        self.conn: UpstreamConnection | None = None
        self.connecting: asyncio.Task[None] | None = None
        self.parser: ResponseParser | None = None  # set by bind
        self.received = 0
        self.done = False

    def run(self) -> None:
        """Bind an idle pooled connection, or connect (the one await of the hot path)."""
        target = self.target
        conn = (
            None
            if self.retry
            else self.exchange.state.pool.take_idle(
                (target.address, target.port, target.tls_server_name), target.tls_identities
            )
        )
        if conn is not None:
            self.bind(conn)
        else:
            self.connecting = asyncio.get_running_loop().create_task(
                self.connect(), name=f"proxy-{self.exchange.state.name}-connect"
            )

    async def connect(self) -> None:
        """Open a new connection, then bind it (or pool it if the attempt was given up)."""
        target = self.target
        pool = self.exchange.state.pool
        try:
            conn = await pool.connect(
                target.address,
                target.port,
                connect_timeout=target.connect_timeout,
                tls_server_name=target.tls_server_name,
                identities=target.tls_identities,
            )
        except UpstreamConnectFailure as exc:
            self.connecting = None
            if not self.done:
                self.exchange.attempt_failed(self, exc, Failure.CONNECT)
            return
        self.connecting = None
        opened = self.exchange.state.connections_opened
        opened[target.cluster] = opened.get(target.cluster, 0) + 1
        if self.done:
            pool.release(conn)  # clean and unused: someone else may take it
        else:
            self.bind(conn)

    def bind(self, conn: UpstreamConnection) -> None:
        """Use `conn`: send the request head and the body read so far."""
        self.conn = conn
        conn.owner = self
        conn.requests += 1
        exchange = self.exchange
        exchange.upstream_tls = conn.tls
        method = exchange.start.method
        parser = conn.parser
        if parser is None or not parser.reset(method):
            parser = conn.parser = ResponseParser(method)
        self.parser = parser
        exchange.sent_upstream = True
        conn.write(exchange.request_so_far(retry=self.retry))
        if exchange.down.write_paused:
            conn.pause_reading()

    def cancel(self) -> None:
        """Give the attempt up: stop connecting, reset its connection."""
        self.done = True
        if self.connecting is not None:
            self.connecting.cancel()
            self.connecting = None
        conn, self.conn = self.conn, None
        if conn is not None:
            self.exchange.state.pool.discard(conn)

    def trailing_data(self) -> bool:
        """Whether the upstream sent bytes beyond the response (never reuse it then)."""
        return self.parser is not None and self.parser.trailing_data

    def upgrade_tail(self) -> bytes:
        """The bytes after a 101 head, already in the new protocol."""
        return self.parser.upgrade_tail if self.parser is not None else b""

    # --- UpstreamOwner ---

    def upstream_data(self, data: bytes) -> None:
        """Bytes of the response."""
        if self.done:
            return
        self.received += len(data)
        parser = self.parser
        if parser is None:
            return
        try:
            events = parser.feed(data)
        except ParseError as exc:
            self.exchange.upstream_broke(self, UpstreamProtocolError(str(exc)))
            return
        if events:
            self.exchange.relay(self, events, data)

    def upstream_eof(self) -> bool:
        """The upstream closed its half: ends a close-delimited body, else the exchange broke."""
        if not self.done and self.parser is not None:
            try:
                events = self.parser.feed_eof()
            except ParseError as exc:
                self.exchange.upstream_broke(self, UpstreamReset(str(exc)))
            else:
                if events:
                    self.exchange.relay(self, events)
        return False

    def upstream_lost(self, exc: Exception | None) -> None:
        """The connection is gone before the response completed."""
        if not self.done:
            self.exchange.upstream_broke(self, UpstreamReset(repr(exc)))

    def upstream_paused(self) -> None:
        """The upstream cannot take more body now."""
        self.exchange.down.pause(PAUSE_UPSTREAM_FULL)

    def upstream_resumed(self) -> None:
        """The upstream takes body bytes again."""
        self.exchange.down.resume(PAUSE_UPSTREAM_FULL)


def _retries_on_status(policy: RetryPolicy) -> bool:
    """Whether `policy` may retry after a response head (so heads must be inspected)."""
    return policy.on_5xx or policy.on_gateway or policy.on_4xx or bool(policy.status_codes)
