"""The service graph's aggregation: reports kept bounded, differences over a window, quantiles,
and the graph of the demo topology (frontend → catalog v1/v2 → customer)."""

import pytest

from controlplane.traffic import (
    ClusterCounts,
    Counts,
    Report,
    Reporter,
    SeriesKey,
    TrafficStore,
    assemble_graph,
    flows_from_prometheus,
    health,
    prometheus_queries,
    quantile,
    report_from_proto,
    reporter_of,
)
from lightmesh.v1 import discovery_pb2 as pb

BOUNDS = (0.001, 0.01, 0.1)
CATALOG = "catalog.default.svc.cluster.local"
CUSTOMER = "customer.default.svc.cluster.local"
FRONTEND = Reporter(
    node_id="frontend-1.default", workload="frontend", namespace="default", services=("frontend",)
)
CATALOG_V1 = Reporter(
    node_id="catalog-v1-1.default",
    workload="catalog-v1",
    namespace="default",
    app="catalog",
    version="v1",
    services=("catalog",),
)
CATALOG_V2 = Reporter(
    node_id="catalog-v2-1.default",
    workload="catalog-v2",
    namespace="default",
    app="catalog",
    version="v2",
    services=("catalog",),
)
CUSTOMER_R = Reporter(
    node_id="customer-1.default", workload="customer", namespace="default", services=("customer",)
)


def out(service: str, subset: str = "", *, code: int = 200, mtls: bool = False, flags: str = ""):
    return SeriesKey(
        reporter="source",
        source_workload="x",
        source_namespace="default",
        destination_service=service,
        destination_subset=subset,
        code=code,
        mtls=mtls,
        flags=flags,
    )


def inbound(service: str, *, code: int = 200) -> SeriesKey:
    return SeriesKey(
        reporter="destination",
        source_workload="unknown",
        source_namespace="unknown",
        destination_service=service,
        code=code,
    )


def counts(requests: float, fast: float | None = None) -> Counts:
    """`requests`, all in the 1-10 ms bucket unless `fast` says how many took under 1 ms."""
    fast = fast or 0.0
    return Counts(requests=requests, buckets=(fast, requests - fast, 0.0, 0.0), seconds=0.0)


def report(at: float, series: dict[SeriesKey, Counts], **clusters: ClusterCounts) -> Report:
    return Report(
        at=at,
        bounds=BOUNDS,
        series=series,
        clusters={(CATALOG, k): v for k, v in clusters.items()},
    )


def test_quantile_interpolates_within_the_bucket_as_prometheus_does():
    # 10 requests in (0, 1ms], 10 in (1ms, 10ms]: the median is the first bucket's top.
    assert quantile(0.5, BOUNDS, (10, 10, 0, 0)) == pytest.approx(0.001)
    assert quantile(0.75, BOUNDS, (10, 10, 0, 0)) == pytest.approx(0.0055)
    assert quantile(0.99, BOUNDS, (0, 0, 0, 5)) == BOUNDS[-1]  # +Inf: the last bound
    assert quantile(0.5, BOUNDS, (0, 0, 0, 0)) is None
    with pytest.raises(ValueError, match="quantile"):
        quantile(1.5, BOUNDS, (1, 0, 0, 0))


def test_rate_is_the_difference_over_the_window():
    store = TrafficStore()
    store.add(FRONTEND, report(0.0, {out(CATALOG, "v1"): counts(100)}))
    store.add(FRONTEND, report(10.0, {out(CATALOG, "v1"): counts(150)}))
    store.add(FRONTEND, report(20.0, {out(CATALOG, "v1"): counts(350)}))
    flows, _ = store.flows(window=10.0, now=20.0)
    assert [f.rate for f in flows] == [pytest.approx(20.0)]  # (350 - 150) / 10 s
    assert flows[0].requests == 200
    flows, _ = store.flows(window=60.0, now=20.0)
    assert flows[0].rate == pytest.approx(12.5)  # older than the window: from the oldest


