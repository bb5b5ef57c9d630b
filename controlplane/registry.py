"""Local-mode service registry: sidecars register the services they serve when they connect.

Endpoints appear when a sidecar's stream opens and disappear when it closes. Entries are persisted
(by the app) so that a restarted control plane still knows every endpoint while the sidecars
reconnect; restored entries not confirmed by a reconnect within `grace` seconds expire. Pure.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from controlplane.model import Service, ServiceEndpoint, resolve_host


@dataclass(frozen=True, slots=True, kw_only=True)
class Registration:
    """One service instance announced by one sidecar."""

    node_id: str
    workload: str
    namespace: str
    service: str
    address: str
    port: int
    labels: tuple[tuple[str, str], ...] = ()
    service_account: str = "default"


@dataclass(slots=True)
class _Entry:
    registrations: tuple[Registration, ...]
    expires_at: float | None  # None while the sidecar is connected


class LocalRegistry:
    """Registrations by node id."""

    def __init__(self, *, grace: float = 15.0) -> None:
        self._entries: dict[str, _Entry] = {}
        self._grace = grace

    def connect(self, node_id: str, registrations: tuple[Registration, ...]) -> bool:
        """Record a connected sidecar's registrations; return whether anything changed."""
        previous = self._entries.get(node_id)
        self._entries[node_id] = _Entry(registrations, None)
        return previous is None or previous.registrations != registrations

    def disconnect(self, node_id: str) -> bool:
        """Forget a sidecar whose stream closed; return whether it had registrations."""
        entry = self._entries.pop(node_id, None)
        return entry is not None and bool(entry.registrations)

    def restore(self, saved: list[dict[str, Any]], *, now: float) -> None:
        """Load persisted registrations as unconfirmed; they expire unless their sidecar returns."""
        for item in saved:
            reg = Registration(
                node_id=item["node_id"],
                workload=item["workload"],
                namespace=item["namespace"],
                service=item["service"],
                address=item["address"],
                port=int(item["port"]),
                labels=tuple(sorted(item.get("labels", {}).items())),
                service_account=item.get("service_account", "default"),
            )
            entry = self._entries.setdefault(reg.node_id, _Entry((), now + self._grace))
            if entry.expires_at is not None:
                entry.registrations += (reg,)

    def expire(self, *, now: float) -> bool:
        """Drop unconfirmed entries past their deadline; return whether any were dropped."""
        gone = [
            node
            for node, e in self._entries.items()
            if e.expires_at is not None and e.expires_at <= now
        ]
        for node in gone:
            del self._entries[node]
        return bool(gone)

    def dump(self) -> list[dict[str, Any]]:
        """Registrations in a JSON-ready shape, for persistence."""
        return [
            {
                "node_id": r.node_id,
                "workload": r.workload,
                "namespace": r.namespace,
                "service": r.service,
                "address": r.address,
                "port": r.port,
                "labels": dict(r.labels),
                "service_account": r.service_account,
            }
            for node in sorted(self._entries)
            for r in self._entries[node].registrations
        ]

    def services(self) -> dict[str, Service]:
        """Services by FQDN with every registered endpoint."""
        endpoints: dict[tuple[str, str], list[ServiceEndpoint]] = {}
        for node in sorted(self._entries):
            for reg in self._entries[node].registrations:
                endpoints.setdefault((reg.service, reg.namespace), []).append(
                    ServiceEndpoint(
                        address=reg.address,
                        port=reg.port,
                        workload=reg.workload,
                        labels=reg.labels,
                        service_account=reg.service_account,
                    )
                )
        services = {}
        for (name, namespace), eps in sorted(endpoints.items()):
            service = Service(name=name, namespace=namespace, endpoints=tuple(eps))
            services[resolve_host(name, namespace)] = service
        return services
