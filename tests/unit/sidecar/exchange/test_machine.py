"""The sans-IO exchange as event/action scripts (tests/support/playbook.py), routed by the real
DataPlane and OutboundRouter (which is also the retrier); time passed explicitly."""

from __future__ import annotations

import random

import pytest

from lightmesh import types
from lightmesh.v1 import config_pb2 as pb
from sidecar.config.apply import DataPlane
from sidecar.contract import Decision, Forward, LocalReply, RequestHead
from sidecar.exchange.machine import (
    DONE,
    PHASES,
    RELAY,
    RESOLVE,
    RESUME_DOWN,
    TRANSITIONS,
    CloseUp,
    Connect,
    ExchangeMachine,
    Finish,
    Mirror,
    ReadDown,
    Timer,
    Tunnel,
    Wake,
    WriteDown,
    WriteUp,
)
from sidecar.http.http1 import UNPROCESSED, RequestParser, RequestStart
from sidecar.routing.router import OutboundRouter
from tests.support.config import pack
from tests.support.playbook import (
    Like,
    Playbook,
    begin,
    body,
    client_lost,
    completed,
    connect_failed,
    connected,
    contains,
    end,
    fired,
    lacks,
    request_failed,
    starts,
    tunnel_ended,
    upstream,
    upstream_eof,
    upstream_lost,
)

CLUSTER = "outbound||catalog.default.svc.cluster.local"
OK = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
MARKED_503 = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nx-lightmesh-unprocessed: 1\r\n\r\n"
)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Listener:
    """The machine's `Shared`: a resolver, the clock, the draining flag (an outbound listener:
    mesh headers not hidden)."""

    def __init__(self, resolve: object, clock: Clock) -> None:
        self._resolve = resolve
        self.clock = clock
        self.draining = False
        self.hide_mesh_headers = False

    def resolve(self, head: RequestHead) -> Decision:
        if isinstance(self._resolve, Forward | LocalReply):
            return self._resolve
        return self._resolve.resolve(head)  # type: ignore[attr-defined, no-any-return]


def mesh(*routes: pb.Route, ports: tuple[int, ...] = (1, 2), **cluster: object) -> Listener:
    plane = DataPlane(rng=random.Random(7))
    plane.apply(types.CLUSTER, pack(pb.Cluster(name=CLUSTER, **cluster)))  # type: ignore[arg-type]
    plane.apply(types.ENDPOINTS, pack(pb.ClusterLoadAssignment(
        cluster_name=CLUSTER, endpoints=[pb.Endpoint(address="127.0.0.1", port=p) for p in ports])))  # fmt: skip
    plane.apply(types.ROUTES, pack(pb.VirtualHost(
        name="catalog", domains=["catalog"], routes=routes or (route(),))))  # fmt: skip
    clock = Clock()
    return Listener(OutboundRouter(plane, clock=clock, rng=random.Random(3)), clock)


def route(**fields: object) -> pb.Route:
    return pb.Route(
        name="r",
        clusters=[pb.WeightedCluster(cluster=CLUSTER, weight=100)],
        **fields,  # type: ignore[arg-type]
    )


def request(raw: bytes) -> tuple[RequestStart, bool]:
    """The head of `raw` (through the real codec) and whether the request is complete in it."""
    events = RequestParser().feed(raw)
    start = events[0]
    assert isinstance(start, RequestStart)
    return start, len(events) > 1 and start.framing.kind.name == "NONE"


def machine(
    listener: Listener, raw: bytes = b"GET / HTTP/1.1\r\nhost: catalog\r\n\r\n"
) -> ExchangeMachine:
    start, complete = request(raw)
    return ExchangeMachine(start, listener, complete=complete)


def forwarded(m: ExchangeMachine) -> Playbook:
    """A script past the plain start: resolved, connected (attempt 1), the request written."""
    return Playbook(m) >> begin() << Like(Connect, attempt=1) >> connected(1) << Like(WriteUp)


POST = b"POST /orders HTTP/1.1\r\nhost: catalog\r\ncontent-length: 3\r\n\r\n"


