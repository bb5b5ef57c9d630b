"""Present `bench controlplane` results: progress lines, the issue-12 targets (met or missed),
a text summary per run, JSON merged across invocations, and a section of docs/benchmarks.md.

The markdown goes between `<!-- controlplane:start -->` and `<!-- controlplane:end -->` (added at
the end of the file the first time, replaced after that). It shows every run of the JSON file,
grouped by label (e.g. "before" and "after"), so runs made by separate commands sit side by side.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from bench.report import _replace

START, END = "<!-- controlplane:start -->", "<!-- controlplane:end -->"
KB = 1024


def _s(value: float | None) -> str:
    """Seconds, as ms below one second."""
    if value is None or math.isnan(value):
        return "—"
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:,.2f} s"


def _bytes(value: float | None) -> str:
    if value is None:
        return "—"
    if value >= 1 << 20:
        return f"{value / (1 << 20):,.1f} MB"
    if value >= KB:
        return f"{value / KB:,.1f} KB"
    return f"{value:,.0f} B"


def per_affected(change: dict[str, Any]) -> float:
    """Bytes of a change per affected proxy: every proxy that received it. (Dividing by the
    service's namespace, as this first did, overstated it tenfold: with the default exportTo
    every proxy of the mesh holds the cluster and needs its endpoints.)"""
    return float(change["bytes_total"]) / max(int(change["proxies_reached"]), 1)


def _unsettled(result: dict[str, Any]) -> str:
    return f"not settled within {result.get('timeout_s', 0):.0f} s"


# ------------------------------------------------------------------------------ progress lines


def herd_line(herd: dict[str, Any]) -> str:
    """One line about a cold herd."""
    head = (
        f"all synced in {_s(herd['seconds'])}"
        if herd["settled"]
        else f"{_unsettled(herd)} ({herd['proxies_synced']} synced)"
    )
    return (
        f"cold herd: {head}; {_bytes(herd['bytes_total'])} sent; CP {herd['cp_cpu_s']} CPU-s, "
        f"sim {herd['sim_cpu_s']} CPU-s; /healthz max {_s(herd['healthz']['max_s'])}; "
        f"streams {herd['streams']}"
    )


def change_line(change: dict[str, Any]) -> str:
    """One line about a change."""
    lat = change["latency_s"]
    head = (
        f"p50 {_s(lat['p50'])} p99 {_s(lat['p99'])} max {_s(lat['max'])}"
        if change["settled"]
        else f"{_unsettled(change)} ({change['acked']}/{change['audience']} ACKed)"
    )
    return (
        f"{head}; reached {change['proxies_reached']} proxies, {_bytes(change['bytes_total'])}"
        f" ({_bytes(per_affected(change))} per affected proxy); "
        f"CP {change['cp_cpu_s']} CPU-s"
    )


def churn_line(churn: dict[str, Any]) -> str:
    """One line about the churn."""
    return (
        f"churn: {churn['toggles']} toggles in {churn['seconds']} s; CP "
        f"{churn['cp_cpu_s_during']} CPU-s ({churn['cp_cores_during']} cores); "
        f"{churn['responses']} responses, {_bytes(churn['bytes_total'])} to "
        f"{churn['proxies_reached']} steady proxies; settled "
        + (f"{_s(churn['settled_after_s'])} after" if churn["settled"] else "never")
    )


def restart_line(restart: dict[str, Any]) -> str:
    """One line about the restart herd."""
    head = (
        f"re-synced {_s(restart['seconds_from_start'])} after the start "
        f"({_s(restart['seconds_from_stop'])} after the stop)"
        if restart["settled"]
        else f"{_unsettled(restart)} ({restart['reconnected']} reconnected)"
    )
    return (
        f"restart herd: {head}; {_bytes(restart['bytes_total'])} re-sent; CP "
        f"{restart['cp_cpu_s']} CPU-s; /healthz max {_s(restart['healthz']['max_s'])}"
    )


# ------------------------------------------------------------------------------------- targets


def _target(name: str, goal: str, measured: str, met: bool) -> dict[str, Any]:
    return {"name": name, "goal": goal, "measured": measured, "met": met}


def targets(run: dict[str, Any]) -> list[dict[str, Any]]:
    """The targets of issue 12 that apply at this run's scale."""
    out: list[dict[str, Any]] = []
    n, s = run["proxies"], run["services"]
    scenarios = run["scenarios"]
    change = scenarios.get("vs_change")
    if change is not None and n <= 5000:
        bound = 1.0 if n <= 1000 else 5.0
        p99 = change["latency_s"]["p99"] if change["settled"] else None
        out.append(
            _target(
                "VS change → all ACKed, p99",
                f"≤ {bound:.0f} s at {'≤ 1,000' if n <= 1000 else '≤ 5,000'} proxies",
                _s(p99) if p99 is not None else _unsettled(change),
                p99 is not None and p99 <= bound,
            )
        )
    herd = scenarios.get("cold_herd")
    if herd is not None and n <= 1000:
        seconds = herd["seconds"]
        out.append(
            _target(
                "cold herd fully synced",
                "≤ 10 s at ≤ 1,000 proxies",
                _s(seconds) if seconds is not None else _unsettled(herd),
                seconds is not None and seconds <= 10,
            )
        )
    if n <= 1000 and s <= 1000:
        peak = float(run.get("cp_rss_peak_mb") or 0)
        out.append(
            _target(
                "CP memory (peak RSS)",
                "≤ 200 MB at ≤ 1,000 proxies x ≤ 1,000 services",
                f"{peak:,.0f} MB" if peak else "—",
                0 < peak <= 200,
            )
        )
    endpoint = [scenarios[k] for k in ("endpoint_add", "endpoint_remove") if k in scenarios]
    if endpoint:
        worst = max(per_affected(e) for e in endpoint)
        out.append(
            _target(
                "endpoint change bytes per affected proxy",
                "≤ 1 KB (all bytes sent ÷ proxies that received it)",
                _bytes(worst),
                worst <= KB and all(e["settled"] for e in endpoint),
            )
        )
    return out


