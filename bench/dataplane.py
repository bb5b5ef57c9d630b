"""Data-plane benchmark: lightmesh sidecars against direct, nginx and haproxy, in one run.

    python -m bench dataplane [--quick] [--json FILE] [--markdown docs/benchmarks.md]
                              [--chart docs/dataplane.png] [--profile]

Six setups share one backend (nginx, one worker, 1 KiB body) on loopback:

    direct         client → nginx
    sidecar        client → sidecar inbound → nginx
    two-sidecars   client → client sidecar outbound (Host: bench-backend) → server sidecar inbound → nginx
    two-sidecars-mtls  the same with mutual TLS between the sidecars (Host: bench-backend-mtls,
                   its own server sidecar); plus full handshakes/s against that server sidecar
    nginx          client → nginx (reverse proxy, one worker) → nginx
    haproxy        client → haproxy (nbthread 1) → nginx

Every process on the server side (backend, proxies, sidecars) is pinned to core 0, and each proxy
runs one worker; the load generators (and the idle control plane) are pinned to core 1. Per setup:
saturation requests/s (wrk, median of interleaved repetitions), latency p50/p90/p99 at a constant
1000 req/s (fortio), proxy CPU seconds per 1000 requests (utime + stime from /proc, at 1000 req/s and
at saturation) and RSS idle and under load. The figures go to stdout, JSON, a section of
docs/benchmarks.md and a PNG; the targets of MISSION.md are checked and each is PASS or MISS.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import functools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import configs, load
from bench.procs import BenchError, Service, core_times, find_tool, start_pinned, wait_port
from lightmeshctl.demo.mesh import free_port

SERVER_CORE = 0
CLIENT_CORE = 1
SERVICE_NAME = "bench-backend"
# The same backend behind its own server sidecar, reached over mutual TLS (SERVICE_NAME's
# DestinationRule keeps the other pair in plaintext, so both are measured in one run).
MTLS_SERVICE = "bench-backend-mtls"
HANDSHAKE_SECONDS = 2.0
RATE = 1000.0
RATE_CONNECTIONS = 4
SATURATION_CONNECTIONS = 32
ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Plan:
    """How long and how often each measurement runs."""

    quick: bool
    warmup_s: float
    saturation_s: float
    saturation_reps: int
    rate_s: float
    rate_reps: int
    profile_s: float

    @classmethod
    def make(cls, *, quick: bool, profile: bool) -> Plan:
        """The quick plan (≤ 60 s in all) or the full one (≤ 10 min)."""
        if quick:
            return cls(True, 1, 1, 3, 3, 1, 5 if profile else 0)
        return cls(False, 2, 10, 3, 12, 3, 15 if profile else 0)


@dataclass(frozen=True)
class Setup:
    """One path from the load generator to the backend."""

    name: str
    description: str
    port: int
    host: str
    proxies: tuple[str, ...]  # services whose CPU and RSS are the proxy's

    @property
    def url(self) -> str:
        """What the load generator requests."""
        return f"http://127.0.0.1:{self.port}{configs.BODY_PATH}"


@dataclass
class Measured:
    """Everything measured for one setup, across its repetitions."""

    saturation: list[load.SaturationRun] = field(default_factory=list)
    saturation_cpu: list[dict[str, float]] = field(default_factory=list)  # per proxy, per 1000 req
    rate: list[load.RateRun] = field(default_factory=list)
    rate_cpu: list[dict[str, float]] = field(default_factory=list)
    backend_cpu: list[float] = field(default_factory=list)  # at 1000 req/s, per 1000 req
    rss_idle: dict[str, float] = field(default_factory=dict)
    rss_load: dict[str, float] = field(default_factory=dict)


class Rig:
    """Starts the backend, the reference proxies, a control plane and two sidecars; stops them."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.services: dict[str, Service] = {}
        self.setups: list[Setup] = []
        self.mtls_port = 0

    def _start(self, name: str, argv: list[str], *, core: int = SERVER_CORE) -> Service:
        service = start_pinned(name, argv, core=core, log_dir=self.work)
        self.services[name] = service
        return service

    def start(self) -> None:
        """Start everything and wait until every setup answers 200 with the 1 KiB body."""
        nginx, haproxy = find_tool("nginx"), find_tool("haproxy")
        backend_port, nginx_port, haproxy_port = free_port(), free_port(), free_port()
        nginx_args = [nginx, "-e", str(self.work / "nginx-startup.log"), "-p", str(self.work)]
        backend = self._start(
            "backend",
            [*nginx_args, "-c", str(configs.nginx_backend(self.work, backend_port))],
        )
        wait_port(backend_port, timeout=10, what="nginx backend", process=backend.popen)
        proxy = self._start(
            "nginx",
            [*nginx_args, "-c", str(configs.nginx_proxy(self.work, nginx_port, backend_port))],
        )
        ha = self._start(
            "haproxy",
            [haproxy, "-db", "-f", str(configs.haproxy(self.work, haproxy_port, backend_port))],
        )

        cp_port, cp_debug = free_port(), free_port()
        config = self.work / "mesh-config"
        config.mkdir()
        (config / "plaintext.yaml").write_text(configs.plaintext_rule(SERVICE_NAME))
        state = self.work / "cp-state"  # CA, bootstrap token and trust bundle for the sidecars
        cp = self._start(
            "controlplane",
            [
                sys.executable, "-m", "lightmeshctl.cli", "controlplane",
                "--config-dir", str(config), "--state-dir", str(state),
                "--port", str(cp_port), "--debug-port", str(cp_debug),
            ],
            core=CLIENT_CORE,
        )  # fmt: skip
        wait_port(cp_port, timeout=20, what="control plane", process=cp.popen)
        server_in, mtls_in, client_out = free_port(), free_port(), free_port()
        admins: dict[str, int] = {}
        for name, extra in (
            ("sidecar-server", ["--service", SERVICE_NAME, "--app-port", str(backend_port),
                                "--inbound-port", str(server_in)]),
            ("sidecar-server-mtls", ["--service", MTLS_SERVICE, "--app-port", str(backend_port),
                                     "--inbound-port", str(mtls_in)]),
            ("sidecar-client", ["--outbound-port", str(client_out)]),
        ):  # fmt: skip
            admins[name] = free_port()
            argv = [
                sys.executable, "-m", "lightmeshctl.cli", "sidecar",
                "--control-plane", f"127.0.0.1:{cp_port}", "--workload", name,
                "--ca-bundle", str(state / "root.pem"),
                "--token-file", str(state / "bootstrap-token"),
                "--identity-dir", str(self.work / f"{name}-identity"),
                "--admin-port", str(admins[name]),
                *(["--outbound-port", str(free_port())] if name != "sidecar-client" else []),
                *extra,
            ]  # fmt: skip
            self._start(name, argv)
        for name, port in admins.items():
            _wait(functools.partial(_ready, port), f"{name} /ready")
            _wait(functools.partial(_has_certificate, port), f"{name} certificate")
        self.mtls_port = mtls_in

        self.setups = [
            Setup("direct", "client → nginx", backend_port, "backend", ()),
            Setup("sidecar", "client → sidecar → nginx", server_in, SERVICE_NAME,
                  ("sidecar-server",)),
            Setup("two-sidecars", "client → sidecar → sidecar → nginx", client_out,
                  SERVICE_NAME, ("sidecar-client", "sidecar-server")),
            Setup("two-sidecars-mtls", "client → sidecar =mTLS=> sidecar → nginx", client_out,
                  MTLS_SERVICE, ("sidecar-client", "sidecar-server-mtls")),
            Setup("nginx", "client → nginx proxy → nginx", nginx_port, "backend", ("nginx",)),
            Setup("haproxy", "client → haproxy → nginx", haproxy_port, "backend", ("haproxy",)),
        ]  # fmt: skip
        wait_port(nginx_port, timeout=10, what="nginx proxy", process=proxy.popen)
        wait_port(haproxy_port, timeout=10, what="haproxy", process=ha.popen)
        for setup in self.setups:
            _wait(functools.partial(_probe, setup), f"{setup.name}: 200 with the 1 KiB body")

    def check(self) -> None:
        """Raise if any process died."""
        for service in self.services.values():
            service.check()

    def stop(self) -> None:
        """Stop everything, sidecars first."""
        for service in reversed(list(self.services.values())):
            service.stop()


