"""Observability end to end: a real Prometheus scraping the shop under traffic, promtool on every
/metrics output, and one trace across frontend → catalog → customer at a Zipkin v2 collector."""

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics
from prometheus_client.parser import text_string_to_metric_families

from lightmeshctl.demo.mesh import LocalMesh, free_port, http_get, wait_for
from lightmeshctl.demo.runner import start_shop
from tests.integration.test_mesh import Traffic
from tests.support.prometheus import Prometheus, prometheus, promtool_check_metrics
from tests.support.zipkin import zipkin_collector

pytestmark = pytest.mark.integration

SERVICES = ("frontend", "catalog", "customer")
ROOT = Path(__file__).resolve().parents[2]
DEPLOY_CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "lightmesh-mesh.json"


def pod(name: str, address: str, annotations: dict[str, str], **labels: str) -> dict[str, Any]:
    """A file_sd target group carrying the __meta_kubernetes_* labels kubernetes_sd gives a pod."""
    meta = {
        "__meta_kubernetes_namespace": "default",
        "__meta_kubernetes_pod_name": name,
        "__meta_kubernetes_pod_phase": labels.pop("phase", "Running"),
    }
    for key, value in annotations.items():
        meta[f"__meta_kubernetes_pod_annotation_prometheus_io_{key}"] = value
    for key, value in labels.items():
        meta[f"__meta_kubernetes_pod_label_{key}"] = value
    return {"targets": [address], "labels": meta}


