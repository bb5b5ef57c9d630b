"""Debug HTTP server of the control plane: proxy status, problems, per-proxy config, metrics."""

from __future__ import annotations

import json
import time
from typing import Any

from aiohttp import web
from google.protobuf.json_format import MessageToDict
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.openmetrics import exposition as openmetrics

from controlplane.metrics import ControlPlaneMetrics
from controlplane.push import Pusher
from controlplane.snapshots import SnapshotCache
from controlplane.store import Store
from controlplane.xds.protocol import SyncState
from lightmesh.types import PUSH_ORDER, SHORT_NAMES


def proxy_status(pusher: Pusher, cache: SnapshotCache, *, now: float) -> list[dict[str, Any]]:
    """Per connected sidecar and resource type: SYNCED / STALE / NACKED and the versions involved."""
    rows = []
    for node_id in sorted(pusher.connections):
        conn = pusher.connections[node_id]
        latest = cache.versions(node_id)
        types: dict[str, Any] = {}
        for type_url in PUSH_ORDER:
            state = conn.protocol.types.get(type_url)
            sync = conn.protocol.sync_state(type_url, latest.get(type_url))
            entry: dict[str, Any] = {"state": sync.value, "latest": latest.get(type_url, "")}
            if state is not None:
                entry["acked"] = state.acked_version
                entry["sent"] = state.sent_version
                if sync is SyncState.STALE and state.sent_at:
                    entry["pending_seconds"] = round(now - state.sent_at, 3)
                if state.nack_message:
                    entry["nack"] = state.nack_message
                    entry["nacked_version"] = state.nacked_version
            types[SHORT_NAMES[type_url]] = entry
        rows.append(
            {
                "id": node_id,
                "workload": conn.node.workload,
                "namespace": conn.node.namespace,
                "connected_since": conn.connected_at,
                "types": types,
            }
        )
    return rows


def build_app(
    *, store: Store, pusher: Pusher, cache: SnapshotCache, metrics: ControlPlaneMetrics
) -> web.Application:
    """The aiohttp application serving the debug endpoints."""

    async def proxies(_: web.Request) -> web.Response:
        return web.json_response(
            {"proxies": proxy_status(pusher, cache, now=time.monotonic())}, dumps=_dumps
        )

    async def problems(_: web.Request) -> web.Response:
        items = [
            {
                "origin": p.origin,
                "resource": p.resource,
                "path": p.path,
                "message": p.message,
                "text": str(p),
            }
            for p in store.problems()
        ]
        return web.json_response({"revision": store.revision, "problems": items}, dumps=_dumps)

    async def config(request: web.Request) -> web.Response:
        node_id = request.match_info["node"]
        snapshots = cache.get(node_id)
        if not snapshots:
            raise web.HTTPNotFound(text=f"no connected proxy {node_id!r}\n")
        body = {
            SHORT_NAMES[t]: {
                "version": s.version,
                "resources": [MessageToDict(r) for r in s.resources],
            }
            for t, s in snapshots.items()
        }
        return web.json_response(body, dumps=_dumps)

    async def prometheus(request: web.Request) -> web.Response:
        metrics.problems.set(len(store.problems()))
        # OpenMetrics when the scraper asks for it (Prometheus does), text format otherwise.
        if "application/openmetrics-text" in request.headers.get("Accept", ""):
            body = openmetrics.generate_latest(metrics.registry)  # type: ignore[no-untyped-call]
            return web.Response(
                body=body, headers={"Content-Type": openmetrics.CONTENT_TYPE_LATEST}
            )
        return web.Response(
            body=generate_latest(metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    app = web.Application()
    app.router.add_get("/debug/proxies", proxies)
    app.router.add_get("/debug/problems", problems)
    app.router.add_get("/debug/config/{node}", config)
    app.router.add_get("/metrics", prometheus)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/ready", healthz)
    return app


def _dumps(value: Any) -> str:
    return json.dumps(value, indent=2)
