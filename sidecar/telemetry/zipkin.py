"""Zipkin v2 span export: spans built from completed exchanges, POSTed in batches off the hot path.

The request path only appends (Completed, kind) to a bounded deque — when full the span is dropped
and counted, never waited for. A background task turns queued exchanges into Zipkin v2 JSON (accepted
by Zipkin, Jaeger and the OpenTelemetry collector) and POSTs batches with a small HTTP/1.1 client
(no aiohttp in the sidecar process). Spans are built in small slices with a yield to the loop
between them, so an export never stalls traffic for more than a fraction of a millisecond. After a
failed export (collector down, slow or refusing) the exporter backs off, 1 s doubling to 30 s, and
until then counts queued spans as failed without building them: a dead collector costs a counter.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from sidecar.contract import Completed
from sidecar.telemetry.propagation import injected

log = logging.getLogger("sidecar.tracing")

CLIENT = "CLIENT"
_SLICE = 32  # spans built between two yields to the event loop
SERVER = "SERVER"


@dataclass(frozen=True, slots=True, kw_only=True)
class LocalEndpoint:
    """Who reports the spans: the workload's service name and address."""

    service: str
    address: str = ""


def _endpoint(address: str, service: str = "") -> dict[str, Any]:
    host, sep, port = address.rpartition(":")
    if not sep:
        host, port = address, ""
    out: dict[str, Any] = {}
    if service:
        out["serviceName"] = service
    if host:
        out["ipv6" if ":" in host else "ipv4"] = host.strip("[]")
    if port.isdigit():
        out["port"] = int(port)
    return out


def build_span(
    done: Completed, kind: str, local: LocalEndpoint, *, peer_service: str = ""
) -> dict[str, Any] | None:
    """The Zipkin v2 span of one exchange, or None if it carries no (sampled) trace context."""
    if done.head is None:
        return None
    context = injected(done.head.headers)
    if context is None or not context.sampled:
        return None
    head = done.head
    tags = {
        "http.method": done.method,
        "http.status_code": str(done.status),
        "http.url": f"http://{head.host}{head.path}",
        "http.protocol": f"HTTP/{head.http_version}",
        "upstream_cluster": done.cluster,
        "response_flags": done.flags or "-",
        "request_size": str(done.request_bytes),
        "response_size": str(done.response_bytes),
        "component": "proxy",
    }
    request_id = head.header(b"x-request-id")
    if request_id:
        tags["guid:x-request-id"] = request_id.decode("latin-1")
    if done.upstream:
        tags["upstream_address"] = done.upstream
    if peer_service:
        tags["peer.service"] = peer_service
    if done.status >= 500 or done.status == 0:
        tags["error"] = "true"
    span: dict[str, Any] = {
        "traceId": context.trace_id,
        "id": context.span_id,
        "kind": kind,
        "name": f"{done.method} {head.host}".lower(),
        "timestamp": int(done.start_time * 1_000_000),
        "duration": max(1, int(done.duration * 1_000_000)),
        "localEndpoint": _endpoint(local.address, local.service),
        "tags": tags,
    }
    if context.parent_id:
        span["parentId"] = context.parent_id
    remote = done.upstream if kind == CLIENT else head.peer
    if remote or peer_service:
        span["remoteEndpoint"] = _endpoint(remote, peer_service)
    return span


class ZipkinExporter:
    """Bounded span queue and the task that ships it to a Zipkin v2 endpoint."""

    def __init__(
        self,
        url: str,
        local: LocalEndpoint,
        *,
        max_queue: int = 2048,
        batch_size: int = 256,
        interval: float = 1.0,
        timeout: float = 2.0,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"--zipkin-url: {url!r} is not an http://host[:port]/path URL")
        self._host = parts.hostname
        self._port = parts.port or 80
        self._path = parts.path or "/api/v2/spans"
        self._local = local
        self._queue: deque[tuple[Completed, str, str]] = deque()
        self._max_queue = max_queue
        self._batch_size = batch_size
        self._interval = interval
        self._timeout = timeout
        self._wake = asyncio.Event()
        self._retry_at = 0.0  # monotonic time before which exports are not attempted
        self._backoff = 0.0
        self.exported = 0  # spans the collector accepted
        self.dropped = 0  # spans not queued: queue full
        self.failed = 0  # spans lost to a failed export (collector down, slow or refusing)

    def submit(self, done: Completed, kind: str, peer_service: str = "") -> None:
        """Queue one sampled exchange; drop it (counted) when the queue is full. Never blocks."""
        if len(self._queue) >= self._max_queue:
            self.dropped += 1
            return
        self._queue.append((done, kind, peer_service))
        if len(self._queue) >= self._batch_size:
            self._wake.set()

    @property
    def queued(self) -> int:
        """Spans waiting for export."""
        return len(self._queue)

    async def run(self, stop: asyncio.Event) -> None:
        """Export batches every `interval` (or when a batch fills) until `stop`, then flush once."""
        # `stop` wakes the loop too, so shutdown does not wait out an interval.
        waiter = asyncio.create_task(stop.wait())
        waiter.add_done_callback(lambda _: self._wake.set())
        try:
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=self._interval)
                self._wake.clear()
                await self.flush()
        finally:
            waiter.cancel()
        await self.flush()

    async def flush(self) -> None:
        """Export everything queued now, in batches (or count it failed while backing off)."""
        while self._queue:
            if time.monotonic() < self._retry_at:
                self.failed += len(self._queue)
                self._queue.clear()
                return
            batch: list[dict[str, Any]] = []
            while self._queue and len(batch) < self._batch_size:
                for _ in range(min(_SLICE, len(self._queue), self._batch_size - len(batch))):
                    done, kind, peer = self._queue.popleft()
                    span = build_span(done, kind, self._local, peer_service=peer)
                    if span is not None:
                        batch.append(span)
                await asyncio.sleep(0)  # let requests run between slices
            if batch:
                await self._export(batch)

    async def _export(self, spans: list[dict[str, Any]]) -> None:
        body = json.dumps(spans, separators=(",", ":")).encode()
        try:
            async with asyncio.timeout(self._timeout):
                status = await self._post(body)
        except (OSError, TimeoutError, ValueError) as error:
            self._failed(len(spans), repr(error))
            return
        if 200 <= status < 300:
            self.exported += len(spans)
            self._backoff = 0.0
        else:
            self._failed(len(spans), f"HTTP {status}")

    def _failed(self, count: int, why: str) -> None:
        if not self.failed:  # say it once; the counter tells the rest
            log.warning("span export failed: %s", why, extra={"event": "span_export_failed"})
        self.failed += count
        self._backoff = min(max(self._backoff * 2, 1.0), 30.0)
        self._retry_at = time.monotonic() + self._backoff

    async def _post(self, body: bytes) -> int:
        reader, writer = await asyncio.open_connection(self._host, self._port)
        try:
            writer.write(
                b"POST %s HTTP/1.1\r\nhost: %s:%d\r\ncontent-type: application/json\r\n"
                b"content-length: %d\r\nconnection: close\r\n\r\n"
                % (self._path.encode(), self._host.encode(), self._port, len(body))
                + body
            )
            await writer.drain()
            status_line = await reader.readline()
            parts = status_line.split(b" ", 2)
            if len(parts) < 2 or not parts[1].isdigit():
                raise ValueError(f"bad status line {status_line[:80]!r}")
            return int(parts[1])
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
