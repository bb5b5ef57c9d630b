"""Present a data-plane result: a side-by-side text table, a markdown section, a PNG chart.

The markdown goes between `<!-- dataplane:start -->` and `<!-- dataplane:end -->` in
docs/benchmarks.md (added at the end the first time, replaced after that; the rest of the file is
kept). The profile has its own pair of markers and is replaced only by a run that profiled.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

START, END = "<!-- dataplane:start -->", "<!-- dataplane:end -->"
PROFILE_START, PROFILE_END = "<!-- dataplane-profile:start -->", "<!-- dataplane-profile:end -->"
ORDER = ("direct", "sidecar", "two-sidecars", "two-sidecars-mtls", "nginx", "haproxy")
TITLES = {
    "direct": "direct",
    "sidecar": "1 sidecar",
    "two-sidecars": "2 sidecars",
    "two-sidecars-mtls": "2 sidecars, mTLS",
    "nginx": "nginx",
    "haproxy": "haproxy",
}


def _num(value: float | None, digits: int) -> str:
    if value is None or math.isnan(value):
        return "-"
    return f"{value:,.{digits}f}"


def _rss(setup: dict[str, Any], key: str) -> str:
    values = [v[key] for v in setup["rss_mb"].values()]
    return " / ".join(_num(v, 1) for v in values) if values else "-"


def rows(result: dict[str, Any]) -> list[tuple[str, list[str]]]:
    """The figures, one (label, cells per setup) row each."""
    setups = [result["setups"][name] for name in ORDER]
    reps = result["method"]["plan"]["saturation_reps"]
    return [
        (f"saturation req/s (median of {reps})", [_num(s["saturation_rps"], 0) for s in setups]),
        ("p50 at 1000 req/s, ms", [_num(s["latency_ms"]["p50"], 3) for s in setups]),
        ("p90 at 1000 req/s, ms", [_num(s["latency_ms"]["p90"], 3) for s in setups]),
        ("p99 at 1000 req/s, ms", [_num(s["latency_ms"]["p99"], 3) for s in setups]),
        (
            "proxy CPU-s per 1000 req at 1000 req/s",
            [_num(s["proxy_cpu_s_per_1000_req"] if s["proxies"] else None, 3) for s in setups],
        ),
        (
            "proxy CPU-s per 1000 req at saturation",
            [
                _num(s["proxy_cpu_s_per_1000_req_saturation"] if s["proxies"] else None, 3)
                for s in setups
            ],
        ),
        ("proxy RSS idle, MiB", [_rss(s, "idle") for s in setups]),
        ("proxy RSS under load (max), MiB", [_rss(s, "load") for s in setups]),
        (
            "errors (saturation + 1000 req/s)",
            [str(s["saturation_errors"] + s["rate_errors"]) for s in setups],
        ),
    ]


def _added(result: dict[str, Any]) -> list[tuple[str, list[float]]]:
    """Latency added per hop, ms, per proxied setup: (p50, p90, p99)."""
    direct = result["setups"]["direct"]["latency_ms"]
    out = []
    for name in ORDER[1:]:
        setup = result["setups"][name]
        hops = max(len(setup["proxies"]), 1)
        out.append(
            (name, [(setup["latency_ms"][p] - direct[p]) / hops for p in ("p50", "p90", "p99")])
        )
    return out


def _core_usage(machine: dict[str, Any]) -> str:
    usage = machine.get("core_usage_during_measurement") or {}
    server, client = usage.get("cpu0"), usage.get("cpu1")
    if not server or not client:
        return ""
    return (
        f"While measuring, core 0 was {server['busy_pct']:.0f}% busy, of which "
        f"{server['other_processes_pct']:.0f}% other processes, {server['softirq_pct']:.0f}% "
        f"(soft)irq and {server['steal_pct']:.0f}% steal; core 1 {client['busy_pct']:.0f}% busy "
        f"({client['steal_pct']:.0f}% steal)."
    )


def _target_cells(target: dict[str, Any]) -> list[str]:
    digits = 3 if target["unit"] in ("vCPU", "ms") else 2 if target["unit"] == "x" else 1
    unit = "x" if target["unit"] == "x" else f" {target['unit']}"
    measured = f"{_num(target['measured'], digits)}{unit}"
    return [target["name"], target["goal"], measured, "PASS" if target["pass"] else "MISS"]


def text_table(result: dict[str, Any]) -> str:
    """Fixed-width tables for stdout: the five setups side by side, then the targets."""
    header = ["", *(TITLES[name] for name in ORDER)]
    body = [[label, *cells] for label, cells in rows(result)]
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    lines = [
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in [header, *body]
    ]
    targets = [_target_cells(t) for t in result["targets"]]
    twidths = [max(len(r[i]) for r in targets) for i in range(4)]
    lines.append("")
    lines.append("targets (MISSION.md):")
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, twidths, strict=True)) for r in targets]
    lines.append(
        f"load average {result['machine']['load_average'][0]:.2f} at start, "
        f"{result['machine']['load_average_after'][0]:.2f} at end; wall {result['wall_seconds']}s"
    )
    lines.append(_core_usage(result["machine"]))
    return "\n".join(lines)


def _markdown_table(header: list[str], body: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in body]
    return lines


def markdown(result: dict[str, Any], *, chart: str | None, json_name: str | None) -> str:
    """The data-plane section (without its markers)."""
    method, machine, versions = result["method"], result["machine"], result["versions"]
    kind = "quick run" if result["quick"] else "full run"
    lines = [
        f"## Data plane: sidecar vs direct, nginx and haproxy ({result['started'][:10]}, {kind})",
        "",
        f"`{result['command']}` (`make bench`), commit `{versions['lightmesh_commit']}`, "
        f"{result['wall_seconds']:.0f} s wall."
        + (f" Raw figures: `{json_name}`." if json_name else ""),
        "",
        f"- Machine: {machine['cpus']} vCPU, Linux {machine['kernel']}, Python {machine['python']}. "
        f"**Shared with other work during the run**: load average "
        f"{machine['load_average'][0]:.2f} at start, {machine['load_average_after'][0]:.2f} at end "
        "— figures are noisy; compare columns of one run, not runs. " + _core_usage(machine),
        f"- Backend: nginx, one worker, {method['body_bytes']} B body from memory. Every "
        f"server-side process (backend, proxy or sidecars) pinned to core {method['server_core']},"
        " one worker/thread each (nginx `worker_processes 1`, haproxy `nbthread 1`, the sidecar's"
        f" single asyncio loop on uvloop); load generators on core {method['client_core']}.",
        f"- Saturation: {method['saturation']}.",
        f"- Latency: {method['latency']} (fortio: constant rate, open loop; histogram at 1 µs "
        "resolution below 100 µs, 10 µs steps to 200 µs, 50 µs steps to 1 ms, interpolated).",
        f"- CPU: {method['cpu']}; at 1000 req/s CPU-s per 1000 requests equals vCPU per 1000 req/s."
        " For 2 sidecars the column is both sidecars together. Loopback TCP work the kernel does"
        " in softirq context is charged to no process (the (soft)irq share above), for every"
        " setup alike.",
        f"- RSS: {method['rss']}; 2 sidecars: client / server.",
        f"- Versions: {versions['nginx']}; {versions['haproxy']}; {versions['wrk']}; "
        f"fortio {versions['fortio']}.",
        "",
    ]
    lines += _markdown_table(
        ["", *(TITLES[name] for name in ORDER)], [[label, *cells] for label, cells in rows(result)]
    )
    lines += [
        "",
        "Latency added per proxy hop at 1000 req/s (vs direct; 2 sidecars: half of it):",
        "",
    ]
    lines += _markdown_table(
        ["", "p50", "p90", "p99"],
        [[TITLES[name], *(_num(v, 3) for v in added)] for name, added in _added(result)],
    )
    lines += ["", "Targets (MISSION.md), from the same run:", ""]
    lines += _markdown_table(
        ["target", "goal", "measured", ""], [_target_cells(t) for t in result["targets"]]
    )
    if chart:
        lines += ["", f"![data-plane benchmark]({chart})"]
    return "\n".join(lines)


def profile_markdown(result: dict[str, Any]) -> str:
    """The profile section (without its markers)."""
    profile = result["profile"]
    busy, idle = profile["busy_samples"], profile["idle_samples"]
    lines = [
        f"### Where a sidecar spends its CPU under load ({result['started'][:10]})",
        "",
        f"`{profile['tool']}` on the `sidecar` setup (inbound listener → nginx) for "
        f"{profile['seconds']:g} s: {busy} busy samples ({idle} more waited in epoll, in the "
        "event loop or grpc's threads, and are left out). *self*: the innermost frame; *total*: "
        "anywhere on the stack; *from*: the innermost lightmesh function above it. Native frames "
        "are on, so system calls and C code in uvloop, httptools and CPython show by name.",
        "",
        "Top 10 by self time:",
        "",
    ]
    lines += _markdown_table(
        ["#", "function (file)", "self %", "total %", "from (share)"],
        [
            [
                str(i),
                f"`{row['function']}`",
                f"{row['self_pct']:.1f}",
                f"{row['total_pct']:.1f}",
                ", ".join(f"`{c['caller']}` {c['pct']:.1f}" for c in row["from"]),
            ]
            for i, row in enumerate(profile["by_self"], start=1)
        ],
    )
    lines += [
        "",
        "lightmesh's own functions by total time (what each call costs with what it calls):",
        "",
    ]
    lines += _markdown_table(
        ["#", "function (file)", "total %", "self %"],
        [
            [str(i), f"`{row['function']}`", f"{row['total_pct']:.1f}", f"{row['self_pct']:.1f}"]
            for i, row in enumerate(profile["by_total"], start=1)
        ],
    )
    return "\n".join(lines)


def _replace(text: str, start: str, end: str, content: str) -> str:
    block = f"{start}\n{content}\n{end}"
    if start in text and end in text:
        head, rest = text.split(start, 1)
        _, tail = rest.split(end, 1)
        return head + block + tail
    return text.rstrip("\n") + "\n\n" + block + "\n"


def update_markdown(
    path: Path, result: dict[str, Any], *, chart: Path | None, json_path: Path | None, root: Path
) -> None:
    """Write or replace the data-plane section (and the profile section, if profiled)."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    chart_ref = os.path.relpath(chart, path.parent) if chart else None
    json_name = os.path.relpath(json_path.resolve(), root) if json_path else None
    if json_name and json_name.startswith(".."):
        json_name = json_path.name if json_path else None
    text = _replace(text, START, END, markdown(result, chart=chart_ref, json_name=json_name))
    if result.get("profile"):
        text = _replace(text, PROFILE_START, PROFILE_END, profile_markdown(result))
    path.write_text(text)


