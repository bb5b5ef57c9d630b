"""The rig of `bench controlplane`: the control plane process, the simulator workers, and what
the benchmark observes of them (responses, stream events, /healthz latency, CPU and memory).

Nothing here knows the wire protocol: the workers (bench/cp_sim.py) report each response as a
line, and `Ledger` feeds the `Tracker`s the scenarios register. A tracker answers "has every
proxy of this audience ACKed a response of these types since t?" and accumulates what a scenario
reports (bytes, proxies reached, per-proxy latency, stream errors).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from bench.cp_client import NodeSpec, Response, StreamEvent
from bench.cp_sim import parse_response, parse_stream, spec_to_json
from bench.procs import CLOCK_TICKS, cpu_seconds, process_tree, rss_mb

# Settled: no response for QUIET seconds, the CP's CPU over them near its idle rate, and a
# prompt /healthz after the last response (a CP busy translating sends nothing for a while).
QUIET = 3.0
IDLE_MARGIN = 0.15  # cores above the idle rate still taken as idle
PROBE_INTERVAL = 0.5
PROBE_TIMEOUT = 60.0
SAMPLE_INTERVAL = 0.1


def now() -> float:
    """The benchmark's clock (CLOCK_MONOTONIC, shared with the workers)."""
    return time.monotonic()


# ----------------------------------------------------------------------------------- what is seen


@dataclass(eq=False)
class Tracker:
    """What happened since `since`: which of `audience` have ACKed each of `need` (a response of
    that type received at or after `since`), and totals over every proxy not in `exclude`."""

    since: float
    audience: frozenset[int]
    need: frozenset[str]
    exclude: frozenset[int] = frozenset()
    got: dict[int, set[str]] = field(default_factory=dict)
    complete: dict[int, float] = field(default_factory=dict)  # proxy -> ACK that completed it
    received_by: set[int] = field(default_factory=set)
    bytes: int = 0
    responses: int = 0
    nacks: int = 0
    last_at: float = 0.0
    by_type: Counter[str] = field(default_factory=Counter)  # bytes by type
    streams: Counter[str] = field(default_factory=Counter)  # "open", "error:CODE", "eof"
    opened: set[int] = field(default_factory=set)  # proxies whose stream (re)opened

    def add(self, proxy: int, seen: Response) -> None:
        """Account one response of `proxy`."""
        if seen.received < self.since or proxy in self.exclude:
            return
        self.received_by.add(proxy)
        self.bytes += seen.bytes
        self.by_type[seen.type] += seen.bytes
        self.responses += 1
        self.nacks += bool(seen.error)
        self.last_at = max(self.last_at, seen.acked)
        if proxy in self.audience and seen.type in self.need and not seen.error:
            got = self.got.setdefault(proxy, set())
            got.add(seen.type)
            if len(got) == len(self.need) and proxy not in self.complete:
                self.complete[proxy] = seen.acked

    def stream(self, proxy: int, event: StreamEvent, at: float) -> None:
        """Account one stream event of `proxy`."""
        if at >= self.since and proxy not in self.exclude:
            self.streams[event.kind if event.kind != "error" else f"error:{event.detail}"] += 1
            if event.kind == "open":
                self.opened.add(proxy)

    @property
    def done(self) -> bool:
        """Every proxy of the audience has ACKed every needed type (nothing needed: true)."""
        return not self.need or len(self.complete) >= len(self.audience)

    @property
    def done_at(self) -> float | None:
        """When the last of the audience completed (None while not done)."""
        return max(self.complete.values(), default=self.since) if self.done else None

    def latencies(self) -> list[float]:
        """Per audience proxy, seconds from `since` to its completing ACK (inf: never)."""
        return sorted(self.complete.get(p, math.inf) - self.since for p in self.audience)


