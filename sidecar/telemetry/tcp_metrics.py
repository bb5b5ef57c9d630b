"""TCP connection metrics: connections opened/closed and bytes each way, per destination service.

Recorded once per connection, when it closes (a dict lookup and four adds; nothing per byte),
from the `Completed` the TCP listener reports; rendered at scrape time. The opened counter is
therefore also counted at close: a connection still open shows in neither. Labels come from
config (the cluster) and the fixed set of flags, so cardinality is bounded; connections passed
through to destinations outside the mesh all share `destination_service="PassthroughCluster"`.
"""

from __future__ import annotations

from collections.abc import Iterator

from sidecar.contract import Completed
from sidecar.telemetry.exposition import Collector, CounterMetricFamily, Metric
from sidecar.telemetry.metrics import split_cluster

TCP_LABELS = (
    "reporter",
    "source_workload",
    "source_namespace",
    "destination_service",
    "response_flags",
)


class TcpMetrics:
    """Aggregates of one listener's TCP connections, keyed by (cluster, flags)."""

    def __init__(self, *, reporter: str, workload: str, namespace: str) -> None:
        self._fixed = (reporter, workload, namespace)
        # (cluster, flags) -> [connections, bytes sent upstream, bytes received from upstream]
        self.series: dict[tuple[str, str], list[int]] = {}

    def record(self, done: Completed) -> None:
        """One connection ended."""
        series = self.series.get((done.cluster, done.flags))
        if series is None:
            series = self.series[(done.cluster, done.flags)] = [0, 0, 0]
        series[0] += 1
        series[1] += done.request_bytes
        series[2] += done.response_bytes

    def labels(self, cluster: str, flags: str) -> list[str]:
        """Label values in TCP_LABELS order."""
        service = split_cluster(cluster)[0] or cluster
        return [*self._fixed, service, flags or "-"]


class TcpCollector(Collector):
    """Renders `TcpMetrics` at scrape time."""

    def __init__(self, *metrics: TcpMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        """Metric families for the Prometheus registry."""
        opened = CounterMetricFamily(
            "lightmesh_tcp_connections_opened",
            "TCP connections spliced (counted when they close).",
            labels=TCP_LABELS,
        )
        closed = CounterMetricFamily(
            "lightmesh_tcp_connections_closed", "TCP connections closed.", labels=TCP_LABELS
        )
        sent = CounterMetricFamily(
            "lightmesh_tcp_sent_bytes",
            "Bytes sent to the destination (from the app).",
            labels=TCP_LABELS,
        )
        received = CounterMetricFamily(
            "lightmesh_tcp_received_bytes",
            "Bytes received from the destination (to the app).",
            labels=TCP_LABELS,
        )
        for metrics in self._metrics:
            for (cluster, flags), (count, up, down) in list(metrics.series.items()):
                values = metrics.labels(cluster, flags)
                opened.add_metric(values, count)
                closed.add_metric(values, count)
                sent.add_metric(values, up)
                received.add_metric(values, down)
        yield from (opened, closed, sent, received)
