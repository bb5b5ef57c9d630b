"""Where telemetry meets the proxy: wrappers around a listener's resolver and recorder.

The resolver wrapper runs before the engine serialises the upstream request and may rewrite its
headers: it continues the trace (trace headers) and, outbound, announces this workload to the next
sidecar (PEER_HEADER). The recorder wrapper fans a completed exchange out to metrics, the span queue
and the access log. Each part is optional; with all of them off the wrappers are not installed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sidecar.contract import PEER_HEADER, Completed, Decision, RequestHead, Resolver
from sidecar.telemetry.metrics import RequestMetrics, split_cluster
from sidecar.telemetry.propagation import B3_SAMPLED, Tracer
from sidecar.telemetry.zipkin import CLIENT, SERVER, ZipkinExporter

Recorder = Callable[[Completed], None]


@dataclass(frozen=True, slots=True, kw_only=True)
class Telemetry:
    """What a listener reports to; any part may be absent."""

    metrics: RequestMetrics | None = None
    tracer: Tracer | None = None
    exporter: ZipkinExporter | None = None
    access_log: Recorder | None = None
    # The live tap's part (sidecar/telemetry/tap.py): an empty-list test while nobody taps.
    tap: Recorder | None = None
    # Outbound only: the PEER_HEADER value announcing this workload to the next sidecar.
    peer: bytes = b""


def wrap_resolver(resolve: Resolver, telemetry: Telemetry) -> Resolver:
    """`resolve`, preceded by trace propagation and (outbound) the peer announcement."""
    tracer = telemetry.tracer
    peer = telemetry.peer
    if tracer is None and not peer:
        return resolve

    def resolve_with_telemetry(head: RequestHead) -> Decision:
        headers = head.headers
        if peer:
            # Whatever the app sent under this name was already dropped (messages.py).
            headers.append((PEER_HEADER, peer))
        if tracer is not None:
            headers = tracer.continue_trace(headers)[1]
        head.headers = headers
        return resolve(head)

    return resolve_with_telemetry


def wrap_recorder(
    telemetry: Telemetry, *, outbound: bool, then: Recorder | None = None
) -> Recorder:
    """One recorder feeding `then`, metrics, spans and the access log (a no-op if nothing)."""
    parts: list[Recorder] = [r for r in (then,) if r is not None]
    if telemetry.metrics is not None:
        parts.append(telemetry.metrics.record)
    exporter = telemetry.exporter
    if exporter is not None:
        kind = CLIENT if outbound else SERVER

        def trace(done: Completed) -> None:
            head = done.head
            if head is not None and head.header(B3_SAMPLED) == b"1":
                peer_service = split_cluster(done.cluster)[0] if outbound else ""
                exporter.submit(done, kind, peer_service)

        parts.append(trace)
    if telemetry.access_log is not None:
        parts.append(telemetry.access_log)
    if telemetry.tap is not None:
        parts.append(telemetry.tap)
    if not parts:
        return _ignore
    if len(parts) == 1:
        return parts[0]
    if len(parts) == 2:
        first, second = parts

        def record_two(done: Completed) -> None:
            first(done)
            second(done)

        return record_two

    def record_all(done: Completed) -> None:
        for part in parts:
            part(done)

    return record_all


def _ignore(_: Completed) -> None:
    """The recorder of a listener with nothing to report to."""
