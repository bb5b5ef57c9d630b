"""Builds the sidecar's telemetry from its settings: what each listener reports to, and the parts
with a lifetime (span exporter task, access-log file). Keeps sidecar/app.py to a few calls."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from sidecar.settings import Settings
from sidecar.telemetry.accesslog import AccessLog
from sidecar.telemetry.exposition import Registry
from sidecar.telemetry.hooks import Telemetry
from sidecar.telemetry.metrics import RequestCollector, RequestMetrics, peer_value
from sidecar.telemetry.propagation import Tracer
from sidecar.telemetry.tap import Tap
from sidecar.telemetry.zipkin import LocalEndpoint, ZipkinExporter


@dataclass(frozen=True, slots=True)
class SidecarTelemetry:
    """Per-listener telemetry and the shared parts."""

    outbound: Telemetry
    inbound: Telemetry
    exporter: ZipkinExporter | None
    access_log: AccessLog | None
    # The request aggregates of both directions (for the traffic report); empty with metrics off.
    recorded: tuple[RequestMetrics, ...] = ()
    app: str = ""
    version: str = ""
    tap: Tap | None = None

    async def run(self, stop: asyncio.Event) -> None:
        """Export spans until `stop` (returns at once without tracing)."""
        if self.exporter is not None:
            await self.exporter.run(stop)

    async def close(self) -> None:
        """After the listeners drained: export the last spans, close the access log."""
        if self.exporter is not None:
            await self.exporter.flush()
        if self.access_log is not None:
            self.access_log.close()


def build(settings: Settings, registry: Registry) -> SidecarTelemetry:
    """Telemetry as configured; request metrics are registered on `registry`."""
    labels = dict(settings.labels)
    local_service = settings.services[0] if settings.services else settings.workload
    app = labels.get("app", local_service)
    version = labels.get("version", "")

    def request_metrics(reporter: str) -> RequestMetrics | None:
        if not settings.metrics:
            return None
        return RequestMetrics(
            reporter=reporter,
            workload=settings.workload,
            namespace=settings.namespace,
            app=app,
            version=version,
            local_service=local_service,
        )

    tracer = exporter = None
    if settings.zipkin_url:
        tracer = Tracer(sample_percent=settings.trace_sampling)
        exporter = ZipkinExporter(
            settings.zipkin_url,
            LocalEndpoint(
                service=f"{local_service}.{settings.namespace}",
                address=settings.advertise or settings.bind,
            ),
        )
    access_log = AccessLog(settings.access_log) if settings.access_log else None
    tap = Tap()
    outbound = Telemetry(
        tap=tap.recorder("outbound"),
        metrics=request_metrics("source"),
        tracer=tracer,
        exporter=exporter,
        access_log=access_log.writer("outbound") if access_log else None,
        peer=peer_value(settings.workload, settings.namespace, app, version or "unknown"),
    )
    inbound = Telemetry(
        tap=tap.recorder("inbound"),
        metrics=request_metrics("destination"),
        tracer=tracer,
        exporter=exporter,
        access_log=access_log.writer("inbound") if access_log else None,
    )
    recorded = [t.metrics for t in (outbound, inbound) if t.metrics is not None]
    registry.register(RequestCollector(*recorded, istio=settings.istio_metrics))
    return SidecarTelemetry(
        outbound, inbound, exporter, access_log, tuple(recorded), app=app, version=version, tap=tap
    )
