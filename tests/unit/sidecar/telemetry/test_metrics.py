"""Request metrics (labels, buckets, cardinality bound, Istio names), access-log records and the
resolver/recorder wrappers, on hand-built exchanges."""

import json

from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_om
from prometheus_client.parser import text_string_to_metric_families

from sidecar.contract import PEER_HEADER, Completed, Forward, RequestHead
from sidecar.telemetry.accesslog import entry
from sidecar.telemetry.exposition import Registry, render_openmetrics, render_text
from sidecar.telemetry.hooks import Telemetry, wrap_recorder, wrap_resolver
from sidecar.telemetry.metrics import (
    LABELS,
    RequestCollector,
    RequestMetrics,
    parse_peer,
    peer_value,
)
from sidecar.telemetry.propagation import Tracer

CATALOG = "outbound|v2|catalog.default.svc.cluster.local"
SHOP_FRONTEND = "spiffe://cluster.local/ns/shop/sa/frontend"
DEFAULT_FRONTEND = "spiffe://cluster.local/ns/default/sa/frontend"


def done(
    *,
    cluster: str = CATALOG,
    status: int = 200,
    flags: str = "",
    duration: float = 0.003,
    headers: list[tuple[bytes, bytes]] | None = None,
    response_bytes: int = 1024,
    identity: str = "",
    upstream_tls: bool = False,
    peer: bytes = b"",
) -> Completed:
    head = RequestHead(
        method="GET", path="/items/1?x=2", host="catalog", http_version="1.1",
        headers=headers or [], peer="127.0.0.9", peer_identity=identity, mesh_peer=peer,
    )  # fmt: skip
    return Completed(
        method="GET", host="catalog", cluster=cluster, status=status, flags=flags,
        duration=duration, request_bytes=10, response_bytes=response_bytes,
        upstream="127.0.0.2:8080", head=head, start_time=1700000000.25,
        upstream_tls=upstream_tls,
    )  # fmt: skip


def source() -> RequestMetrics:
    return RequestMetrics(
        reporter="source", workload="frontend", namespace="default", app="frontend", version="v1"
    )


def destination() -> RequestMetrics:
    return RequestMetrics(
        reporter="destination", workload="catalog-v2", namespace="default", app="catalog",
        version="v2", local_service="catalog",
    )  # fmt: skip


def scrape(
    *metrics: RequestMetrics, istio: bool = False
) -> dict[str, list[tuple[dict[str, str], float]]]:
    registry = Registry()
    registry.register(RequestCollector(*metrics, istio=istio))
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(render_text(registry).decode()):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((sample.labels, sample.value))
    return out


def test_source_labels_come_from_the_cluster_and_this_workload() -> None:
    metrics = source()
    metrics.record(done())
    metrics.record(done(duration=0.0004))
    metrics.record(done(status=503, flags="UH", cluster=""))
    samples = scrape(metrics)
    counts = {
        (labels["destination_service"], labels["response_code"]): value
        for labels, value in samples["lightmesh_requests_total"]
    }
    assert counts == {("catalog.default.svc.cluster.local", "200"): 2, ("unknown", "503"): 1}
    labels = next(
        labels for labels, _ in samples["lightmesh_requests_total"]
        if labels["response_code"] == "200"
    )  # fmt: skip
    assert labels == {
        "reporter": "source", "source_workload": "frontend", "source_namespace": "default",
        "source_app": "frontend", "source_version": "v1", "destination_workload": "unknown",
        "destination_namespace": "default", "destination_app": "catalog",
        "destination_version": "v2", "destination_service": "catalog.default.svc.cluster.local",
        "destination_subset": "v2", "response_code": "200", "response_flags": "-",
        "mtls": "false", "source_principal": "unknown", "grpc_response_status": "",
    }  # fmt: skip
    buckets = {
        s_labels["le"]: value
        for s_labels, value in samples["lightmesh_request_duration_seconds_bucket"]
        if s_labels["response_code"] == "200"
    }
    assert buckets["0.0005"] == 1 and buckets["0.005"] == 2 and buckets["+Inf"] == 2
    sizes = {
        s_labels["le"]: value
        for s_labels, value in samples["lightmesh_response_bytes_bucket"]
        if s_labels["response_code"] == "200"
    }
    assert sizes["256"] == 0 and sizes["1024"] == 2


