"""The chaos suite: a real local mesh under steady load while its parts fail, on default config.

    flock /tmp/lightmesh-bench.lock python -m bench chaos [--only NAME,...] [--quick]
        [--json FILE] [--markdown docs/reliability.md]

Every scenario starts a fresh mesh as a user would (`lightmesh controlplane` on a directory of
resources, three instances of the `upstream` service, each the demo app behind its own
`lightmesh sidecar`, and a client sidecar with no app of its own: the load generator is its app),
all on 127.0.0.1, with no DestinationRule or VirtualService unless the scenario is about one.
Load comes from `python -m bench.chaos_load` (its own process; open loop: a request every 1/rate
seconds whatever happened to the others; one JSON line per request). Every loop is bounded in
count and time.

Scenarios (default rate 400 req/s):
- churn-get: one upstream app SIGKILLed every 10 s and restarted 3 s later, idempotent GETs.
- churn-post: the same with POSTs (200 req/s); every app records each request id it receives,
  so a request the app saw and that was sent again shows up twice (must never happen).
- sidecar-kill: one upstream sidecar SIGKILLed every 10 s, restarted 3 s later.
- cp-restart: the control plane SIGKILLed and restarted 3 s later, twice.
- vs-changes: 100 VirtualService changes (a response header's value) under load; the last one
  must be live at the end.
- cert-rotation: mesh-wide STRICT mTLS, certificates of 10 s lifetime (renewed at ~8 s).
- idle-connections: 2,000 connections held open without a byte on the client sidecar.
- slowloris: 1,000 connections each sending one byte of a request head per second.
- slow-reader: a 50 MB download through both sidecars read at 1 MiB/s (the others are served,
  sidecar memory stays bounded: backpressure, not buffering).
- sigterm: 50 slow requests (2 s each) in flight when an upstream sidecar, then the client
  sidecar, get SIGTERM: all complete.

Reported per scenario: requests, failed (and %), failures by status and response flags, failed
requests per kill and the seconds they spanned, and the client sidecar's RSS idle (before load),
under load (max) and after (3 s after the load stopped).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from bench.procs import BenchError, rss_mb
from bench.report import _replace
from lightmeshctl.demo.mesh import LocalMesh, Process, free_port, http_get, wait_for

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- chaos:start -->", "<!-- chaos:end -->"
SERVICE = "upstream"
RATE = 400.0
INSTANCES = 3
SAMPLE = 0.25  # seconds between RSS samples


@dataclass
class Instance:
    """One upstream instance: the demo app and its sidecar, restartable on the same ports."""

    index: int
    app_port: int = field(default_factory=free_port)
    inbound_port: int = field(default_factory=free_port)
    outbound_port: int = field(default_factory=free_port)
    admin_port: int = field(default_factory=free_port)
    app: Process | None = None
    sidecar: Process | None = None

    @property
    def name(self) -> str:
        """The workload name."""
        return f"{SERVICE}-{self.index}"


class Rig:
    """A local mesh for one scenario: control plane, upstream instances, the client sidecar."""

    def __init__(self, work: Path, *, sidecar_args: tuple[str, ...] = ()) -> None:
        self.work = work
        config = work / "config"
        config.mkdir(parents=True)
        self.config_dir = config
        self.mesh = LocalMesh(config_dir=config, work_dir=work / "mesh")
        self.sidecar_args = sidecar_args
        self.instances = [Instance(i) for i in range(INSTANCES)]
        self.client_outbound = free_port()
        self.client_admin = free_port()
        self.client: Process | None = None

    # --- processes ---

    def start(self) -> None:
        """Start everything and wait until the client reaches every instance."""
        self.mesh.__enter__()
        self.mesh.start_control_plane()
        for instance in self.instances:
            self.start_app(instance)
            self.start_sidecar(instance)
        self.start_client()
        self.wait_all_served()

    def stop(self) -> None:
        """Stop every process (SIGTERM, then SIGKILL)."""
        self.mesh.__exit__(None, None, None)

    def record_file(self, instance: Instance) -> Path:
        """Where `instance`'s app appends the id of every request it receives."""
        return self.work / f"{instance.name}.requests"

    def start_app(self, instance: Instance) -> None:
        """(Re)start the instance's app on its port."""
        instance.app = self.mesh.spawn(
            f"{instance.name}-app",
            [
                "-m", "lightmeshctl.demo.app",
                "--name", SERVICE, "--version", "v1", "--workload", instance.name,
                "--port", str(instance.app_port),
                "--record", str(self.record_file(instance)),
            ],
        )  # fmt: skip

    def start_sidecar(self, instance: Instance) -> None:
        """(Re)start the instance's sidecar on its ports."""
        instance.sidecar = self.mesh.spawn(
            f"{instance.name}-sidecar",
            [
                "-m", "lightmeshctl.cli", "sidecar",
                *self.mesh.control_plane_args(),
                "--workload", instance.name, "--service", SERVICE,
                "--labels", f"app={SERVICE},version=v1",
                "--app-port", str(instance.app_port),
                "--inbound-port", str(instance.inbound_port),
                "--outbound-port", str(instance.outbound_port),
                "--admin-port", str(instance.admin_port),
                *self.sidecar_args,
            ],
        )  # fmt: skip

    def start_client(self) -> None:
        """(Re)start the client sidecar (no app: the load generator calls through it)."""
        self.client = self.mesh.spawn(
            "client-sidecar",
            [
                "-m", "lightmeshctl.cli", "sidecar",
                *self.mesh.control_plane_args(),
                "--workload", "client", "--labels", "app=client",
                "--outbound-port", str(self.client_outbound),
                "--admin-port", str(self.client_admin),
                *self.sidecar_args,
            ],
        )  # fmt: skip

    def wait_all_served(self, timeout: float = 60.0) -> None:
        """Until a request through the client has been answered by each instance's app."""
        seen: set[str] = set()

        def served() -> bool:
            reply = http_get(f"http://{SERVICE}/", proxy=self.proxy, timeout=2)
            if reply.status == 200:
                seen.add(reply.json()["workload"])
            return len(seen) == len(self.instances)

        wait_for(served, timeout=timeout, interval=0.02, what="every instance served")

    @property
    def proxy(self) -> str:
        """host:port of the client sidecar's outbound listener."""
        return f"127.0.0.1:{self.client_outbound}"

    def client_rss(self) -> float:
        """The client sidecar's RSS, MiB (0 when it is not running)."""
        return rss_mb([self.client.popen.pid]) if self.client and self.client.alive() else 0.0

    def sidecar_rss(self, instance: Instance) -> float:
        """An upstream sidecar's RSS, MiB."""
        sidecar = instance.sidecar
        return rss_mb([sidecar.popen.pid]) if sidecar and sidecar.alive() else 0.0

    def admin_json(self, port: int, path: str) -> Any:
        """A sidecar admin endpoint's JSON."""
        return http_get(f"http://127.0.0.1:{port}{path}", timeout=5).json()

    # --- load ---

    def load(self, mode: str, *args: str) -> subprocess.Popen[str]:
        """Start `python -m bench.chaos_load MODE` against the client sidecar."""
        return subprocess.Popen(
            [sys.executable, "-m", "bench.chaos_load", mode, "--proxy", self.proxy, *args],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
        )


