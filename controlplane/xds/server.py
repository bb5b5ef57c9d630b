"""gRPC config stream server: drives one `StreamProtocol` per sidecar stream.

Each stream has a reader task feeding a bounded queue and a loop that, after every request or
snapshot change, sends the types whose version the sidecar does not have yet.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, Literal

import grpc

from controlplane.metrics import ControlPlaneMetrics
from controlplane.push import Connection, Pusher
from controlplane.registry import LocalRegistry, Registration
from controlplane.snapshots import SnapshotCache
from controlplane.world import NodeInfo
from controlplane.xds.protocol import Acked, Ignored, Nacked, Outcome, Subscribed
from lightmesh.types import SHORT_NAMES
from lightmesh.v1 import discovery_pb2 as pb
from lightmesh.v1 import discovery_pb2_grpc

log = logging.getLogger("controlplane.xds")

_QUEUE_SIZE = 64


def node_info(node: pb.Node) -> NodeInfo:
    """Translation's view of a sidecar's identity."""
    return NodeInfo(
        id=node.id,
        workload=node.workload,
        namespace=node.namespace or "default",
        labels=tuple(sorted(node.labels.items())),
        service_account=node.service_account or "default",
    )


def registrations(node: pb.Node) -> tuple[Registration, ...]:
    """The services a local-mode sidecar announces."""
    return tuple(
        Registration(
            node_id=node.id,
            workload=node.workload,
            namespace=node.namespace or "default",
            service=r.service,
            address=r.address,
            port=r.port,
            labels=tuple(sorted(node.labels.items())),
            service_account=node.service_account or "default",
        )
        for r in node.registrations
    )


class ConfigDiscovery(discovery_pb2_grpc.ConfigDiscoveryServicer):  # type: ignore[misc]
    """The `lightmesh.v1.ConfigDiscovery` service."""

    def __init__(
        self,
        *,
        pusher: Pusher,
        cache: SnapshotCache,
        registry: LocalRegistry,
        on_registry_change: Callable[[], None],
        metrics: ControlPlaneMetrics,
    ) -> None:
        self._pusher = pusher
        self._cache = cache
        self._registry = registry
        self._on_registry_change = on_registry_change
        self._metrics = metrics

    async def StreamConfig(
        self, request_iterator: AsyncIterator[pb.DiscoveryRequest], context: Any
    ) -> AsyncIterator[pb.DiscoveryResponse]:
        """Serve one sidecar's stream until it closes."""
        try:
            first = await anext(request_iterator)
        except StopAsyncIteration:
            return
        if not first.node.id:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "first request must carry node.id"
            )
            return
        conn = self._pusher.open(node_info(first.node))
        if self._registry.connect(first.node.id, registrations(first.node)):
            self._on_registry_change()
        self._metrics.connected.inc()
        log.info(
            "sidecar connected",
            extra={"event": "stream_open", "node": first.node.id, "peer": context.peer()},
        )
        queue: asyncio.Queue[pb.DiscoveryRequest | None] = asyncio.Queue(_QUEUE_SIZE)
        reader = asyncio.create_task(_read(request_iterator, queue), name=f"read {first.node.id}")
        try:
            self._handle(conn, first)
            while True:
                for response in self._due(conn):
                    yield response
                if self._pusher.connections.get(conn.node.id) is not conn:
                    return  # replaced by a newer stream of the same sidecar
                event, request = await _next_event(queue, conn.wake)
                if event == "end":
                    return
                if request is not None:
                    self._handle(conn, request)
        finally:
            reader.cancel()
            self._metrics.connected.dec()
            if self._pusher.connections.get(conn.node.id) is conn:
                self._pusher.close(conn)
                if self._registry.disconnect(conn.node.id):
                    self._on_registry_change()
            log.info("sidecar disconnected", extra={"event": "stream_close", "node": conn.node.id})

    def _handle(self, conn: Connection, request: pb.DiscoveryRequest) -> None:
        error = request.error_detail.message if request.HasField("error_detail") else None
        outcome = conn.protocol.on_request(
            type_url=request.type_url,
            version=request.version_info,
            nonce=request.response_nonce,
            error=error,
            now=time.monotonic(),
        )
        self._record(conn, outcome)

    def _record(self, conn: Connection, outcome: Outcome) -> None:
        short = SHORT_NAMES.get(outcome.type_url, outcome.type_url)
        extra: dict[str, object] = {"node": conn.node.id, "type": short}
        match outcome:
            case Acked(version=version):
                self._metrics.acks.labels(short).inc()
                observed = conn.changed_at.pop(outcome.type_url, None)
                if observed is not None and version == self._cache.versions(conn.node.id).get(
                    outcome.type_url
                ):
                    self._metrics.convergence.labels(short).observe(time.monotonic() - observed)
                log.debug("ack", extra={**extra, "event": "ack", "version": version})
            case Nacked(version=version, kept_version=kept, message=message):
                self._metrics.nacks.labels(short).inc()
                conn.changed_at.pop(outcome.type_url, None)
                log.warning(
                    "sidecar rejected config: %s",
                    message,
                    extra={**extra, "event": "nack", "version": version, "kept_version": kept},
                )
            case Subscribed(held_version=held):
                log.debug("subscribe", extra={**extra, "event": "subscribe", "held": held})
            case Ignored(reason=reason):
                log.debug("ignored request: %s", reason, extra={**extra, "event": "ignored"})

    def _due(self, conn: Connection) -> list[pb.DiscoveryResponse]:
        snapshots = self._cache.get(conn.node.id)
        versions = {t: s.version for t, s in snapshots.items()}
        responses = []
        for type_url in conn.protocol.due(versions):
            snapshot = snapshots[type_url]
            nonce = conn.protocol.mark_sent(type_url, snapshot.version, now=time.monotonic())
            self._metrics.pushes.labels(SHORT_NAMES[type_url]).inc()
            responses.append(
                pb.DiscoveryResponse(
                    type_url=type_url,
                    version_info=snapshot.version,
                    nonce=nonce,
                    resources=snapshot.resources,
                )
            )
        return responses


async def _read(
    requests: AsyncIterator[pb.DiscoveryRequest], queue: asyncio.Queue[pb.DiscoveryRequest | None]
) -> None:
    try:
        async for request in requests:
            await queue.put(request)
    except grpc.RpcError:
        pass  # the stream broke; the finally below tells the stream loop
    finally:
        # Wake the stream loop so it notices the end; never block here.
        if not queue.full():
            queue.put_nowait(None)


async def _next_event(
    queue: asyncio.Queue[pb.DiscoveryRequest | None], wake: asyncio.Event
) -> tuple[Literal["request", "end", "wake"], pb.DiscoveryRequest | None]:
    """The next request, or "wake" when the snapshot changed, or "end" when the reader ended."""
    if queue.empty():
        get = asyncio.ensure_future(queue.get())
        woke = asyncio.ensure_future(wake.wait())
        try:
            await asyncio.wait({get, woke}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            get.cancel()
            woke.cancel()
        wake.clear()
        if not get.done() or get.cancelled():
            return "wake", None
        request = get.result()
    else:
        request = queue.get_nowait()
    return ("end", None) if request is None else ("request", request)
