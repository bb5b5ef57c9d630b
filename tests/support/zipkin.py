"""A Zipkin-compatible collector for tests: POST /api/v2/spans, every span checked against the v2 schema.

Runs an aiohttp app in a background thread (the mesh tests are synchronous); keeps the spans it
accepted and the schema errors it found (a bad batch is answered 400, as Zipkin does).
"""

import asyncio
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from aiohttp import web

from tests.support.servers import serving

_HEX16 = re.compile(r"[0-9a-f]{16}")
_TRACE = re.compile(r"[0-9a-f]{16}|[0-9a-f]{32}")
KINDS = ("CLIENT", "SERVER", "PRODUCER", "CONSUMER")


def schema_errors(span: Any) -> list[str]:
    """What makes `span` not a valid Zipkin v2 span (zipkin2-api.yaml), [] if nothing."""
    if not isinstance(span, dict):
        return [f"span is {type(span).__name__}, not an object"]
    errors = []
    if not isinstance(span.get("traceId"), str) or not _TRACE.fullmatch(span["traceId"]):
        errors.append(f"traceId {span.get('traceId')!r} is not 16 or 32 lower-hex")
    if not isinstance(span.get("id"), str) or not _HEX16.fullmatch(span["id"]):
        errors.append(f"id {span.get('id')!r} is not 16 lower-hex")
    if "parentId" in span and (
        not isinstance(span["parentId"], str) or not _HEX16.fullmatch(span["parentId"])
    ):
        errors.append(f"parentId {span['parentId']!r} is not 16 lower-hex")
    if "kind" in span and span["kind"] not in KINDS:
        errors.append(f"kind {span['kind']!r} is not one of {KINDS}")
    for key in ("timestamp", "duration"):
        value = span.get(key)
        if value is not None and (not isinstance(value, int) or value < 1):
            errors.append(f"{key} {value!r} is not a positive integer of microseconds")
    if "name" in span and not isinstance(span["name"], str):
        errors.append("name is not a string")
    for key in ("localEndpoint", "remoteEndpoint"):
        endpoint = span.get(key)
        if endpoint is None:
            continue
        if not isinstance(endpoint, dict):
            errors.append(f"{key} is not an object")
            continue
        unknown = set(endpoint) - {"serviceName", "ipv4", "ipv6", "port"}
        if unknown:
            errors.append(f"{key} has unknown fields {sorted(unknown)}")
        if "port" in endpoint and not isinstance(endpoint["port"], int):
            errors.append(f"{key}.port is not an integer")
    tags = span.get("tags", {})
    if not isinstance(tags, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in tags.items()
    ):
        errors.append("tags is not an object of string values")
    unknown = set(span) - {
        "traceId", "id", "parentId", "name", "kind", "timestamp", "duration", "localEndpoint",
        "remoteEndpoint", "annotations", "tags", "debug", "shared",
    }  # fmt: skip
    if unknown:
        errors.append(f"unknown fields {sorted(unknown)}")
    return errors


class Collector:
    """The spans received so far (thread-safe reads of plain lists)."""

    def __init__(self) -> None:
        self.spans: list[dict[str, Any]] = []
        self.errors: list[str] = []
        self.batches = 0
        self.port = 0

    @property
    def url(self) -> str:
        """The endpoint to give sidecars (--zipkin-url)."""
        return f"http://127.0.0.1:{self.port}/api/v2/spans"

    def trace(self, trace_id: str) -> list[dict[str, Any]]:
        """The spans of one trace."""
        return [s for s in list(self.spans) if s.get("traceId") == trace_id]

    async def _receive(self, request: web.Request) -> web.Response:
        if request.content_type != "application/json":
            self.errors.append(f"content-type {request.content_type!r}")
            return web.Response(status=415)
        batch = await request.json()
        if not isinstance(batch, list):
            self.errors.append("body is not a JSON array of spans")
            return web.Response(status=400)
        errors = [
            f"{s.get('id') if isinstance(s, dict) else s}: {e}"
            for s in batch
            for e in schema_errors(s)
        ]
        if errors:
            self.errors.extend(errors)
            return web.Response(status=400, text="\n".join(errors))
        self.batches += 1
        self.spans.extend(batch)
        return web.Response(status=202)


@contextmanager
def zipkin_collector() -> Iterator[Collector]:
    """A running collector; stopped on exit."""
    collector = Collector()
    app = web.Application()
    app.router.add_post("/api/v2/spans", collector._receive)
    loop = asyncio.new_event_loop()
    started = threading.Event()
    stop: asyncio.Event | None = None

    async def serve() -> None:
        nonlocal stop
        stop = asyncio.Event()
        async with serving(app) as port:
            collector.port = port
            started.set()
            await stop.wait()

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    if not started.wait(10):
        raise TimeoutError("zipkin collector did not start")
    try:
        yield collector
    finally:
        assert stop is not None
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)
        loop.close()
