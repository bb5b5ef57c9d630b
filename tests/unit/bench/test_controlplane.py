"""The pure parts of `bench controlplane`: the generated mesh, what the ledger makes of the
workers' lines, the targets and the merged JSON."""

import json
import math
from pathlib import Path

import pytest

from bench.cp_client import ENDPOINTS, ROUTES, TYPES, NodeSpec, Registration, Response, StreamEvent
from bench.cp_mesh import (
    CHANGED_SERVICE,
    Mesh,
    kube_endpoint_slice,
    service_file,
    service_file_path,
    slice_endpoints,
)
from bench.cp_report import markdown, merge, targets
from bench.cp_rig import Ledger, percentile
from bench.cp_sim import response_line, spec_from_json, spec_to_json, stream_line
from controlplane.sources.files import FileSet


@pytest.mark.parametrize(("proxies", "services"), [(5, 5), (100, 100), (1000, 100), (100, 1000)])
def test_every_service_has_an_endpoint_in_its_proxies_namespace(
    proxies: int, services: int
) -> None:
    mesh = Mesh.make(proxies, services)
    served = [s for p in range(proxies) for s in mesh.served_by(p)]
    assert sorted(served) == sorted(s for s in range(services) for _ in mesh.endpoints_of(s))
    assert set(served) == set(range(services))
    for proxy in range(proxies):
        node = mesh.node(proxy, register=True)
        assert {mesh.namespace(s) for s in mesh.served_by(proxy)} == {node.namespace}
        assert [r.service for r in node.registrations] == [
            mesh.service_name(s) for s in mesh.served_by(proxy)
        ]
    assert mesh.node(0, register=False).registrations == ()


def test_the_extra_proxy_serves_the_changed_service_and_the_audience_is_its_namespace() -> None:
    mesh = Mesh.make(100, 100)
    assert mesh.served_by(mesh.extra) == [CHANGED_SERVICE]
    assert mesh.extra not in mesh.endpoints_of(CHANGED_SERVICE)
    audience = mesh.audience(CHANGED_SERVICE)
    assert len(audience) == 10 and all(mesh.proxy_namespace(p) == "bench-0" for p in audience)
    assert mesh.audience(CHANGED_SERVICE, "mesh") == list(range(100))
    assert mesh.labels(mesh.extra) == {"app": "svc-0000", "version": "v2"}
    assert [mesh.labels(p)["version"] for p in mesh.endpoints_of(1)] == ["v1"]


def test_fewer_proxies_than_services_must_divide_into_the_namespaces() -> None:
    with pytest.raises(ValueError, match="multiple of the 10 namespaces"):
        Mesh.make(15, 100)


def test_the_generated_files_are_valid_resources() -> None:
    mesh = Mesh.make(20, 20)
    files = {service_file_path(mesh, s): service_file(mesh, s) for s in range(20)}
    resources, problems = FileSet().load(files)
    assert problems == ()
    assert len(resources) == 40
    changed = service_file(mesh, CHANGED_SERVICE, 90)
    assert '"weight": 90' in changed and '"weight": 10' in changed


def test_the_slice_holds_the_extra_endpoint_ready_unready_or_not_at_all() -> None:
    mesh = Mesh.make(10, 5)
    base = kube_endpoint_slice(mesh, CHANGED_SERVICE)["endpoints"]
    assert len(base) == 2  # type: ignore[arg-type]
    ready = slice_endpoints(mesh, CHANGED_SERVICE, extra=True)
    unready = slice_endpoints(mesh, CHANGED_SERVICE, extra=False)
    assert ready[-1]["conditions"] == {"ready": True} and len(ready) == 3
    assert unready[-1]["conditions"] == {"ready": False}
    assert slice_endpoints(mesh, 1, extra=True) == kube_endpoint_slice(mesh, 1)["endpoints"]


def test_node_specs_survive_the_trip_to_a_worker() -> None:
    spec = NodeSpec(
        "px-1.ns", "px-1", "ns", {"app": "a"}, "sa", (Registration("a", "10.0.0.1", 80),)
    )
    assert spec_from_json(json.loads(json.dumps(spec_to_json(spec)))) == spec


def _response(kind: str, at: float, *, error: str = "", size: int = 100) -> Response:
    return Response(kind, "v1", size, 3, at, at + 0.01, error)


