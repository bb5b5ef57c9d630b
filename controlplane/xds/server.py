"""gRPC config stream server: drives one `StreamProtocol` per sidecar stream.

A reader task interprets each request as it arrives (ACK, NACK, subscriptions) and wakes the
stream; the stream's own loop, once it holds a push slot, plans each type in push order and writes
the responses. Responses are assembled from the resources' pre-serialized bytes (`wire`) and
written as bytes: nothing is serialized per sidecar.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

import grpc

from controlplane.metrics import ControlPlaneMetrics
from controlplane.push.pusher import Connection, Pusher
from controlplane.snapshots import wire
from controlplane.sources.registry import Registration
from controlplane.traffic import Report, Reporter, report_from_proto, reporter_of
from controlplane.world import NodeInfo
from controlplane.xds.protocol import Acked, Ignored, Nacked, Outcome, Subscribed, Target
from lightmesh.protocols import port_protocol
from lightmesh.types import PUSH_ORDER, SHORT_NAMES
from lightmesh.v1 import discovery_pb2 as pb

log = logging.getLogger("controlplane.xds")

SERVICE = "lightmesh.v1.ConfigDiscovery"
# How long a new stream may hold its initial push slot waiting for its ACKs.
INITIAL_HOLD = 10.0
# How long a response's bytes count against the shared push budget if its sidecar never answers.
BUDGET_HOLD = 10.0
METHOD = "DeltaConfig"


class TrafficSink(Protocol):
    """Where sidecars' traffic reports go (the dashboard's store)."""

    def add(self, reporter: Reporter, report: Report) -> None:
        """Keep one report."""


class Registrations(Protocol):
    """Where local-mode sidecars' service registrations go."""

    async def connect(self, node_id: str, registrations: tuple[Registration, ...]) -> None:
        """A sidecar's stream opened with these registrations (return once they are served)."""

    def disconnect(self, node_id: str) -> None:
        """Its stream closed."""


def node_info(node: pb.Node) -> NodeInfo:
    """Translation's view of a sidecar's identity."""
    return NodeInfo(
        id=node.id,
        workload=node.workload,
        namespace=node.namespace or "default",
        labels=tuple(sorted(node.labels.items())),
        service_account=node.service_account or "default",
        gateway=node.proxy_type == "gateway",
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
            # An appProtocol-like value; one naming no known protocol counts as undeclared.
            app_protocol=port_protocol("", r.app_protocol) if r.app_protocol else "",
        )
        for r in node.registrations
    )


# A gateway is sent its listeners, which carry the private keys of TLS Secrets, only when the
# stream's bearer token vouches for the namespace and service account its node claims: (call
# metadata, node) -> "" when it does, else why not (the certificate service's check, in app.py).
Vouch = Callable[[Any, pb.Node], Awaitable[str]]


