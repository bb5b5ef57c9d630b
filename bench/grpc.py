"""`python -m bench grpc`: gRPC unary calls per second and sidecar CPU per 1000 calls, with ghz.

Three paths to one real grpcio server (tests/support/grpc_echo.py, its raw-bytes `Unary`, which
ghz calls through bench/echo.proto): direct; through one sidecar (the server's inbound
listener, h2c); through two sidecars (the client's outbound listener, HTTP/2 over mutual TLS with
control-plane certificates, the server's inbound listener). The mesh is the local mode's
(`LocalMesh`: control plane, sidecars and app as real processes). ghz (built from its Go module
into ~/.cache/lightmesh/bin) sends a bounded number of calls on one connection; CPU is read
from /proc for each sidecar. Run under `flock /tmp/lightmesh-bench.lock`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import configs
from bench.procs import BenchError, Service, cpu_seconds, find_tool, process_tree, wait_port
from lightmeshctl.demo.mesh import LocalMesh, free_port, http_get, wait_for

PROTO = Path(__file__).with_name("echo.proto")


def ghz(target: str, *, calls: int, concurrency: int, authority: str = "") -> dict[str, Any]:
    """One ghz run; its JSON report."""
    args = [
        find_tool("ghz"), "--insecure", "--proto", str(PROTO), "--call", "test.Echo/Unary",
        "-d", '{"data": "aGVsbG8gd29ybGQ="}', "-n", str(calls), "-c", str(concurrency),
        "--connections", "1", "-O", "json", "--cpus", "1",
    ]  # fmt: skip
    if authority:
        args += ["--authority", authority]
    out = subprocess.run(
        [*args, target], capture_output=True, check=True, timeout=600, text=True
    ).stdout
    report: dict[str, Any] = json.loads(out)
    return report


def measure(
    name: str, target: str, sidecars: list[int], *, calls: int, concurrency: int, authority: str
) -> dict[str, Any]:
    """Calls/s and the proxies' CPU per 1000 calls on one path (`sidecars`: their pids)."""
    pids = [p for pid in sidecars for p in process_tree(pid)]
    before = cpu_seconds(pids)
    started = time.monotonic()
    report = ghz(target, calls=calls, concurrency=concurrency, authority=authority)
    wall = time.monotonic() - started
    cpu = cpu_seconds(pids) - before
    ok = report.get("statusCodeDistribution", {}).get("OK", 0)
    return {
        "path": name,
        "calls": calls,
        "ok": ok,
        "rps": round(report["rps"], 1),
        "p50_ms": round(_latency(report, "50") * 1000, 2),
        "p99_ms": round(_latency(report, "99") * 1000, 2),
        "sidecar_cpu_s_per_1000": round(cpu / max(ok, 1) * 1000, 3) if sidecars else 0.0,
        "wall_s": round(wall, 2),
        "errors": report.get("errorDistribution") or {},
    }


def _latency(report: dict[str, Any], percentile: str) -> float:
    for item in report.get("latencyDistribution") or []:
        if str(item.get("percentage")) == percentile:
            return float(item["latency"]) / 1e9
    return 0.0


def run(calls: int, concurrency: int, *, profile: float = 0.0) -> list[dict[str, Any]]:
    """The three paths, in order (with `profile` seconds: the server's sidecar sampled by py-spy
    under ghz on the one-sidecar path, instead of the measured runs)."""
    with tempfile.TemporaryDirectory(prefix="bench-grpc-") as tmp:
        work = Path(tmp)
        config = work / "config"
        config.mkdir()
        with LocalMesh(config_dir=config, work_dir=work / "mesh") as mesh:
            mesh.start_control_plane()
            for name, service, app in (
                ("client", "client", ()),
                ("echo", "echo", ("-m", "tests.support.grpc_echo", "--port", "{port}",
                                  "--name", "echo")),
            ):  # fmt: skip
                mesh.start_workload(
                    name,
                    service=service,
                    sidecar_args=(
                        "--service-account", f"{service}-sa",
                        "--identity-dir", str(work / f"{name}-identity"),
                        "--log-level", "warning",
                    ),
                    app=app,
                )  # fmt: skip
            mesh.wait_ready()
            for workload in mesh.workloads.values():
                wait_for(
                    lambda w=workload: http_get(f"{w.admin}/certs").json()["certificate"],
                    timeout=30,
                    what=f"{workload.name} certificate",
                )
            client, echo = mesh.workloads["client"], mesh.workloads["echo"]
            if client.sidecar is None or echo.sidecar is None:
                raise BenchError("a sidecar did not start")
            c_pid, e_pid = client.sidecar.popen.pid, echo.sidecar.popen.pid
            # Warm up (routes pushed, connections and certificates in place), then measure.
            wait_for(
                lambda: ghz(client.outbound, calls=20, concurrency=1, authority="echo")
                .get("statusCodeDistribution", {}).get("OK") == 20,
                timeout=30,
                what="echo routed through the client's sidecar",
            )  # fmt: skip
            if profile:
                return [_profile(work, e_pid, echo.inbound_port, profile, concurrency)]
            kw = {"calls": calls, "concurrency": concurrency}
            references = _references(work, echo.app_port, kw)
            return [
                measure("direct", f"127.0.0.1:{echo.app_port}", [], authority="", **kw),
                measure(
                    "one sidecar", f"127.0.0.1:{echo.inbound_port}", [e_pid], authority="echo", **kw
                ),
                measure(
                    "two sidecars (mTLS)",
                    client.outbound,
                    [c_pid, e_pid],
                    authority="echo",
                    **kw,
                ),
                *references,
            ]


