"""The traffic report: the request aggregates of both directions as cumulative edge counters."""

from sidecar.contract import Completed, RequestHead
from sidecar.telemetry.metrics import DURATION_BUCKETS, RequestMetrics
from sidecar.telemetry.report import TrafficReporter


def done(*, cluster: str, status: int = 200, tls: bool = False) -> Completed:
    head = RequestHead(method="GET", path="/", host="catalog", http_version="1.1")
    return Completed(
        method="GET", host="catalog", cluster=cluster, status=status, flags="",
        duration=0.003, request_bytes=0, response_bytes=1, head=head, upstream_tls=tls,
    )  # fmt: skip


def test_the_report_carries_each_series_with_its_buckets():
    source = RequestMetrics(reporter="source", workload="frontend", namespace="default")
    inbound = RequestMetrics(
        reporter="destination", workload="frontend", namespace="default", local_service="frontend"
    )
    for _ in range(3):
        source.record(done(cluster="outbound|v1|catalog.default.svc.cluster.local", tls=True))
    source.record(done(cluster="outbound|v2|catalog.default.svc.cluster.local", status=503))
    inbound.record(done(cluster="inbound|8080"))
    reporter = TrafficReporter(
        metrics=(source, inbound),
        clusters=dict,
        app="frontend",
        version="v1",
        services=["frontend"],
    )
    report = reporter.build()
    assert list(report.duration_bounds) == list(DURATION_BUCKETS)
    edges = {(e.reporter, e.destination_subset, e.response_code): e for e in report.edges}
    v1 = edges[("source", "v1", 200)]
    assert (v1.requests, v1.mtls, v1.source_workload) == (3, True, "frontend")
    assert v1.destination_service == "catalog.default.svc.cluster.local"
    assert sum(v1.duration_buckets) == 3 and len(v1.duration_buckets) == len(DURATION_BUCKETS) + 1
    assert edges[("source", "v2", 503)].requests == 1
    into = [e for e in report.edges if e.reporter == "destination"]
    assert into[0].destination_service == "frontend.default.svc.cluster.local"
    assert into[0].destination_workload == "frontend"
    assert not report.truncated
