"""The config stream client: subscribes, applies deltas, ACKs/NACKs, reconnects with backoff.

The last applied config keeps serving while the control plane is away; on reconnect the versions
held are announced so the control plane sends only what changed meanwhile. With a `report`, the
sidecar's traffic counters ride on the same stream every `report_interval` seconds (the dashboard's
data, controlplane/traffic.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from lightmesh.types import SHORT_NAMES
from lightmesh.v1 import discovery_pb2 as pb
from sidecar.config.apply import DataPlane
from sidecar.config.channel import EOF, RpcError, StatusCode, open_channel
from sidecar.config.protocol import ClientProtocol
from sidecar.errors import ConfigError

log = logging.getLogger("sidecar.config")

METHOD = "/lightmesh.v1.ConfigDiscovery/DeltaConfig"


class Backoff:
    """Exponential backoff with jitter: base · 2^n, capped, each delay scaled by U(0.5, 1.5)."""

    def __init__(self, *, base: float = 0.25, cap: float = 4.0, rng: random.Random) -> None:
        self._base = base
        self._cap = cap
        self._rng = rng
        self._attempt = 0

    def next_delay(self) -> float:
        """Delay before the next attempt."""
        delay = min(self._cap, self._base * 2.0**self._attempt) * self._rng.uniform(0.5, 1.5)
        self._attempt += 1
        return delay

    def reset(self) -> None:
        """Start over after a success."""
        self._attempt = 0


class ConfigClient:
    """Keeps a `DataPlane` in step with the control plane."""

    def __init__(
        self,
        *,
        target: str,
        ca_bundle: Path | None = None,
        node: pb.Node,
        dataplane: DataPlane,
        on_applied: Callable[[], None] = lambda: None,
        rng: random.Random | None = None,
        report: Callable[[], pb.TrafficReport] | None = None,
        report_interval: float = 5.0,
        token_file: Path | None = None,
    ) -> None:
        # Sent on every stream: the control plane sends a gateway its listeners (with the keys
        # of their TLS Secrets) only when this token vouches for the identity the node claims.
        self._token_file = token_file
        if report is not None and report_interval <= 0:
            raise ValueError(f"report_interval must be positive, not {report_interval}")
        self._report = report
        self._report_interval = report_interval
        self._target = target
        self._ca_bundle = ca_bundle
        self._node = node
        self._dataplane = dataplane
        self._on_applied = on_applied
        self.protocol = ClientProtocol()
        self.connected = False
        self._backoff = Backoff(rng=rng or random.Random())

    async def run(self, stop: asyncio.Event) -> None:
        """Stay connected until `stop` is set."""
        while not stop.is_set():
            try:
                await self._stream(stop)
            except RpcError as error:
                log.warning(
                    "config stream failed: %s %s",
                    error.code().name,
                    error.details(),
                    extra={"event": "stream_error", "target": self._target},
                )
            except Exception:
                # This loop owns recovery: whatever broke the stream, keep serving the last good
                # config and try again after the backoff.
                log.exception("config stream crashed", extra={"event": "stream_error"})
            finally:
                self.connected = False
            if stop.is_set():
                return
            delay = self._backoff.next_delay()
            log.info("reconnecting in %.2fs", delay, extra={"event": "reconnect_wait"})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=delay)

    def _metadata(self) -> tuple[tuple[str, str], ...]:
        if self._token_file is None:
            return ()
        try:
            token = self._token_file.read_text().strip()  # re-read: projected tokens rotate
        except OSError as error:
            log.warning(
                "cannot read the token file: %s", error, extra={"event": "token_unreadable"}
            )
            return ()
        return (("authorization", f"Bearer {token}"),) if token else ()

    async def _stream(self, stop: asyncio.Event) -> None:
        async with open_channel(self._target, self._ca_bundle) as channel:
            call = channel.stream_stream(
                METHOD,
                request_serializer=pb.DeltaDiscoveryRequest.SerializeToString,
                response_deserializer=pb.DeltaDiscoveryResponse.FromString,
            )(metadata=self._metadata())
            for index, sub in enumerate(self.protocol.subscriptions()):
                request = pb.DeltaDiscoveryRequest(
                    type_url=sub.type_url,
                    resource_names_subscribe=sub.subscribe,
                    initial_resource_versions=sub.initial,
                    initial_resources_digest=sub.digest,
                )
                if index == 0:
                    request.node.CopyFrom(self._node)
                await call.write(request)
            # Replies and reports write from two tasks: one message at a time, or a message split
            # across flow-control windows could interleave with the other.
            writing = asyncio.Lock()

            async def write(request: pb.DeltaDiscoveryRequest) -> None:
                async with writing:
                    await call.write(request)

            stopped = asyncio.ensure_future(stop.wait())
            reports = (
                asyncio.ensure_future(self._send_reports(self._report, write))
                if self._report is not None
                else None
            )
            try:
                while True:
                    read = asyncio.ensure_future(call.read())
                    await asyncio.wait({read, stopped}, return_when=asyncio.FIRST_COMPLETED)
                    if not read.done():
                        read.cancel()
                        call.cancel()
                        return
                    response = read.result()
                    if response is EOF:
                        log.warning("control plane closed the stream", extra={"event": "eof"})
                        return
                    if not self.connected:
                        self.connected = True
                        self._backoff.reset()
                        log.info("connected", extra={"event": "connected", "target": self._target})
                    await write(self._handle(response))
            finally:
                stopped.cancel()
                if reports is not None:
                    reports.cancel()
                    with contextlib.suppress(asyncio.CancelledError, RpcError):
                        await reports

    async def _send_reports(
        self,
        report: Callable[[], pb.TrafficReport],
        write: Callable[[pb.DeltaDiscoveryRequest], Awaitable[None]],
    ) -> None:
        """Every `report_interval`: the traffic counters, as a request with no type (the stream
        breaking ends this task with the stream)."""
        while True:
            await asyncio.sleep(self._report_interval)
            try:
                built = report()
            except Exception:
                # Telemetry must never break the config stream: skip this report, try the next.
                log.exception("traffic report failed", extra={"event": "report_error"})
                continue
            await write(pb.DeltaDiscoveryRequest(traffic_report=built))

    def _handle(self, response: pb.DeltaDiscoveryResponse) -> pb.DeltaDiscoveryRequest:
        short = SHORT_NAMES.get(response.type_url, response.type_url)
        updated = [(r.name, r.resource) for r in response.resources]
        try:
            self._dataplane.apply_delta(response.type_url, updated, response.removed_resources)
            error = None
        except ConfigError as rejected:
            error = str(rejected)
        reply = self.protocol.on_response(
            type_url=response.type_url,
            updated={r.name: r.version for r in response.resources},
            removed=response.removed_resources,
            nonce=response.nonce,
            error=error,
            now=time.time(),
        )
        extra = {
            "type": short,
            "resources": len(response.resources),
            "removed": len(response.removed_resources),
            "version": self.protocol.held[response.type_url].version,
        }
        if error is None:
            log.info("applied config", extra={"event": "applied", **extra})
            self._on_applied()
        else:
            log.warning("rejected config: %s", error, extra={"event": "nack", **extra})
        request = pb.DeltaDiscoveryRequest(type_url=reply.type_url, response_nonce=reply.nonce)
        if reply.error is not None:
            request.error_detail.code = StatusCode.INVALID_ARGUMENT
            request.error_detail.message = reply.error
        return request