class ConfigDiscovery:
    """The `lightmesh.v1.ConfigDiscovery` service."""

    def __init__(
        self,
        *,
        pusher: Pusher,
        registry: Registrations,
        metrics: ControlPlaneMetrics,
        clock: Callable[[], float] = time.monotonic,
        traffic: TrafficSink | None = None,
        vouch: Vouch | None = None,
    ) -> None:
        self._vouch = vouch
        self._traffic = traffic
        self._pusher = pusher
        self._registry = registry
        self._metrics = metrics
        self._clock = clock

    def handler(self) -> grpc.GenericRpcHandler:
        """The generic handler to add to a grpc.aio server (responses are written as bytes)."""
        method = grpc.stream_stream_rpc_method_handler(
            self.delta_config,
            request_deserializer=pb.DeltaDiscoveryRequest.FromString,
            response_serializer=None,
        )
        return grpc.method_handlers_generic_handler(SERVICE, {METHOD: method})

    async def delta_config(
        self, request_iterator: AsyncIterator[pb.DeltaDiscoveryRequest], context: Any
    ) -> AsyncIterator[bytes]:
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
        if first.node.proxy_type == "gateway" and self._vouch is not None:
            why = await self._vouch(context.invocation_metadata(), first.node)
            if why:
                log.warning(
                    "gateway refused: %s",
                    why,
                    extra={
                        "event": "gateway_refused",
                        "node": first.node.id,
                        "peer": context.peer(),
                    },
                )
                await context.abort(
                    grpc.StatusCode.UNAUTHENTICATED, f"gateway {first.node.id}: {why}"
                )
                return
        conn = await self._pusher.open(node_info(first.node))
        self._metrics.connected.inc()
        log.info(
            "sidecar connected",
            extra={"event": "stream_open", "node": first.node.id, "peer": context.peer()},
        )
        ended = asyncio.Event()
        reader = asyncio.create_task(
            self._read(conn, request_iterator, ended), name=f"read {first.node.id}"
        )
        try:
            await self._registry.connect(first.node.id, registrations(first.node))
            await self._handle(conn, first)
            # Admission: the first pushes hold one of the few initial slots until every type is
            # ACKed (or INITIAL_HOLD passed), so the large responses buffered at once stay bounded
            # and a herd is admitted in FIFO order.
            async with self._pusher.gate.initial:
                deadline = self._clock() + INITIAL_HOLD
                while not self._synced_once(conn) and self._clock() < deadline:
                    async for response in self._serve(conn, ended, deadline=deadline):
                        yield response
                    if conn.closed or ended.is_set():
                        return
            self._pusher.first_pushed(conn)
            while True:
                await conn.wake.wait()
                if conn.closed or ended.is_set():
                    return
                async with self._pusher.gate.updates:
                    async for response in self._serve(conn, ended, deadline=None):
                        yield response
        finally:
            reader.cancel()
            for releases in conn.unanswered.values():
                for release in releases:
                    release()
            conn.unanswered.clear()
            self._metrics.connected.dec()
            if not conn.closed:
                self._pusher.close(conn)
                self._registry.disconnect(conn.node.id)
            log.info("sidecar disconnected", extra={"event": "stream_close", "node": conn.node.id})

    @staticmethod
    def _synced_once(conn: Connection) -> bool:
        states = conn.protocol.types
        return all(t in states and states[t].acked_at for t in PUSH_ORDER)

    async def _serve(
        self, conn: Connection, ended: asyncio.Event, *, deadline: float | None
    ) -> AsyncIterator[bytes]:
        """Wait for a wake-up (until `deadline`), then send what is due."""
        if deadline is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(conn.wake.wait(), timeout=max(0.0, deadline - self._clock()))
        if not conn.wake.is_set() or conn.closed or ended.is_set():
            return
        conn.wake.clear()
        started = self._clock()
        self._metrics.queue_seconds.observe(started - conn.woken_at)
        budget = self._pusher.gate.bytes
        for type_url, response in self._round(conn):
            # Held until the sidecar answers this type (see `_handle`) or the stream ends.
            release = await budget.hold(len(response), at_most=BUDGET_HOLD)
            conn.unanswered.setdefault(type_url, []).append(release)
            yield response
        self._pusher.served(conn)
        self._metrics.send_seconds.observe(self._clock() - started)

    async def _read(
        self,
        conn: Connection,
        requests: AsyncIterator[pb.DeltaDiscoveryRequest],
        ended: asyncio.Event,
    ) -> None:
        try:
            async for request in requests:
                if request.HasField("traffic_report"):
                    # Not part of the config protocol: no type, no nonce, nothing to answer.
                    if self._traffic is not None:
                        node = conn.node
                        self._traffic.add(
                            reporter_of(
                                request.traffic_report,
                                node_id=node.id,
                                workload=node.workload,
                                namespace=node.namespace,
                                labels=dict(node.labels),
                            ),
                            report_from_proto(request.traffic_report, at=self._clock()),
                        )
                    continue
                await self._handle(conn, request)
        except grpc.RpcError:
            pass  # the stream broke; the stream loop notices below
        finally:
            ended.set()
            conn.wake.set()

    async def _handle(self, conn: Connection, request: pb.DeltaDiscoveryRequest) -> None:
        now = self._clock()
        resource_set = conn.sets().get(request.type_url)
        target = digest = None
        if resource_set is not None:
            target = Target(tag=resource_set.current.tag, versions=resource_set.current.versions)
            if request.initial_resources_digest:
                digest = resource_set.digest()
        outcomes = conn.protocol.on_request(
            type_url=request.type_url,
            subscribe=request.resource_names_subscribe,
            unsubscribe=request.resource_names_unsubscribe,
            initial=request.initial_resource_versions,
            initial_digest=request.initial_resources_digest,
            target_digest=digest or "",
            target=target,
            nonce=request.response_nonce,
            error=request.error_detail.message if request.HasField("error_detail") else None,
            now=now,
        )
        resubscribe = False
        for outcome in outcomes:
            self._record(conn, outcome, now)
            if isinstance(outcome, Acked | Nacked):
                for release in conn.unanswered.pop(outcome.type_url, ()):
                    release()
            if isinstance(outcome, Subscribed) and (outcome.added or outcome.removed):
                resubscribe = True
        if resubscribe:
            await self._pusher.resubscribe(conn)
        conn.notify(now)

    def _record(self, conn: Connection, outcome: Outcome, now: float) -> None:
        short = SHORT_NAMES.get(outcome.type_url, outcome.type_url)
        extra: dict[str, object] = {"node": conn.node.id, "type": short}
        match outcome:
            case Acked(nonce=nonce, since=since, resources=count):
                self._metrics.acks.labels(short).inc()
                if since is not None and count:
                    self._metrics.convergence.labels(short).observe(max(0.0, now - since))
                log.debug("ack", extra={**extra, "event": "ack", "nonce": nonce})
            case Nacked(nonce=nonce, rejected=rejected, message=message):
                self._metrics.nacks.labels(short).inc()
                log.warning(
                    "sidecar rejected config: %s",
                    message,
                    extra={**extra, "event": "nack", "nonce": nonce, "rejected": list(rejected)},
                )
            case Subscribed(wildcard=wildcard, added=added, held=held):
                log.debug(
                    "subscribe",
                    extra={
                        **extra,
                        "event": "subscribe",
                        "wildcard": wildcard,
                        "names": list(added),
                        "held": held,
                    },
                )
            case Ignored(reason=reason):
                log.debug("ignored request: %s", reason, extra={**extra, "event": "ignored"})

    def _round(self, conn: Connection) -> list[tuple[str, bytes]]:
        """The responses to send now, in push order (make before break)."""
        protocol = conn.protocol
        sets = conn.sets()
        now = self._clock()
        out = []
        for type_url in PUSH_ORDER:
            resource_set = sets[type_url]
            snapshot = resource_set.current
            if protocol.in_flight(type_url):
                if protocol.behind(type_url, snapshot.tag):
                    break  # later types wait until this one's newer resources can go first
                continue
            plan = protocol.plan(
                type_url,
                Target(tag=snapshot.tag, versions=snapshot.versions),
                changed=resource_set.changed_since,
                now=now,
            )
            if plan is None:
                continue
            if plan.full:
                entries = resource_set.full_entries()
            else:
                entries = b"".join(snapshot.resources[name].entry for name in plan.send)
            body = wire.response(
                type_url=type_url, entries=entries, removed=plan.remove, nonce=plan.nonce
            )
            short = SHORT_NAMES[type_url]
            self._metrics.pushes.labels(short).inc()
            self._metrics.sent_bytes.labels(short).inc(len(body))
            out.append((type_url, body))
        return out
