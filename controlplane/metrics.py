"""Control-plane Prometheus metrics, on a registry owned by the app (no process globals)."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


@dataclass(frozen=True, slots=True)
class ControlPlaneMetrics:
    """The metric objects the control plane records into."""

    registry: CollectorRegistry
    connected: Gauge
    pushes: Counter
    acks: Counter
    nacks: Counter
    convergence: Histogram
    problems: Gauge

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
                "Time from a change being observed to its ACK by a sidecar.",
                ["type"],
                buckets=(0.01, 0.025, 0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1, 2, 5, 10, 30),
                registry=registry,
            ),
            problems=Gauge(
                "lightmesh_controlplane_resource_problems",
                "Current validation problems of resources.",
                registry=registry,
            ),
        )
