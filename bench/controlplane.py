"""Control-plane benchmark: the real control plane against many simulated proxies, at scale.

    python -m bench controlplane [--quick] [--run SOURCE:NxS ...]
                                 [--source files,kube --proxies 100,1000 --services 100,1000]
                                 [--json FILE] [--markdown docs/benchmarks.md] [--label NAME]

Per run: a mesh of S services over 10 namespaces (one VirtualService + one DestinationRule each)
served by N proxies (bench/cp_mesh.py), from the file source (one file per service; proxies
register as endpoints, local mode) or the Kubernetes source (a real kube-apiserver + etcd holding
Services, EndpointSlices, Pods and the mesh resources). `lightmesh controlplane` runs as a user
starts it (TLS config stream, state directory, debug port); the N proxies are simulated by a few
worker processes speaking the real protocol (bench/cp_sim.py, bench/cp_client.py). Scenarios,
in order, each bounded by a scale-dependent timeout:

    cold herd        all N proxies connect at once → every proxy ACKed every type, then quiet
    VS change        one VirtualService weight edit → every proxy ACKed new routes (x --reps)
    endpoint add     one endpoint joins service 0 → its namespace's proxies ACKed new endpoints
    endpoint remove  that endpoint leaves again
    churn            that endpoint flaps every 100 ms for 20 s → CPU, pushes, settling
    restart herd     the control plane is stopped and started → every proxy reconnected, quiet

Throughout, /healthz is probed every 0.5 s and the control plane's CPU and RSS sampled every
0.1 s. "Quiet" means no response for 2 s and a prompt /healthz after the last one. If the cold
herd does not settle, the proxies are reconnected in twenty waves so that the later scenarios still
measure a fully connected mesh (the report says so). Figures go to stdout, JSON (merged by label,
source and scale) and a section of docs/benchmarks.md; the targets of issue 12 are marked met or
missed next to them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import functools
import json
import math
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import aiohttp

from bench import cp_report
from bench.cp_client import CLIENTS, ENDPOINTS, ROUTES, TYPES
from bench.cp_mesh import (
    CHANGED_SERVICE,
    SCOPES,
    WEIGHTS,
    Mesh,
    service_file,
    service_file_path,
)
from bench.cp_rig import (
    IDLE_MARGIN,
    QUIET,
    ControlPlane,
    Ledger,
    Probe,
    Sampler,
    Simulator,
    Tracker,
    connected_proxies,
    machine_busy,
    now,
    percentile,
    wait_healthy,
)
from bench.procs import cpu_seconds, process_tree
from lightmeshctl.demo.mesh import free_port

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_RUNS = ("files:100x100", "files:1000x100", "kube:100x100")
SOURCES = ("files", "kube")
CHURN_PERIOD = 0.1
STEADY_SECONDS = 3.0
RAMP_WAVES = 20
# Above this CPU rate the CP is working, not idling (idle: 0.01-0.3 cores, busy: about 1).
BUSY_CORES = 0.6

Log = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class Plan:
    """How much each run does."""

    quick: bool
    reps: int
    churn_seconds: float
    cap: float
    workers: int  # 0: by scale
    # The simulated proxies' channel: the sidecar's own (h2) or grpcio's (bench/cp_client.py).
    client: str = "grpcio"
    # Who must ACK a VirtualService change: every proxy (the VirtualService is visible mesh-wide,
    # as Istio's default exportTo "*"), or only its namespace's when scoping says so.
    vs_audience: str = "mesh"

    def timeout(self, mesh: Mesh) -> float:
        """The bound of every wait of one scenario at this scale."""
        return round(min(self.cap, 30 + mesh.proxies * mesh.services / 2000), 1)

    def worker_count(self, mesh: Mesh) -> int:
        """Simulator processes: about 200 proxies each, 2 to 8."""
        return self.workers or max(2, min(8, math.ceil(mesh.proxies / 200)))


@dataclass(frozen=True, slots=True)
class RunSpec:
    """One source at one scale."""

    source: str
    proxies: int
    services: int

    @classmethod
    def parse(cls, text: str) -> RunSpec:
        """`SOURCE:NxS`, e.g. `files:1000x100`."""
        try:
            source, scale = text.split(":")
            proxies, services = (int(v) for v in scale.lower().split("x"))
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}: expected SOURCE:NxS") from None
        if source not in SOURCES:
            raise argparse.ArgumentTypeError(f"{text!r}: source must be one of {SOURCES}")
        return cls(source, proxies, services)


# --------------------------------------------------------------------------------- the sources


class Source(Protocol):
    """Where the mesh lives and how the scenarios change it."""

    name: str
    register: bool  # whether proxies announce their services (local mode)

    async def prepare(self) -> dict[str, Any]: ...
    def cp_args(self) -> list[str]: ...
    async def set_weight(self, weight: int) -> None: ...
    async def set_extra(self, state: bool | None) -> None: ...
    async def flap(self, period: float, seconds: float) -> int: ...
    async def close(self) -> None: ...


class FileSource:
    """One YAML file per service in a config directory; endpoints are proxy registrations."""

    name = "files"
    register = True

    def __init__(self, mesh: Mesh, work: Path, sim: Simulator) -> None:
        self._mesh = mesh
        self._dir = work / "mesh-config"
        self._sim = sim

    async def prepare(self) -> dict[str, Any]:
        """Write every service's file."""
        for service in range(self._mesh.services):
            path = self._dir / service_file_path(self._mesh, service)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(service_file(self._mesh, service))
        return {"files": self._mesh.services}

    def cp_args(self) -> list[str]:
        """`--config-dir`."""
        return ["--config-dir", str(self._dir)]

    async def set_weight(self, weight: int) -> None:
        """Rewrite the changed service's file (atomically, as an editor or `kubectl cp` would)."""
        path = self._dir / service_file_path(self._mesh, CHANGED_SERVICE)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(service_file(self._mesh, CHANGED_SERVICE, weight))
        os.replace(tmp, path)

    async def set_extra(self, state: bool | None) -> None:
        """Connect (registers the endpoint) or disconnect the extra proxy."""
        await self._sim.command("start" if state else "stop", [self._mesh.extra])

    async def flap(self, period: float, seconds: float) -> int:
        """The extra proxy's stream opens and closes every `period`."""
        return await self._sim.flap(self._mesh.extra, period, seconds)

    async def close(self) -> None:
        """Nothing to stop."""