@contextlib.contextmanager
def rig(work: Path, name: str, **kwargs: Any) -> Iterator[Rig]:
    """A started rig in work/name, stopped at the end."""
    one = Rig(work / name, **kwargs)
    try:
        one.start()
        yield one
    finally:
        one.stop()


def finish(popen: subprocess.Popen[str], *, timeout: float) -> dict[str, Any]:
    """Wait for a load process; its last stdout line (JSON summary)."""
    try:
        out, err = popen.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        popen.kill()
        popen.communicate()
        raise BenchError("load generator overran its time and was killed") from None
    if popen.returncode != 0:
        raise BenchError(f"load generator exited {popen.returncode}: {err.strip()[-800:]}")
    summary: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return summary


@dataclass
class Timeline:
    """Things done to the mesh at given offsets from the load's start, run while it runs."""

    actions: list[tuple[float, str, Callable[[], object]]] = field(default_factory=list)
    done: list[tuple[float, str]] = field(default_factory=list)  # (monotonic time, label)

    def at(self, offset: float, label: str, action: Callable[[], object]) -> None:
        """Run `action` `offset` seconds after the start."""
        self.actions.append((offset, label, action))

    def run(self, popen: subprocess.Popen[str], started: float, sample: Callable[[], None]) -> None:
        """Until the load process exits: run due actions, sample every SAMPLE seconds."""
        pending = sorted(self.actions, key=lambda a: a[0])
        next_sample = 0.0
        while popen.poll() is None:
            now = time.monotonic()
            while pending and now >= started + pending[0][0]:
                _, label, action = pending.pop(0)
                self.done.append((time.monotonic(), label))
                action()
            if now >= next_sample:
                sample()
                next_sample = now + SAMPLE
            time.sleep(0.01)


