"""The service graph: sidecars' traffic reports kept for a bounded time, turned into per-edge golden
signals (requests/s, errors by status class, p50/p95/p99, mTLS share, response flags) over a
window. Pure: time enters as `now`, nothing here does I/O.

Reports carry cumulative counters (sidecar/telemetry/report.py); a node's traffic over a window is
the difference between its latest report and the last one at or before the window's start (its
oldest when it is younger than the window). Memory is bounded: per node at most `max_reports`
reports, none older than `retention`, at most `max_nodes` nodes and `max_series` series a report.

Graph shape: nodes are workloads (ns/workload), services a caller's report could not pin to one
workload (svc:fqdn), and `unknown` (callers without a sidecar, or plaintext callers the destination
cannot identify). Edges come from the calling sidecar's report (reporter=source): it knows its own
workload, the service and subset the route chose, the response and whether its upstream
connection was mutual TLS. Destination reports add only the edges nobody reported as a caller
(requests from outside the mesh into a workload no sidecar calls).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from lightmesh.v1 import discovery_pb2 as pb

UNKNOWN = "unknown"
# Health of an edge or node, by its share of 5xx (Kiali's defaults: degraded above 0.1%, failure
# above 20%); `idle`: no requests in the window.
DEGRADED = 0.001
FAILING = 0.2
# Flags of replies the calling proxy made itself, with no upstream connection: such requests are
# left out of an edge's mTLS share (they were neither mutual TLS nor plaintext).
NO_CONNECTION_FLAGS = frozenset({"NR", "NC", "UH", "UO", "FI"})


@dataclass(frozen=True, slots=True, kw_only=True)
class Reporter:
    """Who sent a report: the sidecar's identity and what it serves."""

    node_id: str
    workload: str
    namespace: str
    app: str = ""
    version: str = ""
    services: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class SeriesKey:
    """One series of a report: an edge seen from one side, and one outcome."""

    reporter: str  # "source" | "destination"
    source_workload: str
    source_namespace: str
    destination_service: str
    destination_subset: str = ""
    destination_workload: str = ""
    code: int = 0
    flags: str = ""
    mtls: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class Counts:
    """Cumulative counters of one series (or their difference over a window)."""

    requests: float
    buckets: tuple[float, ...]  # per latency bucket, not cumulative; len(bounds) + 1
    seconds: float = 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class ClusterCounts:
    """Resilience counters of one outbound cluster (service, subset) of a sidecar."""

    overflows: float = 0
    ejections: float = 0
    ejected: int = 0  # now, not cumulative
    retries: float = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class Report:
    """One traffic report, as received at `at`."""

    at: float
    bounds: tuple[float, ...]
    series: Mapping[SeriesKey, Counts]
    clusters: Mapping[tuple[str, str], ClusterCounts] = field(default_factory=dict)
    truncated: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class Flow:
    """Traffic of one series over the window: what the graph is assembled from (reports or
    Prometheus queries give the same)."""

    reporter: Reporter
    key: SeriesKey
    rate: float  # requests per second
    requests: float  # in the window
    buckets: tuple[float, ...]
    bounds: tuple[float, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class ClusterFlow:
    """A cluster's resilience counters over the window, from one calling sidecar."""

    reporter: Reporter
    service: str
    subset: str
    overflows: float
    ejections: float
    ejected: int
    retries: float


def reporter_of(
    report: pb.TrafficReport,
    *,
    node_id: str,
    workload: str,
    namespace: str,
    labels: Mapping[str, str],
) -> Reporter:
    """The identity of the sidecar that sent `report` (as its stream's first request said)."""
    return Reporter(
        node_id=node_id,
        workload=workload,
        namespace=namespace or "default",
        app=report.app or labels.get("app", ""),
        version=report.version or labels.get("version", ""),
        services=tuple(report.services),
    )


def report_from_proto(message: pb.TrafficReport, *, at: float) -> Report:
    """A received report as kept (series with the same key, if any, are summed)."""
    width = len(message.duration_bounds) + 1
    series: dict[SeriesKey, Counts] = {}
    for edge in message.edges:
        key = SeriesKey(
            reporter=edge.reporter,
            source_workload=edge.source_workload,
            source_namespace=edge.source_namespace,
            destination_service=edge.destination_service,
            destination_subset=edge.destination_subset,
            destination_workload=edge.destination_workload,
            code=edge.response_code,
            flags=edge.response_flags,
            mtls=edge.mtls,
        )
        buckets = tuple(float(b) for b in edge.duration_buckets)
        if len(buckets) != width:
            buckets = (0.0,) * (width - 1) + (float(edge.requests),)  # no latency: +Inf
        before = series.get(key)
        if before is not None:
            buckets = tuple(a + b for a, b in zip(before.buckets, buckets, strict=True))
        series[key] = Counts(
            requests=edge.requests + (before.requests if before else 0),
            buckets=buckets,
            seconds=edge.duration_seconds + (before.seconds if before else 0.0),
        )
    clusters = {
        (c.service, c.subset): ClusterCounts(
            overflows=c.overflows, ejections=c.ejections, ejected=c.ejected, retries=c.retries
        )
        for c in message.clusters
    }
    return Report(
        at=at,
        bounds=tuple(message.duration_bounds),
        series=series,
        clusters=clusters,
        truncated=message.truncated,
    )


def quantile(q: float, bounds: Sequence[float], buckets: Sequence[float]) -> float | None:
    """The q-quantile (seconds) of a histogram by linear interpolation within its bucket, as
    Prometheus' histogram_quantile does; the last bound when it falls in +Inf; None if empty."""
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile must be within 0..1, not {q}")
    total = sum(buckets)
    if total <= 0:
        return None
    rank = q * total
    seen = 0.0
    for index, count in enumerate(buckets):
        if count > 0 and seen + count >= rank:
            if index >= len(bounds):
                return bounds[-1] if bounds else None
            lower = bounds[index - 1] if index > 0 else 0.0
            upper = bounds[index]
            return lower + (upper - lower) * ((rank - seen) / count)
        seen += count
    return bounds[-1] if bounds else None


def service_fqdn(service: str, namespace: str) -> str:
    """The FQDN a short service name of `namespace` stands for."""
    return service if "." in service else f"{service}.{namespace}.svc.cluster.local"


def _difference(latest: Report, base: Report | None) -> dict[SeriesKey, Counts]:
    if base is None:
        return dict(latest.series)
    out = {}
    for key, now in latest.series.items():
        before = base.series.get(key)
        if (
            before is None
            or before.requests > now.requests
            or len(before.buckets) != len(now.buckets)
        ):
            delta = now  # new series (or a reset): all of it happened since
        else:
            delta = Counts(
                requests=now.requests - before.requests,
                buckets=tuple(a - b for a, b in zip(now.buckets, before.buckets, strict=True)),
                seconds=now.seconds - before.seconds,
            )
        if delta.requests > 0:
            out[key] = delta
    return out


class TrafficStore:
    """The latest reports of every sidecar, bounded in time and size."""

    def __init__(
        self,
        *,
        retention: float = 900.0,
        max_reports: int = 256,
        max_nodes: int = 20_000,
        max_series: int = 2_000,
    ) -> None:
        if retention <= 0 or max_reports < 2 or max_nodes < 1 or max_series < 1:
            raise ValueError("retention > 0, max_reports >= 2, max_nodes >= 1, max_series >= 1")
        self.retention = retention
        self._max_reports = max_reports
        self._max_nodes = max_nodes
        self._max_series = max_series
        self._reporters: dict[str, Reporter] = {}
        self._reports: dict[str, deque[Report]] = {}

    def __len__(self) -> int:
        return len(self._reports)

    def add(self, reporter: Reporter, report: Report) -> None:
        """Keep `report` of `reporter`'s sidecar; drop what fell out of retention."""
        if len(report.series) > self._max_series:
            # A sidecar holds at most its own bound of series; a report above ours is cut, the
            # busiest series kept.
            busiest = sorted(report.series.items(), key=lambda kv: -kv[1].requests)
            report = Report(
                at=report.at,
                bounds=report.bounds,
                series=dict(busiest[: self._max_series]),
                clusters=report.clusters,
                truncated=True,
            )
        node = reporter.node_id
        reports = self._reports.get(node)
        if reports is None:
            if len(self._reports) >= self._max_nodes:
                self._evict_oldest()
            reports = self._reports[node] = deque(maxlen=self._max_reports)
        self._reporters[node] = reporter
        reports.append(report)
        self.expire(report.at)

    def _evict_oldest(self) -> None:
        oldest = min(self._reports, key=lambda n: self._reports[n][-1].at)
        self.forget(oldest)

    def forget(self, node_id: str) -> None:
        """Drop a node's reports (its sidecar is gone for good)."""
        self._reports.pop(node_id, None)
        self._reporters.pop(node_id, None)

    def expire(self, now: float) -> None:
        """Drop reports older than the retention, and nodes left without any."""
        horizon = now - self.retention
        for node in list(self._reports):
            reports = self._reports[node]
            # Keep one report older than the horizon: the base of a window reaching back to it.
            while len(reports) > 1 and reports[1].at <= horizon:
                reports.popleft()
            if reports[-1].at < horizon:
                self.forget(node)

    def reporters(self) -> list[Reporter]:
        """Every node with reports."""
        return [self._reporters[n] for n in sorted(self._reports)]

    def flows(self, *, window: float, now: float) -> tuple[list[Flow], list[ClusterFlow]]:
        """Each node's traffic over the last `window` seconds."""
        if window <= 0:
            raise ValueError(f"window must be positive, not {window}")
        start = now - window
        flows: list[Flow] = []
        clusters: list[ClusterFlow] = []
        for node, reports in sorted(self._reports.items()):
            latest = reports[-1]
            if latest.at < start or len(reports) < 2:
                continue  # silent for the whole window, or no difference yet
            base = reports[0]
            for report in reports:
                if report.at <= start:
                    base = report
                else:
                    break
            elapsed = latest.at - base.at
            if elapsed <= 0:
                continue
            reporter = self._reporters[node]
            for key, delta in sorted(_difference(latest, base).items(), key=_series_order):
                flows.append(
                    Flow(
                        reporter=reporter,
                        key=key,
                        rate=delta.requests / elapsed,
                        requests=delta.requests,
                        buckets=delta.buckets,
                        bounds=latest.bounds,
                    )
                )
            for (service, subset), now_counts in sorted(latest.clusters.items()):
                before = base.clusters.get((service, subset), ClusterCounts())
                clusters.append(
                    ClusterFlow(
                        reporter=reporter,
                        service=service,
                        subset=subset,
                        overflows=max(0.0, now_counts.overflows - before.overflows),
                        ejections=max(0.0, now_counts.ejections - before.ejections),
                        ejected=now_counts.ejected,
                        retries=max(0.0, now_counts.retries - before.retries),
                    )
                )
        return flows, clusters


def _series_order(item: tuple[SeriesKey, Counts]) -> tuple[Any, ...]:
    k = item[0]
    return (k.reporter, k.source_workload, k.destination_service, k.destination_subset, k.code)


def _status_class(code: int) -> str:
    return f"{code // 100}xx" if 100 <= code < 600 else "none"


def health(error_rate: float | None) -> str:
    """healthy / degraded / failing by 5xx share; idle without requests."""
    if error_rate is None:
        return "idle"
    if error_rate > FAILING:
        return "failing"
    if error_rate > DEGRADED:
        return "degraded"
    return "healthy"


class _EdgeSum:
    __slots__ = (
        "bounds",
        "buckets",
        "classes",
        "connected",
        "errors",
        "flags",
        "mtls",
        "rate",
        "requests",
    )

    def __init__(self) -> None:
        self.rate = 0.0
        self.requests = 0.0
        self.errors = 0.0
        self.mtls = 0.0
        self.connected = 0.0  # requests that went over a connection (the mTLS share's base)
        self.classes: dict[str, float] = {}
        self.flags: dict[str, float] = {}
        self.buckets: list[float] = []
        self.bounds: tuple[float, ...] = ()

    def add(self, flow: Flow) -> None:
        key = flow.key
        self.rate += flow.rate
        self.requests += flow.requests
        status = _status_class(key.code)
        self.classes[status] = self.classes.get(status, 0.0) + flow.rate
        if key.code >= 500 or key.code == 0:
            self.errors += flow.requests
        if key.flags.partition(",")[0] not in NO_CONNECTION_FLAGS:
            self.connected += flow.requests
            if key.mtls:
                self.mtls += flow.requests
        if key.flags:
            self.flags[key.flags] = self.flags.get(key.flags, 0.0) + flow.requests
        if not self.buckets:
            self.buckets = [0.0] * len(flow.buckets)
            self.bounds = flow.bounds
        if len(flow.buckets) == len(self.buckets):
            for index, count in enumerate(flow.buckets):
                self.buckets[index] += count


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000.0, 3)


