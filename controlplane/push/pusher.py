"""Push: keeps every view current with the store and wakes the streams whose resources changed.

- Store changes are debounced (`Debouncer`); each flush refreshes, in every live view, only the
  hosts the change touched, and moves streams whose scope or inbound inputs changed.
- Views are shared: streams whose sidecars see the same thing point at one view, created on the
  first such stream and dropped with the last.
- Long work yields to the loop between batches of hosts, and all view work is serialized by one
  lock, so a flush never sees a half-built view and `/healthz`, ACKs and new streams stay prompt.
- Streams are woken, not written to: each stream plans and sends its own response through the
  `PushGate`, which bounds concurrent pushes (initial ones apart: they are large) in FIFO order.
- Herds first: while more new streams wait for their first push than the gate admits at once (a
  cold start, a restart, a failover), or more than that many streams opened within the last
  `HERD_WINDOW` seconds and some still wait, flushes are held back (at most `herd_delay` after
  the first pending change). The second test matters when the control plane accepts streams
  more slowly than they arrive (thousands of TLS connections on a busy loop): few streams are
  then waiting *inside* the process at any moment, yet the herd goes on; counted only by those,
  a 2,000-proxy herd flushed every second to every stream already in (measured: 30 flushes of
  ~50 changed clusters to up to 1,600 streams, 2.4 GB sent; 0.8 GB when the herd is held). Otherwise every registration of the herd would push to every stream already
  in, O(n²) pushes that starve the first pushes; held back, the herd gets in at full speed and
  one flush then sends everyone what changed meanwhile.
- Backpressure (Istio's one push at a time): the next flush waits until the streams the last one
  woke have been served (at most `max_delay`), so under a stream of changes the flush rate drops
  to what the streams can take and more changes coalesce into each push.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from controlplane.metrics import ControlPlaneMetrics
from controlplane.model import ResourceKey
from controlplane.push.debounce import Debouncer
from controlplane.security import ROOT_NAMESPACE
from controlplane.snapshots.resources import TranslationCache
from controlplane.snapshots.sets import ResourceSet
from controlplane.snapshots.views import GatewayView, InboundView, OutboundView, Translator
from controlplane.store import Change, Store
from controlplane.translate import cluster_host, scope_of
from controlplane.translate.inbound import InboundKey, inbound_key
from controlplane.translate.scope import ScopeKey
from controlplane.world import SERVICE, NodeInfo, World
from controlplane.xds.protocol import StreamProtocol
from lightmesh import types

log = logging.getLogger("controlplane.push")

BATCH = 100  # hosts refreshed between two yields to the loop
HERD_WINDOW = 1.0  # seconds over which stream arrivals are counted (herd detection)
_POLICY_KINDS = frozenset(
    {
        "PeerAuthentication",
        "AuthorizationPolicy",
        "RequestAuthentication",
        "HTTPLocalRateLimitPolicy",
    }
)
View = OutboundView | GatewayView


@dataclass(eq=False, slots=True)
class Connection:
    """One open config stream."""

    node: NodeInfo
    connected_at: float
    view: View
    inbound: InboundView
    protocol: StreamProtocol = field(default_factory=StreamProtocol)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    woken_at: float = 0.0  # loop time of the first wake not yet served (queue time)
    pushed: bool = False  # whether its first (initial) push was sent
    # type -> releases of the budget held by its responses not answered yet
    unanswered: dict[str, list[Callable[[], None]]] = field(default_factory=dict)
    closed: bool = False

    def sets(self) -> dict[str, ResourceSet]:
        """The resource set it is served from, by type."""
        return {**self.view.sets, types.INBOUND: self.inbound.set}

    def notify(self, now: float) -> None:
        """Something it may need changed."""
        if not self.wake.is_set():
            self.woken_at = now
            self.wake.set()


class ByteBudget:
    """Bytes of responses handed to gRPC and not yet ACKed (or NACKed), bounded, FIFO.

    Counting streams is not enough: a stream leaves its initial slot after `INITIAL_HOLD` even
    when its sidecar is slow to read, and a herd flush wakes every stream at once, so without a
    byte bound any number of full responses (serialized, then copied into gRPC's buffers) could
    be held at once. A response larger than the whole budget is let through when nothing else
    is in flight."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()

    def _fits(self, size: int) -> bool:
        return self.used == 0 or self.used + size <= self.limit

    async def acquire(self, size: int) -> None:
        """Wait (behind earlier waiters) until `size` more bytes fit."""
        if not self._waiters and self._fits(size):
            self.used += size
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((size, waiter))
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release(size)  # granted, then cancelled before it resumed
            else:
                waiter.cancel()
                self._wake()
            raise

    async def hold(self, size: int, *, at_most: float) -> Callable[[], None]:
        """Acquire `size` bytes; return their release (idempotent), which also runs by itself
        `at_most` seconds later: a sidecar that stops answering (hung, stopped, a reader that
        never ACKs) must not keep the whole mesh's pushes waiting on a shared budget."""
        await self.acquire(size)
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                timer.cancel()
                self.release(size)

        timer = asyncio.get_running_loop().call_later(at_most, release)
        return release

    def release(self, size: int) -> None:
        """`size` bytes were ACKed, NACKed or their stream ended."""
        self.used = max(0, self.used - size)
        self._wake()

    def _wake(self) -> None:
        while self._waiters:
            size, waiter = self._waiters[0]
            if waiter.done():
                self._waiters.popleft()
                continue
            if not self._fits(size):
                return
            self._waiters.popleft()
            self.used += size
            waiter.set_result(None)

    @property
    def waiting(self) -> int:
        """Responses waiting for room."""
        return sum(1 for _, waiter in self._waiters if not waiter.done())


class PushGate:
    """Bounds concurrent pushes, each in FIFO order: `initial` is held by a new stream from its
    first push until it ACKed every type; `updates` by a stream while it sends one round; and
    `bytes` bounds the bytes of every response sent and not yet answered (`ByteBudget`)."""

    def __init__(self, *, initial: int, updates: int, max_bytes: int = 64 << 20) -> None:
        self.initial = asyncio.Semaphore(initial)
        self.updates = asyncio.Semaphore(updates)
        self.bytes = ByteBudget(max_bytes)


class Pusher:
    """Owns the live connections and their shared views."""

    def __init__(
        self,
        store: Store,
        *,
        metrics: ControlPlaneMetrics | None = None,
        debounce: float = 0.1,
        max_delay: float = 1.0,
        initial_pushes: int = 32,
        update_pushes: int = 256,
        push_bytes: int = 64 << 20,
        # In local mode each registration of a herd changes the endpoints every stream already
        # in holds, so every held-back flush re-sends them all: at 5,000 proxies a flush each
        # 10 s of a 100 s herd sent 10 GB (ENDPOINTS ~375 KB x thousands of streams, 9 times).
        herd_delay: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._metrics = metrics
        self._clock = clock
        self.cache = TranslationCache()
        self.translator = Translator(store.world, store.version, self.cache)
        self.gate = PushGate(initial=initial_pushes, updates=update_pushes, max_bytes=push_bytes)
        self._initial_pushes = initial_pushes
        self._herd_delay = herd_delay
        self.awaiting_first = 0  # open streams not yet sent their first push
        self._opened: deque[float] = deque()  # clock() of the streams opened in HERD_WINDOW
        self._herd = False
        self._unserved: set[Connection] = set()  # woken by the last flush, not served yet
        self._served = asyncio.Event()
        self._served.set()
        self.connections: dict[str, Connection] = {}
        self.views: dict[ScopeKey, View] = {}
        self.inbound_views: dict[InboundKey, InboundView] = {}
        self._debouncer = Debouncer(quiet=debounce, max_delay=max_delay)
        self._max_delay = max_delay
        self._dirty = asyncio.Event()
        self._lock = asyncio.Lock()
        self.flushes = 0
        store.subscribe(self._on_change)

    def _on_change(self, change: Change) -> None:
        self._debouncer.add(change, now=self._clock())
        self._dirty.set()

    # --- streams ---

    async def open(self, node: NodeInfo) -> Connection:
        """Register a stream (replacing an older one of the same node), with its views built."""
        async with self._lock:
            world = self._store.world
            view = await self._view(scope_of(world, node))
            inbound = self._inbound_view(inbound_key(world, node))
            conn = Connection(node=node, connected_at=time.time(), view=view, inbound=inbound)
            view.members.add(conn)
            inbound.members.add(conn)
        previous = self.connections.get(node.id)
        if previous is not None:
            log.info("replacing older stream", extra={"event": "stream_replaced", "node": node.id})
            self.close(previous)
            previous.wake.set()
        self.connections[node.id] = conn
        self.awaiting_first += 1
        self._opened.append(self._clock())
        return conn

    def served(self, conn: Connection) -> None:
        """The stream handled its wake-up (sent what was due, or found nothing to send)."""
        if self._unserved:
            self._unserved.discard(conn)
            if not self._unserved:
                self._served.set()

    def first_pushed(self, conn: Connection) -> None:
        """The stream's first push went out."""
        if not conn.pushed:
            conn.pushed = True
            self.awaiting_first -= 1

    def close(self, conn: Connection) -> None:
        """Forget a stream that ended (unless a newer stream of the same node replaced it)."""
        if conn.closed:
            return
        conn.closed = True
        if not conn.pushed:
            conn.pushed = True
            self.awaiting_first -= 1
        self.served(conn)
        if self.connections.get(conn.node.id) is conn:
            del self.connections[conn.node.id]
        self._leave(conn)

    def _leave(self, conn: Connection) -> None:
        members = conn.view.members
        members.discard(conn)
        if not members and self.views.get(conn.view.scope) is conn.view:
            del self.views[conn.view.scope]
        inbound = conn.inbound.members
        inbound.discard(conn)
        if not inbound and self.inbound_views.get(conn.inbound.key) is conn.inbound:
            del self.inbound_views[conn.inbound.key]

    async def resubscribe(self, conn: Connection) -> None:
        """The stream's explicitly subscribed names changed: widen (or narrow) its scope."""
        hosts: set[str] = set()
        for type_url, names in conn.protocol.names().items():
            if type_url == types.ROUTES:
                hosts |= names
            elif type_url in (types.CLUSTER, types.ENDPOINTS):
                hosts |= {h for h in map(cluster_host, names) if h}
        async with self._lock:
            await self._move(conn, scope_of(self._store.world, conn.node, frozenset(hosts)))
        conn.notify(self._clock())

    async def _move(self, conn: Connection, scope: ScopeKey) -> None:
        if scope.sidecar is None:
            # Everything seen is routed already.
            scope = ScopeKey(namespace=scope.namespace, gateway=scope.gateway)
        if scope == conn.view.scope or conn.closed:
            return
        view = await self._view(scope)
        conn.view.members.discard(conn)
        if not conn.view.members and self.views.get(conn.view.scope) is conn.view:
            del self.views[conn.view.scope]
        conn.view = view
        view.members.add(conn)

    async def _view(self, scope: ScopeKey) -> View:
        if scope.sidecar is None and scope.extra_hosts:
            scope = ScopeKey(namespace=scope.namespace, gateway=scope.gateway)
        view = self.views.get(scope)
        if view is None:
            view = OutboundView(scope) if scope.gateway is None else GatewayView(scope)
            started = self._clock()
            await self._refresh(view, sorted(self._store.world.hosts() | scope.extra_hosts), 0.0)
            self._observe_translate(self._clock() - started)
            self.views[scope] = view
        return view

    def _inbound_view(self, key: InboundKey) -> InboundView:
        view = self.inbound_views.get(key)
        if view is None:
            view = InboundView(key)
            view.refresh(self.translator, at=0.0)
            self.inbound_views[key] = view
        return view

    async def _refresh(self, view: View, hosts: list[str], at: float) -> list[ResourceSet]:
        if isinstance(view, GatewayView):
            return view.refresh(self.translator, (), at=at)  # whole, in one go (few inputs)
        changed: list[ResourceSet] = []
        for start in range(0, len(hosts), BATCH):
            for resource_set in view.refresh(self.translator, hosts[start : start + BATCH], at=at):
                if resource_set not in changed:
                    changed.append(resource_set)
            if start + BATCH < len(hosts):
                await asyncio.sleep(0)
        return changed

    # --- flushes ---

    async def run(self, stop: asyncio.Event) -> None:
        """Flush debounced changes until `stop` is set."""
        while not stop.is_set():
            due = self._debouncer.due_at()
            if due is None:
                self._dirty.clear()
                waiter = asyncio.ensure_future(self._dirty.wait())
                stopper = asyncio.ensure_future(stop.wait())
                try:
                    await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    waiter.cancel()
                    stopper.cancel()
                continue
            now = self._clock()
            delay = due - now
            if delay <= 0 and self._in_herd() and now < self._debouncer.first_at + self._herd_delay:
                delay = 0.05  # let the herd in first (see the module docstring)
            if delay > 0:
                await asyncio.sleep(delay)
                continue
            if not self._served.is_set():
                # Backpressure: the last flush's streams first (bounded by the maximum delay).
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._served.wait(), timeout=self._max_delay)
                self._unserved.clear()
                self._served.set()
            change = self._debouncer.take(now=self._clock())
            if change is not None:
                await self.flush(change)

    async def flush(self, change: Change) -> None:
        """Bring every view up to date with `change` and wake the affected streams."""
        async with self._lock:
            started = self._clock()
            world = self._store.world
            kinds = {k.kind for k in change.keys}
            woken: set[Connection] = set()
            if "Sidecar" in kinds:
                for conn in self._affected(change.keys, "Sidecar"):
                    await self._move(conn, scope_of(world, conn.node, conn.view.scope.extra_hosts))
                    woken.add(conn)
            if kinds & _POLICY_KINDS:
                for conn in self._affected(change.keys, *_POLICY_KINDS):
                    key = inbound_key(world, conn.node)
                    if key != conn.inbound.key:
                        conn.inbound.members.discard(conn)
                        conn.inbound = self._inbound_view(key)
                        conn.inbound.members.add(conn)
                        woken.add(conn)
            if SERVICE in kinds:
                woken |= self._rekey_app_protocol(world, change.keys)
            for inbound in list(self.inbound_views.values()):
                if not inbound.members:
                    del self.inbound_views[inbound.key]
                elif inbound.refresh(self.translator, at=change.at):
                    woken |= inbound.members
            hosts = sorted(change.hosts)
            for view in list(self.views.values()):
                # Gateway views read resources that touch no host (Gateways, VirtualServices
                # bound to gateways only, Secrets): they recompute on every change.
                if (hosts or isinstance(view, GatewayView)) and await self._refresh(
                    view, hosts, change.at
                ):
                    woken |= view.members
            self.flushes += 1
            if self.flushes % 1000 == 0:
                self.cache.sweep()
            elapsed = self._clock() - started
            self._observe_translate(elapsed)
        now = self._clock()
        for conn in woken:
            conn.notify(now)
        # Streams still in their first push are admitted by the gate, not by flushes.
        self._unserved = {c for c in woken if not c.closed and c.pushed}
        if self._unserved:
            self._served.clear()
        log.info(
            "pushed change",
            extra={
                "event": "push",
                "revision": self._store.revision,
                "keys": len(change.keys),
                "hosts": len(change.hosts),
                "proxies": len(woken),
                "views": len(self.views),
                "translate_seconds": round(elapsed, 4),
            },
        )

    def _in_herd(self) -> bool:
        # A herd starts when more streams wait than the gate admits, or arrive within
        # HERD_WINDOW while some wait (see the module docstring), and lasts until none waits.
        horizon = self._clock() - HERD_WINDOW
        while self._opened and self._opened[0] < horizon:
            self._opened.popleft()
        if self.awaiting_first > self._initial_pushes or (
            self.awaiting_first and len(self._opened) > self._initial_pushes
        ):
            self._herd = True
        elif self.awaiting_first == 0:
            self._herd = False
        return self._herd

    def _rekey_app_protocol(self, world: World, keys: Iterable[ResourceKey]) -> set[Connection]:
        """Move the sidecars whose app protocol (from their Services' ports) changed to the
        inbound view of the new one. Only the changed Services' namespaces are looked at, and
        in them only sidecars with a protocol already or an endpoint in a changed Service:
        endpoint churn re-keys nobody else."""
        changed = [k for k in keys if k.kind == SERVICE]
        namespaces = {k.namespace for k in changed}
        workloads: set[tuple[str, str]] = set()
        for key in changed:
            service = world.services.get(f"{key.name}.{key.namespace}.svc.cluster.local")
            if service is not None:
                workloads |= {(key.namespace, e.workload) for e in service.endpoints}
        moved: set[Connection] = set()
        for conn in self.connections.values():
            node = conn.node
            if node.gateway or node.namespace not in namespaces:
                continue
            if (
                not conn.inbound.key.app_protocol
                and (node.namespace, node.workload) not in workloads
            ):
                continue
            protocol = world.app_protocol(node.namespace, node.workload)
            if protocol != conn.inbound.key.app_protocol:
                rekeyed = dataclasses.replace(conn.inbound.key, app_protocol=protocol)
                conn.inbound.members.discard(conn)
                conn.inbound = self._inbound_view(rekeyed)
                conn.inbound.members.add(conn)
                moved.add(conn)
        return moved

    def _affected(self, keys: Iterable[ResourceKey], *kinds: str) -> list[Connection]:
        namespaces = {k.namespace for k in keys if k.kind in kinds}
        if ROOT_NAMESPACE in namespaces:
            return list(self.connections.values())
        return [c for c in self.connections.values() if c.node.namespace in namespaces]

    def _observe_translate(self, seconds: float) -> None:
        if self._metrics is not None:
            self._metrics.translate_seconds.observe(seconds)

    def shutdown(self) -> None:
        """Let `run` notice that its stop event was set."""
        self._dirty.set()
