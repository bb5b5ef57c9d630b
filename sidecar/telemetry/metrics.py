"""Per-request metrics recorded into plain dictionaries, rendered for Prometheus at scrape time.

Recording is a small tuple build, a dict lookup, three bisects and a few adds (no prometheus-client
objects on the hot path: a labelled Counter + Histogram cost 5-22 µs per request). The aggregate is
keyed by what varies per request — (cluster, code, flags) outbound, (peer, code, flags) inbound — and
`collect` expands each key into the full label set when /metrics is scraped, in lightmesh's names
and, with the Istio switch, in Istio's standard names and labels too.

Cardinality is bounded: labels come from config (clusters), the status code, the fixed set of
response flags and a validated peer identity; no paths, hosts or ids. Past `max_series` distinct
keys, new keys fold into one overflow series.
"""

from __future__ import annotations

import re
from bisect import bisect_left
from collections.abc import Iterable, Iterator

from lightmesh.spiffe import namespace_of, principal_of
from sidecar.contract import Completed
from sidecar.telemetry.exposition import (
    Collector,
    CounterMetricFamily,
    HistogramMetricFamily,
    Metric,
)

# Seconds, from 0.5 ms (a hop on loopback) to 30 s (the longest sensible timeout).
DURATION_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
SIZE_BUCKETS = (64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216)

# Header the outbound sidecar adds so the inbound one can label its metrics with the caller
# ("workload;namespace;app;version"); replaced on every outbound request, so an app cannot forge it
# through its sidecar. Until mTLS it is a telemetry hint, not an identity.

LABELS = (
    "reporter",
    "source_workload",
    "source_namespace",
    "source_app",
    "source_version",
    "destination_workload",
    "destination_namespace",
    "destination_app",
    "destination_version",
    "destination_service",
    "destination_subset",
    "response_code",
    "response_flags",
    "mtls",
    "source_principal",
    # The gRPC status of a gRPC call ("0", "14"), "" for other requests (Istio's label).
    "grpc_response_status",
)

ISTIO_LABELS = (
    "reporter",
    "source_workload",
    "source_workload_namespace",
    "source_principal",
    "source_app",
    "source_version",
    "source_canonical_service",
    "source_canonical_revision",
    "source_cluster",
    "destination_workload",
    "destination_workload_namespace",
    "destination_principal",
    "destination_app",
    "destination_version",
    "destination_service",
    "destination_service_name",
    "destination_service_namespace",
    "destination_canonical_service",
    "destination_canonical_revision",
    "destination_cluster",
    "request_protocol",
    "response_code",
    "grpc_response_status",
    "response_flags",
    "connection_security_policy",
)

UNKNOWN = "unknown"
# Separates the peer announcement from the verified SPIFFE ID in a destination series key; ends
# the cluster of a source series key whose upstream connection was mutual TLS.
_VERIFIED = "\x00"
OVERFLOW = "overflow"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")


class _Series:
    __slots__ = (
        "count",
        "duration_sum",
        "durations",
        "req_messages",
        "req_sizes",
        "req_sum",
        "resp_messages",
        "resp_sizes",
        "resp_sum",
    )

    def __init__(self) -> None:
        self.count = 0
        self.duration_sum = 0.0
        self.durations = [0] * (len(DURATION_BUCKETS) + 1)
        self.req_sum = 0
        self.req_sizes = [0] * (len(SIZE_BUCKETS) + 1)
        self.resp_sum = 0
        self.resp_sizes = [0] * (len(SIZE_BUCKETS) + 1)
        self.req_messages = 0  # gRPC messages (gRPC series only)
        self.resp_messages = 0


def split_cluster(cluster: str) -> tuple[str, str]:
    """("catalog.default.svc.cluster.local", "v1") from "outbound|v1|catalog.default.svc.cluster.local"."""
    parts = cluster.split("|")
    if len(parts) == 3 and parts[0] == "outbound":
        return parts[2], parts[1]
    return "", ""


def service_fqdn(service: str, namespace: str) -> str:
    """The FQDN a short service name of `namespace` stands for (the name the outbound side uses)."""
    return service if "." in service else f"{service}.{namespace}.svc.cluster.local"


def peer_value(workload: str, namespace: str, app: str, version: str) -> bytes:
    """The PEER_HEADER value announcing this workload."""
    return ";".join((workload, namespace, app, version)).encode("latin-1")


def parse_peer(value: str) -> tuple[str, str, str, str]:
    """(workload, namespace, app, version) from a PEER_HEADER value; UNKNOWN for anything invalid."""
    parts = value.split(";")
    if len(parts) != 4:
        return (UNKNOWN,) * 4
    return tuple(p if _NAME.fullmatch(p) else UNKNOWN for p in parts)  # type: ignore[return-value]


def _cumulative(
    bounds: Iterable[float], counts: list[int], scale: float = 1.0
) -> list[tuple[str, float]]:
    out: list[tuple[str, float]] = []
    total = 0
    for bound, count in zip(bounds, counts, strict=False):
        total += count
        out.append((repr(bound * scale) if scale != 1.0 else repr(bound), total))
    out.append(("+Inf", total + counts[-1]))
    return out