def test_destination_labels_name_a_verified_caller_from_its_announcement() -> None:
    metrics = destination()
    metrics.record(
        done(peer=peer_value("frontend", "shop", "frontend", "v1"), identity=SHOP_FRONTEND)
    )
    metrics.record(done(peer=b"<script>;shop;y;z", identity=SHOP_FRONTEND))
    metrics.record(done())
    rows = scrape(metrics)["lightmesh_requests_total"]
    callers = sorted((labels["source_workload"], labels["source_namespace"]) for labels, _ in rows)
    assert callers == [("frontend", "shop"), ("unknown", "shop"), ("unknown", "unknown")]
    for labels, _ in rows:
        assert labels["destination_service"] == "catalog.default.svc.cluster.local"
        assert labels["destination_workload"] == "catalog-v2"
        assert labels["destination_subset"] == "v2"


def test_a_plaintext_callers_announcement_is_not_believed() -> None:
    """Anyone can write the header over plaintext: it changes no label."""
    metrics = destination()
    metrics.record(done(peer=peer_value("admin", "kube-system", "admin", "v1")))
    metrics.record(done())
    ((labels, value),) = scrape(metrics)["lightmesh_requests_total"]
    assert (labels["source_workload"], labels["source_namespace"], value) == (
        "unknown",
        "unknown",
        2,
    )
    assert labels["mtls"] == "false"


def test_a_verified_caller_sets_mtls_and_its_principal_and_wins_over_the_header() -> None:
    metrics = destination()
    frontend = SHOP_FRONTEND
    announced = peer_value("frontend", "shop", "frontend", "v1")
    metrics.record(done(peer=announced, identity=frontend))
    lying = peer_value("admin", "kube-system", "admin", "v1")
    metrics.record(done(peer=lying, identity=frontend))
    rows = {
        (labels["source_workload"], labels["source_namespace"], labels["mtls"]): labels
        for labels, _ in scrape(metrics)["lightmesh_requests_total"]
    }
    assert set(rows) == {("frontend", "shop", "true"), ("unknown", "shop", "true")}
    assert {labels["source_principal"] for labels in rows.values()} == {frontend}
    istio = scrape(metrics, istio=True)["istio_requests_total"]
    assert {labels["connection_security_policy"] for labels, _ in istio} == {"mutual_tls"}
    assert {labels["source_principal"] for labels, _ in istio} == {frontend}


def test_peer_values_are_validated() -> None:
    assert parse_peer("frontend;default;frontend;v1") == ("frontend", "default", "frontend", "v1")
    assert parse_peer("a;b") == ("unknown",) * 4
    assert parse_peer("ok;" + "x" * 100 + ";a;b")[1] == "unknown"


def test_series_are_bounded() -> None:
    metrics = RequestMetrics(
        reporter="destination", workload="w", namespace="default", max_series=10
    )
    for i in range(500):
        metrics.record(
            done(peer=f"w{i};ns;app;v".encode(), identity="spiffe://cluster.local/ns/ns/sa/w")
        )
    rows = scrape(metrics)["lightmesh_requests_total"]
    assert len(rows) == 11  # ten callers, then one overflow series
    assert sum(value for _, value in rows) == 500
    assert sum(value for labels, value in rows if labels["source_workload"] == "overflow") == 490


def test_both_directions_render_as_one_family_each_also_in_openmetrics() -> None:
    out, inb = source(), destination()
    out.record(done())
    inb.record(done())
    registry = Registry()
    registry.register(RequestCollector(out, inb))
    text = render_text(registry).decode()
    assert text.count("# TYPE lightmesh_requests_total counter") == 1
    families = {f.name: f for f in parse_om(render_openmetrics(registry).decode())}
    reporters = {s.labels["reporter"] for s in families["lightmesh_requests"].samples}
    assert reporters == {"source", "destination"}
    assert set(LABELS) <= set(families["lightmesh_requests"].samples[0].labels)


def test_istio_switch_adds_istio_names_and_labels() -> None:
    inb = destination()
    inb.record(
        done(peer=b"frontend;default;frontend;v1", identity=DEFAULT_FRONTEND, duration=0.002)
    )
    assert "istio_requests_total" not in scrape(inb)
    samples = scrape(inb, istio=True)
    ((labels, value),) = samples["istio_requests_total"]
    assert value == 1
    assert labels["destination_service_name"] == "catalog"
    assert labels["destination_service_namespace"] == "default"
    assert labels["destination_workload"] == "catalog-v2"
    assert labels["destination_version"] == "v2"
    assert labels["source_workload"] == "frontend"
    assert labels["source_workload_namespace"] == "default"
    assert labels["connection_security_policy"] == "mutual_tls"
    assert labels["request_protocol"] == "http"
    ms = {
        s_labels["le"]: v for s_labels, v in samples["istio_request_duration_milliseconds_bucket"]
    }
    assert ms["1.0"] == 0 and ms["2.5"] == 1  # the same buckets, in milliseconds
    ((_, total),) = samples["istio_request_duration_milliseconds_sum"]
    assert total == 2.0