def _get(url: str, host: str = "") -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers={"Host": host} if host else {})  # noqa: S310
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=2) as response:
            return response.status, response.read()
    except OSError:
        return 0, b""


def _ready(admin_port: int) -> bool:
    return _get(f"http://127.0.0.1:{admin_port}/ready")[0] == 200


def _has_certificate(admin_port: int) -> bool:
    try:
        status, body = _get(f"http://127.0.0.1:{admin_port}/certs")
        return status == 200 and json.loads(body).get("certificate") is not None
    except OSError:
        return False


def handshakes_per_second(port: int, identity_dir: Path, seconds: float) -> float:
    """New mutual-TLS connections (full handshakes) per second one server sidecar completes,
    driven from this process with the client sidecar's certificate, one at a time."""
    import socket
    import ssl

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.load_cert_chain(identity_dir / "cert.pem", identity_dir / "key.pem")
    context.load_verify_locations(cafile=str(identity_dir / "roots.pem"))
    context.set_alpn_protocols(["lightmesh-http/1.1"])
    done = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
            context.wrap_socket(raw, server_hostname=MTLS_SERVICE) as tls,
        ):
            # TLS 1.3: the server checks our certificate after its Finished; a request proves it.
            tls.sendall(
                b"GET "
                + configs.BODY_PATH.encode()
                + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            )
            tls.recv(1)
        done += 1
    return done / seconds