def test_a_pooled_get_is_one_write_each_way_and_the_connection_goes_back_to_the_pool() -> None:
    m = machine(mesh())
    assert (
        Playbook(m)
        >> begin()
        << Like(Connect, attempt=1, fresh=False)
        >> connected(1, reused=True)
        << Like(WriteUp, data=starts(b"GET / HTTP/1.1\r\n"))
        >> upstream(OK)
        << WriteDown(OK)  # the upstream's own bytes, verbatim
        << CloseUp(reuse=True, idle_timeout=None)
        << Like(Finish, keep_alive=True, abort=False, hand_back=True,
                completed=completed(status=200, flags="", attempts=1, upstream="127.0.0.1:1"))
    )  # fmt: skip
    # The plain path made no policy state, replay buffer or unsent list.
    assert m.policies is None and m.replay is None and m.unsent is None
    assert m.phase is DONE


def test_no_route_is_answered_locally_without_an_upstream() -> None:
    m = machine(mesh(), b"GET / HTTP/1.1\r\nhost: elsewhere\r\n\r\n")
    assert (
        Playbook(m)
        >> begin()
        << Like(WriteDown, data=contains(b"HTTP/1.1 404", b"x-lightmesh-response-flags: NR"))
        << Like(Finish, keep_alive=True, completed=completed(status=404, flags="NR", attempts=0))
    )


def test_a_local_reply_waits_for_the_body_then_keeps_the_connection() -> None:
    m = machine(mesh(), POST.replace(b"host: catalog", b"host: elsewhere"))
    assert (
        Playbook(m)
        >> begin()
        >> body(b"abc")
        >> end()
        << Like(WriteDown, data=starts(b"HTTP/1.1 404"))
        << Like(Finish, keep_alive=True, completed=completed(status=404, request_bytes=3))
    )


def test_body_read_before_the_connection_is_sent_with_the_head() -> None:
    m = machine(mesh(), POST)
    assert (
        Playbook(m)
        >> begin()
        << Like(Connect, attempt=1)
        >> body(b"abc")
        >> end()
        >> connected(1)
        << Like(
            WriteUp, data=lambda d: d.startswith(b"POST /orders") and d.endswith(b"\r\n\r\nabc")
        )
        >> upstream(OK)
        << WriteDown(OK)
        << CloseUp(reuse=True, idle_timeout=None)
        << Like(Finish, completed=completed(status=200, request_bytes=3))
    )


def test_a_connect_failure_is_retried_by_default_on_another_endpoint_post_included() -> None:
    m = machine(mesh(), POST + b"abc")
    m.request_complete = True  # the body came with the head (as the driver feeds it)
    assert (
        Playbook(m)
        >> begin()
        << Like(Connect, attempt=1)
        >> body(b"abc")
        >> connect_failed(1)
        << CloseUp(reuse=False)
        << Like(Wake, timer=Timer.BACKOFF)
        >> fired(Timer.BACKOFF)
        << Like(Connect, attempt=2, fresh=True, target=lambda t: t.port == 2)
        >> connected(2)
        << Like(WriteUp, data=lambda d: d.endswith(b"\r\n\r\nabc"))  # replayed whole
        >> upstream(OK)
        << WriteDown(OK)
        << Like(CloseUp, reuse=True)
        << Like(Finish, completed=completed(status=200, attempts=2, upstream="127.0.0.1:2"))
    )


def test_default_retries_run_out_after_two_and_say_urx() -> None:
    m = machine(mesh())
    script = Playbook(m) >> begin() << Like(Connect, attempt=1)
    for attempt in (1, 2):
        script = (
            script
            >> connect_failed(attempt)
            << CloseUp(reuse=False)
            << Like(Wake, timer=Timer.BACKOFF)
            >> fired(Timer.BACKOFF)
            << Like(Connect, attempt=attempt + 1)
        )
    assert (
        script
        >> connect_failed(3)
        << CloseUp(reuse=False)
        << Like(WriteDown, data=contains(b"HTTP/1.1 503", b"UF,URX"))
        << Like(Finish, completed=completed(status=503, flags="UF,URX", attempts=3))
    )


