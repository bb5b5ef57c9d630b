"""`python -m bench graph`: what the dashboard's traffic store costs the control plane.

Feeds a TrafficStore reports of N nodes x S series that all change, every 5 s over the
retention, then measures the memory held (tracemalloc, in a second pass), the time to decode and
add one report, and the time to build one graph over 60 s and 15 min. In process, no I/O.
"""

from __future__ import annotations

import argparse
import json
import time
import tracemalloc

from controlplane.traffic import Reporter, TrafficStore, assemble_graph, report_from_proto
from lightmesh.v1 import discovery_pb2 as pb
from sidecar.telemetry.metrics import DURATION_BUCKETS

INTERVAL = 5.0


def _report(step: int, series: int) -> pb.TrafficReport:
    message = pb.TrafficReport(app="app", services=["svc"], duration_bounds=DURATION_BUCKETS)
    width = len(DURATION_BUCKETS) + 1
    for i in range(series):
        per_bucket = step * 10 + i
        message.edges.add(
            reporter="source",
            source_workload="w",
            source_namespace="default",
            destination_service=f"svc{i}.default.svc.cluster.local",
            destination_subset="v1",
            response_code=200,
            requests=per_bucket * width,
            duration_buckets=[per_bucket] * width,
        )
    return message


def _fill(store: TrafficStore, messages: list[pb.TrafficReport], nodes: int) -> tuple[float, float]:
    decode = add = 0.0
    reporters = [
        Reporter(node_id=f"n{n}", workload=f"w{n}", namespace="default") for n in range(nodes)
    ]
    for step, message in enumerate(messages):
        for reporter in reporters:
            started = time.perf_counter()
            report = report_from_proto(message, at=step * INTERVAL)
            decoded = time.perf_counter()
            store.add(reporter, report)
            decode += decoded - started
            add += time.perf_counter() - decoded
    count = len(messages) * nodes
    return decode / count, add / count


def main(argv: list[str]) -> int:
    """Run once and print the figures."""
    parser = argparse.ArgumentParser(prog="python -m bench graph", description=__doc__)
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--series", type=int, default=20)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    steps = int(TrafficStore().retention / INTERVAL) + 1
    messages = [_report(step, args.series) for step in range(steps)]
    store = TrafficStore()
    decode, add = _fill(store, messages, args.nodes)
    now = (steps - 1) * INTERVAL
    graphs: dict[str, float] = {}
    edges = 0
    for window in (60.0, 900.0):
        started = time.perf_counter()
        flows, clusters = store.flows(window=window, now=now)
        edges = len(assemble_graph(flows, clusters, reporters=store.reporters())["edges"])
        graphs[f"graph_{window:.0f}s_ms"] = round((time.perf_counter() - started) * 1000, 1)
    tracemalloc.start()
    measured = TrafficStore()
    _fill(measured, messages, args.nodes)
    held = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    figures = {
        "nodes": args.nodes,
        "series": args.series,
        "reports_per_node": steps,
        "edges": edges,
        "slices_per_node": measured.slices("n0"),
        "memory_mb": round(held / 1e6, 1),
        "memory_per_node_kb": round(held / args.nodes / 1e3),
        "decode_us": round(decode * 1e6),
        "add_us": round(add * 1e6),
        **graphs,
    }
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        for name, value in figures.items():
            print(f"{name:>20}: {value}")
    return 0
