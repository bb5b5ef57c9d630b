"""Local-mode service registry: sidecars register the services they serve when they connect.

Endpoints appear when a sidecar's stream opens and disappear when it closes. Entries are persisted
(by `RegistrySource`) so that a restarted control plane still knows every endpoint while the
sidecars reconnect. Restored entries not confirmed by a reconnect expire `grace` seconds after the
reconnect herd is over: the deadline moves on with every confirmation (so a herd of thousands
that takes longer than `grace` to get in loses no endpoint mid-herd), bounded by `max_wait`.
`LocalRegistry` is pure; each change returns the services it touched, so only those are rebuilt.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from controlplane.model import ResourceKey, Service, ServiceEndpoint
from controlplane.store import Store
from controlplane.world import SERVICE
from lightmesh.protocols import speaks_h2

log = logging.getLogger("controlplane.sources.registry")

SOURCE = "local-registry"
ServiceId = tuple[str, str]  # namespace, name


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
    # The protocol the sidecar declares it serves the service with (`--service catalog:grpc`,
    # lightmesh/protocols.py's values); "": undeclared.
    app_protocol: str = ""


@dataclass(slots=True)
class _Entry:
    registrations: tuple[Registration, ...]
    expires_at: float | None  # None while the sidecar is connected


class LocalRegistry:
    """Registrations by node id."""

    def __init__(self, *, grace: float = 15.0, max_wait: float = 300.0) -> None:
        self._entries: dict[str, _Entry] = {}
        self._grace = grace
        self._max_wait = max_wait
        self._restored_at: float | None = None
        self._last_confirmed = 0.0
        self._by_service: dict[ServiceId, set[str]] = {}  # service -> node ids registering it

    def connect(
        self, node_id: str, registrations: tuple[Registration, ...], *, now: float = 0.0
    ) -> set[ServiceId]:
        """Record a connected sidecar's registrations; return the services that changed."""
        previous = self._entries.get(node_id)
        if previous is not None and previous.expires_at is not None:
            self._last_confirmed = now  # a restored sidecar is back: the herd goes on
        self._entries[node_id] = _Entry(registrations, None)
        if previous is not None and previous.registrations == registrations:
            return set()
        return self._reindex(node_id, previous.registrations if previous else (), registrations)

    def disconnect(self, node_id: str) -> set[ServiceId]:
        """Forget a sidecar whose stream closed; return the services that changed."""
        entry = self._entries.pop(node_id, None)
        if entry is None:
            return set()
        return self._reindex(node_id, entry.registrations, ())

    def _reindex(
        self, node_id: str, old: tuple[Registration, ...], new: tuple[Registration, ...]
    ) -> set[ServiceId]:
        touched = {(r.namespace, r.service) for r in old} | {(r.namespace, r.service) for r in new}
        for r in old:
            nodes = self._by_service.get((r.namespace, r.service))
            if nodes is not None:
                nodes.discard(node_id)
                if not nodes:
                    del self._by_service[(r.namespace, r.service)]
        for r in new:
            self._by_service.setdefault((r.namespace, r.service), set()).add(node_id)
        return touched

    def restore(self, saved: list[dict[str, Any]], *, now: float) -> set[ServiceId]:
        """Load persisted registrations as unconfirmed; they expire unless their sidecar returns."""
        self._restored_at = self._last_confirmed = now
        touched: set[ServiceId] = set()
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
                app_protocol=item.get("app_protocol", ""),
            )
            entry = self._entries.setdefault(reg.node_id, _Entry((), now + self._grace))
            if entry.expires_at is not None:
                entry.registrations += (reg,)
                self._by_service.setdefault((reg.namespace, reg.service), set()).add(reg.node_id)
                touched.add((reg.namespace, reg.service))
        return touched

    def deadline(self) -> float | None:
        """When unconfirmed entries expire (None: there are none)."""
        if self._restored_at is None or not any(
            e.expires_at is not None for e in self._entries.values()
        ):
            return None
        sliding = max(self._restored_at, self._last_confirmed) + self._grace
        return min(sliding, self._restored_at + self._max_wait)

    def expire(self, *, now: float) -> set[ServiceId]:
        """Drop unconfirmed entries once the reconnect herd is over; return the services touched."""
        deadline = self.deadline()
        if deadline is None or now < deadline:
            return set()
        gone = [node for node, e in self._entries.items() if e.expires_at is not None]
        touched: set[ServiceId] = set()
        for node in gone:
            touched |= self.disconnect(node)
        self._restored_at = None
        return touched

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
                "app_protocol": r.app_protocol,
            }
            for node in sorted(self._entries)
            for r in self._entries[node].registrations
        ]

    def service(self, service: ServiceId) -> Service | None:
        """One service with every registered endpoint (None: nobody registers it)."""
        namespace, name = service
        registrations = [
            reg
            for node in sorted(self._by_service.get(service, ()))
            for reg in self._entries[node].registrations
            if (reg.namespace, reg.service) == service
        ]
        if not registrations:
            return None
        endpoints = [
            ServiceEndpoint(
                address=reg.address,
                port=reg.port,
                workload=reg.workload,
                labels=reg.labels,
                service_account=reg.service_account,
            )
            for reg in registrations
        ]
        # What the instances declare stands for the Kubernetes port's appProtocol: declared
        # alike by all of them, or not at all (an instance mid-rollout keeps it undeclared).
        declared = {reg.app_protocol for reg in registrations}
        protocol = declared.pop() if len(declared) == 1 else ""
        return Service(
            name=name,
            namespace=namespace,
            endpoints=tuple(endpoints),
            protocol=protocol if protocol != "tcp" else "",
            http2=speaks_h2(protocol),
        )

    def services(self) -> dict[str, Service]:
        """Services by FQDN with every registered endpoint."""
        found = (self.service(s) for s in sorted(self._by_service))
        return {s.fqdn: s for s in found if s is not None}