def _probe(setup: Setup) -> bool:
    status, body = _get(setup.url, setup.host)
    return status == 200 and len(body) == len(configs.BODY)


def _wait(predicate: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise BenchError(f"timed out after {timeout:.0f}s waiting for {what}")


def _rotated(setups: list[Setup], rep: int) -> list[Setup]:
    """Interleave repetitions and move each setup through every position in the order."""
    shift = rep % len(setups)
    return setups[shift:] + setups[:shift]


class Runner:
    """Runs the plan against a started rig and collects `Measured` per setup."""

    def __init__(self, rig: Rig, plan: Plan, *, log: Callable[[str], None]) -> None:
        self.rig, self.plan, self.log = rig, plan, log
        self.results: dict[str, Measured] = {s.name: Measured() for s in rig.setups}
        self.core_usage: dict[str, dict[str, float]] = {}

    def _sampler(self, setup: Setup) -> Callable[[], None]:
        rss = self.results[setup.name].rss_load

        def sample() -> None:
            for name in setup.proxies:
                rss[name] = max(rss.get(name, 0.0), self.rig.services[name].rss())

        return sample

    def _cpu(self, names: tuple[str, ...]) -> dict[str, float]:
        return {name: self.rig.services[name].cpu() for name in names}

    def run(self) -> None:
        """Idle RSS, warm-up, saturation, then constant rate; repetitions interleaved."""
        cores = {core: core_times(core) for core in (SERVER_CORE, CLIENT_CORE)}
        ours = sum(s.cpu() for n, s in self.rig.services.items() if n != "controlplane")
        started = time.monotonic()
        self._measure()
        wall = time.monotonic() - started
        ours = sum(s.cpu() for n, s in self.rig.services.items() if n != "controlplane") - ours
        for core, before in cores.items():
            after = core_times(core)
            delta = {k: (after[k] - before[k]) / wall * 100 for k in before}
            usage = {
                "busy_pct": 100 - delta["idle"] - delta["iowait"],
                "softirq_pct": delta["softirq"] + delta["irq"],
                "steal_pct": delta["steal"],
            }
            if core == SERVER_CORE:
                # user+system time on the server core not charged to the benchmark's processes
                usage["other_processes_pct"] = max(
                    0.0, delta["user"] + delta["nice"] + delta["system"] - ours / wall * 100
                )
            self.core_usage[f"cpu{core}"] = {k: round(v, 1) for k, v in usage.items()}

    def _measure(self) -> None:
        for setup in self.rig.setups:
            self.results[setup.name].rss_idle = {
                n: self.rig.services[n].rss() for n in setup.proxies
            }
        for setup in self.rig.setups:
            load.saturate(
                setup.url,
                host=setup.host,
                connections=SATURATION_CONNECTIONS,
                seconds=self.plan.warmup_s,
                core=CLIENT_CORE,
                work=self.rig.work,
            )
        for rep in range(self.plan.saturation_reps):
            for setup in _rotated(self.rig.setups, rep):
                self._saturation(setup, rep)
        for rep in range(self.plan.rate_reps):
            for setup in _rotated(self.rig.setups, rep):
                self._rate(setup, rep)

    def _saturation(self, setup: Setup, rep: int) -> None:
        before = self._cpu(setup.proxies)
        run = load.saturate(
            setup.url,
            host=setup.host,
            connections=SATURATION_CONNECTIONS,
            seconds=self.plan.saturation_s,
            core=CLIENT_CORE,
            work=self.rig.work,
            sample=self._sampler(setup),
        )
        after = self._cpu(setup.proxies)
        self.rig.check()
        measured = self.results[setup.name]
        measured.saturation.append(run)
        measured.saturation_cpu.append(
            {n: (after[n] - before[n]) * 1000 / max(run.requests, 1) for n in setup.proxies}
        )
        self.log(
            f"saturation {rep + 1}/{self.plan.saturation_reps} {setup.name:13} "
            f"{run.rps:9.0f} req/s  errors {run.errors}"
        )

    def _rate(self, setup: Setup, rep: int) -> None:
        names = (*setup.proxies, "backend")
        before = self._cpu(names)
        run = load.constant_rate(
            setup.url,
            host=setup.host,
            qps=RATE,
            connections=RATE_CONNECTIONS,
            seconds=self.plan.rate_s,
            core=CLIENT_CORE,
            work=self.rig.work,
            sample=self._sampler(setup),
        )
        after = self._cpu(names)
        self.rig.check()
        measured = self.results[setup.name]
        per_1000 = {n: (after[n] - before[n]) * 1000 / max(run.requests, 1) for n in names}
        measured.backend_cpu.append(per_1000.pop("backend"))
        measured.rate.append(run)
        measured.rate_cpu.append(per_1000)
        self.log(
            f"1000 req/s {rep + 1}/{self.plan.rate_reps} {setup.name:13} "
            f"p50 {run.latency_ms.get('p50', 0):.3f} p99 {run.latency_ms.get('p99', 0):.3f} ms  "
            f"sent {run.qps:.0f}/s  errors {run.errors}"
        )


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def summarise(setup: Setup, measured: Measured) -> dict[str, Any]:
    """The JSON record of one setup (medians over repetitions, and every run)."""
    percentiles = ("p50", "p90", "p99", "p99.9")
    cpu_rate = {n: _median([c[n] for c in measured.rate_cpu]) for n in setup.proxies}
    cpu_sat = {n: _median([c[n] for c in measured.saturation_cpu]) for n in setup.proxies}
    return {
        "description": setup.description,
        "proxies": list(setup.proxies),
        "saturation_rps": _median([r.rps for r in measured.saturation]),
        "saturation_runs_rps": [round(r.rps, 1) for r in measured.saturation],
        "saturation_errors": sum(r.errors for r in measured.saturation),
        "saturation_latency_ms": {
            p: _median([r.latency_ms[p] for r in measured.saturation]) for p in ("p50", "p99")
        },
        "latency_ms": {
            p: _median([r.latency_ms[p] for r in measured.rate if p in r.latency_ms])
            for p in percentiles
        },
        "latency_runs_ms": [
            {p: round(v, 4) for p, v in r.latency_ms.items()} for r in measured.rate
        ],
        "rate_achieved_rps": _median([r.qps for r in measured.rate]),
        "rate_errors": sum(r.errors for r in measured.rate),
        "proxy_cpu_s_per_1000_req": sum(cpu_rate.values()),
        "proxy_cpu_s_per_1000_req_by_proxy": cpu_rate,
        "proxy_cpu_s_per_1000_req_saturation": sum(cpu_sat.values()),
        "proxy_cpu_s_per_1000_req_saturation_by_proxy": cpu_sat,
        "backend_cpu_s_per_1000_req": _median(measured.backend_cpu),
        "rss_mb": {
            n: {"idle": measured.rss_idle.get(n), "load": measured.rss_load.get(n)}
            for n in setup.proxies
        },
    }


@dataclass(frozen=True)
class Target:
    """One MISSION.md target, checked against this run."""

    name: str
    goal: str
    measured: float
    unit: str
    ok: bool

    def as_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "name": self.name,
            "goal": self.goal,
            "measured": self.measured,
            "unit": self.unit,
            "pass": self.ok,
        }


