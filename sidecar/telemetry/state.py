"""Sidecar state read at scrape time: config versions and NACKs, active requests, span export.

Nothing here is recorded per request; every value is read from the live objects when /metrics is
scraped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from lightmesh.types import SHORT_NAMES
from sidecar.config.protocol import ClientProtocol
from sidecar.telemetry.exposition import Collector, CounterMetricFamily, GaugeMetricFamily, Metric
from sidecar.telemetry.zipkin import ZipkinExporter


class SidecarState(Collector):
    """Config-stream, listener and tracing state as metric families."""

    def __init__(
        self,
        *,
        protocol: ClientProtocol,
        connected: Callable[[], bool],
        active: dict[str, Callable[[], int]],
        exporter: ZipkinExporter | None = None,
    ) -> None:
        self._protocol = protocol
        self._connected = connected
        self._active = active
        self._exporter = exporter

    def collect(self) -> Iterator[Metric]:
        """Metric families for the Prometheus registry."""
        connected = GaugeMetricFamily(
            "lightmesh_config_connected", "1 while the config stream to the control plane is open."
        )
        connected.add_metric([], 1.0 if self._connected() else 0.0)
        info = GaugeMetricFamily(
            "lightmesh_config_version_info",
            "Config version applied, per resource type (value 1).",
            labels=["type", "version"],
        )
        applied = GaugeMetricFamily(
            "lightmesh_config_applied_timestamp_seconds",
            "When the applied version of each type was applied (Unix time).",
            labels=["type"],
        )
        rejected = GaugeMetricFamily(
            "lightmesh_config_rejected",
            "1 while the latest version offered of a type was NACKed (the previous one serves).",
            labels=["type"],
        )
        nacks = CounterMetricFamily(
            "lightmesh_config_nacks", "Config versions rejected (NACKed).", labels=["type"]
        )
        for type_url, held in self._protocol.held.items():
            name = SHORT_NAMES.get(type_url, type_url)
            info.add_metric([name, held.version], 1.0)
            applied.add_metric([name], held.applied_at)
            rejected.add_metric([name], 1.0 if held.nack_message else 0.0)
            nacks.add_metric([name], held.nacks)
        active = GaugeMetricFamily(
            "lightmesh_active_requests", "Requests in progress, per listener.", labels=["listener"]
        )
        for listener, count in self._active.items():
            active.add_metric([listener], count())
        yield from (connected, info, applied, rejected, nacks, active)
        exporter = self._exporter
        if exporter is not None:
            spans = CounterMetricFamily(
                "lightmesh_tracing_spans",
                "Spans by export outcome: exported, dropped (queue full), failed (collector error).",
                labels=["outcome"],
            )
            spans.add_metric(["exported"], exporter.exported)
            spans.add_metric(["dropped"], exporter.dropped)
            spans.add_metric(["failed"], exporter.failed)
            queued = GaugeMetricFamily("lightmesh_tracing_queued_spans", "Spans awaiting export.")
            queued.add_metric([], exporter.queued)
            yield from (spans, queued)