class Ledger:
    """Parses the workers' lines and feeds the active trackers."""

    def __init__(self) -> None:
        self.trackers: list[Tracker] = []
        self.last_response_at = 0.0
        self.responses = 0
        self.done: dict[int, float] = {}  # worker command seq -> when carried out (latest)
        self.flaps: list[tuple[int, float]] = []
        self.flapped = asyncio.Event()  # set when a flap ends

    def track(
        self,
        *,
        audience: Iterable[int],
        need: Iterable[str],
        exclude: Iterable[int] = (),
        since: float | None = None,
    ) -> Tracker:
        """Start tracking from now (or `since`)."""
        tracker = Tracker(
            since=now() if since is None else since,
            audience=frozenset(audience),
            need=frozenset(need),
            exclude=frozenset(exclude),
        )
        self.trackers.append(tracker)
        return tracker

    def forget(self, tracker: Tracker) -> None:
        """Stop feeding a tracker."""
        with contextlib.suppress(ValueError):
            self.trackers.remove(tracker)

    def feed(self, line: str) -> None:
        """One line from a worker."""
        words = line.split()
        if not words:
            return
        if words[0] == "R" and len(words) == 9:
            proxy, seen = parse_response(words)
            self.responses += 1
            self.last_response_at = max(self.last_response_at, seen.received)
            for tracker in self.trackers:
                tracker.add(proxy, seen)
        elif words[0] == "S" and len(words) == 5:
            proxy, event, at = parse_stream(words)
            for tracker in self.trackers:
                tracker.stream(proxy, event, at)
        elif words[0] == "D" and len(words) == 3:
            self.done[int(words[1])] = float(words[2])
        elif words[0] == "F" and len(words) == 3:
            self.flaps.append((int(words[1]), float(words[2])))
            self.flapped.set()


# ----------------------------------------------------------------------------------- processes


@dataclass
class ControlPlane:
    """The `lightmesh controlplane` process (restartable with the same arguments)."""

    argv: list[str]
    log: Path
    debug_port: int
    popen: subprocess.Popen[bytes] | None = None
    starts: int = 0
    peak_rss_mb: float = 0.0  # highest VmHWM over every process started

    def start(self) -> None:
        """Spawn it; its output is appended to `log`."""
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with self.log.open("ab") as out:
            self.popen = subprocess.Popen(
                self.argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
            )
        self.starts += 1

    @property
    def pids(self) -> list[int]:
        """The process and its children."""
        return process_tree(self.popen.pid) if self.popen is not None else []

    def cpu(self) -> float:
        """CPU seconds of the current process (0 when none)."""
        return cpu_seconds(self.pids)

    def rss(self) -> float:
        """Current RSS, MiB."""
        return rss_mb(self.pids)

    def hwm(self) -> float:
        """Peak RSS of the current process (VmHWM), MiB; also folded into `peak_rss_mb`."""
        peak = 0.0
        for pid in self.pids:
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        peak += int(line.split()[1]) / 1024
        self.peak_rss_mb = max(self.peak_rss_mb, peak)
        return peak

    def alive(self) -> bool:
        """Whether the process runs."""
        return self.popen is not None and self.popen.poll() is None

    def tail(self, lines: int = 15) -> str:
        """The end of its log."""
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, *, timeout: float = 10.0) -> str:
        """SIGTERM, then SIGKILL after `timeout`; how it ended ("term", "kill" or "gone")."""
        if self.popen is None or self.popen.poll() is not None:
            return "gone"
        self.hwm()
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout)
            return "term"
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(timeout)
            return "kill"