class KubeSource:
    """The mesh as objects in a real kube-apiserver."""

    name = "kube"
    register = False

    def __init__(self, mesh: Mesh, work: Path) -> None:
        from bench.cp_kube import KubeMesh  # only Kubernetes runs need the cluster code

        self._kube = KubeMesh(mesh, work)

    async def prepare(self) -> dict[str, Any]:
        """Start the cluster and create every object."""
        await self._kube.start()
        return {
            "apiserver_startup_s": round(self._kube.startup_seconds, 1),
            "objects_created": self._kube.objects,
            "populate_s": round(self._kube.populate_seconds, 1),
        }

    def cp_args(self) -> list[str]:
        """`--kubeconfig`."""
        return ["--kubeconfig", str(self._kube.kubeconfig)]

    async def set_weight(self, weight: int) -> None:
        """Merge-patch the VirtualService."""
        await self._kube.set_weight(weight)

    async def set_extra(self, state: bool | None) -> None:
        """Patch the EndpointSlice (the extra pod object exists from the start)."""
        await self._kube.set_extra(state)

    async def flap(self, period: float, seconds: float) -> int:
        """Patch the extra endpoint's `ready` condition every `period` (an even count)."""
        toggles, began = 0, now()
        next_at = began
        while now() - began < seconds or toggles % 2:
            await self._kube.set_extra(toggles % 2 == 0)
            toggles += 1
            next_at += period
            await asyncio.sleep(max(0.0, next_at - now()))
        await self._kube.set_extra(None)  # not ready and absent are the same to the mesh
        return toggles

    async def close(self) -> None:
        """Stop the cluster."""
        await self._kube.close()


# ------------------------------------------------------------------------------------ one run


@dataclass(frozen=True, slots=True)
class Mark:
    """Counters at the start of a scenario."""

    sim: float
    busy: float
    own: float
    at: float