def _profile(work: Path, pid: int, port: int, seconds: float, concurrency: int) -> dict[str, Any]:
    """py-spy's hot spots of the sidecar hop while ghz keeps it busy for `seconds`."""
    from bench.profile import profile_sidecar

    # Enough calls to outlast the sampling at the hop's rate (~1,300 calls/s today).
    calls = int(seconds * 4000) + 2000
    result = profile_sidecar(
        pid,
        seconds=seconds,
        load=lambda: ghz(
            f"127.0.0.1:{port}", calls=calls, concurrency=concurrency, authority="echo"
        ),
        core=0,
        work=work,
    )
    result["tool"] = result["tool"].replace("wrk", "ghz")
    raw = work / "py-spy.txt"
    with contextlib.suppress(OSError):  # the raw stacks, for a flame graph or a closer look
        (Path(tempfile.gettempdir()) / "bench-grpc-py-spy.txt").write_bytes(raw.read_bytes())
    return {"path": "one sidecar (profile)", **result}


def _references(work: Path, app_port: int, kw: dict[str, int]) -> list[dict[str, Any]]:
    """nginx `grpc_pass` and haproxy (HTTP/2 both sides) in front of the same server, where
    installed (scripts/install-bench-tools.sh); skipped, and said so, otherwise."""
    rows: list[dict[str, Any]] = []
    references: list[tuple[str, Callable[[Path, int, int], Path], str, str]] = [
        ("nginx grpc_pass", configs.nginx_grpc, "nginx", "-c"),
        ("haproxy (h2)", configs.haproxy_grpc, "haproxy", "-f"),
    ]
    for name, write, tool, flag in references:
        try:
            binary = find_tool(tool)
            port = free_port()
            config = write(work, port, app_port)
            log = work / f"{tool}.log"
            with log.open("ab") as out:
                popen = subprocess.Popen(
                    [binary, flag, str(config)],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                )
        except BenchError as exc:
            rows.append({"path": name, "skipped": str(exc)})
            continue
        service = Service(name, popen, log)
        try:
            wait_port(port, timeout=10, what=name, process=popen)
            rows.append(measure(name, f"127.0.0.1:{port}", [popen.pid], authority="", **kw))
        finally:
            service.stop()
    return rows


def main(argv: list[str]) -> int:
    """Run and print the figures as JSON (and a markdown table)."""
    parser = argparse.ArgumentParser(prog="python -m bench grpc")
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--profile", type=float, default=0.0, help="seconds of py-spy on the one-sidecar hop"
    )
    args = parser.parse_args(argv)
    rows = run(args.calls, args.concurrency, profile=args.profile)
    text = json.dumps(rows, indent=2)
    print(text)
    if args.profile:
        return 0
    if args.json:
        args.json.write_text(text + "\n")
    print(
        "\n| path | calls/s | p50 ms | p99 ms | proxy CPU s / 1000 calls |\n|---|---|---|---|---|"
    )
    for row in rows:
        if "skipped" in row:
            print(f"| {row['path']} | skipped: {row['skipped']} | | | |")
            continue
        print(
            f"| {row['path']} | {row['rps']} | {row['p50_ms']} | {row['p99_ms']} | "
            f"{row['sidecar_cpu_s_per_1000']} |"
        )
    return 0
