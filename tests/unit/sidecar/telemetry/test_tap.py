"""The live tap: filters, the bounded per-client queue, and nothing recorded while nobody taps."""

import asyncio

import pytest

from sidecar.contract import Completed, RequestHead
from sidecar.telemetry.tap import Tap, TapFilter, event_of, parse_filter


def done(*, status: int = 200, method: str = "GET", path: str = "/items/1?x=2") -> Completed:
    head = RequestHead(
        method=method, path=path, host="catalog", http_version="1.1",
        headers=[(b"x-request-id", b"rid-1")], peer_identity="spiffe://cluster.local/ns/default/sa/frontend",
    )  # fmt: skip
    return Completed(
        method=method, host="catalog", cluster="outbound|v1|catalog.default.svc.cluster.local",
        status=status, flags="UH" if status == 503 else "", duration=0.0025, request_bytes=0,
        response_bytes=10, upstream="127.0.0.2:8080", head=head, start_time=1700000000.0,
        upstream_tls=True,
    )  # fmt: skip


def test_filters_match_path_prefix_method_status_class_and_listener():
    assert TapFilter(path_prefix="/items").matches(done(), "outbound")
    assert not TapFilter(path_prefix="/admin").matches(done(), "outbound")
    assert TapFilter(method="POST").matches(done(method="POST"), "inbound")
    assert not TapFilter(method="POST").matches(done(), "inbound")
    assert TapFilter(status="5xx").matches(done(status=503), "outbound")
    assert not TapFilter(status="5xx").matches(done(status=404), "outbound")
    assert TapFilter(status="404").matches(done(status=404), "outbound")
    assert not TapFilter(listener="inbound").matches(done(), "outbound")


def test_the_query_is_checked_and_names_the_bad_parameter():
    flt, limit, seconds = parse_filter("path=/items&status=5xx&method=get&max=5&seconds=2")
    assert flt == TapFilter(path_prefix="/items", status="5xx", method="GET")
    assert (limit, seconds) == (5, 2.0)
    for query, name in (
        ("status=5x", "status"),
        ("listener=side", "listener"),
        ("path=items", "path"),
        ("max=0", "max"),
        ("seconds=99", "seconds"),
    ):
        with pytest.raises(ValueError, match=name):
            parse_filter(query)


def test_an_event_has_no_query_string_and_says_who_the_peer_was():
    event = event_of(done(), "outbound")
    assert event["path"] == "/items/1"
    assert event["status"] == 200 and event["duration_ms"] == 2.5
    assert event["mtls"] is True and event["request_id"] == "rid-1"


def test_nothing_is_kept_while_nobody_taps():
    tap = Tap()
    record = tap.recorder("outbound")
    record(done())
    assert tap.clients == 0


async def test_a_client_gets_matching_requests_and_the_overflow_is_counted():
    tap = Tap(queue_size=3)
    record = tap.recorder("outbound")

    async def traffic() -> None:
        await asyncio.sleep(0)  # collect() attaches before its first wait
        assert tap.clients == 1
        for status in (200, 503, 503, 503, 503, 503):
            record(done(status=status))

    task = asyncio.ensure_future(traffic())
    body = await tap.collect(TapFilter(status="5xx"), limit=10, seconds=0.2)
    await task
    assert [e["status"] for e in body["events"]] == [503, 503, 503]
    assert body["dropped"] == 2
    assert tap.clients == 0  # detached when done


def test_too_many_clients_are_refused():
    tap = Tap(max_clients=1)
    with tap.attach(TapFilter()):
        refused = tap.attach(TapFilter())
        with pytest.raises(RuntimeError, match="tap clients"):
            refused.__enter__()