def check_targets(setups: dict[str, dict[str, Any]]) -> list[Target]:
    """Compare the figures with the targets of MISSION.md."""
    one, two = setups["sidecar"], setups["two-sidecars"]
    mtls = setups["two-sidecars-mtls"]
    added_mtls = {
        q: mtls["latency_ms"][q] - setups["direct"]["latency_ms"][q] for q in ("p90", "p99")
    }
    cpu_mtls = mtls["proxy_cpu_s_per_1000_req"] / 2
    direct, haproxy = setups["direct"], setups["haproxy"]
    cpu_one = one["proxy_cpu_s_per_1000_req"]
    cpu_two = two["proxy_cpu_s_per_1000_req"] / 2
    cpu_ha = haproxy["proxy_cpu_s_per_1000_req"]
    hop_one = one["latency_ms"]["p99"] - direct["latency_ms"]["p99"]
    hop_two = (two["latency_ms"]["p99"] - direct["latency_ms"]["p99"]) / 2
    saturation = one["saturation_rps"] / haproxy["saturation_rps"]
    rss = max(
        (v["load"] or 0.0)
        for s in (one, two)
        for v in s["rss_mb"].values()  # every sidecar process
    )
    cpu = "sidecar CPU per 1000 req/s"
    hop = "added p99 per hop at 1000 req/s"
    return [
        Target(f"{cpu} (one sidecar)", "≤ 0.12 vCPU", cpu_one, "vCPU", cpu_one <= 0.12),
        Target(f"{cpu} (client + server, mean)", "≤ 0.12 vCPU", cpu_two, "vCPU", cpu_two <= 0.12),
        Target("sidecar per-request CPU / haproxy's", "≤ 1.3x", cpu_one / cpu_ha, "x",
               cpu_one <= 1.3 * cpu_ha),
        Target(f"{hop} (one sidecar)", "≤ 0.2 ms", hop_one, "ms", hop_one <= 0.2),
        Target(f"{hop} (two sidecars, half the added)", "≤ 0.2 ms", hop_two, "ms", hop_two <= 0.2),
        Target("saturation, one sidecar / haproxy", "≥ 0.8x", saturation, "x", saturation >= 0.8),
        Target("sidecar RSS under load (largest)", "≤ 40 MB", rss, "MiB", rss <= 40),
        Target(f"{cpu} with mTLS (client + server, mean)", "≤ 0.15 vCPU", cpu_mtls, "vCPU",
               cpu_mtls <= 0.15),
        Target("added p90 by client + server sidecars with mTLS", "≤ 0.5 ms", added_mtls["p90"],
               "ms", added_mtls["p90"] <= 0.5),
        Target("added p99 by client + server sidecars with mTLS", "≤ 1 ms", added_mtls["p99"],
               "ms", added_mtls["p99"] <= 1.0),
    ]  # fmt: skip