def test_the_ledger_completes_a_proxy_once_it_acked_every_needed_type_since_the_mark() -> None:
    ledger = Ledger()
    tracker = ledger.track(audience=[0, 1], need=TYPES, exclude=[9], since=10.0)
    ledger.feed(response_line(0, _response(ROUTES, 9.0)))  # before the mark
    for kind in TYPES:
        ledger.feed(response_line(0, _response(kind, 11.0)))
        ledger.feed(response_line(9, _response(kind, 11.0)))  # excluded
    ledger.feed(response_line(1, _response(ENDPOINTS, 12.0, error="bad thing")))
    ledger.feed(stream_line(1, StreamEvent("error", "UNAVAILABLE"), 12.5))
    ledger.feed(stream_line(1, StreamEvent("open"), 13.0))
    assert not tracker.done and tracker.complete == {0: pytest.approx(11.01)}
    assert tracker.received_by == {0, 1} and tracker.nacks == 1
    assert tracker.bytes == 100 * (len(TYPES) + 1) and tracker.responses == len(TYPES) + 1
    assert tracker.streams == {"error:UNAVAILABLE": 1, "open": 1} and tracker.opened == {1}
    assert tracker.latencies() == [pytest.approx(1.01), math.inf]
    for kind in TYPES:
        ledger.feed(response_line(1, _response(kind, 14.0)))
    assert tracker.done and tracker.done_at == pytest.approx(14.01)
    ledger.forget(tracker)
    ledger.feed(response_line(0, _response(ROUTES, 15.0)))
    n = len(TYPES)
    assert tracker.responses == 2 * n + 1 and ledger.responses == 3 * n + 3


def test_a_tracker_that_needs_nothing_is_done_at_once() -> None:
    assert Ledger().track(audience=[0, 1], need=()).done


def test_percentiles_are_nearest_rank_and_never_counts_as_infinite() -> None:
    values = sorted([0.1 * i for i in range(1, 100)] + [math.inf])
    assert percentile(values, 50) == pytest.approx(5.0)
    assert percentile(values, 99) == pytest.approx(9.9)
    assert percentile(values, 100) == math.inf
    assert math.isnan(percentile([], 50))


def _run(
    proxies: int, services: int, *, p99: float | None, herd: float | None
) -> dict[str, object]:
    change = {
        "settled": p99 is not None, "timeout_s": 80.0, "acked": 1, "audience": 2,
        "latency_s": {"p50": p99, "p90": p99, "p99": p99, "max": p99},
        "bytes_total": 2048, "bytes_per_proxy": 20, "bytes_per_audience_proxy": 512,
        "proxies_reached": 2, "cp_cpu_s": 0.5,
    }  # fmt: skip
    return {
        "label": "before", "source": "files", "proxies": proxies, "services": services,
        "command": "python -m bench controlplane", "started": "2026-12-01T00:00:00+00:00",
        "uptime_before": "load average: 1.00, 1.00, 1.00",
        "uptime_after": "load average: 2.00, 1.00, 1.00",
        "machine": {"cp_code_commit": "abc1234"}, "cp_rss_peak_mb": 150.0,
        "steady": {"rss_mb": 140.0}, "sim": {"cpu_s": 1.0},
        "scenarios": {
            "cold_herd": {"settled": herd is not None, "seconds": herd, "timeout_s": 80.0,
                          "cp_cpu_s": 1, "sim_cpu_s": 1, "healthz": {"max_s": 0.1, "failed": 0}},
            "vs_change": change, "endpoint_add": change, "endpoint_remove": change,
        },
    }  # fmt: skip


def test_targets_apply_by_scale_and_are_met_or_missed() -> None:
    small = {t["name"]: t for t in targets(_run(1000, 100, p99=0.9, herd=12.0))}
    assert small["VS change → all ACKed, p99"]["met"]
    assert not small["cold herd fully synced"]["met"]
    assert small["CP memory (peak RSS)"]["met"]
    assert small["endpoint change bytes per affected proxy"]["met"]
    large = {t["name"]: t for t in targets(_run(5000, 1000, p99=None, herd=None))}
    assert set(large) == {"VS change → all ACKed, p99", "endpoint change bytes per affected proxy"}
    assert not large["VS change → all ACKed, p99"]["met"]
    assert large["VS change → all ACKed, p99"]["measured"] == "not settled within 80 s"
    assert not large["endpoint change bytes per affected proxy"]["met"]  # not settled


def test_runs_merge_by_label_source_and_scale_and_render_per_label(tmp_path: Path) -> None:
    path = tmp_path / "cp.json"
    first, other = _run(100, 100, p99=2.0, herd=5.0), _run(1000, 100, p99=30.0, herd=None)
    path.write_text(json.dumps({"runs": [first, other]}))
    again = {**_run(100, 100, p99=1.5, herd=4.0), "targets": []}
    after = {**_run(100, 100, p99=0.2, herd=1.0), "label": "after"}
    runs = merge(path, [again, after])
    assert [(r["label"], r["proxies"]) for r in runs] == [
        ("after", 100),
        ("before", 100),
        ("before", 1000),
    ]
    assert runs[1]["scenarios"]["vs_change"]["latency_s"]["p99"] == 1.5
    for run in runs:
        run["targets"] = targets(run)
    text = markdown(runs, json_name="docs/controlplane.json")
    assert "### after" in text and "### before" in text
    assert "| files | 100 x 100 | 1.00 s |" in text
    assert "not settled within 80 s" in text and "**missed**" in text