def read_results(path: Path) -> list[dict[str, Any]]:
    """The load generator's per-request lines."""
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def failure_key(result: dict[str, Any]) -> str:
    """How a failed request failed: "503 UF", "error timeout", ..."""
    if result["status"]:
        return f"{result['status']} {result['flags'] or '-'}".strip()
    return f"error {result['error']}"


def summarize(results: list[dict[str, Any]], kills: list[tuple[float, str]]) -> dict[str, Any]:
    """Totals, failures by kind, and per kill: failures and the seconds they spanned."""
    failed = [r for r in results if r["status"] != 200]
    summary: dict[str, Any] = {
        "requests": len(results),
        "failed": len(failed),
        "failed_percent": round(100 * len(failed) / len(results), 3) if results else 0.0,
        "failures_by_kind": dict(collections.Counter(failure_key(r) for r in failed)),
    }
    if results:
        latencies = sorted(r["latency"] for r in results if r["status"] == 200)
        if latencies:
            summary["latency_ms"] = {
                "p50": round(1000 * latencies[len(latencies) // 2], 2),
                "p99": round(1000 * latencies[int(len(latencies) * 0.99)], 2),
                "max": round(1000 * latencies[-1], 2),
            }
    if kills:
        per_kill: list[dict[str, Any]] = []
        times = [t for t, _ in kills]
        for i, (start, label) in enumerate(kills):
            end = times[i + 1] if i + 1 < len(times) else float("inf")
            mine = [r for r in failed if start <= r["sent"] < end]
            span = (max(r["sent"] for r in mine) - min(r["sent"] for r in mine)) if mine else 0.0
            per_kill.append({"kill": label, "failed": len(mine), "seconds": round(span, 3)})
        summary["per_kill"] = per_kill
        summary["failed_per_kill"] = round(len(failed) / len(kills), 1)
        summary["failure_seconds_per_kill"] = round(
            sum(k["seconds"] for k in per_kill) / len(per_kill), 3
        )
    return summary


def resent(rig_: Rig, method: str) -> dict[str, int]:
    """Requests of `method` that the apps received more than once (by x-request-id)."""
    seen: collections.Counter[str] = collections.Counter()
    for instance in rig_.instances:
        path = rig_.record_file(instance)
        if path.exists():
            for line in path.read_text().splitlines():
                verb, _, rid = line.partition(" ")
                if verb == method and rid.startswith("load-"):
                    seen[rid] += 1
    return {
        "received": sum(seen.values()),
        "distinct": len(seen),
        "received_twice_or_more": sum(1 for n in seen.values() if n > 1),
    }


@dataclass
class Memory:
    """RSS samples of the client sidecar (and the upstream sidecars) through a scenario."""

    idle: float = 0.0
    peak: float = 0.0
    after: float = 0.0
    upstream_peak: float = 0.0

    def sample(self, rig_: Rig) -> None:
        """Take one sample."""
        self.peak = max(self.peak, rig_.client_rss())
        for instance in rig_.instances:
            self.upstream_peak = max(self.upstream_peak, rig_.sidecar_rss(instance))

    def report(self) -> dict[str, float]:
        """As reported."""
        return {
            "client_idle_mb": round(self.idle, 1),
            "client_under_load_mb": round(self.peak, 1),
            "client_after_mb": round(self.after, 1),
            "upstream_sidecar_peak_mb": round(self.upstream_peak, 1),
        }


def steady_load(
    rig_: Rig,
    timeline: Timeline,
    *,
    seconds: float,
    rate: float = RATE,
    method: str = "GET",
    memory: Memory | None = None,
) -> tuple[list[dict[str, Any]], Memory]:
    """Run `rate` requests/s for `seconds` while `timeline` acts on the mesh."""
    memory = memory or Memory()
    if not memory.idle:
        time.sleep(1.0)
        memory.idle = rig_.client_rss()
    out = rig_.work / f"load-{method.lower()}.jsonl"
    started = time.monotonic()
    popen = rig_.load(
        "rate", "--rate", str(rate), "--seconds", str(seconds), "--method", method,
        "--host", SERVICE, "--prefix", "load", "--connections", "64", "--out", str(out),
    )  # fmt: skip
    timeline.run(popen, started, lambda: memory.sample(rig_))
    finish(popen, timeout=30)
    time.sleep(3.0)
    memory.after = rig_.client_rss()
    return read_results(out), memory


def on(instance: Instance, action: Callable[[Instance], object]) -> Callable[[], None]:
    """`action(instance)` later (it reads the instance's processes when it runs)."""

    def run() -> None:
        action(instance)

    return run


def kill(process: Process | None) -> None:
    """SIGKILL, and reap."""
    if process is not None and process.alive():
        process.popen.send_signal(signal.SIGKILL)
        process.popen.wait(10)


# --- scenarios ---


def churn(work: Path, *, method: str, seconds: float, rate: float) -> dict[str, Any]:
    """One upstream app SIGKILLed every 10 s, restarted 3 s later."""
    with rig(work, f"churn-{method.lower()}") as r:
        timeline = Timeline()
        offset, k = 5.0, 0
        while offset < seconds - 4:
            instance = r.instances[k % len(r.instances)]
            timeline.at(offset, f"kill {instance.name} app", on(instance, lambda i: kill(i.app)))
            timeline.at(offset + 3, f"start {instance.name} app", on(instance, r.start_app))
            offset += 10
            k += 1
        results, memory = steady_load(r, timeline, seconds=seconds, rate=rate, method=method)
        kills = [(t, label) for t, label in timeline.done if label.startswith("kill")]
        summary = summarize(results, kills)
        summary["memory"] = memory.report()
        summary["apps_received"] = resent(r, method)
        summary["kills"] = len(kills)
        return summary


def sidecar_kill(work: Path, *, seconds: float) -> dict[str, Any]:
    """One upstream sidecar SIGKILLed every 10 s, restarted 3 s later."""
    with rig(work, "sidecar-kill") as r:
        timeline = Timeline()
        offset, k = 5.0, 0
        while offset < seconds - 4:
            instance = r.instances[k % len(r.instances)]
            timeline.at(
                offset, f"kill {instance.name} sidecar", on(instance, lambda i: kill(i.sidecar))
            )
            timeline.at(offset + 3, f"start {instance.name} sidecar", on(instance, r.start_sidecar))
            offset += 10
            k += 1
        results, memory = steady_load(r, timeline, seconds=seconds)
        kills = [(t, label) for t, label in timeline.done if label.startswith("kill")]
        summary = summarize(results, kills)
        summary["memory"] = memory.report()
        summary["kills"] = len(kills)
        return summary


def cp_restart(work: Path, *, seconds: float) -> dict[str, Any]:
    """The control plane SIGKILLed and restarted 3 s later (twice)."""
    with rig(work, "cp-restart") as r:
        timeline = Timeline()
        for offset in (5.0, seconds / 2 + 3):
            timeline.at(offset, "kill controlplane", lambda: kill(r.mesh.control_plane))
            timeline.at(
                offset + 3, "start controlplane", lambda: r.mesh.start_control_plane(wait=False)
            )
        results, memory = steady_load(r, timeline, seconds=seconds)
        summary = summarize(results, [])
        summary["memory"] = memory.report()
        wait_for(lambda: len(r.mesh.proxies()) == INSTANCES + 1, timeout=30, what="reconnected")
        summary["proxies_reconnected"] = len(r.mesh.proxies())
        return summary


VIRTUAL_SERVICE = """apiVersion: lightmesh.io/v1alpha1
kind: VirtualService
metadata: {{name: {service}}}
spec:
  hosts: [{service}]
  http:
  - route:
    - destination: {{host: {service}}}
    headers:
      response:
        set: {{x-chaos-generation: "{generation}"}}
"""


def vs_changes(work: Path, *, seconds: float, changes: int) -> dict[str, Any]:
    """`changes` VirtualService edits spread over the run; the last must be live at the end."""
    with rig(work, "vs-changes") as r:
        path = r.config_dir / "upstream-virtualservice.yaml"

        def write(generation: int) -> None:
            text = VIRTUAL_SERVICE.format(service=SERVICE, generation=generation)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(text)
            tmp.replace(path)  # atomic: the watcher never reads half a file

        timeline = Timeline()
        spread = (seconds - 4) / changes
        for generation in range(1, changes + 1):
            timeline.at(2 + generation * spread, f"change {generation}", partial(write, generation))
        results, memory = steady_load(r, timeline, seconds=seconds)
        summary = summarize(results, [])
        summary["memory"] = memory.report()
        summary["changes"] = sum(1 for _, label in timeline.done if label.startswith("change"))

        def last_live() -> bool:
            reply = http_get(f"http://{SERVICE}/", proxy=r.proxy, timeout=2)
            return reply.headers.get("x-chaos-generation") == str(changes)

        summary["last_change_live"] = bool(wait_for(last_live, timeout=10, what="last change"))
        return summary


PEER_AUTH_STRICT = """apiVersion: lightmesh.io/v1alpha1
kind: PeerAuthentication
metadata: {name: default, namespace: lightmesh-system}
spec:
  mtls: {mode: STRICT}
"""


def cert_rotation(work: Path, *, seconds: float) -> dict[str, Any]:
    """Mesh-wide STRICT mTLS with 10 s certificates: several rotations under load."""
    with rig(work, "cert-rotation", sidecar_args=("--cert-ttl", "10")) as r:
        (r.config_dir / "mesh-strict.yaml").write_text(PEER_AUTH_STRICT)
        ports = [r.client_admin, *(i.admin_port for i in r.instances)]

        def strict_everywhere() -> bool:
            dumps = [r.admin_json(i.admin_port, "/certs") for i in r.instances]
            return all(d["mtls"]["inbound_mode"] == "STRICT" for d in dumps)

        wait_for(strict_everywhere, timeout=30, what="STRICT applied")
        before = [int(r.admin_json(p, "/certs")["rotations"]) for p in ports]
        results, memory = steady_load(r, Timeline(), seconds=seconds)
        after = [int(r.admin_json(p, "/certs")["rotations"]) for p in ports]
        summary = summarize(results, [])
        summary["memory"] = memory.report()
        summary["rotations_during_load"] = {
            name: a - b
            for name, a, b in zip(
                ["client", *(i.name for i in r.instances)], after, before, strict=True
            )
        }
        summary["handshakes_upstream"] = sum(
            int(r.admin_json(i.admin_port, "/certs")["mtls"]["handshakes"]) for i in r.instances
        )
        return summary


def abuse(work: Path, name: str, *, mode_args: list[str], seconds: float) -> dict[str, Any]:
    """An abusive client (idle connections, slowloris, slow reader) next to the steady load."""
    with rig(work, name) as r:
        memory = Memory()
        time.sleep(1.0)
        memory.idle = r.client_rss()
        upstream_idle = max(r.sidecar_rss(i) for i in r.instances)
        abuser = r.load(*mode_args)
        line = abuser.stdout.readline() if abuser.stdout and mode_args[0] != "slowread" else ""
        opened = json.loads(line).get("opened") if line else None
        time.sleep(2.0)  # the abuse is in place before the measured load starts
        results, memory = steady_load(r, Timeline(), seconds=seconds, memory=memory)
        abuse_summary = finish(abuser, timeout=seconds + 60)
        summary = summarize(results, [])
        summary["memory"] = memory.report()
        summary["memory"]["upstream_sidecar_idle_mb"] = round(upstream_idle, 1)
        summary["abuser"] = {**abuse_summary, **({"opened_at_start": opened} if opened else {})}
        return summary


def sigterm(work: Path) -> dict[str, Any]:
    """50 slow requests in flight when an upstream sidecar, then the client sidecar, get SIGTERM."""
    out: dict[str, Any] = {}
    with rig(work, "sigterm") as r:
        for target in ("upstream-sidecar", "client-sidecar"):
            results_path = r.work / f"{target}.jsonl"
            popen = r.load(
                "rate", "--rate", "500", "--seconds", "0.1", "--path", "/?delay=2",
                "--host", SERVICE, "--prefix", target, "--connections", "64",
                "--out", str(results_path),
            )  # fmt: skip
            time.sleep(1.0)  # all 50 are at the apps now
            victim = r.instances[0].sidecar if target == "upstream-sidecar" else r.client
            if victim is None:
                raise BenchError(f"{target} is not running")
            victim.popen.send_signal(signal.SIGTERM)
            finish(popen, timeout=30)
            code = victim.popen.wait(15)
            results = read_results(results_path)
            out[target] = {**summarize(results, []), "exit_code": code}
            if target == "upstream-sidecar":
                r.start_sidecar(r.instances[0])
                r.wait_all_served()
    return out


def plan(quick: bool) -> dict[str, Callable[[Path], dict[str, Any]]]:
    """Scenario name → how to run it (shorter under --quick)."""
    long, short = (30.0, 15.0) if quick else (60.0, 30.0)
    slow_reader = [
        "slowread", "--host", SERVICE, "--size", str(50 * 1024 * 1024),
        "--read-rate", str(1024 * 1024), "--seconds", str(short),
    ]  # fmt: skip
    return {
        "churn-get": lambda w: churn(w, method="GET", seconds=long, rate=RATE),
        "churn-post": lambda w: churn(w, method="POST", seconds=long * 2 / 3, rate=RATE / 2),
        "sidecar-kill": lambda w: sidecar_kill(w, seconds=long * 2 / 3),
        "cp-restart": lambda w: cp_restart(w, seconds=short),
        "vs-changes": lambda w: vs_changes(w, seconds=short, changes=100),
        "cert-rotation": lambda w: cert_rotation(w, seconds=long * 2 / 3),
        "idle-connections": lambda w: abuse(
            w,
            "idle-connections",
            mode_args=["idle", "--connections", "2000", "--seconds", str(short)],
            seconds=short - 10,
        ),
        "slowloris": lambda w: abuse(
            w,
            "slowloris",
            mode_args=[
                "slowloris",
                "--connections",
                "1000",
                "--interval",
                "1",
                "--seconds",
                str(short),
            ],
            seconds=short - 10,
        ),
        "slow-reader": lambda w: abuse(w, "slow-reader", mode_args=slow_reader, seconds=short - 10),
        "sigterm": sigterm,
    }


def uptime() -> str:
    """`uptime`'s line (how loaded the shared machine was)."""
    return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()


# --- report ---


def _flags(kinds: dict[str, int]) -> str:
    return ", ".join(f"{n} x {k}" for k, n in sorted(kinds.items(), key=lambda kv: -kv[1])) or "—"


def text_lines(report: dict[str, Any]) -> list[str]:
    """One line per scenario (two for sigterm), as printed and put in the markdown."""
    lines = []
    for name, result in report["scenarios"].items():
        if "error" in result:
            lines.append(f"{name:24} ERROR {result['error']}")
            continue
        parts = (
            [(f"{name} {k}", v) for k, v in result.items() if isinstance(v, dict)]
            if name == "sigterm"
            else [(name, result)]
        )
        for label, r in parts:
            line = (
                f"{label:24} {r['failed']:>6,} of {r['requests']:>6,} failed "
                f"({r['failed_percent']:.3f}%)"
            )
            if "failure_seconds_per_kill" in r:
                line += (
                    f"; {r['kills']} kills, {r['failed_per_kill']} failed and "
                    f"{r['failure_seconds_per_kill']:.2f} s of failures per kill"
                )
            if r["failures_by_kind"]:
                line += f"; {_flags(r['failures_by_kind'])}"
            memory = r.get("memory")
            if memory:
                line += (
                    f"; client RSS {memory['client_idle_mb']:.1f} idle → "
                    f"{memory['client_under_load_mb']:.1f} load → {memory['client_after_mb']:.1f} "
                    f"after MB, upstream sidecars ≤ {memory['upstream_sidecar_peak_mb']:.1f} MB"
                )
            extra = {
                k: r[k]
                for k in (
                    "apps_received",
                    "rotations_during_load",
                    "last_change_live",
                    "changes",
                    "abuser",
                    "exit_code",
                    "proxies_reconnected",
                )
                if k in r
            }
            if extra:
                line += f"; {json.dumps(extra)}"
            lines.append(line)
    return lines


def markdown(report: dict[str, Any]) -> str:
    """The docs section."""
    return "\n".join(
        [
            f"Run {report['started']} ({report['label']}), `{report['command']}`; machine before: "
            f"`{report['uptime_before']}`, after: `{report['uptime_after']}`.",
            "",
            "```",
            *text_lines(report),
            "```",
        ]
    )


def main(argv: list[str]) -> int:
    """Run the scenarios, print one line each, optionally write JSON and the docs section."""
    parser = argparse.ArgumentParser(prog="python -m bench chaos", description=__doc__)
    parser.add_argument("--only", default="", help="comma-separated scenario names")
    parser.add_argument("--quick", action="store_true", help="half the durations")
    parser.add_argument("--json", default="", help="write the report here")
    parser.add_argument("--markdown", default="", help="replace the chaos section of this file")
    parser.add_argument("--label", default="", help="what is measured (e.g. a branch or commit)")
    parser.add_argument("--keep", default="", help="keep logs and per-request lines here")
    args = parser.parse_args(argv)
    scenarios = plan(args.quick)
    chosen = [s.strip() for s in args.only.split(",") if s.strip()] or list(scenarios)
    unknown = [s for s in chosen if s not in scenarios]
    if unknown:
        print(f"unknown scenario(s) {unknown}; choose from {list(scenarios)}", file=sys.stderr)
        return 2
    report: dict[str, Any] = {
        "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "label": args.label or _git_label(),
        "command": "python -m bench chaos" + (f" {' '.join(argv)}" if argv else ""),
        "uptime_before": uptime(),
        "scenarios": {},
    }
    with tempfile.TemporaryDirectory(prefix="lightmesh-chaos-") as tmp:
        work = Path(args.keep) if args.keep else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        for name in chosen:
            clock = time.monotonic()
            try:
                result = scenarios[name](work)
            except (BenchError, TimeoutError, OSError) as exc:
                result = {"error": f"{type(exc).__name__}: {exc}"}
            result["uptime_after"] = uptime()
            result["wall_seconds"] = round(time.monotonic() - clock, 1)
            report["scenarios"][name] = result
            print("\n".join(text_lines({"scenarios": {name: result}})), flush=True)
    report["uptime_after"] = uptime()
    print(report["uptime_after"])
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    if args.markdown:
        path = Path(args.markdown)
        text = path.read_text() if path.exists() else "# Reliability\n"
        path.write_text(_replace(text, START, END, markdown(report)))
    failed = any("error" in r for r in report["scenarios"].values())
    return 1 if failed else 0


def _git_label() -> str:
    result = subprocess.run(
        ["git", "-C", str(ROOT), "log", "-1", "--format=%h %s"],
        capture_output=True,
        text=True,
        check=False,
    )
    return result.stdout.strip()[:80] or "unknown"


if __name__ == "__main__":
    os.chdir(ROOT)
    sys.exit(main(sys.argv[1:]))
