"""The exchange machine's HTTP/2 seams as event/action scripts: a stream on either side maps to
the same exchange (head, body, end, trailers), gRPC statuses are read and retried, and replies
of the proxy reach a gRPC caller as trailers-only statuses."""

from __future__ import annotations

from sidecar.exchange.machine import (
    END_UP,
    CloseUp,
    Connect,
    EndDown,
    ExchangeMachine,
    Finish,
    HeadDown,
    Wake,
    WriteDown,
    WriteUp,
)
from sidecar.http.http1 import END, Data, EndOfMessage, ResponseStart
from sidecar.http.http2 import request_start, response_start
from tests.support.playbook import (
    Like,
    Playbook,
    begin,
    body,
    completed,
    connected,
    end,
    h2_connected,
    h2_refused,
    h2_response,
    upstream,
)
from tests.unit.sidecar.exchange.test_machine import Listener, machine, mesh, route

GRPC_CALL = [
    (b":method", b"POST"),
    (b":scheme", b"http"),
    (b":authority", b"catalog"),
    (b":path", b"/shop.Catalog/Get"),
    (b"content-type", b"application/grpc"),
    (b"te", b"trailers"),
]
GRPC_HEAD = response_start(
    [(b":status", b"200"), (b"content-type", b"application/grpc")], end_stream=False, method="POST"
)
OK_TRAILERS = EndOfMessage(((b"grpc-status", b"0"), (b"grpc-message", b"")))


def h2_machine(
    listener: Listener, headers: list[tuple[bytes, bytes]], *, ended: bool = False
) -> ExchangeMachine:
    return ExchangeMachine(request_start(headers, end_stream=ended), listener, complete=ended)


def unavailable() -> ResponseStart:
    return response_start(
        [(b":status", b"200"), (b"content-type", b"application/grpc"), (b"grpc-status", b"14")],
        end_stream=True,
        method="POST",
    )


def test_a_grpc_call_maps_stream_to_stream_with_trailers() -> None:
    m = h2_machine(mesh(meshed=True), GRPC_CALL)
    assert (
        Playbook(m)
        >> begin()
        << Like(Connect, attempt=1, target=lambda t: t.http2)  # a sidecar peer: HTTP/2 too
        >> body(b"\x00\x00\x00\x00\x02hi")  # held until the stream opens, never chunked
        >> h2_connected(1)
        << WriteUp(b"\x00\x00\x00\x00\x02hi")
        >> end()
        << END_UP  # the request's end only after its body
        >> h2_response(GRPC_HEAD, Data(b"\x00\x00\x00\x00\x02ok"))
        << HeadDown([(b":status", b"200"), (b"content-type", b"application/grpc")], False)
        << WriteDown(b"\x00\x00\x00\x00\x02ok")
        >> h2_response(OK_TRAILERS)
        << EndDown([(b"grpc-status", b"0"), (b"grpc-message", b"")])
        << CloseUp(reuse=True, idle_timeout=None)
        << Like(Finish, abort=False, completed=completed(status=200, grpc_status="0", attempts=1))
    )  # fmt: skip


def test_a_request_complete_before_its_stream_opens_ends_with_it() -> None:
    m = h2_machine(mesh(meshed=True), [*GRPC_CALL[:4]], ended=True)
    assert (
        Playbook(m)
        >> begin()
        << Like(Connect, attempt=1)
        >> h2_connected(1)
        << END_UP
    )  # fmt: skip


def test_an_http1_caller_is_not_given_http2_unless_the_cluster_says_so() -> None:
    m = machine(mesh(meshed=True))
    assert Playbook(m) >> begin() << Like(Connect, target=lambda t: not t.http2)
    m = machine(mesh(meshed=True, http2=True))
    assert (
        Playbook(m)
        >> begin()
        << Like(Connect, target=lambda t: t.http2)
        >> h2_connected(1)
        << END_UP
        >> h2_response(
            response_start([(b":status", b"200")], end_stream=False, method="GET"),
            Data(b"ok"),
            EndOfMessage(((b"x-checksum", b"1"),)),
        )
        # HTTP/2 trailers reach an HTTP/1.1 client in the chunked body's trailer section.
        << WriteDown(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
                     b"2\r\nok\r\n0\r\nx-checksum: 1\r\n\r\n")
        << CloseUp(reuse=True, idle_timeout=None)
        << Like(Finish)
    )  # fmt: skip


def test_an_http1_upstream_answers_an_http2_caller_without_connection_fields() -> None:
    m = h2_machine(mesh(), [*GRPC_CALL[:4]], ended=True)
    assert (
        Playbook(m)
        >> begin()
        << Like(Connect, target=lambda t: not t.http2)  # not a sidecar: HTTP/1.1
        >> connected(1)
        << Like(WriteUp, data=lambda d: d.startswith(b"POST /shop.Catalog/Get HTTP/1.1\r\n")
                and b"\r\nhost: catalog\r\n" in d and b"te:" not in d)
        >> upstream(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nconnection: keep-alive\r\n"
                    b"\r\n2\r\nok\r\n0\r\n\r\n")
        << HeadDown([(b":status", b"200")], False)
        << WriteDown(b"ok")
        << EndDown([])
        << CloseUp(reuse=True, idle_timeout=None)
        << Like(Finish)
    )  # fmt: skip


