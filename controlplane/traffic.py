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
import operator
from array import array
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

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


class SeriesKey(NamedTuple):
    """One series of a report: an edge seen from one side, and one outcome (a tuple: keys are
    hashed for every series of every report, and a tuple hashes in C)."""

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
        buckets: tuple[float, ...] = tuple(edge.duration_buckets)
        if len(buckets) != width:
            buckets = (0,) * (width - 1) + (edge.requests,)  # no latency: +Inf
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


class _Slice:
    """What one node did between two reports (or several, merged): sparse per-series latency
    bucket counts (requests = their sum), 4 bytes each, and its clusters' counter deltas."""

    __slots__ = ("clusters", "counts", "end", "series", "start")

    def __init__(
        self,
        start: float,
        end: float,
        series: array[int],
        counts: array[int],
        clusters: dict[tuple[str, str], tuple[float, float, float]],
    ) -> None:
        self.start = start
        self.end = end
        self.series = series  # indexes into the node's key table
        self.counts = counts  # len(series) * width bucket counts
        self.clusters = clusters  # (service, subset) -> (overflows, ejections, retries)


def _merge(slices: Sequence[_Slice], width: int) -> _Slice:
    """One slice covering `slices` (consecutive, oldest first)."""
    sums: dict[int, list[int]] = {}
    clusters: dict[tuple[str, str], tuple[float, float, float]] = {}
    for piece in slices:
        counts = piece.counts
        for n, index in enumerate(piece.series):
            chunk = counts[n * width : (n + 1) * width]
            row = sums.get(index)
            sums[index] = chunk.tolist() if row is None else list(map(operator.add, row, chunk))
        for name, grew in piece.clusters.items():
            before = clusters.get(name)
            clusters[name] = (
                grew
                if before is None
                else (before[0] + grew[0], before[1] + grew[1], before[2] + grew[2])
            )
    order = sorted(sums)
    counts = array("I")
    for index in order:
        counts.extend(min(c, _U32) for c in sums[index]) if max(
            sums[index]
        ) > _U32 else counts.extend(sums[index])
    return _Slice(slices[0].start, slices[-1].end, array("I", order), counts, clusters)


_U32 = 0xFFFFFFFF
_EXPIRE_EVERY = 1.0  # seconds of report time between two expiry passes


class _Node:
    """One sidecar's history: its latest cumulative report and the slices between reports."""

    __slots__ = ("ejected", "index", "keys", "last", "reporter", "slices", "width")

    def __init__(self, reporter: Reporter) -> None:
        self.reporter = reporter
        self.last: Report | None = None
        self.keys: list[SeriesKey] = []
        self.index: dict[SeriesKey, int] = {}
        self.slices: deque[_Slice] = deque()
        self.width = 0
        self.ejected: dict[tuple[str, str], int] = {}


