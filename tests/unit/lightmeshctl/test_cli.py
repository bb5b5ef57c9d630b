"""The proxy-status table and `lightmesh analyze`."""

from pathlib import Path

import pytest

from lightmeshctl.cli import format_proxy_status, main

EXAMPLES = Path(__file__).resolve().parents[3] / "examples" / "demo"


def test_proxy_status_shows_each_state_and_the_nack_reason() -> None:
    proxies = [
        {
            "id": "frontend-ab12.default",
            "types": {
                "CLUSTERS": {"state": "SYNCED", "acked": "0123456789abcdef"},
                "ENDPOINTS": {"state": "STALE", "pending_seconds": 1.25},
                "ROUTES": {
                    "state": "NACKED",
                    "nacked_version": "fedcba9876543210",
                    "nack": "bad regex",
                },
            },
        }
    ]
    lines = format_proxy_status(proxies).splitlines()
    assert lines[0].split() == ["NAME", "CLUSTERS", "ENDPOINTS", "ROUTES"]
    assert lines[1].split() == [
        "frontend-ab12.default",
        "SYNCED",
        "(01234567)",
        "STALE",
        "(1.2s)",
        "NACKED",
        "(fedcba98)",
    ]
    assert lines[-1].strip() == "frontend-ab12.default ROUTES: bad regex"


def test_proxy_status_shows_the_gateway_column_when_a_gateway_is_connected() -> None:
    synced = {"state": "SYNCED", "acked": "0123456789abcdef"}
    proxies = [
        {"id": "ingressgateway-1.shop", "gateway": True,
         "types": dict.fromkeys(("CLUSTERS", "ENDPOINTS", "ROUTES", "GATEWAY"), synced)},
        {"id": "frontend-1.shop", "gateway": False,
         "types": dict.fromkeys(("CLUSTERS", "ENDPOINTS", "ROUTES", "GATEWAY"), synced)},
    ]  # fmt: skip
    lines = format_proxy_status(proxies).splitlines()
    assert lines[0].split() == ["NAME", "CLUSTERS", "ENDPOINTS", "ROUTES", "GATEWAY"]
    assert lines[1].split()[-2:] == ["SYNCED", "(01234567)"]


def test_analyze_reports_each_problem_and_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "apiVersion: lightmesh.io/v1alpha1\nkind: VirtualService\nmetadata: {name: x}\n"
        "spec: {hosts: [a], http: [{route: [{destination: {host: a}, weight: 50},"
        " {destination: {host: b}, weight: 20}]}]}\n"
    )
    assert main(["analyze", "-f", str(bad), str(EXAMPLES)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert (
        out[0]
        == f"Error: {bad}: VirtualService default/x: spec.http[0].route: weights sum to 70, must be 100"
    )
    assert out[-1] == "2 resources accepted, 1 problems in 3 files"
    assert main(["analyze", "-f", str(EXAMPLES)]) == 0


def test_analyze_prints_warnings_without_failing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = tmp_path / "retries.yaml"
    doc.write_text(
        "apiVersion: lightmesh.io/v1alpha1\nkind: VirtualService\nmetadata: {name: x}\n"
        "spec: {hosts: [a], http: [{route: [{destination: {host: a}}], timeout: 1s,"
        " retries: {attempts: 2, perTryTimeout: 2s}}]}\n"
    )
    assert main(["analyze", "-f", str(doc)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(
        f"{doc}: VirtualService default/x: spec.http[0].retries.perTryTimeout:"
    )
    assert "warning: 2s is longer than the route timeout 1s" in out[0]
    assert out[-1] == "1 resources accepted, 0 problems in 1 files"


def test_top_lists_the_busiest_edge_first_with_its_signals() -> None:
    from lightmeshctl.cli import format_top

    edge = {
        "subset": "v1", "error_rate": 0.0, "p50_ms": 1.0, "p95_ms": 2.0, "p99_ms": 3.0,
        "mtls": 1.0, "flags": {},
    }  # fmt: skip
    graph = {
        "nodes": [
            {"id": "default/frontend", "label": "frontend"},
            {"id": "default/catalog-v1", "label": "catalog-v1"},
        ],
        "edges": [
            {**edge, "id": "a", "source": "unknown", "target": "default/frontend", "rps": 1.0},
            {
                **edge,
                "id": "b",
                "source": "default/frontend",
                "target": "default/catalog-v1",
                "rps": 8.0,
                "error_rate": 0.25,
                "flags": {"FI": 4.0},
            },
        ],
    }
    lines = format_top(graph).splitlines()
    assert lines[0].split()[:3] == ["SOURCE", "DESTINATION", "RPS"]
    assert lines[1].split() == [
        "frontend", "catalog-v1", "(v1)", "8.00", "25.0%", "1.0ms", "2.0ms", "3.0ms", "100.0%",
        "FI:4",
    ]  # fmt: skip
    assert lines[2].split()[0] == "unknown"
    assert "no traffic" in format_top({"nodes": [], "edges": []})
