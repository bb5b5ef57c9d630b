"""Cluster resilience state read at scrape time: retries, circuit-breaker overflows, outlier
ejections, the outbound listener's mirrored copies and upstream connections, and the inbound
requests admission refused (JWT, AuthorizationPolicy, local rate limit).

Nothing is recorded per request here: the counters live on the objects that already count them
(`Cluster`, `OutlierDetector`, `Mirrors`) and are read when /metrics is scraped. Labels are the
cluster's service and subset (from config), so cardinality is that of the config.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from sidecar.cluster.cluster import Cluster
from sidecar.security.admission import Admission
from sidecar.telemetry.exposition import Collector, CounterMetricFamily, GaugeMetricFamily, Metric
from sidecar.upstream.mirror import Mirrors

_LABELS = ["destination_service", "destination_subset"]


class ResilienceCollector(Collector):
    """Per-cluster retry, overflow and ejection counters, and mirror outcomes."""

    def __init__(
        self,
        *,
        clusters: Callable[[], Mapping[str, Cluster]],
        mirrors: Mirrors | None = None,
        connections_opened: Mapping[str, int] | None = None,
        wrong_identity: Mapping[str, int] | None = None,
        admission: Admission | None = None,
    ) -> None:
        self._admission = admission
        self._clusters = clusters
        self._mirrors = mirrors
        self._opened = connections_opened
        self._wrong_identity = wrong_identity

    def collect(self) -> Iterator[Metric]:
        """Metric families for the Prometheus registry."""
        retries = CounterMetricFamily(
            "lightmesh_upstream_retries",
            "Retries of outbound requests: started (outcome=retried) or refused by the cluster's "
            "retry budget (outcome=budget_exhausted).",
            labels=[*_LABELS, "outcome"],
        )
        overflows = CounterMetricFamily(
            "lightmesh_upstream_overflows",
            "Requests refused by circuit breaking (connectionPool limits; response flag UO).",
            labels=_LABELS,
        )
        ejections = CounterMetricFamily(
            "lightmesh_outlier_ejections",
            "Endpoints ejected by outlier detection.",
            labels=_LABELS,
        )
        ejected = GaugeMetricFamily(
            "lightmesh_outlier_ejections_active",
            "Endpoints ejected by outlier detection now.",
            labels=_LABELS,
        )
        clusters = self._clusters()
        for cluster in list(clusters.values()):
            labels = [cluster.service or cluster.name, cluster.subset]
            retries.add_metric([*labels, "retried"], cluster.retries)
            retries.add_metric([*labels, "budget_exhausted"], cluster.retries_refused)
            overflows.add_metric(labels, cluster.overflows)
            outlier = cluster.outlier
            if outlier is not None:
                ejections.add_metric(labels, outlier.ejections_total)
                ejected.add_metric(labels, len(outlier.ejected))
        yield from (retries, overflows, ejections, ejected)
        if self._opened is not None:
            opened = CounterMetricFamily(
                "lightmesh_upstream_connections_opened",
                "Upstream connections opened by the outbound listener, per cluster.",
                labels=_LABELS,
            )
            for name, count in list(self._opened.items()):
                known = clusters.get(name)
                labels = [known.service or name, known.subset] if known is not None else [name, ""]
                opened.add_metric(labels, count)
            yield opened
        if self._wrong_identity is not None:
            yield _by_label(
                "lightmesh_upstream_secure_naming_refused",
                "Upstream mutual-TLS connections dropped after the handshake because the server's "
                "SPIFFE ID is not one the service's endpoints run as (response flag UF).",
                "destination_service",
                self._wrong_identity,
            )
        admission = self._admission
        if admission is not None:
            yield _by_label(
                "lightmesh_inbound_refused",
                "Inbound requests the sidecar answered itself at admission: reason "
                "unauthenticated (an invalid JWT, 401), denied (AuthorizationPolicy, 403, flag "
                "RBAC), rate_limited (HTTPLocalRateLimitPolicy, 429, flag RL).",
                "reason",
                {
                    "unauthenticated": admission.unauthenticated,
                    "denied": admission.denied,
                    "rate_limited": admission.rate_limited,
                },
            )
            if admission.rate_limited_routes:
                # Labels: the routes of the policy's spec.routes (at most 64), so bounded.
                yield _by_label(
                    "lightmesh_inbound_route_rate_limited",
                    "Of the rate_limited inbound refusals, those by a route's own buckets "
                    "(HTTPLocalRateLimitPolicy spec.routes), by route name.",
                    "route",
                    admission.rate_limited_routes,
                )
        mirrors = self._mirrors
        if mirrors is not None:
            copies = CounterMetricFamily(
                "lightmesh_mirror_requests",
                "Mirrored request copies: sent, dropped (too many in flight), failed (the "
                "shadow refused, reset or timed out; its answers are never relayed).",
                labels=["outcome"],
            )
            copies.add_metric(["sent"], mirrors.sent)
            copies.add_metric(["dropped"], mirrors.dropped)
            copies.add_metric(["failed"], mirrors.failed)
            yield copies


def _by_label(name: str, documentation: str, label: str, counts: Mapping[str, int]) -> Metric:
    """A counter family with one sample per key of `counts` (copied first: the data plane may
    add keys while this runs)."""
    family = CounterMetricFamily(name, documentation, labels=[label])
    for value, count in sorted(dict(counts).items()):
        family.add_metric([value], count)
    return family
