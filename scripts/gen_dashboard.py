"""Write deploy/grafana/lightmesh-mesh.json, the mesh overview dashboard, from the panel list below.

    python scripts/gen_dashboard.py

Every expression is run against a real Prometheus scraping the demo mesh in
tests/integration/test_observability.py (with $service = ".*" and $__rate_interval = 1m).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parents[1] / "deploy" / "grafana" / "lightmesh-mesh.json"

DST = 'reporter="destination", destination_service=~"$service"'
RATE = "$__rate_interval"


def _quantile(q: str, by: str) -> str:
    return (
        f"histogram_quantile({q}, sum(rate(lightmesh_request_duration_seconds_bucket{{{DST}}}"
        f"[{RATE}])) by (le, {by}))"
    )


def _success(by: str) -> str:
    ok = f'sum(rate(lightmesh_requests_total{{{DST}, response_code!~"5.."}}[{RATE}])) by ({by})'
    return f"{ok} / sum(rate(lightmesh_requests_total{{{DST}}}[{RATE}])) by ({by})"


# (row, title, unit, [(expr, legend)])
PANELS: list[tuple[str, str, str, list[tuple[str, str]]]] = [
    ("Services", "Requests per second", "reqps", [
        (f"sum(rate(lightmesh_requests_total{{{DST}}}[{RATE}])) by (destination_service)",
         "{{destination_service}}"),
    ]),
    ("Services", "Success rate (non-5xx)", "percentunit", [
        (_success("destination_service"), "{{destination_service}}"),
    ]),
    ("Services", "Latency p50 / p90 / p99", "s", [
        (_quantile("0.5", "destination_service"), "p50 {{destination_service}}"),
        (_quantile("0.9", "destination_service"), "p90 {{destination_service}}"),
        (_quantile("0.99", "destination_service"), "p99 {{destination_service}}"),
    ]),
    ("Services", "Proxy-made responses by flag", "reqps", [
        (f'sum(rate(lightmesh_requests_total{{destination_service=~"$service", '
         f'response_flags!="-"}}[{RATE}])) by (destination_service, response_flags)',
         "{{destination_service}} {{response_flags}}"),
    ]),
    ("Versions", "Requests per second by version", "reqps", [
        (f"sum(rate(lightmesh_requests_total{{{DST}}}[{RATE}])) "
         "by (destination_service, destination_version)",
         "{{destination_service}} {{destination_version}}"),
    ]),
    ("Versions", "Success rate by version", "percentunit", [
        (_success("destination_service, destination_version"),
         "{{destination_service}} {{destination_version}}"),
    ]),
    ("Versions", "Latency p50 / p90 / p99 by version", "s", [
        (_quantile("0.5", "destination_service, destination_version"),
         "p50 {{destination_service}} {{destination_version}}"),
        (_quantile("0.9", "destination_service, destination_version"),
         "p90 {{destination_service}} {{destination_version}}"),
        (_quantile("0.99", "destination_service, destination_version"),
         "p99 {{destination_service}} {{destination_version}}"),
    ]),
    ("Control plane", "Connected sidecars", "short", [
        ("sum(lightmesh_controlplane_connected_proxies)", "connected"),
    ]),
    ("Control plane", "Config pushes per second by type", "ops", [
        (f"sum(rate(lightmesh_controlplane_pushes_total[{RATE}])) by (type)", "{{type}}"),
    ]),
    ("Control plane", "Convergence (change → ACK) p50 / p99", "s", [
        (f"histogram_quantile(0.5, sum(rate(lightmesh_controlplane_convergence_seconds_bucket"
         f"[{RATE}])) by (le))", "p50"),
        (f"histogram_quantile(0.99, sum(rate(lightmesh_controlplane_convergence_seconds_bucket"
         f"[{RATE}])) by (le))", "p99"),
    ]),
    ("Control plane", "NACKs and invalid resources", "short", [
        (f"sum(increase(lightmesh_controlplane_nacks_total[{RATE}])) by (type)",
         "NACKs {{type}}"),
        ('sum(lightmesh_controlplane_resources{valid="false"}) by (kind)', "invalid {{kind}}"),
    ]),
    ("Control plane", "Sidecars: config rejected, spans failed", "short", [
        ("sum(lightmesh_config_rejected) by (type)", "rejected {{type}}"),
        (f'sum(rate(lightmesh_tracing_spans_total{{outcome!="exported"}}[{RATE}])) by (outcome)',
         "spans {{outcome}}/s"),
    ]),
]  # fmt: skip


def dashboard() -> dict[str, Any]:
    """The dashboard model (Grafana schema 39)."""
    panels: list[dict[str, Any]] = []
    y = 0
    row = ""
    x = 0
    for index, (row_title, title, unit, targets) in enumerate(PANELS, start=1):
        if row_title != row:
            row, x = row_title, 0
            y += 8 if panels else 0
            panels.append(
                {"type": "row", "title": row, "id": 100 + index, "collapsed": False,
                 "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}}
            )  # fmt: skip
            y += 1
        elif x >= 24:
            x, y = 0, y + 8
        panels.append(
            {
                "type": "timeseries",
                "title": title,
                "id": index,
                "datasource": {"type": "prometheus", "uid": "${datasource}"},
                "gridPos": {"h": 8, "w": 6, "x": x, "y": y},
                "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
                "targets": [
                    {"refId": chr(ord("A") + i), "expr": expr, "legendFormat": legend,
                     "datasource": {"type": "prometheus", "uid": "${datasource}"}}
                    for i, (expr, legend) in enumerate(targets)
                ],
            }
        )  # fmt: skip
        x += 6
    return {
        "title": "lightmesh: mesh overview",
        "uid": "lightmesh-mesh",
        "tags": ["lightmesh", "service-mesh"],
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "time": {"from": "now-30m", "to": "now"},
        "refresh": "10s",
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "type": "datasource",
                    "query": "prometheus",
                    "label": "Prometheus",
                },
                {
                    "name": "service",
                    "type": "query",
                    "label": "Service",
                    "datasource": {"type": "prometheus", "uid": "${datasource}"},
                    "query": {
                        "query": "label_values(lightmesh_requests_total, destination_service)",
                        "refId": "service",
                    },
                    "refresh": 2,
                    "multi": True,
                    "includeAll": True,
                    "allValue": ".*",
                    "current": {"text": "All", "value": "$__all"},
                },
            ]
        },
        "panels": panels,
    }


def main() -> None:
    """Write the dashboard file."""
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(dashboard(), indent=2) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
