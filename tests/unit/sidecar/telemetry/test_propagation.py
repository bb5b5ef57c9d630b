"""Trace context propagation: W3C traceparent, B3 single and multi, sampling decisions."""

import random

import pytest

from sidecar.telemetry.propagation import (
    SpanContext,
    Tracer,
    extract,
    injected,
    parse_b3_single,
    parse_traceparent,
)

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"


def header(headers: list[tuple[bytes, bytes]], name: bytes) -> list[bytes]:
    return [v for k, v in headers if k == name]


def tracer(percent: float = 100.0, seed: int = 1) -> Tracer:
    return Tracer(sample_percent=percent, rng=random.Random(seed))


def test_traceparent_parses_and_rejects_malformed() -> None:
    assert parse_traceparent(f"00-{TRACE}-{SPAN}-01".encode()) == SpanContext(
        TRACE, SPAN, sampled=True
    )
    assert parse_traceparent(f"00-{TRACE}-{SPAN}-00".encode()) == SpanContext(
        TRACE, SPAN, sampled=False
    )
    for bad in (
        f"00-{'0' * 32}-{SPAN}-01",  # all-zero trace id
        f"00-{TRACE}-{'0' * 16}-01",  # all-zero span id
        f"ff-{TRACE}-{SPAN}-01",  # forbidden version
        f"00-{TRACE}-{SPAN}-01-extra",  # version 00 has exactly four fields
        f"00-{TRACE[:-1]}-{SPAN}-01",
        "garbage",
    ):
        assert parse_traceparent(bad.encode()) is None, bad
    # A future version may append fields; the first four are still read.
    assert parse_traceparent(f"01-{TRACE}-{SPAN}-01-more".encode()) is not None


def test_b3_single_pads_64_bit_trace_ids() -> None:
    context = parse_b3_single(b"80f198ee56343ba8-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90")
    assert context == SpanContext("0" * 16 + "80f198ee56343ba8", "e457b5a2e4d86bd1", sampled=True)
    assert parse_b3_single(b"0") is None  # a bare decision carries no context


def test_extract_prefers_w3c_then_b3_single_then_multi() -> None:
    multi = [(b"x-b3-traceid", b"a" * 32), (b"x-b3-spanid", b"b" * 16)]
    single = [(b"b3", f"{'c' * 32}-{'d' * 16}-1".encode())]
    w3c = [(b"traceparent", f"00-{TRACE}-{SPAN}-01".encode())]
    assert extract(multi + single + w3c)[0] == SpanContext(TRACE, SPAN, sampled=True)
    assert extract(multi + single)[0] == SpanContext("c" * 32, "d" * 16, sampled=True)
    assert extract(multi)[0] == SpanContext("a" * 32, "b" * 16, sampled=None)
    assert extract([])[0] is None


def test_child_span_keeps_the_trace_and_points_at_the_caller() -> None:
    incoming = [(b"traceparent", f"00-{TRACE}-{SPAN}-01".encode()), (b"tracestate", b"acme=1")]
    context, headers = tracer().continue_trace(incoming)
    assert context.trace_id == TRACE and context.parent_id == SPAN and context.sampled
    assert context.span_id != SPAN and len(context.span_id) == 16
    assert header(headers, b"traceparent") == [f"00-{TRACE}-{context.span_id}-01".encode()]
    assert header(headers, b"tracestate") == [b"acme=1"]  # vendor state passes through
    assert header(headers, b"x-b3-parentspanid") == [SPAN.encode()]
    assert header(headers, b"b3") == []  # single header only when the caller used it
    assert injected(headers) == context


def test_b3_single_in_b3_single_out() -> None:
    context, headers = tracer().continue_trace([(b"b3", f"{TRACE}-{SPAN}-1".encode())])
    assert header(headers, b"b3") == [f"{TRACE}-{context.span_id}-1-{SPAN}".encode()]


def test_incoming_sampling_decision_is_honoured_whatever_the_rate() -> None:
    never = tracer(percent=0.0)
    context, _ = never.continue_trace([(b"traceparent", f"00-{TRACE}-{SPAN}-01".encode())])
    assert context.sampled is True
    always = tracer(percent=100.0)
    multi = [(b"x-b3-traceid", TRACE.encode()), (b"x-b3-spanid", SPAN.encode())]
    context, headers = always.continue_trace([*multi, (b"x-b3-sampled", b"0")])
    assert context.sampled is False
    assert header(headers, b"x-b3-sampled") == [b"0"]
    context, _ = never.continue_trace([*multi, (b"x-b3-flags", b"1")])  # debug
    assert context.sampled is True
    # A bare decision without a context: a new trace, with that decision.
    context, _ = always.continue_trace([(b"b3", b"0")])
    assert context.parent_id == "" and context.sampled is False


def test_new_traces_are_sampled_at_the_configured_rate() -> None:
    sampler = tracer(percent=25.0, seed=7)
    sampled = sum(bool(sampler.continue_trace([])[0].sampled) for _ in range(4000))
    assert 800 <= sampled <= 1200
    root, headers = tracer().continue_trace([(b"x-request-id", b"r1")])
    assert root.parent_id == "" and header(headers, b"x-b3-parentspanid") == []
    assert header(headers, b"x-request-id") == [b"r1"]


def test_own_headers_are_replaced_not_duplicated() -> None:
    stale = [
        (b"traceparent", b"junk"),
        (b"x-b3-traceid", b"junk"),
        (b"x-b3-spanid", b"junk"),
        (b"x-b3-parentspanid", b"junk"),
        (b"x-b3-sampled", b"junk"),
    ]
    _, headers = tracer().continue_trace(stale)
    for name in (b"traceparent", b"x-b3-traceid", b"x-b3-spanid", b"x-b3-sampled"):
        assert len(header(headers, name)) == 1 and header(headers, name) != [b"junk"]
    assert header(headers, b"x-b3-parentspanid") == []  # junk context: a new root


def test_sampling_percent_is_validated() -> None:
    with pytest.raises(ValueError, match=r"0\.\.100"):
        Tracer(sample_percent=150)