def _round(value: float) -> float:
    return round(value, 4) if math.isfinite(value) else 0.0


def assemble_graph(
    flows: Iterable[Flow],
    clusters: Iterable[ClusterFlow] = (),
    *,
    reporters: Iterable[Reporter] = (),
) -> dict[str, Any]:
    """The graph (JSON-ready: nodes, edges) of the flows of one window."""
    flows = list(flows)
    known = {(r.namespace, r.workload): r for r in reporters}
    for flow in flows:
        known.setdefault((flow.reporter.namespace, flow.reporter.workload), flow.reporter)
    serving: dict[str, list[Reporter]] = {}
    for reporter in known.values():
        for service in reporter.services or (reporter.app,):
            if service:
                serving.setdefault(service_fqdn(service, reporter.namespace), []).append(reporter)

    def workload_id(namespace: str, workload: str) -> str:
        return f"{namespace}/{workload}"

    def destination(service: str, subset: str) -> str:
        candidates = serving.get(service, [])
        if subset:
            candidates = [r for r in candidates if r.version == subset]
        if len(candidates) == 1:
            return workload_id(candidates[0].namespace, candidates[0].workload)
        return f"svc:{service}"

    edges: dict[tuple[str, str], _EdgeSum] = {}
    edge_service: dict[tuple[str, str], tuple[str, str]] = {}
    called: set[str] = set()
    for flow in flows:
        key = flow.key
        if key.reporter != "source":
            continue
        source = workload_id(flow.reporter.namespace, flow.reporter.workload)
        target = destination(key.destination_service, key.destination_subset)
        called.add(target)
        pair = (source, target)
        edges.setdefault(pair, _EdgeSum()).add(flow)
        edge_service[pair] = (key.destination_service, key.destination_subset)
    for flow in flows:
        key = flow.key
        target = workload_id(flow.reporter.namespace, flow.reporter.workload)
        if key.reporter != "destination" or target in called:
            continue
        # Only callers no sidecar reported: requests from outside the mesh (or plaintext
        # callers of a workload no meshed caller reached).
        pair = (UNKNOWN, target)
        edges.setdefault(pair, _EdgeSum()).add(flow)
        edge_service[pair] = (key.destination_service, key.destination_subset)

    resilience: dict[tuple[str, str], dict[str, float]] = {}
    for cluster in clusters:
        source = workload_id(cluster.reporter.namespace, cluster.reporter.workload)
        pair = (source, destination(cluster.service, cluster.subset))
        counters = resilience.setdefault(
            pair, {"overflows": 0.0, "ejections": 0.0, "ejected": 0.0, "retries": 0.0}
        )
        counters["overflows"] += cluster.overflows
        counters["ejections"] += cluster.ejections
        counters["ejected"] += cluster.ejected
        counters["retries"] += cluster.retries

    nodes: dict[str, dict[str, Any]] = {}

    def node(node_id: str) -> dict[str, Any]:
        entry = nodes.get(node_id)
        if entry is not None:
            return entry
        if node_id == UNKNOWN:
            entry = {"id": node_id, "kind": "unknown", "label": "unknown"}
        elif node_id.startswith("svc:"):
            fqdn = node_id[4:]
            entry = {"id": node_id, "kind": "service", "label": fqdn.split(".")[0], "service": fqdn}
        else:
            namespace, _, workload = node_id.partition("/")
            reporter = known.get((namespace, workload))
            entry = {
                "id": node_id,
                "kind": "workload",
                "label": workload,
                "workload": workload,
                "namespace": namespace,
                "app": reporter.app if reporter else "",
                "version": reporter.version if reporter else "",
                "services": list(reporter.services) if reporter else [],
            }
        entry.update({"rps_in": 0.0, "requests_in": 0.0, "errors_in": 0.0, "rps_out": 0.0})
        nodes[node_id] = entry
        return entry

    for namespace, workload in sorted(known):
        node(workload_id(namespace, workload))
    out_edges = []
    for (source, target), total in sorted(edges.items()):
        error_rate = total.errors / total.requests if total.requests else None
        bounds, buckets = total.bounds, total.buckets
        service, subset = edge_service[(source, target)]
        extra = resilience.get((source, target), {})
        out_edges.append(
            {
                "id": f"{source}->{target}",
                "source": source,
                "target": target,
                "service": service,
                "subset": subset,
                "rps": _round(total.rate),
                "requests": _round(total.requests),
                "error_rate": _round(error_rate) if error_rate is not None else None,
                "codes": {k: _round(v) for k, v in sorted(total.classes.items())},
                "p50_ms": _ms(quantile(0.5, bounds, buckets)),
                "p95_ms": _ms(quantile(0.95, bounds, buckets)),
                "p99_ms": _ms(quantile(0.99, bounds, buckets)),
                "mtls": _round(total.mtls / total.connected) if total.connected else None,
                "flags": {k: _round(v) for k, v in sorted(total.flags.items())},
                "overflows": extra.get("overflows", 0.0),
                "ejected": int(extra.get("ejected", 0)),
                "retries": extra.get("retries", 0.0),
                "health": health(error_rate),
            }
        )
        src, dst = node(source), node(target)
        src["rps_out"] = _round(src["rps_out"] + total.rate)
        dst["rps_in"] = _round(dst["rps_in"] + total.rate)
        dst["requests_in"] += total.requests
        dst["errors_in"] += total.errors
    for item in nodes.values():
        requests_in = item.pop("requests_in")
        errors_in = item.pop("errors_in")
        rate = errors_in / requests_in if requests_in else None
        item["error_rate_in"] = _round(rate) if rate is not None else None
        item["health"] = health(rate)
    return {"nodes": [nodes[n] for n in sorted(nodes)], "edges": out_edges}