def _tool_versions() -> dict[str, str]:
    def first_line(argv: list[str]) -> str:
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
        except OSError:
            return "?"
        lines = (done.stdout + done.stderr).strip().splitlines()
        return lines[0] if lines else "?"

    return {
        "nginx": first_line([find_tool("nginx"), "-v"]),
        "haproxy": first_line([find_tool("haproxy"), "-v"]),
        "wrk": first_line([find_tool("wrk"), "-v"]),
        "fortio": first_line([find_tool("fortio"), "version"]),
        "lightmesh_commit": first_line(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"]),
    }


def machine() -> dict[str, Any]:
    """What ran the benchmark (load average included: the machine may be shared)."""
    return {
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "load_average": list(os.getloadavg()),
    }


@contextlib.contextmanager
def _rig(work: Path) -> Iterator[Rig]:
    rig = Rig(work)
    try:
        rig.start()
        yield rig
    finally:
        rig.stop()


def run(plan: Plan, *, log: Callable[[str], None], keep: Path | None = None) -> dict[str, Any]:
    """Start the rig, measure, and return the JSON report (without writing anything)."""
    if (os.cpu_count() or 1) < 2:
        raise BenchError("needs 2 CPU cores: proxies on core 0, load generators on core 1")
    started = dt.datetime.now(dt.UTC)
    machine_before = machine()
    clock = time.monotonic()
    profile: dict[str, Any] | None = None
    with tempfile.TemporaryDirectory(prefix="lightmesh-bench-") as tmp:
        work = keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        with _rig(work) as rig:
            log(f"rig ready in {time.monotonic() - clock:.1f}s; work dir {work}")
            runner = Runner(rig, plan, log=log)
            runner.run()
            handshakes = handshakes_per_second(
                rig.mtls_port, work / "sidecar-client-identity", HANDSHAKE_SECONDS
            )
            log(f"mTLS handshakes: {handshakes:.0f}/s (one client, sequential)")
            if plan.profile_s:
                from bench.profile import profile_sidecar

                sidecar = next(s for s in rig.setups if s.name == "sidecar")
                try:
                    profile = profile_sidecar(
                        rig.services["sidecar-server"].popen.pid,
                        seconds=plan.profile_s,
                        load=lambda: load.saturate(
                            sidecar.url,
                            host=sidecar.host,
                            connections=SATURATION_CONNECTIONS,
                            seconds=plan.profile_s + 2,
                            core=CLIENT_CORE,
                            work=work,
                        ),
                        core=CLIENT_CORE,
                        work=work,
                    )
                    log(f"profile: {profile['busy_samples']} busy samples")
                except BenchError as error:  # the figures are still worth writing
                    log(f"profile skipped: {error}")
        setups = {s.name: summarise(s, runner.results[s.name]) for s in rig.setups}
    targets = check_targets(setups)
    return {
        "schema": "lightmesh.bench.dataplane/1",
        "started": started.isoformat(timespec="seconds"),
        "quick": plan.quick,
        "wall_seconds": round(time.monotonic() - clock, 1),
        "machine": {
            **machine_before,
            "load_average_after": list(os.getloadavg()),
            "core_usage_during_measurement": runner.core_usage,
        },
        "versions": _tool_versions(),
        "method": {
            "plan": dataclasses.asdict(plan),
            "server_core": SERVER_CORE,
            "client_core": CLIENT_CORE,
            "body_bytes": len(configs.BODY),
            "saturation": f"wrk -t1 -c{SATURATION_CONNECTIONS}, median of "
            f"{plan.saturation_reps} interleaved runs of {plan.saturation_s:g}s",
            "latency": f"fortio load -qps {RATE:g} -c {RATE_CONNECTIONS} -uniform, "
            f"{plan.rate_reps} x {plan.rate_s:g}s, median of the runs' percentiles",
            "cpu": "utime+stime of each proxy's process tree from /proc, per 1000 requests",
            "rss": "VmRSS of each proxy's process tree: idle after start, max sampled every "
            f"{load.SAMPLE_INTERVAL:g}s under load",
        },
        "setups": setups,
        "mtls_handshakes_per_second": round(handshakes, 1),
        "targets": [t.as_dict() for t in targets],
        "profile": profile,
    }


def main(argv: list[str] | None = None) -> int:
    """`python -m bench dataplane`: run, print, and write the requested files."""
    from bench import report

    parser = argparse.ArgumentParser(
        prog="python -m bench dataplane",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="a short run (≤ 60 s)")
    parser.add_argument("--json", type=Path, help="write the figures as JSON here")
    parser.add_argument("--markdown", type=Path, help="replace the data-plane section here")
    parser.add_argument("--chart", type=Path, help="draw a PNG chart here (needs matplotlib)")
    parser.add_argument("--profile", action="store_true", help="also profile a sidecar (py-spy)")
    parser.add_argument("--keep", type=Path, help="keep configs and logs in this directory")
    args = parser.parse_args(argv)

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    plan = Plan.make(quick=args.quick, profile=args.profile)
    try:
        result = run(plan, log=log, keep=args.keep)
    except BenchError as error:
        print(f"bench dataplane: {error}", file=sys.stderr)
        return 1
    command = "python -m bench dataplane" + (" --quick" if args.quick else "")
    command += " --profile" if args.profile else ""
    result["command"] = command
    print(report.text_table(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    if args.chart:
        report.chart(result, args.chart)
    if args.markdown:
        report.update_markdown(
            args.markdown, result, chart=args.chart, json_path=args.json, root=ROOT
        )
    return 0