@dataclass
class Settled:
    """How a wait ended."""

    done: bool  # the tracker's audience all ACKed (and the extra condition held)
    quiet: bool  # … and then nothing was sent for QUIET seconds
    end_at: float  # last response (or condition) that belonged to it


class Run:
    """One source at one scale: start everything, run the scenarios, stop everything."""

    def __init__(self, spec: RunSpec, plan: Plan, work: Path, log: Log) -> None:
        self.spec = spec
        self.plan = plan
        self.mesh = Mesh.make(spec.proxies, spec.services)
        self.timeout = plan.timeout(self.mesh)
        self.work = work
        self.log = log
        self.ledger = Ledger()
        self.sim = Simulator(self.ledger, work)
        self.source: Source = (
            FileSource(self.mesh, work, self.sim)
            if spec.source == "files"
            else KubeSource(self.mesh, work)
        )
        self.cp_port, self.debug_port = free_port(), free_port()
        self.state = work / "cp-state"
        self.cp = ControlPlane(argv=[], log=work / "controlplane.log", debug_port=self.debug_port)
        self.sampler = Sampler(self.cp)
        self.probe = Probe(f"http://127.0.0.1:{self.debug_port}/healthz")
        self.session: aiohttp.ClientSession | None = None
        self.proxies = range(self.mesh.proxies)
        self.extra = {self.mesh.extra}
        self.idle_cores = BUSY_CORES  # until measured after the start

    # -- plumbing

    def _cp_argv(self) -> list[str]:
        script = Path(sys.executable).parent / "lightmesh"
        command = [str(script)] if script.exists() else [sys.executable, "-m", "lightmeshctl.cli"]
        return [
            *command, "controlplane", *self.source.cp_args(),
            "--state-dir", str(self.state),
            "--port", str(self.cp_port), "--debug-port", str(self.debug_port),
        ]  # fmt: skip

    async def _start_cp(self, *, limit: float | None = None) -> float:
        assert self.session is not None  # noqa: S101 - inside execute()
        began = now()
        self.cp.start()
        self.sampler.sample()
        await wait_healthy(self.session, self.debug_port, limit=limit or self.plan.cap, cp=self.cp)
        return now() - began

    async def _settle(
        self,
        tracker: Tracker,
        *,
        herd: bool,
        condition: Callable[[], Awaitable[bool]] | None = None,
        deadline: float | None = None,
    ) -> Settled:
        """Wait until the tracker is done (and `condition`, polled every 0.5 s, held once) and
        then the CP is quiet, at most `timeout` from `tracker.since` (or until `deadline`). A
        herd ends at its last response; a change at its audience's last ACK, waiting at most
        2 x QUIET more for quiet so that what else it sends is counted."""
        deadline = deadline or tracker.since + self.timeout
        condition_at: float | None = None
        next_check = 0.0
        ready_at: float | None = None
        while now() < deadline:
            if condition is not None and condition_at is None and now() >= next_check:
                next_check = now() + 0.5
                if await condition():
                    condition_at = now()
            if tracker.done and (condition is None or condition_at is not None):
                ready_at = ready_at or now()
                done_at = tracker.done_at or tracker.since
                end_at = max(done_at, condition_at or 0.0, tracker.last_at) if herd else done_at
                last = max(self.ledger.last_response_at, condition_at or 0.0)
                quiet = self._is_quiet(last)
                if quiet or (not herd and now() - ready_at >= 2 * QUIET):
                    return Settled(done=True, quiet=quiet, end_at=end_at)
            await asyncio.sleep(0.1)
        done = tracker.done and (condition is None or condition_at is not None)
        return Settled(done=done, quiet=False, end_at=(tracker.done_at if done else None) or now())

    def _is_quiet(self, last: float) -> bool:
        """Nothing sent since `last` for QUIET seconds, the CP near its idle CPU rate over them,
        and a /healthz probe of that window answered promptly."""
        moment = now()
        return (
            moment - last >= QUIET
            and self.sampler.rate(moment - QUIET, moment) <= self.idle_cores + IDLE_MARGIN
            and self.probe.prompt_after(max(last, moment - QUIET))
        )

    async def _quiesce(self) -> bool:
        """Wait (bounded) until the control plane is quiet."""
        deadline = now() + self.timeout
        while now() < deadline:
            if self._is_quiet(self.ledger.last_response_at):
                return True
            await asyncio.sleep(0.1)
        return False

    async def _idle_baseline(self) -> dict[str, Any]:
        """After the first start, wait (at most `cap`) until the CP stops working on its own
        (the Kubernetes source first writes every resource's status) and take its idle CPU
        rate."""
        began = now()
        await asyncio.sleep(QUIET)
        rate = self.sampler.rate(now() - QUIET, now())
        while now() - began < self.plan.cap and not (
            rate <= BUSY_CORES and self.probe.prompt_after(now() - QUIET)
        ):
            await asyncio.sleep(0.5)
            rate = self.sampler.rate(now() - QUIET, now())
        self.idle_cores = rate
        return {
            "idle_after_s": round(now() - began - QUIET, 1),
            "idle_cores": round(rate, 3),
            "idle": rate <= BUSY_CORES,
        }

    def _own_cpu(self) -> float:
        """CPU seconds of everything this run started (CP, workers, cluster) and the harness."""
        return cpu_seconds(process_tree(os.getpid())) + self.sampler.ended_cpu

    def _mark(self) -> Mark:
        return Mark(sim=self.sim.cpu(), busy=machine_busy(), own=self._own_cpu(), at=now())

    def _others(self, mark: Mark) -> float:
        """Cores other work on the machine used since `mark` (busy minus ours)."""
        seconds = max(now() - mark.at, 1e-6)
        busy, own = machine_busy() - mark.busy, self._own_cpu() - mark.own
        return round(max(0.0, busy - own) / seconds, 2)

    def _window(self, tracker: Tracker, end: float, mark: Mark) -> dict[str, Any]:
        """What every scenario reports about its window [tracker.since, end]."""
        start = tracker.since
        rss = self.sampler.rss_between(start, end)
        return {
            "bytes_total": tracker.bytes,
            "bytes_by_type": dict(tracker.by_type),
            "responses": tracker.responses,
            "nacks": tracker.nacks,
            "proxies_reached": len(tracker.received_by),
            "cp_cpu_s": round(self.sampler.cpu_at(end) - self.sampler.cpu_at(start), 2),
            "cp_rss_max_mb": round(max(rss), 1) if rss else None,
            "sim_cpu_s": round(self.sim.cpu() - mark.sim, 2),
            "other_cores": self._others(mark),
            "healthz": self.probe.window(start, max(end, start)),
            "streams": dict(tracker.streams),
        }

    # -- scenarios

    async def cold_herd(self) -> dict[str, Any]:
        """All proxies connect at once to a running control plane."""
        mark = self._mark()
        tracker = self.ledger.track(audience=self.proxies, need=TYPES, exclude=self.extra)
        await self.sim.command("start", self.proxies)
        settled = await self._settle(tracker, herd=True)
        self.ledger.forget(tracker)
        return self._herd_result(tracker, settled, mark)

    def _herd_result(self, tracker: Tracker, settled: Settled, mark: Mark) -> dict[str, Any]:
        synced = tracker.latencies()
        ok = settled.done and settled.quiet
        return {
            "settled": ok,
            "seconds": round(settled.end_at - tracker.since, 2) if ok else None,
            "timeout_s": self.timeout,
            "proxies_synced": len(tracker.complete),
            "first_sync_s": {
                "p50": _round(percentile(synced, 50)),
                "p90": _round(percentile(synced, 90)),
                "max": _round(synced[-1] if synced else math.nan),
            },
            **self._window(tracker, settled.end_at if ok else now(), mark),
        }

    async def ramp(self) -> dict[str, Any]:
        """After a cold herd that did not settle: disconnect every proxy, let the CP calm down,
        and reconnect them in waves, each waited for, within `cap` seconds in all."""
        began = now()
        await self.sim.command("stop", self.proxies)
        calmed = await self._quiesce()
        deadline = now() + self.plan.cap
        waves = [list(self.proxies)[i::RAMP_WAVES] for i in range(RAMP_WAVES)]
        done = synced = 0
        for wave in waves:
            tracker = self.ledger.track(audience=wave, need=TYPES, exclude=self.extra)
            await self.sim.command("start", wave)
            settled = await self._settle(tracker, herd=True, deadline=deadline)
            self.ledger.forget(tracker)
            synced += len(tracker.complete)
            if not (settled.done and settled.quiet):
                break
            done += 1
            self.log(f"  ramp: wave {done}/{RAMP_WAVES} synced at {now() - began:.1f} s")
        return {
            "settled": done == len(waves),
            "waves": len(waves),
            "waves_synced": done,
            "proxies_synced": synced,
            "seconds": round(now() - began, 1),
            "cap_s": self.plan.cap,
            "quiet_before": calmed,
        }

    async def steady(self) -> dict[str, Any]:
        """RSS and CPU of the idle control plane with every proxy connected."""
        await self._quiesce()
        start = now()
        await asyncio.sleep(STEADY_SECONDS)
        end = now()
        rss = self.sampler.rss_between(start, end)
        cpu = self.sampler.cpu_at(end) - self.sampler.cpu_at(start)
        return {
            "rss_mb": round(statistics.median(rss), 1) if rss else None,
            "idle_cpu_cores": round(cpu / (end - start), 3),
            "connected": await connected_proxies(self._session(), self.debug_port),
        }

    def _session(self) -> aiohttp.ClientSession:
        assert self.session is not None  # noqa: S101 - inside execute()
        return self.session

    async def change(
        self,
        action: Callable[[], Awaitable[None]],
        *,
        audience: list[int] | range,
        need: str,
    ) -> dict[str, Any]:
        """One change: every proxy of `audience` must ACK a response of type `need`."""
        quiet_before = await self._quiesce()
        mark = self._mark()
        tracker = self.ledger.track(audience=audience, need=(need,), exclude=self.extra)
        await action()
        settled = await self._settle(tracker, herd=False)
        end = max(settled.end_at, tracker.last_at) if tracker.responses else settled.end_at
        self.ledger.forget(tracker)
        latencies = tracker.latencies()
        window = self._window(tracker, end, mark)
        return {
            "settled": settled.done,
            "timeout_s": self.timeout,
            "quiet_before": quiet_before,
            "audience": len(tracker.audience),
            "acked": len(tracker.complete),
            "latency_s": {
                "p50": _round(percentile(latencies, 50)),
                "p90": _round(percentile(latencies, 90)),
                "p99": _round(percentile(latencies, 99)),
                "max": _round(latencies[-1] if latencies else math.nan),
            },
            "latencies": [_round(v) for v in latencies],
            **window,
            "bytes_per_proxy": round(tracker.bytes / max(self.mesh.proxies, 1)),
            "bytes_per_audience_proxy": round(tracker.bytes / max(len(tracker.audience), 1)),
        }

    async def churn(self) -> dict[str, Any]:
        """The extra endpoint flaps every CHURN_PERIOD for `churn_seconds`."""
        quiet_before = await self._quiesce()
        mark = self._mark()
        tracker = self.ledger.track(audience=(), need=(), exclude=self.extra)
        toggles = await self.source.flap(CHURN_PERIOD, self.plan.churn_seconds)
        flapped = now()
        seconds = flapped - tracker.since
        during = self.sampler.cpu_at(flapped) - self.sampler.cpu_at(tracker.since)
        after = self.ledger.track(audience=(), need=(), exclude=self.extra, since=flapped)
        settled = await self._settle(after, herd=True)
        self.ledger.forget(tracker)
        self.ledger.forget(after)
        end = settled.end_at if settled.quiet else now()
        return {
            "quiet_before": quiet_before,
            "toggles": toggles,
            "seconds": round(seconds, 1),
            "cp_cpu_s_during": round(during, 2),
            "cp_cores_during": round(during / seconds, 2),
            "settled": settled.quiet,
            "settled_after_s": round(max(end, flapped) - flapped, 2) if settled.quiet else None,
            **self._window(tracker, max(end, flapped), mark),
        }

    async def restart_herd(self) -> dict[str, Any]:
        """Stop the control plane (SIGTERM) and start it again; every proxy reconnects."""
        await self._quiesce()
        mark = self._mark()
        tracker = self.ledger.track(audience=self.proxies, need=(), exclude=self.extra)
        stopped = await asyncio.to_thread(self.cp.stop)
        restarted_at = now()
        healthy_after = await self._start_cp()
        want = self.mesh.proxies

        async def all_connected() -> bool:
            count = await connected_proxies(self._session(), self.debug_port)
            return count is not None and count >= want and tracker.audience <= tracker.opened

        settled = await self._settle(tracker, herd=True, condition=all_connected)
        self.ledger.forget(tracker)
        ok = settled.done and settled.quiet
        return {
            "settled": ok,
            "cp_stopped_by": stopped,
            "down_s": round(restarted_at - tracker.since, 2),
            "healthz_after_start_s": round(healthy_after, 2),
            "seconds_from_start": round(settled.end_at - restarted_at, 2) if ok else None,
            "seconds_from_stop": round(settled.end_at - tracker.since, 2) if ok else None,
            "timeout_s": self.timeout,
            "reconnected": len(tracker.opened & tracker.audience),
            **self._window(tracker, settled.end_at if ok else now(), mark),
            # The new process's /healthz, from its first answer (the old one's stop is excluded).
            "healthz": self.probe.window(
                restarted_at + healthy_after, settled.end_at if ok else now()
            ),
            "bytes_per_proxy": round(tracker.bytes / max(self.mesh.proxies, 1)),
        }

    # -- the whole run

    async def execute(self) -> dict[str, Any]:
        """Everything of this run; the figures."""
        began = now()
        run_mark = self._mark()
        result: dict[str, Any] = {
            "source": self.spec.source,
            "proxies": self.mesh.proxies,
            "services": self.mesh.services,
            "namespaces": self.mesh.namespaces,
            "timeout_s": self.timeout,
            "workers": self.plan.worker_count(self.mesh),
            "client": self.plan.client,
            "vs_audience": self.plan.vs_audience,
            "scenarios": {},
        }
        scenarios: dict[str, Any] = result["scenarios"]
        tasks: list[asyncio.Task[None]] = []
        self.session = aiohttp.ClientSession()
        try:
            self.log(f"{self.spec.source} {self.mesh.proxies}x{self.mesh.services}: preparing")
            result["source_setup"] = await self.source.prepare()
            self.cp.argv = self._cp_argv()
            # The first start of the Kubernetes source writes every resource's status, which
            # takes minutes today: allowed twice the cap before giving up.
            result["cp_start_s"] = round(await self._start_cp(limit=2 * self.plan.cap), 2)
            tasks = [
                asyncio.create_task(self.sampler.run()),
                asyncio.create_task(self.probe.run(self.session)),
            ]
            result["cp_after_start"] = await self._idle_baseline()
            specs = {
                p: self.mesh.node(p, register=self.source.register)
                for p in range(self.mesh.proxies + 1)
            }
            await self.sim.start(
                specs,
                workers=result["workers"],
                target=f"127.0.0.1:{self.cp_port}",
                ca=self.state / "root.pem",
                client=self.plan.client,
            )
            self.log(f"  cold herd: {self.mesh.proxies} proxies (timeout {self.timeout:.0f} s)")
            scenarios["cold_herd"] = await self.cold_herd()
            self.log("  " + cp_report.herd_line(scenarios["cold_herd"]))
            if not scenarios["cold_herd"]["settled"]:
                self.log("  cold herd did not settle: reconnecting in waves")
                scenarios["ramp"] = await self.ramp()
                if not scenarios["ramp"]["settled"]:
                    result["skipped"] = "the proxies could not be connected, even in waves"
                    return result
            result["steady"] = await self.steady()
            weight = WEIGHTS[0]
            changes = []
            for rep in range(self.plan.reps):
                weight = WEIGHTS[1] if weight == WEIGHTS[0] else WEIGHTS[0]
                changes.append(
                    await self.change(
                        functools.partial(self.source.set_weight, weight),
                        audience=self.mesh.audience(CHANGED_SERVICE, self.plan.vs_audience),
                        need=ROUTES,
                    )
                )
                self.log(f"  VS change {rep + 1}: " + cp_report.change_line(changes[-1]))
            scenarios["vs_change"] = _pool_changes(changes)
            audience = self.mesh.audience(CHANGED_SERVICE)
            for name, state in (("endpoint_add", True), ("endpoint_remove", None)):
                scenarios[name] = await self.change(
                    functools.partial(self.source.set_extra, state),
                    audience=audience,
                    need=ENDPOINTS,
                )
                self.log(f"  {name}: " + cp_report.change_line(scenarios[name]))
            self.log(f"  churn: {self.plan.churn_seconds:.0f} s")
            scenarios["churn"] = await self.churn()
            self.log("  " + cp_report.churn_line(scenarios["churn"]))
            self.log("  restart herd")
            scenarios["restart_herd"] = await self.restart_herd()
            self.log("  " + cp_report.restart_line(scenarios["restart_herd"]))
        except (RuntimeError, OSError) as error:
            # A result too (e.g. the CP never answered): say so, keep what was measured.
            result["skipped"] = f"stopped: {error}"
            self.log(f"  {result['skipped']}\n{self.cp.tail(5)}")
        finally:
            result["cp_rss_peak_mb"] = round(max(self.cp.peak_rss_mb, self.cp.hwm()), 1)
            result["sim"] = {
                "processes": len(self.sim.pids),
                "cpu_s": round(self.sim.cpu(), 1),
                "rss_mb": round(self.sim.rss(), 1),
            }
            result["harness_cpu_s"] = round(time.process_time(), 1)
            result["other_cores"] = self._others(run_mark)
            result["cp_restarts"] = self.cp.starts - 1
            for task in tasks:
                task.cancel()
            await self.sim.close()
            result["cp_stopped_by"] = await asyncio.to_thread(self.cp.stop)
            await self.session.close()
            await self.source.close()
            result["wall_s"] = round(now() - began, 1)
        return result