# --- the same graph from Prometheus (the sidecars' standard metrics, `--prometheus-url`) ---

_BY = (
    "reporter, source_workload, source_namespace, source_app, source_version, "
    "destination_workload, destination_namespace, destination_app, destination_version, "
    "destination_service, destination_subset, response_code, response_flags, mtls"
)


def prometheus_queries(window: float) -> tuple[str, str]:
    """PromQL for a window: requests per series, and latency buckets per series and `le`."""
    span = f"{max(1, round(window))}s"
    return (
        f"sum by ({_BY}) (increase(lightmesh_requests_total[{span}]))",
        f"sum by ({_BY}, le) (increase(lightmesh_request_duration_seconds_bucket[{span}]))",
    )


def _label_key(labels: Mapping[str, str]) -> tuple[str, ...]:
    return tuple(labels.get(name, "") for name in _BY.split(", "))


def _prometheus_reporter(labels: Mapping[str, str]) -> Reporter:
    """The sidecar that exposed a series: the caller's labels (source) or the callee's."""
    side = "destination" if labels.get("reporter") == "destination" else "source"
    namespace = labels.get(f"{side}_namespace", "")
    workload = labels.get(f"{side}_workload", "")
    service = labels.get("destination_service", "") if side == "destination" else ""
    return Reporter(
        node_id=f"{namespace}/{workload}",
        workload=workload,
        namespace=namespace,
        app=labels.get(f"{side}_app", ""),
        version=labels.get(f"{side}_version", ""),
        services=(service,) if service and service != UNKNOWN else (),
    )