# How long a write someone waits for gathers more changes first: a herd of registrations costs one
# write per this window, not one per sidecar.
URGENT_COALESCE = 0.02


class RegistrySource:
    """Feeds the local registry into the store, service by service, and persists it.

    A registration reaches the store only once it is on disk: a control plane killed right after
    serving an endpoint does not come back without it and tell the first sidecar to reconnect that
    the service is gone. Writes are coalesced (off the loop): one per `URGENT_COALESCE` while
    registrations wait, otherwise (removals, expiries) at most every `persist_interval`.
    """

    def __init__(
        self,
        registry: LocalRegistry,
        store: Store,
        state_file: Path | None,
        *,
        persist_interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.registry = registry
        self._store = store
        self._state_file = state_file
        self._interval = persist_interval
        self._clock = clock
        self._dirty = asyncio.Event()
        self._urgent = asyncio.Event()
        self._generation = 0  # bumped by every change that needs writing
        self._written = 0  # the generation last on disk
        self._wrote = asyncio.Event()  # set (and replaced) after each write
        self._writer_gone = False  # `run` ended: nobody will write, so nobody may wait
        self.persist = True  # turned off at shutdown so closing streams do not erase the state

    async def connect(self, node_id: str, registrations: tuple[Registration, ...]) -> None:
        """A sidecar's stream opened: its registrations are served once they are durable."""
        touched = self.registry.connect(node_id, registrations, now=self._clock())
        if touched:
            await self._persisted(self._changed())
        self._publish(touched, self._clock())

    def disconnect(self, node_id: str) -> None:
        """A sidecar's stream closed."""
        touched = self.registry.disconnect(node_id)
        self._publish(touched, self._clock())
        if touched:
            self._changed()

    def _changed(self) -> int:
        """Mark the registry as needing a write; the generation that write will cover."""
        if self.persist and self._state_file is not None:
            self._generation += 1
            self._dirty.set()
        return self._generation

    async def _persisted(self, target: int) -> None:
        while (
            self._written < target
            and self.persist
            and self._state_file is not None
            and not self._writer_gone
        ):
            self._urgent.set()
            await self._wrote.wait()

    def _publish(self, touched: set[ServiceId], now: float) -> None:
        if not touched:
            return
        self._store.update(
            SOURCE,
            {
                ResourceKey(SERVICE, ns, name): self.registry.service((ns, name))
                for ns, name in touched
            },
            at=now,
        )

    def restore(self) -> None:
        """Load the persisted registrations (before serving)."""
        if self._state_file is None or not self._state_file.exists():
            return
        try:
            saved = json.loads(self._state_file.read_text())
        except (OSError, ValueError) as error:
            log.warning("ignoring unreadable registry state: %s", error)
            return
        now = self._clock()
        self._publish(self.registry.restore(saved, now=now), now)
        log.info("restored %d registrations", len(saved), extra={"event": "registry_restored"})

    def flush(self) -> None:
        """Persist now (atomically)."""
        if self._state_file is None or not self.persist:
            return
        self._dirty.clear()
        generation = self._generation
        _write_json(self._state_file, self.registry.dump())
        self._wrote_up_to(generation)

    async def run(self, stop: asyncio.Event) -> None:
        """Expire unconfirmed entries and persist changes (coalesced), until `stop` is set."""
        stopping = asyncio.create_task(stop.wait())
        try:
            while not stop.is_set():
                urgent = asyncio.create_task(self._urgent.wait())
                await asyncio.wait(
                    (stopping, urgent), timeout=self._interval, return_when=asyncio.FIRST_COMPLETED
                )
                urgent.cancel()
                if self._urgent.is_set():
                    await asyncio.sleep(URGENT_COALESCE)
                    self._urgent.clear()
                now = self._clock()
                expired = self.registry.expire(now=now)
                self._publish(expired, now)
                if expired:
                    self._changed()
                await self._write_if_dirty()
        finally:
            stopping.cancel()
            self._writer_gone = True
            self._wrote_up_to(self._generation)

    async def _write_if_dirty(self) -> None:
        if not (self._dirty.is_set() and self.persist and self._state_file is not None):
            self._wrote_up_to(self._generation)
            return
        self._dirty.clear()
        generation = self._generation
        try:
            await asyncio.to_thread(_write_json, self._state_file, self.registry.dump())
        except OSError as error:
            # Persistence is a restart aid: a full disk must not stop sidecars from being served.
            log.warning("cannot persist the registry to %s: %s", self._state_file, error)
        self._wrote_up_to(generation)

    def _wrote_up_to(self, generation: int) -> None:
        self._written = max(self._written, generation)
        wrote, self._wrote = self._wrote, asyncio.Event()
        wrote.set()


def _write_json(path: Path, value: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(value))
    os.replace(tmp, path)