def _round(value: float) -> float | None:
    return None if math.isinf(value) or math.isnan(value) else round(value, 3)


def _pool_changes(changes: list[dict[str, Any]]) -> dict[str, Any]:
    """Several changes as one figure: latencies pooled, costs as medians."""
    pooled = sorted(math.inf if v is None else v for c in changes for v in c["latencies"])
    first = changes[0]

    def median(key: str) -> float:
        value = statistics.median(c[key] for c in changes)
        return int(value) if float(value).is_integer() else round(float(value), 2)

    return {
        **{k: v for k, v in first.items() if k != "latencies"},
        "repetitions": len(changes),
        "settled": all(c["settled"] for c in changes),
        "acked": min(c["acked"] for c in changes),
        "latency_s": {
            "p50": _round(percentile(pooled, 50)),
            "p90": _round(percentile(pooled, 90)),
            "p99": _round(percentile(pooled, 99)),
            "max": _round(pooled[-1] if pooled else math.nan),
        },
        "bytes_total": median("bytes_total"),
        "bytes_per_proxy": median("bytes_per_proxy"),
        "proxies_reached": median("proxies_reached"),
        "cp_cpu_s": median("cp_cpu_s"),
        "sim_cpu_s": median("sim_cpu_s"),
        "per_change": [{k: v for k, v in c.items() if k != "latencies"} for c in changes],
    }