def deploy_job(tmp: Path, pods: list[dict[str, Any]]) -> dict[str, Any]:
    """deploy/'s scrape job with its relabel rules as shipped. Debian's Prometheus is built without
    kubernetes_sd, so file_sd stands in for it, with the same __meta_kubernetes_* labels."""
    config = yaml.safe_load(DEPLOY_CONFIG.read_text())
    (job,) = config["scrape_configs"]
    assert job["kubernetes_sd_configs"] == [{"role": "pod"}]
    del job["kubernetes_sd_configs"]
    targets = tmp / "pods.json"
    targets.parent.mkdir(parents=True, exist_ok=True)
    targets.write_text(json.dumps(pods))
    job["file_sd_configs"] = [{"files": [str(targets)], "refresh_interval": "1s"}]
    job["scrape_interval"] = job["scrape_timeout"] = "1s"
    return dict(job)


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every target of the Grafana dashboard, variables filled in."""
    model = json.loads(DASHBOARD.read_text())
    return [
        (panel["title"], target["expr"].replace("$__rate_interval", "1m").replace("$service", ".*"))
        for panel in model["panels"]
        for target in panel.get("targets", [])
    ]


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


def sidecar_totals(
    mesh: LocalMesh, keys: tuple[str, ...], **match: str
) -> dict[tuple[str, ...], float]:
    """lightmesh_requests_total summed by `keys` over the series matching `match`, read from
    every sidecar's own /metrics (what Prometheus must end up with)."""
    totals: dict[tuple[str, ...], float] = {}
    for workload in mesh.workloads.values():
        text = http_get(f"{workload.admin}/metrics").body.decode()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels = sample.labels
                if sample.name == "lightmesh_requests_total" and all(
                    labels[k] == v for k, v in match.items()
                ):
                    key = tuple(labels[k] for k in keys)
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
    # Pods as kubernetes_sd would list them: discovered on their app's port, annotated with the
    # sidecar's metrics port; one pod that did not opt in and one that completed are left out.
    pods = [
        pod(f"{name}-7d9f", f"127.0.0.1:{w.app_port}",
            {"scrape": "true", "port": str(w.metrics_port), "path": "/metrics"},
            app=w.service, version=w.version)
        for name, w in mesh.workloads.items()
    ]  # fmt: skip
    pods += [
        pod("lightmesh-controlplane-1", f"127.0.0.1:{mesh.cp_port}",
            {"scrape": "true", "port": str(mesh.cp_metrics_port)}, app="lightmesh-controlplane"),
        pod("no-opt-in", f"127.0.0.1:{free_port()}", {}),
        pod("finished-job", f"127.0.0.1:{free_port()}", {"scrape": "true"}, phase="Succeeded"),
    ]  # fmt: skip
    jobs = [deploy_job(tmp_path / "sd", pods)]
    with prometheus(tmp_path / "prometheus", jobs) as prom:
        wait_for(
            lambda: len(prom.targets()) == 5 and all(t["health"] == "up" for t in prom.targets()),
            timeout=30,
            what="Prometheus to scrape all 5 annotated pods successfully",
        )
        scraped = {t["labels"]["pod"]: t for t in prom.targets()}
        frontend = scraped["frontend-7d9f"]
        metrics_port = mesh.workloads["frontend"].metrics_port
        assert frontend["scrapeUrl"] == f"http://127.0.0.1:{metrics_port}/metrics"
        assert (frontend["labels"]["namespace"], frontend["labels"]["app"]) == (
            "default",
            "frontend",
        )
        by_service = ("destination_service", "response_code")
        before = sidecar_totals(mesh, by_service, reporter="destination")
        nr_keys = ("destination_service", "response_code", "reporter")
        nr_before = sidecar_totals(mesh, nr_keys, response_flags="NR")  # start-up races
        sent = 60
        with Traffic(f"{mesh.workloads['frontend'].inbound}/items?id=7", limit=sent) as traffic:
            wait_for(lambda: traffic.sent >= sent, timeout=60, what=f"{sent} requests sent")
        # The dead collector: every request still answered 200.
        assert traffic.failures == []
        front = mesh.workloads["frontend"]
        no_route = 7
        for _ in range(no_route):
            assert http_get("http://nowhere.example/", proxy=front.outbound).status == 404

        # What the sidecars counted before (start-up requests included), plus what was sent.
        expected = dict(before)
        for service in SERVICES:
            expected[(fqdn(service), "200")] = expected.get((fqdn(service), "200"), 0) + sent
        query = 'sum(lightmesh_requests_total{reporter="destination"}) by (destination_service, response_code)'
        until_equal(
            lambda: by(prom, query, *by_service),
            expected,
            what="Prometheus totals to count the requests sent",
        )
        nr_query = 'sum(lightmesh_requests_total{response_flags="NR"}) by (destination_service, response_code, reporter)'
        nr_expected = dict(nr_before)
        nr_expected[("unknown", "404", "source")] = (
            nr_expected.get(("unknown", "404", "source"), 0) + no_route
        )
        until_equal(
            lambda: by(prom, nr_query, *nr_keys),
            nr_expected,
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

        # Every query of the Grafana dashboard runs; the traffic panels have data.
        for title, promql in dashboard_queries():
            result = prom.query(promql)
            if not title.startswith(("Proxy-made", "NACKs", "Sidecars:")):
                assert result, f"dashboard panel {title!r}: no data for {promql}"

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
        for url in [mesh.debug_url, *(w.admin for w in mesh.workloads.values())]:
            reply = http_get(
                f"{url}/metrics",
                headers={"Accept": "application/openmetrics-text; version=1.0.0"},
            )
            content_type = {k.lower(): v for k, v in reply.headers.items()}["content-type"]
            assert content_type.startswith("application/openmetrics-text"), content_type
            names = {f.name for f in openmetrics(reply.body.decode())}
            expected = (
                {"lightmesh_controlplane_connected_proxies"}
                if url == mesh.debug_url
                else {"lightmesh_requests", "lightmesh_request_duration_seconds"}
            )
            assert expected <= names, (url, names)


def test_one_trace_across_frontend_catalog_customer(mesh: LocalMesh, tmp_path: Path) -> None:
    access_log = tmp_path / "access.log"  # all sidecars append whole lines to one file
    with zipkin_collector() as collector:
        start_shop(
            mesh,
            sidecar_args=(
                "--zipkin-url", collector.url, "--trace-sampling", "100",
                "--access-log", str(access_log),
            ),
        )  # fmt: skip
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
        # The access logs of the five hops carry the trace id and one request id.
        lines = [json.loads(line) for line in access_log.read_text().splitlines()]
        hops = [line for line in lines if line["trace_id"] == w3c]
        assert sorted(h["direction"] for h in hops) == ["inbound"] * 3 + ["outbound"] * 2, hops
        assert len({h["request_id"] for h in hops}) == 1
        assert all(
            (h["method"], h["path"], h["response_code"], h["response_flags"])
            == ("GET", "/items/1", 200, "-")
            for h in hops
        ), hops
        callers = sorted(h["peer_identity"].split(";")[0] for h in hops if h["peer_identity"])
        assert len(callers) == 2 and callers[0].startswith("catalog-v") and callers[1] == "frontend"

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
