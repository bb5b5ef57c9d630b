"""Push: turns store changes into per-sidecar snapshots and wakes the streams whose config changed.

Bursts of changes are debounced (quiet period, bounded by a maximum delay) and each connected
sidecar's config is re-translated once per burst; only streams whose snapshot version changed are
woken. A newly connected sidecar is translated at once, without waiting for the debounce.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from controlplane.snapshots import SnapshotCache
from controlplane.store import Store
from controlplane.translate import translate
from controlplane.world import NodeInfo
from controlplane.xds.protocol import StreamProtocol

log = logging.getLogger("controlplane.push")


@dataclass(eq=False, slots=True)
class Connection:
    """One open config stream."""

    node: NodeInfo
    connected_at: float
    protocol: StreamProtocol = field(default_factory=StreamProtocol)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    # type URL -> when the change now pending for that type was first observed (monotonic)
    changed_at: dict[str, float] = field(default_factory=dict)


class Pusher:
    """Owns the live connections and keeps their snapshots current."""

    def __init__(
        self,
        store: Store,
        cache: SnapshotCache,
        *,
        debounce: float = 0.1,
        max_delay: float = 1.0,
    ) -> None:
        self._store = store
        self._cache = cache
        self._debounce = debounce
        self._max_delay = max_delay
        self.connections: dict[str, Connection] = {}
        self._dirty = asyncio.Event()
        self._first_change_at: float | None = None
        self._last_change_at = 0.0
        store.subscribe(self._on_change)

    def _on_change(self, revision: int) -> None:
        now = time.monotonic()
        if self._first_change_at is None:
            self._first_change_at = now
        self._last_change_at = now
        self._dirty.set()

    def open(self, node: NodeInfo) -> Connection:
        """Register a stream (replacing an older one of the same node) and build its snapshot."""
        previous = self.connections.get(node.id)
        if previous is not None:
            log.info("replacing older stream", extra={"event": "stream_replaced", "node": node.id})
            previous.wake.set()
        conn = Connection(node=node, connected_at=time.time())
        self.connections[node.id] = conn
        self._refresh(conn, observed_at=time.monotonic())
        return conn

    def close(self, conn: Connection) -> None:
        """Forget a stream that ended (unless a newer stream of the same node replaced it)."""
        if self.connections.get(conn.node.id) is conn:
            del self.connections[conn.node.id]
            self._cache.drop(conn.node.id)

    def _refresh(self, conn: Connection, *, observed_at: float) -> None:
        config = translate(self._store.world(), conn.node)
        changed = self._cache.set(conn.node.id, config)
        for type_url in changed:
            conn.changed_at.setdefault(type_url, observed_at)
        if changed:
            conn.wake.set()

    def shutdown(self) -> None:
        """Let `run` notice that its stop event was set."""
        self._dirty.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Debounce changes and refresh every connection, until `stop` is set."""
        while True:
            await self._dirty.wait()
            if stop.is_set():
                return
            # Quiet period: wait until no change arrived for `debounce`, at most `max_delay` overall.
            first = self._first_change_at or time.monotonic()
            while True:
                now = time.monotonic()
                quiet_until = self._last_change_at + self._debounce
                deadline = first + self._max_delay
                if now >= min(quiet_until, deadline):
                    break
                await asyncio.sleep(min(quiet_until, deadline) - now)
            observed_at = first
            self._dirty.clear()
            self._first_change_at = None
            world = self._store.world()
            for conn in list(self.connections.values()):
                self._refresh(conn, observed_at=observed_at)
            log.info(
                "pushed revision",
                extra={
                    "event": "push",
                    "revision": world.revision,
                    "proxies": len(self.connections),
                },
            )