def test_unavailable_in_a_trailers_only_response_is_retried_elsewhere() -> None:
    m = h2_machine(mesh(route(retries={"attempts": 2, "retry_on": ["unavailable"]}), meshed=True),
                   GRPC_CALL)  # fmt: skip
    assert (
        Playbook(m)
        >> begin()
        << Like(Connect, attempt=1, target=lambda t: t.port == 1)
        >> h2_connected(1)
        >> body(b"\x00\x00\x00\x00\x00")
        << WriteUp(b"\x00\x00\x00\x00\x00")
        >> end()
        << END_UP
        >> h2_response(unavailable(), END)  # a POST, retried: the server named the status
        << CloseUp(reuse=False)
        << Like(Wake)
    )  # fmt: skip
    assert m.target is not None and m.target.port == 2


def test_a_refused_stream_is_retried_by_default() -> None:
    m = h2_machine(mesh(meshed=True), GRPC_CALL[:4], ended=True)
    assert (
        Playbook(m)
        >> begin()
        << Like(Connect, attempt=1)
        >> h2_connected(1)
        << END_UP
        >> h2_refused()
        << CloseUp(reuse=False)
        << Like(Wake)
    )  # fmt: skip


def test_a_trailers_only_status_without_retry_is_one_frame_to_the_caller() -> None:
    m = h2_machine(mesh(meshed=True), GRPC_CALL[:5], ended=True)
    assert (
        Playbook(m)
        >> begin()
        << Like(Connect)
        >> h2_connected(1)
        << END_UP
        >> h2_response(unavailable(), END)
        << HeadDown([(b":status", b"200"), (b"content-type", b"application/grpc"),
                     (b"grpc-status", b"14")], True)
        << CloseUp(reuse=True, idle_timeout=None)
        << Like(Finish, completed=completed(grpc_status="14"))
    )  # fmt: skip


def test_a_grpc_caller_gets_the_proxys_replies_as_trailers_only_statuses() -> None:
    call = [(b":authority", b"nowhere") if n == b":authority" else (n, v) for n, v in GRPC_CALL]
    m = h2_machine(mesh(), call)  # the body is still coming: answered at once all the same
    assert (
        Playbook(m)
        >> begin()
        << Like(HeadDown, end=True, headers=lambda h: h[:3] == [
            (b":status", b"200"), (b"content-type", b"application/grpc"), (b"grpc-status", b"12")])
        << Like(Finish, completed=completed(status=404, flags="NR", grpc_status="12"))
    )  # fmt: skip


def test_a_plain_http2_caller_gets_a_text_reply() -> None:
    m = h2_machine(
        mesh(), [(b":method", b"GET"), (b":path", b"/"), (b":authority", b"x")], ended=True
    )
    assert (
        Playbook(m)
        >> begin()
        << Like(HeadDown, end=False, headers=lambda h: h[0] == (b":status", b"404"))
        << Like(WriteDown, data=lambda d: d.startswith(b"no route"))
        << EndDown([])
        << Like(Finish)
    )  # fmt: skip


CHUNKED_WITH_TRAILERS = (
    b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntrailer: x-sum\r\n\r\n"
    b"2\r\nok\r\n0\r\nx-sum: 7\r\nx-lightmesh-peer: forged\r\n\r\n"
)


def test_http1_chunked_trailers_reach_an_http2_client() -> None:
    m = h2_machine(mesh(), [*GRPC_CALL[:4]], ended=True)
    assert (
        Playbook(m)
        >> begin()
        << Like(Connect)
        >> connected(1)
        << Like(WriteUp)
        >> upstream(CHUNKED_WITH_TRAILERS)
        << HeadDown([(b":status", b"200")], False)
        << WriteDown(b"ok")
        << EndDown([(b"x-sum", b"7")])  # the mesh's names never pass in trailers
        << CloseUp(reuse=True, idle_timeout=None)
        << Like(Finish)
    )  # fmt: skip


def test_http1_chunked_trailers_are_relayed_to_an_http1_client() -> None:
    m = machine(mesh())
    assert (
        Playbook(m)
        >> begin()
        << Like(Connect)
        >> connected(1)
        << Like(WriteUp)
        >> upstream(CHUNKED_WITH_TRAILERS)
        << WriteDown(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
                     b"2\r\nok\r\n0\r\nx-sum: 7\r\n\r\n")
        << CloseUp(reuse=True, idle_timeout=None)
        << Like(Finish)
    )  # fmt: skip


def test_a_fault_abort_with_a_grpc_status_answers_grpc_callers_with_it() -> None:
    fault = route(fault={"abort_grpc_status": "RESOURCE_EXHAUSTED", "abort_percent": 100})
    m = h2_machine(mesh(fault), GRPC_CALL[:5], ended=True)
    assert (
        Playbook(m)
        >> begin()
        << Like(HeadDown, end=True, headers=lambda h: (b"grpc-status", b"8") in h)
        << Like(Finish, completed=completed(status=429, flags="FI", grpc_status="8"))
    )  # fmt: skip
    # Anyone else gets the status's HTTP equivalent.
    m = machine(mesh(fault))
    assert (
        Playbook(m)
        >> begin()
        << Like(WriteDown, data=lambda d: d.startswith(b"HTTP/1.1 429 "))
        << Like(Finish)
    )  # fmt: skip