class RequestMetrics:
    """Aggregates of completed requests of one listener direction (reporter source|destination)."""

    def __init__(
        self,
        *,
        reporter: str,
        workload: str,
        namespace: str,
        app: str = "",
        version: str = "",
        local_service: str = "",
        max_series: int = 1000,
    ) -> None:
        if reporter not in ("source", "destination"):
            raise ValueError(f"reporter must be source or destination, not {reporter!r}")
        self._reporter = reporter
        self._workload = workload
        self._namespace = namespace
        self._app = app or UNKNOWN
        self._version = version or UNKNOWN
        self._local_service = local_service
        self._max_series = max_series
        self._series: dict[tuple[str, int, str], _Series] = {}

    def record(self, done: Completed) -> None:
        """Add one completed request."""
        flags = done.flags
        if done.grpc_status:
            flags = f"{flags}{_VERIFIED}{done.grpc_status}"  # a gRPC call: its status rides along
        if self._reporter == "source":
            # The upstream connection's mutual TLS rides in the key as a suffix: a bool copied
            # from the connection, no lookup.
            first = f"{done.cluster}{_VERIFIED}" if done.upstream_tls else done.cluster
            key = (first, done.status, flags)
        else:
            head = done.head
            first = ""
            if head is not None and head.peer_identity:
                # The announcement is believed only from a caller verified by mutual TLS, whose
                # certificate decides its namespace (see labels): over plaintext anyone could
                # have written it, so a plaintext caller is `unknown`.
                first = f"{head.mesh_peer.decode('latin-1')}{_VERIFIED}{head.peer_identity}"
            key = (first, done.status, flags)
        series = self._series.get(key)
        if series is None:
            if len(self._series) >= self._max_series:
                key = (OVERFLOW, 0, OVERFLOW)
                series = self._series.get(key)
            if series is None:
                series = self._series[key] = _Series()
        series.count += 1
        duration = done.duration
        series.duration_sum += duration
        series.durations[bisect_left(DURATION_BUCKETS, duration)] += 1
        size = done.request_bytes
        series.req_sum += size
        series.req_sizes[bisect_left(SIZE_BUCKETS, size)] += 1
        size = done.response_bytes
        series.resp_sum += size
        series.resp_sizes[bisect_left(SIZE_BUCKETS, size)] += 1
        if done.grpc_status:
            series.req_messages += done.request_messages
            series.resp_messages += done.response_messages

    def total(self) -> int:
        """Requests recorded so far."""
        return sum(s.count for s in self._series.values())

    def labels(self, key: tuple[str, int, str]) -> tuple[str, ...]:
        """The full lightmesh label values (in LABELS order) of one aggregate key."""
        first, status, flags = key
        flags, _, grpc_status = flags.partition(_VERIFIED)
        code = str(status) if status else OVERFLOW
        if self._reporter == "source":
            first, tls, _ = first.partition(_VERIFIED)
            service, subset = split_cluster(first)
            if first == OVERFLOW:
                service = subset = OVERFLOW
            app = service.partition(".")[0] if service else UNKNOWN
            return (
                "source",
                self._workload,
                self._namespace,
                self._app,
                self._version,
                UNKNOWN,
                service.split(".")[1] if service.count(".") >= 1 else UNKNOWN,
                app,
                subset or UNKNOWN,
                service or UNKNOWN,
                subset,
                code,
                flags or "-",
                "true" if tls else "false",
                UNKNOWN,
                grpc_status,
            )
        first, _, identity = first.partition(_VERIFIED)
        workload, namespace, app, version = (
            (OVERFLOW,) * 4 if first == OVERFLOW else parse_peer(first)
        )
        mtls, principal = "false", UNKNOWN
        if identity:
            mtls, principal = "true", identity
            verified = namespace_of(principal_of(identity)) or UNKNOWN
            if namespace != verified:
                # The announcement (a header anyone can write) contradicts the certificate:
                # keep only what the certificate proves.
                workload = app = version = UNKNOWN
                namespace = verified
        return (
            "destination",
            workload,
            namespace,
            app,
            version,
            self._workload,
            self._namespace,
            self._app,
            self._version,
            service_fqdn(self._local_service or self._workload, self._namespace),
            self._version if self._version != UNKNOWN else "",
            code,
            flags or "-",
            mtls,
            principal,
            grpc_status,
        )

    def samples(self) -> Iterator[tuple[list[str], _Series]]:
        """(label values in LABELS order, aggregate) of every series so far."""
        for key, series in list(self._series.items()):
            yield list(self.labels(key)), series