def test_a_never_processed_503_from_a_mesh_peer_is_retried_for_a_post() -> None:
    m = machine(mesh(), POST + b"abc")
    assert (
        Playbook(m)
        >> begin()
        << Like(Connect, attempt=1)
        >> body(b"abc")
        >> end()
        >> connected(1, tls=True)  # mutual TLS: the peer is a mesh sidecar
        << Like(WriteUp)
        >> upstream(MARKED_503)
        << CloseUp(reuse=False)
        << Like(Wake, timer=Timer.BACKOFF)
        >> fired(Timer.BACKOFF)
        << Like(Connect, attempt=2, fresh=True, target=lambda t: t.port == 2)
        >> connected(2, tls=True)
        << Like(WriteUp, data=lambda d: d.endswith(b"abc"))
        >> upstream(OK)
        << WriteDown(OK)
        << Like(CloseUp, reuse=True)
        << Like(Finish, completed=completed(status=200, attempts=2))
    )


def test_a_never_processed_mark_from_an_unknown_peer_is_relayed_without_the_mark() -> None:
    m = machine(mesh(), POST + b"abc")
    assert (
        Playbook(m)
        >> begin()
        << Like(Connect, attempt=1)
        >> body(b"abc")
        >> end()
        >> connected(1, tls=False)  # plaintext, cluster not meshed: not believed
        << Like(WriteUp)
        >> upstream(MARKED_503)
        << Like(WriteDown, data=lambda d: d.startswith(b"HTTP/1.1 503") and UNPROCESSED not in d)
        << Like(CloseUp, reuse=True)
        << Like(Finish, completed=completed(status=503, attempts=1))
    )


def test_an_inbound_connect_failure_before_any_byte_is_marked_never_processed() -> None:
    app = Forward(address="127.0.0.1", port=8080, cluster="inbound|8080", mark_unprocessed=True)
    m = machine(Listener(app, Clock()))
    assert (
        Playbook(m)
        >> begin()
        << Like(Connect, attempt=1)
        >> connect_failed(1)
        << CloseUp(reuse=False)
        << Like(WriteDown, data=contains(b"HTTP/1.1 503", b"x-lightmesh-unprocessed: 1"))
        << Like(Finish, completed=completed(status=503, flags="UF"))
    )
    assert not m.sent_upstream


def test_a_stale_pooled_connection_is_replaced_once_for_an_idempotent_request() -> None:
    m = machine(mesh())
    assert (
        Playbook(m)
        >> begin()
        << Like(Connect, attempt=1, fresh=False)
        >> connected(1, reused=True)
        << Like(WriteUp)
        >> upstream_lost()  # closed under us before any response byte
        << CloseUp(reuse=False)
        << Like(Connect, attempt=2, fresh=True, target=lambda t: t.port == 1)  # same endpoint
        >> connected(2)
        << Like(WriteUp, data=starts(b"GET / "))
        >> upstream(OK)
        << WriteDown(OK)
        << Like(CloseUp, reuse=True)
        << Like(Finish, completed=completed(status=200, attempts=1))  # not a retry
    )


def test_a_stale_pooled_connection_is_not_replayed_for_a_post() -> None:
    m = machine(mesh(), POST + b"abc")
    assert (
        Playbook(m)
        >> begin()
        << Like(Connect, attempt=1)
        >> body(b"abc")
        >> end()
        >> connected(1, reused=True)
        << Like(WriteUp)
        >> upstream_lost()
        << CloseUp(reuse=False)
        << Like(WriteDown, data=starts(b"HTTP/1.1 503"))
        << Like(Finish, completed=completed(status=503, flags="UC", attempts=1))
    )


def test_a_retriable_status_is_retried_and_the_retried_attempt_accounted() -> None:
    policy = pb.RetryPolicy(attempts=1, retry_on=["5xx"])
    m = machine(mesh(route(retries=policy)))
    assert (
        forwarded(m)
        >> upstream(b"HTTP/1.1 500 Oops\r\ncontent-length: 0\r\n\r\n")
        << CloseUp(reuse=False)
        << Like(Wake, timer=Timer.BACKOFF)
        >> fired(Timer.BACKOFF)
        << Like(Connect, attempt=2)
        >> connected(2)
        << Like(WriteUp)
        >> upstream(b"HTTP/1.1 500 Oops\r\ncontent-length: 0\r\n\r\n")  # out of retries: relayed
        << Like(WriteDown, data=starts(b"HTTP/1.1 500"))
        << Like(CloseUp, reuse=True)
        << Like(Finish, completed=completed(status=500, flags="URX", attempts=2))
    )
    assert m.policies is not None and m.policies.tried == ["127.0.0.1:1"]