def test_one_report_gives_no_rate_and_a_silent_node_drops_out():
    store = TrafficStore()
    store.add(FRONTEND, report(0.0, {out(CATALOG): counts(100)}))
    assert store.flows(window=60.0, now=1.0) == ([], [])
    store.add(FRONTEND, report(5.0, {out(CATALOG): counts(110)}))
    assert len(store.flows(window=60.0, now=6.0)[0]) == 1
    assert store.flows(window=60.0, now=100.0) == ([], [])  # nothing reported in the window


def test_series_that_did_not_grow_are_left_out():
    store = TrafficStore()
    series = {out(CATALOG, "v1"): counts(5), out(CATALOG, "v2"): counts(5)}
    store.add(FRONTEND, report(0.0, series))
    store.add(FRONTEND, report(5.0, {**series, out(CATALOG, "v2"): counts(9)}))
    flows, _ = store.flows(window=60.0, now=5.0)
    assert [f.key.destination_subset for f in flows] == ["v2"]


def test_memory_is_bounded_by_retention_and_nodes():
    store = TrafficStore(retention=30.0, max_nodes=2)
    for i in range(10):
        store.add(FRONTEND, report(float(i), {out(CATALOG): counts(i + 1)}))
    assert store.slices(FRONTEND.node_id) == 9
    store.add(CATALOG_V1, report(100.0, {}))
    assert store.slices(FRONTEND.node_id) == 0  # out of retention: the node is gone
    store.add(CATALOG_V2, report(101.0, {}))
    store.add(CUSTOMER_R, report(102.0, {}))
    assert len(store) == 2
    assert [r.workload for r in store.reporters()] == ["catalog-v2", "customer"]  # oldest out


def test_old_slices_are_merged_and_the_counts_stay_exact():
    """Fifteen minutes of reports every 5 s: recent ones kept, older ones merged per 30 s."""
    store = TrafficStore(retention=900.0, recent=120.0, coarse=30.0)
    for i in range(181):
        store.add(FRONTEND, report(5.0 * i, {out(CATALOG, "v1"): counts(10 * i)}))
    now = 900.0
    assert store.slices(FRONTEND.node_id) <= 120 / 5 + 780 / 30 + 2
    flows, _ = store.flows(window=900.0, now=now)
    assert flows[0].requests == 1800 and flows[0].rate == pytest.approx(2.0)
    flows, _ = store.flows(window=60.0, now=now)
    assert flows[0].requests == 120 and flows[0].rate == pytest.approx(2.0)
    flows, _ = store.flows(window=300.0, now=now)  # older than `recent`: whole 30 s spans
    assert flows[0].rate == pytest.approx(2.0)
    capped = TrafficStore(max_slices=4)
    for i in range(20):
        capped.add(FRONTEND, report(float(i), {out(CATALOG): counts(i)}))
    assert capped.slices(FRONTEND.node_id) == 4
    assert capped.flows(window=60.0, now=19.0)[0][0].requests == 19


def test_a_report_above_the_series_bound_keeps_the_busiest():
    store = TrafficStore(max_series=1)
    store.add(FRONTEND, report(0.0, {}))
    store.add(FRONTEND, report(1.0, {out(CATALOG, "v1"): counts(1), out(CATALOG, "v2"): counts(9)}))
    flows, _ = store.flows(window=60.0, now=1.0)
    assert [f.key.destination_subset for f in flows] == ["v2"]


