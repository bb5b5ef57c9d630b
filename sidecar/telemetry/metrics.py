"""Per-request metrics recorded into plain dictionaries, rendered for Prometheus at scrape time.

Recording is a tuple build, a dict lookup and a few integer adds (no prometheus-client objects on
the hot path); a `Collector` turns the aggregates into metric families when /metrics is scraped.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from sidecar.proxy.decision import Completed

DURATION_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip

LABELS = (
    "reporter",
    "source_workload",
    "source_namespace",
    "destination_service",
    "destination_subset",
    "response_code",
    "response_flags",
)


class _Series:
    __slots__ = ("buckets", "count", "duration_sum", "request_bytes", "response_bytes")

    def __init__(self) -> None:
        self.count = 0
        self.duration_sum = 0.0
        self.buckets = [0] * (len(DURATION_BUCKETS) + 1)
        self.request_bytes = 0
        self.response_bytes = 0


def split_cluster(cluster: str) -> tuple[str, str]:
    """("catalog.default.svc.cluster.local", "v1") from "outbound|v1|catalog.default.svc.cluster.local"."""
    parts = cluster.split("|")
    if len(parts) == 3 and parts[0] == "outbound":
        return parts[2], parts[1]
    return "", ""


class RequestMetrics(Collector):
    """Aggregates of completed requests of one listener direction."""

    def __init__(
        self, *, reporter: str, workload: str, namespace: str, local_service: str = ""
    ) -> None:
        self._reporter = reporter
        self._workload = workload
        self._namespace = namespace
        self._local_service = local_service
        self._series: dict[tuple[str, ...], _Series] = {}

    def record(self, done: Completed) -> None:
        """Add one completed request."""
        if self._reporter == "source":
            service, subset = split_cluster(done.cluster)
            labels = (
                "source",
                self._workload,
                self._namespace,
                service or done.host or "unknown",
                subset,
                str(done.status),
                done.flags or "-",
            )
        else:
            labels = (
                "destination",
                "unknown",
                "unknown",
                self._local_service or "unknown",
                "",
                str(done.status),
                done.flags or "-",
            )
        series = self._series.get(labels)
        if series is None:
            series = self._series[labels] = _Series()
        series.count += 1
        series.duration_sum += done.duration
        series.buckets[bisect_left(DURATION_BUCKETS, done.duration)] += 1
        series.request_bytes += done.request_bytes
        series.response_bytes += done.response_bytes

    def total(self) -> int:
        """Requests recorded so far."""
        return sum(s.count for s in self._series.values())

    def collect(self) -> Iterator[Metric]:
        """Metric families for the Prometheus registry."""
        requests = CounterMetricFamily(
            "lightmesh_requests", "Requests completed by this sidecar.", labels=LABELS
        )
        duration = HistogramMetricFamily(
            "lightmesh_request_duration_seconds",
            "Time from request head received to response complete.",
            labels=LABELS,
        )
        req_bytes = CounterMetricFamily(
            "lightmesh_request_body_bytes", "Request body bytes.", labels=LABELS
        )
        resp_bytes = CounterMetricFamily(
            "lightmesh_response_body_bytes", "Response body bytes.", labels=LABELS
        )
        for labels, series in self._series.items():
            values = list(labels)
            requests.add_metric(values, series.count)
            cumulative = 0
            buckets = []
            for bound, count in zip(DURATION_BUCKETS, series.buckets, strict=False):
                cumulative += count
                buckets.append((repr(bound), cumulative))
            buckets.append(("+Inf", series.count))
            duration.add_metric(values, buckets, series.duration_sum)
            req_bytes.add_metric(values, series.request_bytes)
            resp_bytes.add_metric(values, series.response_bytes)
        yield from (requests, duration, req_bytes, resp_bytes)