class TrafficStore:
    """What every sidecar reported, bounded in time and size.

    Per node it keeps its latest (cumulative) report and, between consecutive reports, a slice of
    what changed: only the series that grew, as 4-byte bucket counts. Slices older than `recent`
    seconds are merged to at most one per `coarse` seconds, and none is kept past `retention`, so
    a node holds about recent/interval + retention/coarse slices (≈ 50 at the 5 s default), at
    most `max_slices`.
    """

    def __init__(
        self,
        *,
        retention: float = 900.0,
        recent: float = 120.0,
        coarse: float = 30.0,
        max_slices: int = 256,
        max_nodes: int = 20_000,
        max_series: int = 2_000,
    ) -> None:
        if retention <= 0 or max_slices < 2 or max_nodes < 1 or max_series < 1:
            raise ValueError("retention > 0, max_slices >= 2, max_nodes >= 1, max_series >= 1")
        self.retention = retention
        self._recent = recent
        self._coarse = coarse
        self._max_slices = max_slices
        self._max_nodes = max_nodes
        self._max_series = max_series
        self._nodes: dict[str, _Node] = {}
        self._expired_at = float("-inf")

    def __len__(self) -> int:
        return len(self._nodes)

    def slices(self, node_id: str) -> int:
        """How many slices a node holds (its memory, for tests and metrics)."""
        node = self._nodes.get(node_id)
        return len(node.slices) if node is not None else 0

    def add(self, reporter: Reporter, report: Report) -> None:
        """Keep what `report` adds to `reporter`'s sidecar's last one; drop what expired."""
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
        node = self._nodes.get(reporter.node_id)
        if node is None:
            if len(self._nodes) >= self._max_nodes:
                oldest = min(self._nodes, key=lambda n: self._last_at(self._nodes[n]))
                self.forget(oldest)
            node = self._nodes[reporter.node_id] = _Node(reporter)
        node.reporter = reporter
        width = len(report.bounds) + 1
        if node.width != width:
            # New bucket bounds (a sidecar of another version): earlier slices do not add up.
            node.slices.clear()
            node.width = width
            node.last = None
        previous = node.last
        node.last = report
        node.ejected = {name: c.ejected for name, c in report.clusters.items()}
        if previous is not None and report.at > previous.at:
            node.slices.append(self._slice(node, previous, report))
            self._compact(node, now=report.at)
        if report.at - self._expired_at >= _EXPIRE_EVERY:
            # A pass over every node: once a second, not once a report.
            self._expired_at = report.at
            self.expire(report.at)

    def _slice(self, node: _Node, previous: Report, report: Report) -> _Slice:
        width = node.width
        series = array("I")
        counts = array("I")
        for key, now in report.series.items():
            if len(now.buckets) != width:
                continue
            before = previous.series.get(key)
            if before is None or before.requests > now.requests:
                delta = now.buckets  # new series (or a reset): all of it happened since
            elif before.requests == now.requests:
                continue  # nothing since (most series of most reports)
            else:
                delta = tuple(map(operator.sub, now.buckets, before.buckets))
            index = node.index.get(key)
            if index is None:
                index = node.index[key] = len(node.keys)
                node.keys.append(key)
            series.append(index)
            try:
                counts.extend(delta)  # type: ignore[arg-type]  # 4 bytes a bucket
            except (OverflowError, TypeError):
                counts.extend(min(_U32, max(0, int(c))) for c in delta)
        clusters = {}
        for name, now_c in report.clusters.items():
            before_c = previous.clusters.get(name, ClusterCounts())
            grew = (
                max(0.0, now_c.overflows - before_c.overflows),
                max(0.0, now_c.ejections - before_c.ejections),
                max(0.0, now_c.retries - before_c.retries),
            )
            if any(grew):
                clusters[name] = grew
        return _Slice(previous.at, report.at, series, counts, clusters)

    def _compact(self, node: _Node, *, now: float) -> None:
        """Merge the slices older than `recent` into spans of at most `coarse` seconds, and the
        oldest two while there are more than `max_slices`."""
        slices = node.slices
        horizon = now - self._recent
        old: list[_Slice] = []
        while slices and slices[0].end <= horizon:
            old.append(slices.popleft())
        if old:
            merged: list[_Slice] = []
            run: list[_Slice] = []
            for piece in old:
                if run and piece.end - run[0].start > self._coarse:
                    merged.append(run[0] if len(run) == 1 else _merge(run, node.width))
                    run = []
                run.append(piece)
            merged.append(run[0] if len(run) == 1 else _merge(run, node.width))
            slices.extendleft(reversed(merged))
        while len(slices) > self._max_slices:
            first, second = slices.popleft(), slices.popleft()
            slices.appendleft(_merge((first, second), node.width))

    @staticmethod
    def _last_at(node: _Node) -> float:
        return node.last.at if node.last is not None else float("-inf")

    def forget(self, node_id: str) -> None:
        """Drop a node (its sidecar is gone for good)."""
        self._nodes.pop(node_id, None)

    def expire(self, now: float) -> None:
        """Drop slices older than the retention, and nodes silent for longer."""
        horizon = now - self.retention
        for node_id in list(self._nodes):
            node = self._nodes[node_id]
            while node.slices and node.slices[0].end <= horizon:
                node.slices.popleft()
            if self._last_at(node) < horizon:
                self.forget(node_id)

    def reporters(self) -> list[Reporter]:
        """Every node with reports."""
        return [self._nodes[n].reporter for n in sorted(self._nodes)]

    def flows(self, *, window: float, now: float) -> tuple[list[Flow], list[ClusterFlow]]:
        """Each node's traffic over the last `window` seconds (the slices ending inside it)."""
        if window <= 0:
            raise ValueError(f"window must be positive, not {window}")
        start = now - window
        flows: list[Flow] = []
        clusters: list[ClusterFlow] = []
        for _, node in sorted(self._nodes.items()):
            inside = [s for s in node.slices if s.end > start]
            if not inside or node.last is None:
                continue
            elapsed = inside[-1].end - inside[0].start
            if elapsed <= 0:
                continue
            total = _merge(inside, node.width)
            width = node.width
            reporter = node.reporter
            bounds = node.last.bounds
            for n, index in sorted(
                enumerate(total.series), key=lambda item: _series_order(node.keys[item[1]])
            ):
                buckets = tuple(float(c) for c in total.counts[n * width : (n + 1) * width])
                requests = sum(buckets)
                flows.append(
                    Flow(
                        reporter=reporter,
                        key=node.keys[index],
                        rate=requests / elapsed,
                        requests=requests,
                        buckets=buckets,
                        bounds=bounds,
                    )
                )
            names = sorted(set(total.clusters) | set(node.ejected))
            for service, subset in names:
                overflows, ejections, retries = total.clusters.get((service, subset), (0, 0, 0))
                clusters.append(
                    ClusterFlow(
                        reporter=reporter,
                        service=service,
                        subset=subset,
                        overflows=overflows,
                        ejections=ejections,
                        ejected=node.ejected.get((service, subset), 0),
                        retries=retries,
                    )
                )
        return flows, clusters


def _series_order(k: SeriesKey) -> tuple[Any, ...]:
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