class Simulator:
    """The worker processes, each owning a share of the proxies."""

    def __init__(self, ledger: Ledger, work: Path) -> None:
        self._ledger = ledger
        self._work = work
        self._procs: list[asyncio.subprocess.Process] = []
        self._owner: dict[int, int] = {}
        self._readers: list[asyncio.Task[None]] = []
        self._seq: list[int] = []
        self.ready: list[int] = []

    async def start(
        self,
        specs: dict[int, NodeSpec],
        *,
        workers: int,
        target: str,
        ca: Path,
        client: str = "grpcio",
    ) -> None:
        """Spawn `workers` processes for these proxies (round-robin) and wait until ready."""
        shares: list[dict[int, NodeSpec]] = [{} for _ in range(workers)]
        for position, index in enumerate(sorted(specs)):
            shares[position % workers][index] = specs[index]
            self._owner[index] = position % workers
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "GRPC_ENABLE_FORK_SUPPORT": "false"}
        for number, share in enumerate(shares):
            spec_file = self._work / f"sim-{number}.json"
            spec_file.write_text(
                json.dumps(
                    {
                        "target": target,
                        "ca": str(ca),
                        "client": client,
                        "proxies": {str(i): spec_to_json(s) for i, s in share.items()},
                    }
                )
            )
            with (self._work / f"sim-{number}.log").open("ab") as err:
                proc = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "bench.cp_sim", str(spec_file),
                    stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                    stderr=err, env=env, limit=1 << 20,
                )  # fmt: skip
            self._procs.append(proc)
            self._seq.append(0)
            ready: asyncio.Future[int] = asyncio.get_running_loop().create_future()
            self._readers.append(asyncio.create_task(self._read(proc, ready)))
            self.ready.append(await asyncio.wait_for(ready, timeout=60))

    async def _read(self, proc: asyncio.subprocess.Process, ready: asyncio.Future[int]) -> None:
        assert proc.stdout is not None  # noqa: S101 - created with a pipe
        while line := await proc.stdout.readline():
            text = line.decode()
            if text.startswith("ready ") and not ready.done():
                ready.set_result(int(text.split()[1]))
                continue
            self._ledger.feed(text)
        if not ready.done():
            ready.set_exception(RuntimeError("simulator worker exited before it was ready"))

    @property
    def pids(self) -> list[int]:
        """Every worker process."""
        return [p.pid for p in self._procs]

    def cpu(self) -> float:
        """CPU seconds of all workers."""
        return cpu_seconds(self.pids)

    def rss(self) -> float:
        """RSS of all workers, MiB."""
        return rss_mb(self.pids)

    async def _send(self, worker: int, line: str) -> int:
        proc = self._procs[worker]
        assert proc.stdin is not None  # noqa: S101 - created with a pipe
        if proc.returncode is not None:
            raise RuntimeError(f"simulator worker {worker} exited ({proc.returncode})")
        proc.stdin.write((line + "\n").encode())
        await proc.stdin.drain()
        self._seq[worker] += 1
        return self._seq[worker]

    async def command(self, verb: str, indices: Iterable[int] | None = None) -> None:
        """`start`/`stop` these proxies (None: all), each worker at once."""
        if indices is None:
            await asyncio.gather(*(self._send(w, f"{verb} all") for w in range(len(self._procs))))
            return
        by_worker: dict[int, list[int]] = {}
        for index in indices:
            by_worker.setdefault(self._owner[index], []).append(index)
        await asyncio.gather(
            *(self._send(w, f"{verb} {' '.join(map(str, ix))}") for w, ix in by_worker.items())
        )

    async def flap(self, index: int, period: float, seconds: float) -> int:
        """Flap one proxy's stream in its worker; the toggles done (waits until it ended)."""
        self._ledger.flapped.clear()
        await self._send(self._owner[index], f"flap {index} {period} {seconds}")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ledger.flapped.wait(), timeout=seconds + 60)
        return self._ledger.flaps[-1][0] if self._ledger.flapped.is_set() else 0

    async def close(self) -> None:
        """Ask every worker to quit; kill the ones that do not."""
        for worker in range(len(self._procs)):
            with contextlib.suppress(Exception):
                await self._send(worker, "quit")
        for proc in self._procs:
            try:
                await asyncio.wait_for(proc.wait(), timeout=15)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        for reader in self._readers:
            reader.cancel()


# ---------------------------------------------------------------------------- watching the CP


@dataclass
class Probe:
    """GET /healthz every PROBE_INTERVAL, one at a time: (started, ended, answered 200)."""

    url: str
    results: list[tuple[float, float, bool]] = field(default_factory=list)
    pending_since: float | None = None  # the probe in flight

    async def run(self, session: aiohttp.ClientSession) -> None:
        """Probe until cancelled."""
        while True:
            started = self.pending_since = now()
            try:
                async with session.get(
                    self.url, timeout=aiohttp.ClientTimeout(total=PROBE_TIMEOUT)
                ) as response:
                    await response.read()
                    ok = response.status == 200
            except (aiohttp.ClientError, TimeoutError, OSError):
                ok = False
            self.pending_since = None
            self.results.append((started, now(), ok))
            await asyncio.sleep(max(0.0, started + PROBE_INTERVAL - now()))

    def window(self, start: float, end: float) -> dict[str, float | int | None]:
        """Over the probes that overlapped [start, end]: how many, how many failed, the longest
        answer (a probe still waiting at `end` counts with its wait so far)."""
        overlapping = [r for r in self.results if r[0] <= end and r[1] >= start]
        answered = [stop - began for began, stop, ok in overlapping if ok]
        waiting = 0
        if self.pending_since is not None and self.pending_since <= end:
            answered.append(min(end, now()) - self.pending_since)
            waiting = 1
        return {
            "probes": len(overlapping) + waiting,
            "failed": sum(1 for *_, ok in overlapping if not ok),
            "max_s": round(max(answered), 3) if answered else None,
        }

    def prompt_after(self, moment: float, *, within: float = 1.0) -> bool:
        """Whether a probe started after `moment` was answered within `within` seconds."""
        return any(
            began >= moment and ok and stop - began < within
            for began, stop, ok in reversed(self.results[-8:])
        )