def demo_store(*, v2_errors: float = 0.0, mtls: bool = False) -> TrafficStore:
    """Ten seconds of the demo: 10 req/s into frontend, 8 to v1 and 2 to v2, all to customer."""
    store = TrafficStore()
    for at, n in ((0.0, 0.0), (10.0, 1.0)):
        store.add(
            FRONTEND,
            report(
                at,
                {
                    inbound("frontend.default.svc.cluster.local"): counts(100 * n),
                    out(CATALOG, "v1", mtls=mtls): counts(80 * n, fast=40 * n),
                    out(CATALOG, "v2", mtls=mtls): counts(20 * n - v2_errors * n),
                    out(CATALOG, "v2", code=503, flags="FI"): counts(v2_errors * n),
                },
                v2=ClusterCounts(overflows=3 * n, ejected=1),
            ),
        )
        for catalog, share in ((CATALOG_V1, 80), (CATALOG_V2, 20)):
            store.add(
                catalog,
                report(
                    at,
                    {
                        inbound(CATALOG): counts(share * n),
                        out(CUSTOMER, mtls=mtls): counts(share * n),
                    },
                ),
            )
        store.add(CUSTOMER_R, report(at, {inbound(CUSTOMER): counts(100 * n)}))
    return store


def graph_of(store: TrafficStore) -> dict:
    flows, clusters = store.flows(window=60.0, now=10.0)
    return assemble_graph(flows, clusters, reporters=store.reporters())


def edges_of(graph: dict) -> dict[tuple[str, str], dict]:
    return {(e["source"], e["target"]): e for e in graph["edges"]}


def test_the_demo_graph_has_every_edge_with_its_rate():
    edges = edges_of(graph_of(demo_store()))
    assert {pair: e["rps"] for pair, e in edges.items()} == {
        ("unknown", "default/frontend"): 10.0,
        ("default/frontend", "default/catalog-v1"): 8.0,
        ("default/frontend", "default/catalog-v2"): 2.0,
        ("default/catalog-v1", "default/customer"): 8.0,
        ("default/catalog-v2", "default/customer"): 2.0,
    }
    v1 = edges[("default/frontend", "default/catalog-v1")]
    assert v1["error_rate"] == 0.0 and v1["health"] == "healthy"
    assert v1["p50_ms"] == pytest.approx(1.0)  # half under 1 ms
    assert v1["codes"] == {"2xx": 8.0}
    assert v1["mtls"] == 0.0


def test_a_service_with_one_workload_resolves_to_it():
    edges = edges_of(graph_of(demo_store()))
    assert edges[("default/catalog-v1", "default/customer")]["rps"] == 8.0
    assert ("unknown", "default/catalog-v1") not in edges  # its callers reported it


def test_errors_show_on_the_edge_that_had_them():
    graph = graph_of(demo_store(v2_errors=10.0))
    edges = edges_of(graph)
    v2 = edges[("default/frontend", "default/catalog-v2")]
    assert v2["error_rate"] == pytest.approx(0.5)
    assert v2["health"] == "failing"
    assert v2["codes"] == {"2xx": 1.0, "5xx": 1.0}
    assert v2["flags"] == {"FI": 10.0}
    assert v2["overflows"] == 3.0 and v2["ejected"] == 1
    assert edges[("default/frontend", "default/catalog-v1")]["health"] == "healthy"
    nodes = {n["id"]: n for n in graph["nodes"]}
    assert nodes["default/catalog-v2"]["health"] == "failing"
    assert nodes["default/catalog-v1"]["health"] == "healthy"


def test_mtls_share_comes_from_the_callers_connections():
    edges = edges_of(graph_of(demo_store(mtls=True)))
    assert edges[("default/frontend", "default/catalog-v1")]["mtls"] == 1.0
    assert edges[("default/catalog-v2", "default/customer")]["mtls"] == 1.0


def test_a_subset_no_single_workload_serves_stays_a_service_node():
    store = TrafficStore()
    for at, n in ((0.0, 0), (5.0, 1)):
        store.add(FRONTEND, report(at, {out(CATALOG): counts(10 * n)}))
        store.add(CATALOG_V1, report(at, {}))
        store.add(CATALOG_V2, report(at, {}))
    flows, clusters = store.flows(window=60.0, now=5.0)
    edges = edges_of(assemble_graph(flows, clusters, reporters=store.reporters()))
    assert list(edges) == [("default/frontend", "svc:" + CATALOG)]