def test_access_log_entry_has_the_envoy_like_fields() -> None:
    record = entry(
        done(
            status=503, flags="UF",
            headers=[(b"x-request-id", b"r-1"), (b"x-b3-traceid", b"t" * 32)],
            peer=b"frontend;default;frontend;v1", identity=DEFAULT_FRONTEND,
        ),
        direction="inbound",
    )  # fmt: skip
    assert record["start_time"] == "2023-11-14T22:13:20.250Z"
    assert (record["method"], record["path"], record["protocol"]) == (
        "GET",
        "/items/1?x=2",
        "HTTP/1.1",
    )
    assert (record["response_code"], record["response_flags"]) == (503, "UF")
    assert (record["bytes_received"], record["bytes_sent"]) == (10, 1024)
    assert record["duration_ms"] == 3.0
    assert record["upstream_host"] == "127.0.0.2:8080"
    assert record["request_id"] == "r-1" and record["trace_id"] == "t" * 32
    assert record["peer_identity"] == "frontend;default;frontend;v1"
    json.dumps(record)


def test_resolver_wrapper_announces_the_workload_and_continues_the_trace() -> None:
    seen: list[RequestHead] = []

    def resolve(head: RequestHead) -> Forward:
        seen.append(head)
        return Forward(address="127.0.0.1", port=1, cluster=CATALOG)

    telemetry = Telemetry(
        tracer=Tracer(sample_percent=100), peer=peer_value("frontend", "default", "frontend", "v1")
    )
    head = RequestHead(method="GET", path="/", host="catalog", http_version="1.1", headers=[])
    wrap_resolver(resolve, telemetry)(head)
    assert seen == [head]
    assert [v for k, v in head.headers if k == PEER_HEADER] == [b"frontend;default;frontend;v1"]
    assert head.header(b"traceparent") is not None and head.header(b"x-b3-sampled") == b"1"
    # Nothing to add: the resolver itself, unwrapped.
    assert wrap_resolver(resolve, Telemetry()) is resolve


def test_recorder_wrapper_fans_out_in_order() -> None:
    calls: list[str] = []
    metrics = source()
    recorder = wrap_recorder(
        Telemetry(metrics=metrics, access_log=lambda d: calls.append("log")),
        outbound=True,
        then=lambda d: calls.append("router"),
    )
    recorder(done())
    assert calls == ["router", "log"] and metrics.total() == 1
    wrap_recorder(Telemetry(), outbound=False)(done())  # nothing to report to: a no-op


def test_source_series_say_whether_the_upstream_connection_was_mutual_tls() -> None:
    metrics = source()
    metrics.record(done(upstream_tls=True))
    metrics.record(done(upstream_tls=True))
    metrics.record(done())
    samples = scrape(metrics, istio=True)
    counts = {
        (labels["destination_service"], labels["mtls"]): value
        for labels, value in samples["lightmesh_requests_total"]
    }
    assert counts == {
        ("catalog.default.svc.cluster.local", "true"): 2,
        ("catalog.default.svc.cluster.local", "false"): 1,
    }
    policies = {
        labels["connection_security_policy"]: value
        for labels, value in samples["istio_requests_total"]
    }
    assert policies == {"mutual_tls": 2, "unknown": 1}


def test_grpc_calls_are_labelled_with_their_status_in_both_namings() -> None:
    from sidecar.telemetry.metrics import istio_labels

    metrics = RequestMetrics(reporter="source", workload="frontend", namespace="default")
    for status in ("0", "14", "14", ""):
        record = done()
        record.grpc_status = status
        metrics.record(record)
    samples = {
        dict(zip(LABELS, values, strict=True))["grpc_response_status"]: series.count
        for values, series in metrics.samples()
    }
    assert samples == {"0": 1, "14": 2, "": 1}
    values = next(v for v, _ in metrics.samples() if v[-1] == "14")
    istio = istio_labels(values)
    assert "grpc" in istio and "14" in istio and "-" in istio  # protocol, status, flags
    streamed = done()
    streamed.grpc_status, streamed.request_messages, streamed.response_messages = "0", 1, 7
    metrics.record(streamed)
    registry = Registry()
    registry.register(RequestCollector(metrics, istio=True))
    text = render_text(registry).decode()
    assert "lightmesh_request_messages_total{" in text
    assert any(
        line.startswith("istio_response_messages_total{")
        and 'grpc_response_status="0"' in line
        and line.endswith(" 7.0")
        for line in text.splitlines()
    ), text