def chart(result: dict[str, Any], path: Path) -> None:
    """Four panels: saturation, latency percentiles, CPU per 1000 requests, RSS."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    setups = [result["setups"][name] for name in ORDER]
    names = [TITLES[name] for name in ORDER]
    xs = list(range(len(names)))
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    (sat, lat), (cpu, rss) = axes

    sat.bar(names, [s["saturation_rps"] for s in setups], color="#4c72b0")
    sat.set_title("saturation, req/s (higher is better)")
    ha = result["setups"]["haproxy"]["saturation_rps"]
    sat.axhline(0.8 * ha, color="#c44e52", linestyle="--", linewidth=1, label="0.8 x haproxy")
    sat.legend(fontsize=8)

    width = 0.27
    for offset, (key, color) in enumerate(
        (("p50", "#55a868"), ("p90", "#dd8452"), ("p99", "#c44e52"))
    ):
        lat.bar(
            [x + (offset - 1) * width for x in xs],
            [s["latency_ms"][key] for s in setups],
            width,
            label=key,
            color=color,
        )
    lat.set_xticks(xs, names)
    lat.set_title("latency at 1000 req/s, ms (lower is better)")
    lat.legend(fontsize=8)

    # One bar per proxy process; the server sidecar serves both sidecar setups, shown in each.
    labels: list[str] = []
    cpu_values: list[float] = []
    idle: list[float] = []
    loaded: list[float] = []
    for name in ORDER[1:]:
        setup = result["setups"][name]
        for proxy in setup["proxies"]:
            labels.append(
                f"{proxy}\n({TITLES[name]})" if name.startswith("two-sidecars") else TITLES[name]
            )
            cpu_values.append(setup["proxy_cpu_s_per_1000_req_by_proxy"][proxy])
            idle.append(setup["rss_mb"][proxy]["idle"] or 0.0)
            loaded.append(setup["rss_mb"][proxy]["load"] or 0.0)
    cx = list(range(len(labels)))
    cpu.bar(cx, cpu_values, color="#8172b3")
    cpu.axhline(0.12, color="#c44e52", linestyle="--", linewidth=1, label="0.12 target")
    cpu.set_xticks(cx, labels, fontsize=8)
    cpu.set_title("CPU-s per 1000 req at 1000 req/s, per proxy process")
    cpu.legend(fontsize=8)

    rx = list(range(len(labels)))
    rss.bar([x - 0.2 for x in rx], idle, 0.4, label="idle", color="#64b5cd")
    rss.bar([x + 0.2 for x in rx], loaded, 0.4, label="under load", color="#4c72b0")
    rss.axhline(40, color="#c44e52", linestyle="--", linewidth=1, label="40 MB")
    rss.set_xticks(rx, labels, fontsize=8)
    rss.set_title("RSS per proxy process, MiB")
    rss.legend(fontsize=8)

    kind = "quick" if result["quick"] else "full"
    fig.suptitle(
        f"lightmesh data plane, 1 KiB over loopback, proxies on one core "
        f"({result['started'][:10]}, {kind} run, shared machine)",
        fontsize=11,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