@dataclass
class Sampler:
    """CPU seconds and RSS of the control plane every SAMPLE_INTERVAL (cpu carried across
    restarts, so it only grows)."""

    cp: ControlPlane
    samples: list[tuple[float, float, float]] = field(default_factory=list)  # (t, cpu, rss)
    _offset: float = 0.0  # CPU seconds of the control-plane processes that ended
    _last_pid: int = 0
    _last_cpu: float = 0.0

    def sample(self) -> tuple[float, float, float]:
        """Take one sample now."""
        pid = self.cp.popen.pid if self.cp.popen is not None else 0
        if pid != self._last_pid:
            self._offset += self._last_cpu
            self._last_pid, self._last_cpu = pid, 0.0
        cpu = self.cp.cpu() if self.cp.alive() else self._last_cpu
        self._last_cpu = max(self._last_cpu, cpu)
        item = (now(), self._offset + self._last_cpu, self.cp.rss() if self.cp.alive() else 0.0)
        self.samples.append(item)
        return item

    async def run(self) -> None:
        """Sample until cancelled."""
        while True:
            self.sample()
            self.cp.hwm()
            await asyncio.sleep(SAMPLE_INTERVAL)

    @property
    def ended_cpu(self) -> float:
        """CPU seconds of the control-plane processes before the current one."""
        return self._offset

    def cpu_at(self, moment: float) -> float:
        """Cumulative CPU seconds at `moment` (interpolated between samples)."""
        if not self.samples:
            return 0.0
        index = bisect.bisect_left(self.samples, (moment,))
        if index == 0:
            return self.samples[0][1]
        if index == len(self.samples):
            return self.samples[-1][1]
        (t0, c0, _), (t1, c1, _) = self.samples[index - 1], self.samples[index]
        return c0 if t1 == t0 else c0 + (c1 - c0) * (moment - t0) / (t1 - t0)

    def rate(self, start: float, end: float) -> float:
        """Cores the control plane used on average over [start, end]."""
        return (self.cpu_at(end) - self.cpu_at(start)) / max(end - start, 1e-6)

    def rss_between(self, start: float, end: float) -> list[float]:
        """RSS samples (MiB) taken within [start, end]."""
        return [rss for t, _, rss in self.samples if start <= t <= end and rss]


def machine_busy() -> float:
    """Non-idle CPU seconds of the whole machine since boot (all cores, from /proc/stat)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:9]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields)
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS


async def connected_proxies(session: aiohttp.ClientSession, debug_port: int) -> int | None:
    """`lightmesh_controlplane_connected_proxies` from /metrics (None if unanswered)."""
    try:
        async with session.get(
            f"http://127.0.0.1:{debug_port}/metrics", timeout=aiohttp.ClientTimeout(total=30)
        ) as response:
            text = await response.text()
    except (aiohttp.ClientError, TimeoutError, OSError):
        return None
    for line in text.splitlines():
        if line.startswith("lightmesh_controlplane_connected_proxies "):
            return int(float(line.split()[1]))
    return None


async def wait_healthy(
    session: aiohttp.ClientSession, port: int, *, limit: float, cp: ControlPlane
) -> float:
    """Wait until /healthz answers 200; seconds waited (raises after `limit` s or on exit)."""
    began = now()
    while now() - began < limit:
        if not cp.alive():
            raise RuntimeError(f"control plane exited:\n{cp.tail()}")
        with contextlib.suppress(aiohttp.ClientError, TimeoutError, OSError):
            async with session.get(
                f"http://127.0.0.1:{port}/healthz", timeout=aiohttp.ClientTimeout(total=2)
            ) as response:
                if response.status == 200:
                    return now() - began
        await asyncio.sleep(0.1)
    raise RuntimeError(f"control plane /healthz not answering after {limit:.0f} s")


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile of sorted `values` (inf entries count as never)."""
    if not values:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(values)))
    return values[rank - 1]
