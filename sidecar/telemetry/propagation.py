"""Trace context propagation (W3C traceparent/tracestate, B3 multi- and single-header): pure logic.

Each sidecar hop is one span. Before a request is forwarded, `Tracer.continue_trace` reads the
incoming context (W3C first, then B3 single, then B3 multi), makes this hop's span a child of it
(or starts a trace, sampled at the configured rate; an incoming sampled flag is honoured) and
rewrites the trace headers so the next hop sees this span as its parent. The injected B3 multi
headers also carry the parent id, so the recorder reads this hop's whole span context back from the
forwarded head: no per-request state is kept between resolving and recording.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

Headers = list[tuple[bytes, bytes]]

TRACEPARENT = b"traceparent"
TRACESTATE = b"tracestate"
B3 = b"b3"
B3_TRACE = b"x-b3-traceid"
B3_SPAN = b"x-b3-spanid"
B3_PARENT = b"x-b3-parentspanid"
B3_SAMPLED = b"x-b3-sampled"
B3_FLAGS = b"x-b3-flags"
# Headers this module owns on the way out (tracestate is vendor state: passed through untouched).
_REPLACED = frozenset((TRACEPARENT, B3, B3_TRACE, B3_SPAN, B3_PARENT, B3_SAMPLED, B3_FLAGS))
_HEX = frozenset("0123456789abcdef")


@dataclass(frozen=True, slots=True)
class SpanContext:
    """Identifiers of one span: 32-hex trace id, 16-hex span id and parent id ("" for a root)."""

    trace_id: str
    span_id: str
    parent_id: str = ""
    sampled: bool | None = None  # None: the upstream made no decision


def _hex(value: str, length: int) -> bool:
    return len(value) == length and set(value) <= _HEX and value.strip("0") != ""


def _trace_id(value: str) -> str | None:
    """A 32-hex trace id; 64-bit B3 ids are left-padded (what Zipkin does)."""
    value = value.lower()
    if _hex(value, 32):
        return value
    if _hex(value, 16):
        return "0" * 16 + value
    return None


def parse_traceparent(value: bytes) -> SpanContext | None:
    """`00-<trace>-<span>-<flags>`; None when malformed (per W3C: then start a new trace)."""
    try:
        parts = value.decode("ascii").strip().lower().split("-")
    except UnicodeDecodeError:
        return None
    version = parts[0]
    if len(parts) < 4 or len(version) != 2 or not set(version) <= _HEX or version == "ff":
        return None
    if parts[0] == "00" and len(parts) != 4:
        return None
    trace, span, flags = parts[1], parts[2], parts[3]
    if not (_hex(trace, 32) and _hex(span, 16) and len(flags) == 2 and set(flags) <= _HEX):
        return None
    return SpanContext(trace, span, sampled=bool(int(flags, 16) & 1))


def parse_b3_single(value: bytes) -> SpanContext | None:
    """`<trace>-<span>[-<sampled>[-<parent>]]`, or a bare sampling decision (`0`, `1`, `d`)."""
    try:
        parts = value.decode("ascii").strip().lower().split("-")
    except UnicodeDecodeError:
        return None
    if len(parts) < 2:
        return None
    trace = _trace_id(parts[0])
    if trace is None or not _hex(parts[1], 16):
        return None
    sampled = _sampled(parts[2]) if len(parts) > 2 else None
    return SpanContext(trace, parts[1], sampled=sampled)


def _sampled(flag: str) -> bool | None:
    if flag in ("1", "d", "true"):
        return True
    if flag in ("0", "false"):
        return False
    return None


def extract(headers: Headers) -> tuple[SpanContext | None, bool | None, bool]:
    """(incoming context, a bare sampling decision, whether a `b3` single header came in)."""
    traceparent = b3 = trace = span = sampled = flags = None
    for name, value in headers:
        if name == TRACEPARENT:
            traceparent = value
        elif name == B3:
            b3 = value
        elif name.startswith(b"x-b3-"):
            if name == B3_TRACE:
                trace = value
            elif name == B3_SPAN:
                span = value
            elif name == B3_SAMPLED:
                sampled = value
            elif name == B3_FLAGS:
                flags = value
    decision = None
    if flags == b"1":
        decision = True
    elif sampled is not None:
        decision = _sampled(sampled.decode("latin-1").strip().lower())
    if traceparent is not None:
        context = parse_traceparent(traceparent)
        if context is not None:
            return context, decision, b3 is not None
    if b3 is not None:
        context = parse_b3_single(b3)
        if context is not None:
            return context, decision, True
        decision = _sampled(b3.decode("latin-1").strip().lower())
    if trace is not None and span is not None:
        trace_id = _trace_id(trace.decode("latin-1").strip())
        span_id = span.decode("latin-1").strip().lower()
        if trace_id is not None and _hex(span_id, 16):
            return SpanContext(trace_id, span_id, sampled=decision), decision, b3 is not None
    return None, decision, b3 is not None


def inject(headers: Headers, context: SpanContext, *, b3_single: bool) -> Headers:
    """`headers` with this module's trace headers replaced by ones naming `context`'s span."""
    out = [(k, v) for k, v in headers if k not in _REPLACED]
    flag = "1" if context.sampled else "0"
    trace = context.trace_id.encode("ascii")
    span = context.span_id.encode("ascii")
    out.append((TRACEPARENT, b"00-%s-%s-0%s" % (trace, span, flag.encode("ascii"))))
    out.append((B3_TRACE, trace))
    out.append((B3_SPAN, span))
    if context.parent_id:
        out.append((B3_PARENT, context.parent_id.encode("ascii")))
    out.append((B3_SAMPLED, flag.encode("ascii")))
    if b3_single:
        single = b"%s-%s-%s" % (trace, span, flag.encode("ascii"))
        if context.parent_id:
            single += b"-" + context.parent_id.encode("ascii")
        out.append((B3, single))
    return out


def injected(headers: Headers) -> SpanContext | None:
    """The span context `inject` wrote into a forwarded head (read back by the recorder)."""
    trace = span = parent = sampled = None
    for name, value in headers:
        if name.startswith(b"x-b3-"):
            if name == B3_TRACE:
                trace = value
            elif name == B3_SPAN:
                span = value
            elif name == B3_PARENT:
                parent = value
            elif name == B3_SAMPLED:
                sampled = value
    if trace is None or span is None:
        return None
    return SpanContext(
        trace.decode("ascii"),
        span.decode("ascii"),
        parent.decode("ascii") if parent else "",
        sampled == b"1",
    )


class Tracer:
    """Decides and propagates this hop's span; `sample_percent` applies to new traces only."""

    def __init__(self, *, sample_percent: float, rng: random.Random | None = None) -> None:
        if not 0.0 <= sample_percent <= 100.0:
            raise ValueError(f"trace sampling must be within 0..100 percent, not {sample_percent}")
        self._rate = sample_percent / 100.0
        self._rng = rng or random.Random()

    def new_id(self) -> str:
        """A random non-zero 16-hex id."""
        return f"{self._rng.getrandbits(64) or 1:016x}"

    def continue_trace(self, headers: Headers) -> tuple[SpanContext, Headers]:
        """This hop's span context and the headers to forward (the caller's own are replaced)."""
        incoming, decision, b3_single = extract(headers)
        if incoming is not None:
            sampled = decision if decision is not None else incoming.sampled
            if sampled is None:
                sampled = self._rng.random() < self._rate
            context = SpanContext(incoming.trace_id, self.new_id(), incoming.span_id, sampled)
        else:
            sampled = decision if decision is not None else self._rng.random() < self._rate
            context = SpanContext(
                f"{self._rng.getrandbits(128) or 1:032x}", self.new_id(), "", sampled
            )
        return context, inject(headers, context, b3_single=b3_single)