# ---------------------------------------------------------------------------------------- text


# Which target each summary line is checked against.
_TARGET_OF = {
    "cold_herd": "cold herd fully synced",
    "vs_change": "VS change → all ACKed, p99",
    "endpoint_add": "endpoint change bytes per affected proxy",
    "endpoint_remove": "endpoint change bytes per affected proxy",
    "memory": "CP memory (peak RSS)",
}


def text(run: dict[str, Any]) -> str:
    """The summary of one run for stdout, each figure followed by its target, met or missed."""
    marks = {
        t["name"]: f"  [target {t['goal']}: {'met' if t['met'] else 'MISSED'}]"
        for t in run.get("targets", [])
    }
    lines = [
        "",
        f"== {run['source']} {run['proxies']:,} proxies x {run['services']:,} services "
        f"({run['wall_s']:.0f} s wall; load: {run['uptime_before'].split('load average:')[-1]}"
        f" → {run['uptime_after'].split('load average:')[-1]})",
    ]
    if run.get("skipped"):
        lines.append(f"   skipped the rest: {run['skipped']}")
    scenarios = run["scenarios"]
    for key, render in (
        ("cold_herd", herd_line),
        ("vs_change", lambda c: "VS change: " + change_line(c)),
        ("endpoint_add", lambda c: "endpoint add: " + change_line(c)),
        ("endpoint_remove", lambda c: "endpoint remove: " + change_line(c)),
        ("churn", churn_line),
        ("restart_herd", restart_line),
    ):
        if key in scenarios:
            lines.append("   " + render(scenarios[key]) + marks.get(_TARGET_OF.get(key, ""), ""))
    steady = run.get("steady") or {}
    lines.append(
        f"   CP RSS peak {run['cp_rss_peak_mb']:,.0f} MB, steady {steady.get('rss_mb') or 0:,.0f}"
        f" MB, idle {steady.get('idle_cpu_cores', 0)} cores" + marks.get(_TARGET_OF["memory"], "")
    )
    lines.append(
        f"   simulator {run['sim']['processes']} processes ({run.get('client', 'grpcio')} client), {run['sim']['cpu_s']} CPU-s; harness "
        f"{run['harness_cpu_s']} CPU-s; other work on the machine "
        f"{run.get('other_cores', '?')} cores on average"
    )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------- JSON


def _key(run: dict[str, Any]) -> tuple[str, str, int, int]:
    return run.get("label", ""), run["source"], run["proxies"], run["services"]


