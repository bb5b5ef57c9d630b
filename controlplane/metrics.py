"""Control-plane Prometheus metrics, on a registry owned by the app (no process globals)."""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from controlplane.store import Store

# What the sidecar injector puts on every pod it injects, so the Prometheus config in
# deploy/prometheus/ scrapes the sidecar's metrics port with zero setup.
SIDECAR_SCRAPE_ANNOTATIONS = {
    "prometheus.io/scrape": "true",
    "prometheus.io/port": "15020",
    "prometheus.io/path": "/metrics",
}


# 5 ms to 60 s: a change reaches one sidecar in milliseconds and a herd of thousands in seconds.
_CONVERGENCE_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 7.5, 10, 15, 20, 30, 45, 60,
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class ControlPlaneMetrics:
    """The metric objects the control plane records into."""

    registry: CollectorRegistry
    connected: Gauge
    pushes: Counter
    acks: Counter
    nacks: Counter
    convergence: Histogram
    translate_seconds: Histogram
    queue_seconds: Histogram
    send_seconds: Histogram
    sent_bytes: Counter
    problems: Gauge
    certificates: Counter
    injections: Counter
    jwks_fetches: Counter

    @classmethod
    def create(cls) -> ControlPlaneMetrics:
        """Register every metric on a fresh registry."""
        registry = CollectorRegistry()
        return cls(
            registry=registry,
            connected=Gauge(
                "lightmesh_controlplane_connected_proxies",
                "Sidecars with an open config stream.",
                registry=registry,
            ),
            pushes=Counter(
                "lightmesh_controlplane_pushes",
                "Config responses sent, by resource type.",
                ["type"],
                registry=registry,
            ),
            acks=Counter(
                "lightmesh_controlplane_acks",
                "Config responses ACKed, by resource type.",
                ["type"],
                registry=registry,
            ),
            nacks=Counter(
                "lightmesh_controlplane_nacks",
                "Config responses NACKed, by resource type.",
                ["type"],
                registry=registry,
            ),
            convergence=Histogram(
                "lightmesh_controlplane_convergence_seconds",
                "Time from the source event of a change (file written, Kubernetes event, sidecar "
                "registration) to its ACK by a sidecar, per sidecar and type (Istio's "
                "pilot_proxy_convergence_time).",
                ["type"],
                buckets=_CONVERGENCE_BUCKETS,
                registry=registry,
            ),
            translate_seconds=Histogram(
                "lightmesh_controlplane_translate_seconds",
                "Time to bring the shared views up to date with one debounced change (or to "
                "build a new view).",
                buckets=_CONVERGENCE_BUCKETS,
                registry=registry,
            ),
            queue_seconds=Histogram(
                "lightmesh_controlplane_push_queue_seconds",
                "Time a woken stream waited for a push slot.",
                buckets=_CONVERGENCE_BUCKETS,
                registry=registry,
            ),
            send_seconds=Histogram(
                "lightmesh_controlplane_push_send_seconds",
                "Time to plan and write one push round to one stream (Istio's pilot_xds_push_time).",
                buckets=_CONVERGENCE_BUCKETS,
                registry=registry,
            ),
            sent_bytes=Counter(
                "lightmesh_controlplane_sent_bytes",
                "Bytes of config responses sent, by resource type.",
                ["type"],
                registry=registry,
            ),
            problems=Gauge(
                "lightmesh_controlplane_resource_problems",
                "Current validation problems of resources.",
                registry=registry,
            ),
            certificates=Counter(
                "lightmesh_controlplane_certificates_signed",
                "Workload certificates signed by the CA.",
                registry=registry,
            ),
            injections=Counter(
                "lightmesh_controlplane_injections",
                "Pods the admission webhook injected a sidecar into, by outcome.",
                ["outcome"],
                registry=registry,
            ),
            jwks_fetches=Counter(
                "lightmesh_controlplane_jwks_fetches",
                "Fetches of RequestAuthentication jwksUris, by outcome (success, failure: the "
                "last good keys keep serving).",
                ["outcome"],
                registry=registry,
            ),
        )

    def observe_store(
        self,
        store: Store,
        *,
        watch_restarts: Callable[[], Mapping[tuple[str, str], int]] | None = None,
    ) -> None:
        """Also expose, read at scrape time, resources by kind and validity and watch restarts."""
        self.registry.register(_StoreCollector(store, watch_restarts))


class _StoreCollector(Collector):
    """Resources by kind and validity, and Kubernetes watch restarts, read when scraped."""

    def __init__(
        self,
        store: Store,
        watch_restarts: Callable[[], Mapping[tuple[str, str], int]] | None,
    ) -> None:
        self._store = store
        self._watch_restarts = watch_restarts

    def collect(self) -> Iterator[Metric]:
        """Metric families for the Prometheus registry."""
        world = self._store.world
        resources = GaugeMetricFamily(
            "lightmesh_controlplane_resources",
            "Routing resources known, by kind and validity (invalid ones are not served).",
            labels=["kind", "valid"],
        )
        resources.add_metric(["VirtualService", "true"], len(world.virtual_services))
        resources.add_metric(["DestinationRule", "true"], len(world.destination_rules))
        invalid: Tally[str] = Tally()
        # Warnings (a subset not defined yet, a deprecated field) do not make a resource invalid.
        for name in {p.resource for p in self._store.problems() if p.severity == "error"}:
            invalid[name.partition(" ")[0] or "unknown"] += 1
        for kind in sorted({"VirtualService", "DestinationRule", *invalid}):
            resources.add_metric([kind, "false"], invalid[kind])
        services = GaugeMetricFamily(
            "lightmesh_controlplane_services", "Services known (with their endpoints)."
        )
        services.add_metric([], len(world.services))
        yield from (resources, services)
        if self._watch_restarts is not None:
            restarts = CounterMetricFamily(
                "lightmesh_controlplane_watch_restarts",
                "Kubernetes list/watch restarts, by kind and reason (expired: 410 Gone; missing: "
                "404, CRD not installed; error).",
                labels=["kind", "reason"],
            )
            for (kind, reason), count in sorted(self._watch_restarts().items()):
                restarts.add_metric([kind, reason], count)
            yield restarts