# ------------------------------------------------------------------------------------- machine


def _git(*args: str) -> str:
    result = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False)
    return result.stdout.strip()


def uptime() -> str:
    """`uptime`'s line (how loaded the shared machine is)."""
    return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()


def machine() -> dict[str, Any]:
    """What the run ran on and against."""
    import grpc

    return {
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "grpc": grpc.__version__,
        "open_files_limit": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
        "commit": _git("rev-parse", "--short", "HEAD"),
        # The last commit that touched what runs in the control plane process.
        "cp_code_commit": _git("log", "-1", "--format=%h", "--", "controlplane", "lightmesh"),
        "dirty": bool(_git("status", "--porcelain", "--", "controlplane", "lightmesh", "bench")),
    }


def _raise_open_files() -> None:
    """Thousands of streams need thousands of descriptors in the CP and the workers."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def run_all(specs: list[RunSpec], plan: Plan, *, command: str, label: str, log: Log,
                  keep: bool, save: Callable[[dict[str, Any]], None]) -> list[dict[str, Any]]:  # fmt: skip
    """Every run, one after the other, each in its own work directory; `save` gets each
    result as soon as it is complete (so a long series keeps what it measured)."""
    results = []
    for spec in specs:
        work = Path(tempfile.mkdtemp(prefix=f"lightmesh-bench-cp-{spec.source}-"))
        load_before = uptime()
        started = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        try:
            result = await Run(spec, plan, work, log).execute()
        finally:
            if keep:
                log(f"  work directory kept: {work}")
            else:
                shutil.rmtree(work, ignore_errors=True)
        result.update(
            label=label,
            command=command,
            started=started,
            quick=plan.quick,
            reps=plan.reps,
            churn_seconds=plan.churn_seconds,
            uptime_before=load_before,
            uptime_after=uptime(),
            machine=machine(),
        )
        result["targets"] = cp_report.targets(result)
        log(cp_report.text(result))
        results.append(result)
        save(result)
    return results


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m bench controlplane`."""
    parser = argparse.ArgumentParser(
        prog="python -m bench controlplane",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="files:100x100, short (~2 min)")
    parser.add_argument(
        "--run", action="append", type=RunSpec.parse, default=[], help="SOURCE:NxS (repeatable)"
    )
    parser.add_argument("--source", help="comma list of files,kube (with --proxies/--services)")
    parser.add_argument("--proxies", help="comma list, e.g. 100,1000,2000,5000")
    parser.add_argument("--services", help="comma list, e.g. 100,1000")
    parser.add_argument("--reps", type=int, help="VirtualService changes per run (default 3)")
    parser.add_argument("--churn-seconds", type=float, help="endpoint churn length (default 20)")
    parser.add_argument("--cap", type=float, help="cap of every scenario's timeout (300 s)")
    parser.add_argument("--workers", type=int, default=0, help="simulator processes (auto)")
    parser.add_argument(
        "--client",
        choices=CLIENTS,
        default="grpcio",
        help="the simulated proxies' channel: grpcio's (default) or the sidecar's own (h2)",
    )
    parser.add_argument(
        "--vs-audience",
        choices=SCOPES,
        default="mesh",
        help="who must ACK a VirtualService change (default: every proxy)",
    )
    parser.add_argument("--label", default="", help="names this set of runs (default: branch)")
    parser.add_argument("--json", type=Path, help="merge the runs into this JSON file")
    parser.add_argument("--markdown", type=Path, help="replace the control-plane section here")
    parser.add_argument("--keep", action="store_true", help="keep the work directories (logs)")
    args = parser.parse_args(argv)

    specs: list[RunSpec] = list(args.run)
    if args.source or args.proxies or args.services:
        specs += [
            RunSpec(source, int(n), int(s))
            for source in (args.source or "files").split(",")
            for n in (args.proxies or "100").split(",")
            for s in (args.services or "100").split(",")
        ]
    if not specs:
        specs = [RunSpec.parse(r) for r in (("files:100x100",) if args.quick else DEFAULT_RUNS)]
    for spec in specs:
        if spec.source not in SOURCES:
            parser.error(f"unknown source {spec.source!r}")
        try:
            Mesh.make(spec.proxies, spec.services)
        except ValueError as error:
            parser.error(str(error))
    plan = Plan(
        quick=args.quick,
        reps=args.reps or (1 if args.quick else 3),
        churn_seconds=args.churn_seconds or (5.0 if args.quick else 20.0),
        cap=args.cap or (60.0 if args.quick else 300.0),
        workers=args.workers,
        client=args.client,
        vs_audience=args.vs_audience,
    )
    label = args.label or _git("rev-parse", "--abbrev-ref", "HEAD") or "unlabelled"
    command = " ".join(["python -m bench controlplane", *(argv if argv is not None else [])])
    _raise_open_files()

    def log(line: str) -> None:
        print(line, flush=True)

    measured: list[dict[str, Any]] = []

    def save(result: dict[str, Any]) -> None:
        measured.append(result)
        merged = measured
        if args.json:
            merged = cp_report.merge(args.json, [result])
            args.json.write_text(json.dumps({"runs": merged}, indent=1) + "\n")
        if args.markdown:
            cp_report.update_markdown(args.markdown, merged, json_path=args.json, root=ROOT)

    asyncio.run(
        run_all(specs, plan, command=command, label=label, log=log, keep=args.keep, save=save)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
