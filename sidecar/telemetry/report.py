"""The sidecar's TrafficReport: its request aggregates and cluster counters as one message, built
when the config client sends it (every --report-interval), never per request.

The counters are cumulative since the sidecar started, exactly what /metrics shows; the control
plane takes differences between reports (controlplane/traffic.py).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from lightmesh.v1 import discovery_pb2 as pb
from sidecar.cluster.cluster import Cluster
from sidecar.telemetry.metrics import (
    DURATION_BUCKETS,
    LABELS,
    OVERFLOW,
    UNKNOWN,
    RequestMetrics,
)


class TrafficReporter:
    """Builds the report of one sidecar from its live aggregates."""

    def __init__(
        self,
        *,
        metrics: Sequence[RequestMetrics],
        clusters: Callable[[], Mapping[str, Cluster]],
        app: str,
        version: str,
        services: Sequence[str],
    ) -> None:
        self._metrics = metrics
        self._clusters = clusters
        self._app = app
        self._version = version
        self._services = tuple(services)

    def build(self) -> pb.TrafficReport:
        """The report as of now."""
        report = pb.TrafficReport(
            app=self._app,
            version=self._version,
            services=self._services,
            duration_bounds=DURATION_BUCKETS,
        )
        for metrics in self._metrics:
            for values, series in metrics.samples():
                label = dict(zip(LABELS, values, strict=True))
                code = label["response_code"]
                flags = label["response_flags"]
                workload = label["destination_workload"]
                report.edges.add(
                    reporter=label["reporter"],
                    source_workload=label["source_workload"],
                    source_namespace=label["source_namespace"],
                    destination_service=label["destination_service"],
                    destination_subset=label["destination_subset"],
                    destination_workload="" if workload == UNKNOWN else workload,
                    response_code=int(code) if code.isdigit() else 0,
                    response_flags="" if flags == "-" else flags,
                    mtls=label["mtls"] == "true",
                    requests=series.count,
                    duration_buckets=series.durations,
                    duration_seconds=series.duration_sum,
                )
                if code == OVERFLOW:
                    report.truncated = True
        for cluster in list(self._clusters().values()):
            outlier = cluster.outlier
            report.clusters.add(
                service=cluster.service or cluster.name,
                subset=cluster.subset,
                overflows=cluster.overflows,
                ejections=outlier.ejections_total if outlier is not None else 0,
                ejected=len(outlier.ejected) if outlier is not None else 0,
                retries=cluster.retries,
            )
        return report