def test_the_route_timeout_answers_504_and_stops_at_the_response_head() -> None:
    m = machine(mesh(route(timeout_ms=1500)))
    assert (
        Playbook(m)
        >> begin()
        << Wake(Timer.ROUTE, 1.5)
        << Like(Connect, attempt=1)
        >> connected(1)
        << Like(WriteUp)
        >> fired(Timer.ROUTE)
        << CloseUp(reuse=False)
        << Like(WriteDown, data=contains(b"HTTP/1.1 504", b"UT"))
        << Like(Finish, completed=completed(status=504, flags="UT"))
        >> fired(Timer.ROUTE)  # a late timer: ignored
    )


def test_a_per_try_timeout_is_retried_and_the_head_cancels_the_timers() -> None:
    policy = pb.RetryPolicy(attempts=1, per_try_timeout_ms=200, retry_on=["5xx"])
    m = machine(mesh(route(retries=policy, timeout_ms=1000)))
    assert (
        Playbook(m)
        >> begin()
        << Wake(Timer.ROUTE, 1.0)
        << Wake(Timer.TRY, 0.2)
        << Like(Connect, attempt=1)
        >> fired(Timer.TRY)  # it has fired: nothing to cancel
        << CloseUp(reuse=False)
        << Like(Wake, timer=Timer.BACKOFF)
        >> fired(Timer.BACKOFF)
        << Wake(Timer.TRY, 0.2)
        << Like(Connect, attempt=2)
        >> connect_failed(1)  # stale: the first attempt is gone
        >> connected(2)
        << Like(WriteUp)
        >> upstream(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        << Wake(Timer.ROUTE, None)
        << Wake(Timer.TRY, None)
        << Like(WriteDown, data=starts(b"HTTP/1.1 200 OK"))
        >> upstream(b"2\r\nok\r\n0\r\n\r\n")
        << WriteDown(b"2\r\nok\r\n0\r\n\r\n")
        << Like(CloseUp, reuse=True)
        << Like(Finish, completed=completed(status=200, attempts=2, response_bytes=2))
    )


def test_a_fault_delay_holds_the_request_and_says_di() -> None:
    fault = pb.Fault(delay_ms=50, delay_percent=100)
    m = machine(mesh(route(fault=fault)))
    assert (
        Playbook(m)
        >> begin()
        << Wake(Timer.DELAY, 0.05)
        >> fired(Timer.DELAY)
        << Like(Connect, attempt=1)
        >> connected(1)
        << Like(WriteUp)
        >> upstream(OK)
        << WriteDown(OK)
        << Like(CloseUp, reuse=True)
        << Like(Finish, completed=completed(status=200, flags="DI"))
    )


def test_a_mirror_copy_goes_once_the_request_is_complete() -> None:
    listener = mesh(route(mirror=pb.Mirror(cluster=CLUSTER, percent=100)))
    m = machine(listener, POST)
    assert (
        Playbook(m)
        >> begin()
        << Like(Connect, attempt=1)
        >> body(b"abc")
        >> end()
        << Like(Mirror, body=b"abc")
        >> connected(1)
        << Like(WriteUp, data=lambda d: d.endswith(b"abc"))
    )


def test_a_101_to_an_upgrade_request_becomes_a_tunnel() -> None:
    raw = b"GET /ws HTTP/1.1\r\nhost: catalog\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n"
    m = machine(mesh(), raw)
    switch = (
        b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\nhi"
    )
    assert (
        Playbook(m)
        >> begin()
        << Like(Connect, attempt=1)
        >> connected(1)
        << Like(WriteUp, data=contains(b"upgrade: websocket"))
        >> upstream(switch)
        << Like(Tunnel, tail=2, data=lambda d: d.startswith(b"HTTP/1.1 101") and d.endswith(b"hi"))
        >> upstream(b"more")  # the tunnel's bytes are the driver's now
        >> tunnel_ended(5, 12)
        << Like(Finish, hand_back=False, completed=completed(status=101, request_bytes=5, response_bytes=12))
    )  # fmt: skip


def test_an_unasked_101_is_a_protocol_error() -> None:
    m = machine(mesh())
    assert (
        forwarded(m)
        >> upstream(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: x\r\n\r\n")
        << CloseUp(reuse=False)
        << Like(WriteDown, data=starts(b"HTTP/1.1 502"))
        << Like(Finish, completed=completed(status=502, flags="UPE"))
    )


def test_the_client_lost_mid_response_closes_the_upstream() -> None:
    m = machine(mesh())
    assert (
        forwarded(m)
        >> upstream(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc")
        << Like(WriteDown, data=lambda d: d.endswith(b"abc"))
        >> client_lost()
        << CloseUp(reuse=False)
        << Like(Finish, keep_alive=False, completed=completed(status=200, flags="DC"))
    )


def test_the_upstream_breaking_mid_response_resets_the_client() -> None:
    m = machine(mesh())
    assert (
        forwarded(m)
        >> upstream(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc")
        << Like(WriteDown)
        >> upstream_eof()
        << CloseUp(reuse=False)
        << Like(Finish, keep_alive=False, abort=True, completed=completed(flags="UC"))
    )


def test_a_request_body_that_breaks_is_refused_never_forwarded() -> None:
    m = machine(mesh(), b"POST / HTTP/1.1\r\nhost: catalog\r\ntransfer-encoding: chunked\r\n\r\n")
    assert (
        Playbook(m)
        >> begin()
        << Like(Connect)
        >> body(b"ab")
        >> request_failed()
        << CloseUp(reuse=False)
        << Like(WriteDown, data=contains(b"HTTP/1.1 400", b"connection: close"))
        << Like(Finish, keep_alive=False)
    )


def test_body_beyond_the_replay_limit_pauses_the_client_until_a_connection() -> None:
    m = machine(mesh(), b"PUT / HTTP/1.1\r\nhost: catalog\r\ncontent-length: 70000\r\n\r\n")
    piece = b"x" * 35000
    assert (
        Playbook(m)
        >> begin()
        << Like(Connect)
        >> body(piece)
        >> body(piece)
        << ReadDown(on=False)
        >> connected(1)
        << RESUME_DOWN
        << Like(WriteUp, data=lambda d: d.endswith(piece + piece))
    )
    assert not m.whole  # too large to replay: single-attempt


def test_a_chunked_request_body_is_re_chunked_upstream() -> None:
    m = machine(mesh(), b"POST / HTTP/1.1\r\nhost: catalog\r\ntransfer-encoding: chunked\r\n\r\n")
    assert (
        Playbook(m)
        >> begin()
        << Like(Connect)
        >> connected(1)
        << Like(WriteUp, data=contains(b"transfer-encoding: chunked"))
        >> body(b"abc")
        << WriteUp(b"3\r\nabc\r\n")
        >> end()
        << WriteUp(b"0\r\n\r\n")
        >> upstream(b"HTTP/1.1 204 No Content\r\n\r\n")
        << Like(WriteDown, data=lacks(b"content-length"))
        << Like(CloseUp, reuse=True)
        << Like(Finish, completed=completed(status=204))
    )


def test_every_phase_is_in_the_table_and_done_is_final() -> None:
    assert set(TRANSITIONS) == set(PHASES)
    assert TRANSITIONS[DONE] == frozenset()
    reachable = {RESOLVE}
    frontier = [RESOLVE]
    while frontier:
        for nxt in TRANSITIONS[frontier.pop()]:
            if nxt not in reachable:
                reachable.add(nxt)
                frontier.append(nxt)
    assert reachable == set(PHASES)


def test_a_transition_outside_the_table_is_a_bug() -> None:
    m = machine(mesh())
    with pytest.raises(AssertionError, match="RESOLVE -> RELAY"):
        m._go(RELAY)