def _value(sample: Mapping[str, Any]) -> float:
    try:
        value = float(sample["value"][1])
    except (KeyError, IndexError, TypeError, ValueError):
        return 0.0
    return value if math.isfinite(value) else 0.0


def flows_from_prometheus(
    requests: Sequence[Mapping[str, Any]],
    buckets: Sequence[Mapping[str, Any]],
    *,
    window: float,
) -> tuple[list[Flow], list[Reporter]]:
    """Flows (and the workloads the destination side names, with their services) from the
    results of `prometheus_queries(window)` (instant vectors, as the HTTP API returns them)."""
    if window <= 0:
        raise ValueError(f"window must be positive, not {window}")
    per_series: dict[tuple[str, ...], list[tuple[float, float]]] = {}
    for sample in buckets:
        labels = sample.get("metric", {})
        le = labels.get("le", "")
        bound = math.inf if le == "+Inf" else float(le)
        per_series.setdefault(_label_key(labels), []).append((bound, _value(sample)))
    flows = []
    reporters: dict[tuple[str, str], Reporter] = {}
    for sample in requests:
        labels = sample.get("metric", {})
        count = _value(sample)
        if count <= 0:
            continue
        reporter = _prometheus_reporter(labels)
        if labels.get("reporter") == "destination" and reporter.services:
            reporters[(reporter.namespace, reporter.workload)] = reporter
        cumulative = sorted(per_series.get(_label_key(labels), []))
        bounds = tuple(b for b, _ in cumulative if math.isfinite(b))
        per_bucket = []
        before = 0.0
        for _, total in cumulative:
            per_bucket.append(max(0.0, total - before))
            before = max(before, total)
        code = labels.get("response_code", "")
        flags = labels.get("response_flags", "")
        flows.append(
            Flow(
                reporter=reporter,
                key=SeriesKey(
                    reporter=labels.get("reporter", ""),
                    source_workload=labels.get("source_workload", ""),
                    source_namespace=labels.get("source_namespace", ""),
                    destination_service=labels.get("destination_service", ""),
                    destination_subset=labels.get("destination_subset", ""),
                    destination_workload=labels.get("destination_workload", ""),
                    code=int(code) if code.isdigit() else 0,
                    flags="" if flags == "-" else flags,
                    mtls=labels.get("mtls") == "true",
                ),
                rate=count / window,
                requests=count,
                buckets=tuple(per_bucket),
                bounds=bounds,
            )
        )
    return flows, [reporters[k] for k in sorted(reporters)]
