"""Observability end to end: a real Prometheus scraping the shop under traffic, promtool on every
/metrics output, and one trace across frontend → catalog → customer at a Zipkin v2 collector."""

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics
from prometheus_client.parser import text_string_to_metric_families

from lightmesh.demo.mesh import LocalMesh, free_port, http_get, wait_for
from lightmesh.demo.runner import start_shop
from tests.integration.test_mesh import Traffic
from tests.support.prometheus import Prometheus, prometheus, promtool_check_metrics
from tests.support.zipkin import zipkin_collector

pytestmark = pytest.mark.integration

SERVICES = ("frontend", "catalog", "customer")


def fqdn(service: str) -> str:
    return f"{service}.default.svc.cluster.local"


def by(prom: Prometheus, promql: str, *labels: str) -> dict[tuple[str, ...], float]:
    """An instant query's result as {label values: value}."""
    return {
        tuple(r["metric"].get(label, "") for label in labels): float(r["value"][1])
        for r in prom.query(promql)
    }


def until_equal(read: Callable[[], object], expected: object, *, what: str) -> None:
    """Poll `read()` (bounded: 30 s, the scrape timing) until it equals `expected`."""
    seen: list[object] = []

    def check() -> bool:
        seen[:] = [read()]
        return seen[0] == expected

    try:
        wait_for(check, timeout=30, interval=0.2, what=what)
    except TimeoutError as error:
        raise AssertionError(f"{error}: last {seen}, expected {expected}") from None


def sidecar_totals(mesh: LocalMesh) -> dict[tuple[str, str], float]:
    """Destination-reported requests by (service, code), read from every sidecar's /metrics."""
    totals: dict[tuple[str, str], float] = {}
    for workload in mesh.workloads.values():
        text = http_get(f"{workload.admin}/metrics").body.decode()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels = sample.labels
                if (
                    sample.name == "lightmesh_requests_total"
                    and labels["reporter"] == "destination"
                ):
                    key = (labels["destination_service"], labels["response_code"])
                    totals[key] = totals.get(key, 0) + sample.value
    return totals


def test_prometheus_scrapes_the_mesh_and_a_dead_collector_costs_nothing(
    mesh: LocalMesh, tmp_path: Path
) -> None:
    dead_collector = f"http://127.0.0.1:{free_port()}/api/v2/spans"
    start_shop(
        mesh,
        sidecar_args=(
            "--istio-metrics", "--zipkin-url", dead_collector, "--trace-sampling", "100",
        ),
    )  # fmt: skip
    targets = {
        "controlplane": [f"127.0.0.1:{mesh.cp_debug_port}"],
        "sidecars": [f"127.0.0.1:{w.admin_port}" for w in mesh.workloads.values()],
    }
    with prometheus(tmp_path / "prometheus", targets) as prom:
        wait_for(
            lambda: len(prom.targets()) == 5 and all(t["health"] == "up" for t in prom.targets()),
            timeout=30,
            what="Prometheus to scrape all 5 targets successfully",
        )
        before = sidecar_totals(mesh)
        sent = 60
        with Traffic(f"{mesh.workloads['frontend'].inbound}/items?id=7", limit=sent) as traffic:
            wait_for(lambda: traffic.sent >= sent, timeout=60, what=f"{sent} requests sent")
        # The dead collector: every request still answered 200.
        assert traffic.failures == []
        front = mesh.workloads["frontend"]
        no_route = 7
        for _ in range(no_route):
            assert http_get("http://nowhere.example/", proxy=front.outbound).status == 404

        expected = {(fqdn(s), "200"): before.get((fqdn(s), "200"), 0) + sent for s in SERVICES}
        query = 'sum(lightmesh_requests_total{reporter="destination"}) by (destination_service, response_code)'
        until_equal(
            lambda: by(prom, query, "destination_service", "response_code"),
            expected,
            what="Prometheus totals to count the requests sent",
        )
        nr_query = 'sum(lightmesh_requests_total{response_flags="NR"}) by (destination_service, response_code, reporter)'
        until_equal(
            lambda: by(prom, nr_query, "destination_service", "response_code", "reporter"),
            {("unknown", "404", "source"): no_route},
            what="the no-route requests in Prometheus",
        )
        rates = by(
            prom,
            'sum(rate(lightmesh_requests_total{reporter="destination"}[1m])) by (destination_service, response_code)',
            "destination_service",
            "response_code",
        )
        assert all(rates.get((fqdn(s), "200"), 0) > 0 for s in SERVICES), rates
        p99 = by(
            prom,
            "histogram_quantile(0.99, sum(rate(lightmesh_request_duration_seconds_bucket"
            '{reporter="destination"}[1m])) by (le, destination_service))',
            "destination_service",
        )
        assert set(p99) == {(fqdn(s),) for s in SERVICES}, p99
        assert all(0 < value <= 30 for value in p99.values()), p99
        # Each hop's p99 includes the hops behind it: frontend's is at least customer's p50.
        p50 = by(
            prom,
            "histogram_quantile(0.5, sum(rate(lightmesh_request_duration_seconds_bucket"
            '{reporter="destination"}[1m])) by (le, destination_service))',
            "destination_service",
        )
        assert p99[(fqdn("frontend"),)] >= p50[(fqdn("customer"),)], (p50, p99)

        # The Istio-compatible names, as Istio's dashboards and Kiali query them.
        istio = by(
            prom,
            'sum(istio_requests_total{reporter="destination"}) by (destination_service_name, destination_workload)',
            "destination_service_name",
            "destination_workload",
        )
        assert {name for name, _ in istio} == set(SERVICES), istio
        assert ("catalog", "catalog-v1") in istio and ("catalog", "catalog-v2") in istio

        # The control plane, scraped too.
        assert by(prom, "lightmesh_controlplane_connected_proxies") == {(): 4.0}
        resources = by(prom, "lightmesh_controlplane_resources", "kind", "valid")
        assert resources[("VirtualService", "true")] >= 1, resources
        assert by(prom, "sum(lightmesh_controlplane_convergence_seconds_count)")[()] >= 4

        # The dead collector is only a counter.
        wait_for(
            lambda: (
                by(prom, 'sum(lightmesh_tracing_spans_total{outcome="failed"})').get((), 0) >= sent
            ),
            timeout=30,
            what="failed span exports to be counted",
        )

        # promtool on every /metrics output, and OpenMetrics when asked for it.
        for url in [mesh.debug_url, *(w.admin for w in mesh.workloads.values())]:
            text = http_get(f"{url}/metrics").body.decode()
            code, output = promtool_check_metrics(text)
            # Istio's own metric name keeps its unit; promtool's lint flags exactly that.
            problems = [
                line
                for line in output.splitlines()
                if line.strip() and "istio_request_duration_milliseconds" not in line
            ]
            assert problems == [], f"{url}/metrics: {output}"
            assert code == 0 or "istio_request_duration_milliseconds" in output, output
        for workload in mesh.workloads.values():
            reply = http_get(
                f"{workload.admin}/metrics",
                headers={"Accept": "application/openmetrics-text; version=1.0.0"},
            )
            content_type = {k.lower(): v for k, v in reply.headers.items()}["content-type"]
            assert content_type.startswith("application/openmetrics-text"), content_type
            names = {f.name for f in openmetrics(reply.body.decode())}
            assert {"lightmesh_requests", "lightmesh_request_duration_seconds"} <= names