class RequestCollector(Collector):
    """Renders the aggregates of both directions as one set of metric families at scrape time.

    One collector for all directions: two collectors yielding the same family names would expose
    each family twice, which Prometheus' OpenMetrics parser rejects.
    """

    def __init__(self, *metrics: RequestMetrics, istio: bool = False) -> None:
        self._metrics = metrics
        self._istio = istio

    def collect(self) -> Iterator[Metric]:
        """Metric families for the Prometheus registry."""
        requests = CounterMetricFamily(
            "lightmesh_requests", "Requests completed by this sidecar.", labels=LABELS
        )
        duration = HistogramMetricFamily(
            "lightmesh_request_duration_seconds",
            "Time from the request head received to the response complete.",
            labels=LABELS,
        )
        req_bytes = HistogramMetricFamily(
            "lightmesh_request_bytes", "Request body sizes.", labels=LABELS
        )
        resp_bytes = HistogramMetricFamily(
            "lightmesh_response_bytes", "Response body sizes.", labels=LABELS
        )
        req_messages = CounterMetricFamily(
            "lightmesh_request_messages", "gRPC messages received from callers.", labels=LABELS
        )
        resp_messages = CounterMetricFamily(
            "lightmesh_response_messages", "gRPC messages sent back to callers.", labels=LABELS
        )
        istio = self._istio
        i_req_messages = CounterMetricFamily(
            "istio_request_messages",
            "gRPC request messages (Istio standard metric).",
            labels=ISTIO_LABELS,
        )
        i_resp_messages = CounterMetricFamily(
            "istio_response_messages",
            "gRPC response messages (Istio standard metric).",
            labels=ISTIO_LABELS,
        )
        # Built always (cheap), filled and yielded only with the Istio switch.
        i_requests = CounterMetricFamily(
            "istio_requests", "Requests (Istio standard metric).", labels=ISTIO_LABELS
        )
        i_duration = HistogramMetricFamily(
            "istio_request_duration_milliseconds",
            "Request duration in milliseconds (Istio standard metric).",
            labels=ISTIO_LABELS,
        )
        i_req = HistogramMetricFamily(
            "istio_request_bytes", "Request sizes (Istio standard metric).", labels=ISTIO_LABELS
        )
        i_resp = HistogramMetricFamily(
            "istio_response_bytes",
            "Response sizes (Istio standard metric).",
            labels=ISTIO_LABELS,
        )
        for metrics in self._metrics:
            for values, series in metrics.samples():
                requests.add_metric(values, series.count)
                duration.add_metric(
                    values, _cumulative(DURATION_BUCKETS, series.durations), series.duration_sum
                )
                req_bytes.add_metric(
                    values, _cumulative(SIZE_BUCKETS, series.req_sizes), series.req_sum
                )
                resp_bytes.add_metric(
                    values, _cumulative(SIZE_BUCKETS, series.resp_sizes), series.resp_sum
                )
                grpc_series = bool(values[-1])  # grpc_response_status: a gRPC series
                if grpc_series:
                    req_messages.add_metric(values, series.req_messages)
                    resp_messages.add_metric(values, series.resp_messages)
                if istio:
                    ivalues = istio_labels(values)
                    i_requests.add_metric(ivalues, series.count)
                    i_duration.add_metric(
                        ivalues,
                        _cumulative(DURATION_BUCKETS, series.durations, 1000.0),
                        series.duration_sum * 1000.0,
                    )
                    i_req.add_metric(
                        ivalues, _cumulative(SIZE_BUCKETS, series.req_sizes), series.req_sum
                    )
                    i_resp.add_metric(
                        ivalues, _cumulative(SIZE_BUCKETS, series.resp_sizes), series.resp_sum
                    )
                    if grpc_series:
                        i_req_messages.add_metric(ivalues, series.req_messages)
                        i_resp_messages.add_metric(ivalues, series.resp_messages)
        yield from (requests, duration, req_bytes, resp_bytes, req_messages, resp_messages)
        if istio:
            yield from (i_requests, i_duration, i_req, i_resp, i_req_messages, i_resp_messages)


def istio_labels(values: list[str]) -> list[str]:
    """Istio's standard label values (ISTIO_LABELS order) from lightmesh's (LABELS order)."""
    v = dict(zip(LABELS, values, strict=True))
    service = v["destination_service"]
    parts = service.split(".")
    name = parts[0] if service not in (UNKNOWN, OVERFLOW) else service
    svc_ns = parts[1] if len(parts) > 1 else v["destination_namespace"]
    code = v["response_code"]
    return [
        v["reporter"],
        v["source_workload"],
        v["source_namespace"],
        v["source_principal"],
        v["source_app"],
        v["source_version"],
        v["source_app"],
        v["source_version"],
        "Kubernetes",
        v["destination_workload"],
        v["destination_namespace"],
        UNKNOWN,
        v["destination_app"],
        v["destination_version"],
        service,
        name,
        svc_ns,
        v["destination_app"],
        v["destination_version"],
        "Kubernetes",
        "grpc" if v["grpc_response_status"] else "http",
        code,
        v["grpc_response_status"],
        v["response_flags"],
        "mutual_tls"
        if v["mtls"] == "true"
        else ("none" if v["reporter"] == "destination" else UNKNOWN),
    ]