def merge(path: Path, runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The runs already in `path` with these added (a run of the same label, source and scale
    replaces the older one), in a stable order."""
    existing: list[dict[str, Any]] = []
    if path.exists():
        existing = json.loads(path.read_text()).get("runs", [])
    by_key = {_key(r): r for r in existing}
    for run in runs:
        by_key[_key(run)] = run
    return [by_key[k] for k in sorted(by_key)]


# ------------------------------------------------------------------------------------ markdown


def _cell_herd(herd: dict[str, Any] | None) -> str:
    if herd is None:
        return "—"
    return _s(herd["seconds"]) if herd["settled"] else f"{_unsettled(herd)}"


def _cell_change(change: dict[str, Any] | None) -> str:
    if change is None:
        return "—"
    lat = change["latency_s"]
    if not change["settled"]:
        return f"{_unsettled(change)} ({change['acked']:,}/{change['audience']:,})"
    return " / ".join(_s(lat[k]) for k in ("p50", "p90", "p99", "max"))


def _cell_endpoint(change: dict[str, Any] | None) -> str:
    if change is None:
        return "—"
    when = _s(change["latency_s"]["max"]) if change["settled"] else _unsettled(change)
    return f"{when}; {change['proxies_reached']:,} reached"


def _cell_restart(restart: dict[str, Any] | None) -> str:
    if restart is None:
        return "—"
    head = _s(restart["seconds_from_start"]) if restart["settled"] else _unsettled(restart)
    return f"{head}; {_bytes(restart['bytes_total'])} re-sent"


def _healthz(run: dict[str, Any]) -> str:
    values = []
    for key in ("cold_herd", "restart_herd"):
        probe = run["scenarios"].get(key, {}).get("healthz") or {}
        if probe:
            failed = f", {probe['failed']} failed" if probe["failed"] else ""
            values.append(f"{_s(probe['max_s'])}{failed}")
    return " / ".join(values) or "—"


def _row_name(run: dict[str, Any]) -> str:
    return f"{run['source']} | {run['proxies']:,} x {run['services']:,}"


def _convergence_row(run: dict[str, Any]) -> str:
    sc = run["scenarios"]
    return (
        f"| {_row_name(run)} | {_cell_herd(sc.get('cold_herd'))}"
        + (" (then waves)" if "ramp" in sc else "")
        + f" | {_cell_change(sc.get('vs_change'))}"
        + (" (its namespace only)" if run.get("vs_audience") == "namespace" else "")
        + f" | {_cell_endpoint(sc.get('endpoint_add'))}"
        f" | {_cell_endpoint(sc.get('endpoint_remove'))} | {_cell_restart(sc.get('restart_herd'))}"
        f" | {_healthz(run)} |"
    )


def _cost_row(run: dict[str, Any]) -> str:
    sc = run["scenarios"]
    change, add, churn = sc.get("vs_change"), sc.get("endpoint_add"), sc.get("churn")
    steady = run.get("steady") or {}
    vs_bytes = (
        f"{_bytes(change['bytes_total'])} / {_bytes(change['bytes_per_proxy'])}" if change else "—"
    )
    ep_bytes = f"{_bytes(add['bytes_total'])} / {_bytes(per_affected(add))}" if add else "—"
    churn_cell = (
        f"{churn['toggles']} toggles: {churn['cp_cpu_s_during']} CPU-s "
        f"({churn['cp_cores_during']} cores), {_bytes(churn['bytes_total'])} sent"
        if churn
        else "—"
    )
    herd = sc.get("cold_herd") or {}
    after = run.get("cp_after_start") or {}
    start = (
        f"{_s(run.get('cp_start_s'))} / "
        + (_s(after.get("idle_after_s")) if after.get("idle") else "busy")
        if "cp_start_s" in run
        else "—"
    )
    return (
        f"| {_row_name(run)} | {start} | {vs_bytes} | {ep_bytes} | {run['cp_rss_peak_mb']:,.0f} / "
        f"{steady.get('rss_mb') or 0:,.0f} MB | {change['cp_cpu_s'] if change else '—'} | "
        f"{add['cp_cpu_s'] if add else '—'} | {churn_cell} | "
        f"{herd.get('cp_cpu_s', '—')} / {herd.get('sim_cpu_s', '—')} | {run['sim']['cpu_s']} |"
    )


def _load(run: dict[str, Any]) -> str:
    return str(
        run["uptime_before"].split("load average:")[-1].split(",")[0].strip()
        + " → "
        + run["uptime_after"].split("load average:")[-1].split(",")[0].strip()
    )


def markdown(runs: list[dict[str, Any]], *, json_name: str | None) -> str:
    """The control-plane section (without its markers)."""
    lines = [
        "## Control plane at scale (`python -m bench controlplane`)",
        "",
        "The real `lightmesh controlplane` process (TLS config stream, state directory, debug "
        "port) against N simulated proxies speaking the real protocol from a few worker "
        "processes (bench/cp_sim.py; the protocol client is bench/cp_client.py). S services over "
        "10 namespaces, one VirtualService (80/20 over subsets v1/v2) and one DestinationRule "
        "each; every proxy is an endpoint of one service (file source: it registers in local "
        "mode; Kubernetes source: Pod + EndpointSlice entry in a real kube-apiserver + etcd).",
        "",
        "- *Cold herd*: all proxies connect at once to a running, idle CP → every proxy ACKed "
        "every type and the CP was then quiet (no response for 3 s, its CPU near its idle rate, "
        "/healthz prompt); the time is that of the last response. *VS change*: one "
        "VirtualService weight edit (file rewritten / merge patch) → every proxy ACKed new "
        "routes, p50 / p90 / p99 / max over proxies, pooled over the repetitions. *Endpoint add "
        "/ remove*: one endpoint of service 0 (a proxy registering / an EndpointSlice patch) → "
        "every proxy of its namespace ACKed new endpoints (max), and how many proxies received "
        "anything. *Restart*: SIGTERM, start again → every proxy reconnected (the CP's "
        "connected-proxies gauge) and quiet, counted from the new process's start; the proxies "
        "reconnect with the sidecar's backoff (0.25 s doubling to 4 s, ±50 %), which alone "
        "accounts for several seconds. *Churn*: that endpoint flaps every 100 ms for 20 s "
        "(registration / `ready` condition). *CP start → /healthz / → idle*: the Kubernetes "
        "source first writes every resource's status.",
        "- Bytes are gRPC message payloads (serialised DiscoveryResponse) as the proxies "
        "received them, not counting the changed endpoint's own stream; *per affected proxy* "
        "is all bytes of the change ÷ the proxies that received it (with the default exportTo, "
        "every proxy holds every cluster). CPU-s are "
        "utime + stime of the CP process from the change to its last response. The machine is "
        "shared (2 vCPU): each run gives `uptime`'s 1-minute load before → after and the cores "
        "other work used meanwhile, and the simulator's own CPU is shown so that its share can "
        "be told apart.",
        "- Every wait is bounded (30 s + N x S / 2000 s, at most 300 s): *not settled within X s*"
        " is a result. When the cold herd does not settle, the proxies are disconnected and "
        'reconnected in 20 waves, each waited for, within 300 s ("then waves"), so that the '
        "later scenarios measure a fully connected mesh; if even that fails they are skipped.",
    ]
    if json_name:
        lines.append(f"- Raw figures: `{json_name}`.")
    labels: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        labels.setdefault(run.get("label", ""), []).append(run)
    for label, group in labels.items():
        commands = sorted({r["command"] for r in group})
        commits = sorted({r["machine"]["cp_code_commit"] for r in group})
        heads = sorted({r["machine"].get("commit", "?") for r in group})
        dates = sorted({r["started"][:10] for r in group})
        lines += [
            "",
            f"### {label or 'unlabelled'} — control-plane code last changed in "
            f"`{', '.join(commits)}` (measured at `{', '.join(heads)}`, {', '.join(dates)})",
            "",
            "Commands (each under `flock /tmp/lightmesh-bench.lock`): "
            + "; ".join(f"`{c}`" for c in commands),
            "",
            "| source | proxies x services | cold herd → all ACKed | VS change → all ACKed "
            "p50 / p90 / p99 / max | endpoint add → namespace ACKed | endpoint remove | restart "
            "→ re-synced | /healthz max (cold / restart) |",
            "|---|---|---|---|---|---|---|---|",
            *(_convergence_row(r) for r in group),
            "",
            "| source | proxies x services | CP start → /healthz / → idle | bytes per VS change "
            "total / per proxy | bytes per "
            "endpoint add total / per affected proxy | CP RSS peak / steady | CP CPU-s per VS "
            "change | CP CPU-s per endpoint add | churn | cold herd CPU-s CP / sim | sim CPU-s "
            "(run) |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
            *(_cost_row(r) for r in group),
            "",
            "| source | proxies x services | target (issue 12) | goal | measured | |",
            "|---|---|---|---|---|---|",
            *(
                f"| {_row_name(r)} | {t['name']} | {t['goal']} | {t['measured']} | "
                f"{'met' if t['met'] else '**missed**'} |"
                for r in group
                for t in r["targets"]
            ),
            "",
            "Machine load (1-min average before → after; cores used on average by other work "
            "during the run): "
            + "; ".join(
                f"{r['source']} {r['proxies']}x{r['services']}: {_load(r)}, "
                f"{r.get('other_cores', '?')} cores"
                for r in group
            )
            + ".",
        ]
        skipped = [r for r in group if r.get("skipped")]
        lines += [f"- {_row_name(r)}: {r['skipped']}." for r in skipped]
    return "\n".join(lines)


def update_markdown(
    path: Path, runs: list[dict[str, Any]], *, json_path: Path | None, root: Path
) -> None:
    """Write or replace the control-plane section of `path`."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    json_name = None
    if json_path is not None:
        json_name = os.path.relpath(json_path.resolve(), root)
        if json_name.startswith(".."):
            json_name = json_path.name
    path.write_text(_replace(text, START, END, markdown(runs, json_name=json_name)))