def test_health_thresholds():
    assert health(None) == "idle"
    assert health(0.0) == "healthy"
    assert health(0.05) == "degraded"
    assert health(0.5) == "failing"


def test_a_proto_report_becomes_cumulative_series():
    message = pb.TrafficReport(app="frontend", services=["frontend"], duration_bounds=BOUNDS)
    for _ in range(2):  # the same key twice (two listeners' series): summed
        message.edges.add(
            reporter="source",
            source_workload="frontend",
            source_namespace="default",
            destination_service=CATALOG,
            destination_subset="v1",
            response_code=200,
            requests=3,
            duration_buckets=[1, 2, 0, 0],
            duration_seconds=0.01,
        )
    message.edges.add(reporter="source", destination_service=CATALOG, requests=4)  # no buckets
    message.clusters.add(service=CATALOG, subset="v1", overflows=2, ejected=1)
    kept = report_from_proto(message, at=7.0)
    key = next(iter(kept.series))
    assert (key.source_workload, key.destination_subset, key.code) == ("frontend", "v1", 200)
    assert kept.series[key].requests == 6 and kept.series[key].buckets == (2, 4, 0, 0)
    assert [c.buckets for c in kept.series.values()][1] == (0, 0, 0, 4)
    assert kept.clusters[(CATALOG, "v1")] == ClusterCounts(overflows=2, ejected=1)
    who = reporter_of(
        message, node_id="f-1", workload="frontend", namespace="", labels={"version": "v9"}
    )
    assert (who.namespace, who.app, who.version, who.services) == (
        "default",
        "frontend",
        "v9",
        ("frontend",),
    )


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="window"):
        TrafficStore().flows(window=0, now=1.0)
    with pytest.raises(ValueError, match="retention"):
        TrafficStore(retention=0)


def prom(value: float, **labels: str) -> dict:
    return {"metric": labels, "value": [1700000000.0, str(value)]}


def test_prometheus_results_give_the_same_graph():
    """Kiali-style: the graph from PromQL over lightmesh_requests_total and the latency buckets."""
    requests_q, buckets_q = prometheus_queries(60)
    assert "increase(lightmesh_requests_total[60s])" in requests_q
    assert "le)" in buckets_q
    src = {
        "reporter": "source", "source_workload": "frontend", "source_namespace": "default",
        "destination_service": CATALOG, "destination_subset": "v1", "response_code": "200",
        "response_flags": "-", "mtls": "true",
    }  # fmt: skip
    dst = {
        "reporter": "destination", "source_workload": "unknown", "source_namespace": "unknown",
        "destination_workload": "catalog-v1", "destination_namespace": "default",
        "destination_version": "v1", "destination_service": CATALOG, "destination_subset": "v1",
        "response_code": "200", "response_flags": "-", "mtls": "false",
    }  # fmt: skip
    requests = [prom(120, **src), prom(120, **dst), prom(0, **{**src, "response_code": "503"})]
    buckets = [
        prom(60, **src, le="0.001"),
        prom(120, **src, le="0.01"),
        prom(120, **src, le="+Inf"),
    ]
    flows, reporters = flows_from_prometheus(requests, buckets, window=60.0)
    assert [r.workload for r in reporters] == ["catalog-v1"]
    graph = assemble_graph(flows, reporters=reporters)
    edges = edges_of(graph)
    edge = edges[("default/frontend", "default/catalog-v1")]
    assert edge["rps"] == 2.0 and edge["mtls"] == 1.0 and edge["error_rate"] == 0.0
    assert edge["p50_ms"] == pytest.approx(1.0)
    assert ("unknown", "default/catalog-v1") not in edges  # its caller reported it


def test_replies_the_caller_made_itself_do_not_dilute_the_mtls_share():
    edges = edges_of(graph_of(demo_store(v2_errors=10.0, mtls=True)))
    v2 = edges[("default/frontend", "default/catalog-v2")]
    assert v2["flags"] == {"FI": 10.0}
    assert v2["mtls"] == 1.0  # the aborted half never had a connection
