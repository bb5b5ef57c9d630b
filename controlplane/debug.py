"""Debug HTTP server of the control plane: proxy status, problems, per-proxy config, metrics, and
the service graph (/debug/graph as JSON, /dashboard as a page drawing it).

The debug endpoints show every proxy's config and every resource problem, so they are served on
loopback only (reached in a cluster through `kubectl port-forward`, which the API server
authorizes: `pods/portforward` in the control plane's namespace). The metrics port serves only
/metrics, /healthz and /ready, on the control plane's address, for Prometheus and the kubelet.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from google.protobuf.json_format import MessageToDict
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.openmetrics import exposition as openmetrics

from controlplane.metrics import ControlPlaneMetrics
from controlplane.push.pusher import Pusher
from controlplane.store import Store
from controlplane.traffic import (
    Flow,
    Reporter,
    TrafficStore,
    assemble_graph,
    flows_from_prometheus,
    prometheus_queries,
)
from controlplane.xds.protocol import SyncState
from lightmesh.types import PUSH_ORDER, SHORT_NAMES


def proxy_status(pusher: Pusher, *, now: float) -> list[dict[str, Any]]:
    """Per connected sidecar and resource type: SYNCED / STALE / NACKED, the digest of the set it
    should hold (`latest`) and of what it ACKed (`acked`), and the resource count."""
    rows = []
    for node_id in sorted(pusher.connections):
        conn = pusher.connections[node_id]
        sets = conn.sets()
        types: dict[str, Any] = {}
        for type_url in PUSH_ORDER:
            resource_set = sets[type_url]
            latest_tag = resource_set.current.tag
            sync = conn.protocol.sync_state(type_url, latest_tag)
            latest = resource_set.digest()
            entry: dict[str, Any] = {
                "state": sync.value,
                "latest": latest,
                "resources": len(resource_set.current.versions),
            }
            state = conn.protocol.types.get(type_url)
            if state is not None and sync is not SyncState.STALE:
                # What it holds (cheap when SYNCED; a digest of its resources when NACKED; left
                # out while STALE, which would cost O(resources) per sidecar mid-push).
                entry["acked"] = conn.protocol.held_digest(type_url, latest_tag, latest)
            if state is not None:
                if sync is SyncState.STALE and state.sent_at:
                    entry["pending_seconds"] = round(now - state.sent_at, 3)
                if state.rejected:
                    entry["nack"] = state.nack_message
                    entry["nacked_version"] = ",".join(
                        f"{name}@{version}" for name, version in sorted(state.rejected.items())
                    )
                if state.names:
                    entry["subscribed"] = sorted(state.names)
            types[SHORT_NAMES[type_url]] = entry
        rows.append(
            {
                "id": node_id,
                "workload": conn.node.workload,
                "namespace": conn.node.namespace,
                "gateway": conn.node.gateway,
                "connected_since": conn.connected_at,
                "scope": {
                    "namespace": conn.view.scope.namespace,
                    "sidecar": str(conn.view.scope.sidecar.key) if conn.view.scope.sidecar else "",
                    "on_demand": sorted(conn.view.scope.extra_hosts),
                },
                "types": types,
            }
        )
    return rows


_SEVERITY = {"SYNCED": 0, "STALE": 1, "NACKED": 2}
DEFAULT_WINDOW = 60.0
GRAPH_TTL = 1.0  # seconds a served graph is reused for the same window and source
MAX_WINDOW = 900.0


def parse_window(text: str | None) -> float:
    """The graph window from `?window=` (seconds, or with an s/m suffix); ValueError naming it."""
    if not text:
        return DEFAULT_WINDOW
    raw = text.strip().lower()
    scale = 60.0 if raw.endswith("m") else 1.0
    try:
        value = float(raw.rstrip("sm")) * scale
    except ValueError:
        raise ValueError(
            f"window: {text!r} is not a number of seconds (e.g. 60, 30s, 5m)"
        ) from None
    if not 0 < value <= MAX_WINDOW:
        raise ValueError(f"window: {text!r} is not within 0..{MAX_WINDOW:.0f} seconds")
    return value


class PrometheusError(Exception):
    """The Prometheus the graph is built from did not answer a query."""


async def prometheus_flows(url: str, *, window: float) -> tuple[list[Flow], list[Reporter]]:
    """The window's flows from PromQL over the sidecars' metrics (controlplane/traffic.py)."""
    results = []
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        for query in prometheus_queries(window):
            try:
                async with session.get(f"{url}/api/v1/query", params={"query": query}) as reply:
                    body = await reply.json(content_type=None)
            except (aiohttp.ClientError, TimeoutError, ValueError) as error:
                raise PrometheusError(f"{url}: {str(error) or type(error).__name__}") from None
            if body.get("status") != "success":
                raise PrometheusError(f"{url}: {query}: {body.get('error', body)}")
            results.append(body["data"]["result"])
    return flows_from_prometheus(results[0], results[1], window=window)


def service_graph(
    traffic: TrafficStore,
    pusher: Pusher,
    store: Store,
    *,
    window: float,
    now: float,
    prometheus: tuple[list[Flow], list[Reporter]] | None = None,
) -> dict[str, Any]:
    """The graph of the last `window` seconds, with each workload's proxies (config sync state
    per type) and the problems of resources named after its services; from the sidecars'
    reports, or from `prometheus` flows when given."""
    if prometheus is not None:
        flows, reporters = prometheus
        graph = assemble_graph(flows, reporters=reporters)
    else:
        report_flows, clusters = traffic.flows(window=window, now=now)
        graph = assemble_graph(report_flows, clusters, reporters=traffic.reporters())
    proxies: dict[str, list[dict[str, Any]]] = {}
    for row in proxy_status(pusher, now=now):
        states = {name: entry["state"] for name, entry in row["types"].items()}
        worst = max(states.values(), key=lambda s: _SEVERITY.get(s, 0), default="SYNCED")
        nacks = {name: entry["nack"] for name, entry in row["types"].items() if "nack" in entry}
        proxies.setdefault(f"{row['namespace']}/{row['workload']}", []).append(
            {"id": row["id"], "sync": worst, "types": states, "nacks": nacks}
        )
    problems = store.problems()
    for node in graph["nodes"]:
        if node["kind"] != "workload":
            continue
        node["proxies"] = proxies.get(node["id"], [])
        node["sync"] = max(
            (p["sync"] for p in node["proxies"]), key=lambda s: _SEVERITY.get(s, 0), default=""
        )
        names = {f"{node['namespace']}/{s}" for s in node["services"]}
        node["problems"] = [str(p) for p in problems if p.resource.partition(" ")[2] in names]
    by_id = {n["id"]: n for n in graph["nodes"]}
    for node in graph["nodes"]:
        node["ejected"] = 0
        node["overflows"] = 0.0
    for edge in graph["edges"]:
        # A caller's view of its upstreams: endpoints it ejected, requests its breakers refused.
        source = by_id.get(edge["source"])
        if source is not None:
            source["ejected"] += edge["ejected"]
            source["overflows"] += edge["overflows"]
    source = "prometheus" if prometheus is not None else "sidecars"
    return {"window_seconds": window, "source": source, **graph}


def build_app(
    *,
    store: Store,
    pusher: Pusher,
    metrics: ControlPlaneMetrics,
    debug: bool = True,
    traffic: TrafficStore | None = None,
    prometheus_url: str = "",
) -> web.Application:
    """The aiohttp application serving the debug endpoints and metrics/health; `debug=False`:
    metrics and health only (the metrics port)."""

    async def proxies(_: web.Request) -> web.Response:
        return web.json_response(
            {"proxies": proxy_status(pusher, now=time.monotonic())}, dumps=_dumps
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
        conn = pusher.connections.get(node_id)
        if conn is None:
            raise web.HTTPNotFound(text=f"no connected proxy {node_id!r}\n")
        body = {}
        for type_url, resource_set in conn.sets().items():
            snapshot = resource_set.current
            body[SHORT_NAMES[type_url]] = {
                "version": resource_set.digest(),
                "resources": [
                    {
                        "name": name,
                        "version": snapshot.versions[name],
                        **_redacted(MessageToDict(snapshot.resources[name].decode())),
                    }
                    for name in sorted(snapshot.resources)
                ],
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

    # Graphs served in the last GRAPH_TTL seconds, by (window, source): every open dashboard polls
    # every 2 s, and a graph of a large mesh costs tens of ms of the loop the streams share.
    served: dict[tuple[float, str], tuple[float, str]] = {}

    async def graph(request: web.Request) -> web.Response:
        try:
            window = parse_window(request.query.get("window"))
        except ValueError as error:
            raise web.HTTPBadRequest(text=f"{error}\n") from None
        # ?source=sidecars: the reports even when a Prometheus is configured.
        source = request.query.get("source", "prometheus" if prometheus_url else "sidecars")
        if source not in ("sidecars", "prometheus"):
            raise web.HTTPBadRequest(text=f"source: {source!r} is not sidecars or prometheus\n")
        if source == "prometheus" and not prometheus_url:
            raise web.HTTPBadRequest(text="source: no --prometheus-url configured\n")
        now = time.monotonic()
        cached = served.get((window, source))
        if cached is not None and now - cached[0] < GRAPH_TTL:
            return web.Response(text=cached[1], content_type="application/json")
        from_prometheus = None
        if source == "prometheus":
            try:
                from_prometheus = await prometheus_flows(prometheus_url, window=window)
            except PrometheusError as error:
                raise web.HTTPBadGateway(text=f"prometheus: {error}\n") from None
        body = service_graph(
            traffic or TrafficStore(),
            pusher,
            store,
            window=window,
            now=now,
            prometheus=from_prometheus,
        )
        text = _dumps(body)
        for key in [k for k, (at, _) in served.items() if now - at >= GRAPH_TTL]:
            del served[key]  # what is left: the graphs asked for in the last second
        served[(window, source)] = (now, text)
        return web.Response(text=text, content_type="application/json")

    async def dashboard(_: web.Request) -> web.Response:
        return web.Response(
            body=dashboard_page(),
            content_type="text/html",
            charset="utf-8",
            headers={"Cache-Control": "no-store"},
        )

    app = web.Application()
    if debug:
        app.router.add_get("/debug/proxies", proxies)
        app.router.add_get("/debug/problems", problems)
        app.router.add_get("/debug/config/{node}", config)
        app.router.add_get("/debug/graph", graph)
        app.router.add_get("/dashboard", dashboard)
    app.router.add_get("/metrics", prometheus)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/ready", healthz)
    return app


def dashboard_page() -> bytes:
    """The dashboard's HTML (one file, its script and style inline: no CDN, works offline)."""
    return (Path(__file__).parent / "dashboard.html").read_bytes()


def _dumps(value: Any) -> str:
    return json.dumps(value, indent=2)


def _redacted(resource: dict[str, Any]) -> dict[str, Any]:
    """A resource as the debug page shows it: a gateway listener's private keys (from Secrets)
    are never shown, even on loopback."""
    for server in resource.get("servers", ()):
        tls = server.get("tls") or {}
        if tls.get("privateKeyPem"):
            tls["privateKeyPem"] = "(redacted)"
    return resource