def test_one_trace_across_frontend_catalog_customer(mesh: LocalMesh) -> None:
    with zipkin_collector() as collector:
        start_shop(mesh, sidecar_args=("--zipkin-url", collector.url, "--trace-sampling", "100"))
        url = f"{mesh.workloads['frontend'].inbound}/items/1"

        # The caller decided not to sample: honoured at every hop.
        unsampled = "a" * 32
        headers = {"x-b3-traceid": unsampled, "x-b3-spanid": "b" * 16, "x-b3-sampled": "0"}
        assert http_get(url, headers=headers).status == 200

        # W3C trace context from the caller: every hop joins it.
        w3c = "4bf92f3577b34da6a3ce929d0e0e4736"
        caller = "00f067aa0ba902b7"
        traceparent = f"00-{w3c}-{caller}-01"
        reply = http_get(url, headers={"traceparent": traceparent, "tracestate": "acme=1"})
        assert reply.status == 200
        spans = wait_for(
            lambda: (s := collector.trace(w3c)) and len(s) >= 5 and s,
            timeout=20,
            what="5 spans of the W3C trace",
        )
        assert_shop_chain(spans, root_parent=caller)

        # B3 single header with a 64-bit trace id (padded to 128 bits, as Zipkin does).
        b3_trace = "80f198ee56343ba8"
        b3_caller = "e457b5a2e4d86bd1"
        assert http_get(url, headers={"b3": f"{b3_trace}-{b3_caller}-1"}).status == 200
        spans = wait_for(
            lambda: (s := collector.trace("0" * 16 + b3_trace)) and len(s) >= 5 and s,
            timeout=20,
            what="5 spans of the B3 trace",
        )
        assert_shop_chain(spans, root_parent=b3_caller)

        # No trace context: the frontend's sidecar starts one (sampling 100%).
        assert http_get(url, headers={"x-request-id": "observe-root-1"}).status == 200

        def root_trace() -> list[dict[str, Any]] | None:
            ids = {
                s["traceId"]
                for s in collector.spans
                if s["tags"].get("guid:x-request-id") == "observe-root-1"
            }
            if len(ids) != 1:
                return None
            spans = collector.trace(ids.pop())
            return spans if len(spans) >= 5 else None

        assert_shop_chain(wait_for(root_trace, timeout=20, what="the new trace"), root_parent="")
        assert collector.trace(unsampled) == []
        assert collector.errors == []


def assert_shop_chain(spans: list[dict[str, Any]], *, root_parent: str) -> None:
    """Five spans: server and client at frontend, server and client at catalog, server at customer,
    each the parent of the next."""
    assert len(spans) == 5, spans
    by_parent = {s.get("parentId", ""): s for s in spans}
    expected = [
        ("SERVER", "frontend.default"),
        ("CLIENT", "frontend.default"),
        ("SERVER", "catalog.default"),
        ("CLIENT", "catalog.default"),
        ("SERVER", "customer.default"),
    ]
    parent = root_parent
    for kind, service in expected:
        span = by_parent.get(parent)
        assert span is not None, f"no span with parent {parent!r} in {spans}"
        assert (span["kind"], span["localEndpoint"]["serviceName"]) == (kind, service), span
        assert span["tags"]["http.method"] == "GET"
        assert span["tags"]["http.status_code"] == "200"
        assert span["tags"]["response_flags"] == "-"
        if kind == "CLIENT":
            assert span["tags"]["peer.service"].startswith(("catalog.", "customer."))
            assert span["remoteEndpoint"]["port"] > 0
        parent = span["id"]
    ids = {s["id"] for s in spans}
    assert len(ids) == 5
