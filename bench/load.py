"""Load generators, pinned to their own core: wrk (closed loop, saturation) and fortio (constant rate).

- `saturate`: `wrk -t1 -cN -dS` keeps N connections busy back to back; requests/s is what the
  system under test sustains. A Lua `done()` hook prints wrk's summary as one JSON line.
- `constant_rate`: `fortio load -qps R -c C -uniform` sends R requests/s spread evenly over C
  keep-alive connections and records every request's latency in a histogram with 1 µs
  resolution in its lowest buckets (10 µs steps from 100 to 200 µs, 50 µs steps up to 1 ms);
  fortio interpolates percentiles inside a bucket. It times each request from when it is sent,
  so a stall that delays later sends is not charged to them (no coordinated-omission correction);
  at 1000 req/s against sub-millisecond latencies that matters only for stalls.

Both run for a bounded time and are killed if they overrun it by more than `GRACE` seconds. While
they run, `sample()` is called every `SAMPLE_INTERVAL` seconds (the benchmark reads RSS there).
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench.procs import BenchError, find_tool

GRACE = 15.0
SAMPLE_INTERVAL = 0.2
WRK_MARK = "WRK_JSON "
WRK_SCRIPT = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '%s{"requests": %d, "duration_us": %d, "bytes": %d, '
    .. '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, '
    .. '"latency_us": {"p50": %d, "p90": %d, "p99": %d, "max": %d}}\\n',
    "MARK", summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
"""


@dataclass(frozen=True)
class SaturationRun:
    """One wrk run."""

    requests: int
    seconds: float
    errors: int
    latency_ms: dict[str, float]

    @property
    def rps(self) -> float:
        """Requests per second sustained."""
        return self.requests / self.seconds if self.seconds else 0.0


@dataclass(frozen=True)
class RateRun:
    """One fortio run at a constant rate."""

    requests: int
    seconds: float
    errors: int
    latency_ms: dict[str, float] = field(default_factory=dict)

    @property
    def qps(self) -> float:
        """Requests per second actually sent."""
        return self.requests / self.seconds if self.seconds else 0.0


def _run_bounded(
    argv: list[str], *, seconds: float, sample: Callable[[], None], what: str
) -> tuple[str, str]:
    popen = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True
    )
    deadline = time.monotonic() + seconds + GRACE
    while popen.poll() is None and time.monotonic() < deadline:
        sample()
        time.sleep(SAMPLE_INTERVAL)
    if popen.poll() is None:
        popen.kill()
        popen.communicate(timeout=5)
        raise BenchError(f"{what} overran {seconds + GRACE:.0f}s and was killed")
    out, err = popen.communicate(timeout=5)
    if popen.returncode != 0:
        raise BenchError(f"{what} exited {popen.returncode}: {err.strip()[-500:]}")
    return out, err


def saturate(
    url: str,
    *,
    host: str,
    connections: int,
    seconds: float,
    core: int,
    work: Path,
    sample: Callable[[], None] = lambda: None,
) -> SaturationRun:
    """Closed-loop load with wrk: as many requests as `connections` connections can push."""
    script = work / "wrk-report.lua"
    if not script.exists():
        script.write_text(WRK_SCRIPT.replace("MARK", WRK_MARK))
    argv = [
        find_tool("taskset"), "-c", str(core), find_tool("wrk"),
        "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout", "2s",
        "-H", f"Host: {host}", "-s", str(script), url,
    ]  # fmt: skip
    out, _ = _run_bounded(argv, seconds=seconds, sample=sample, what="wrk")
    for line in out.splitlines():
        if line.startswith(WRK_MARK):
            data = json.loads(line[len(WRK_MARK) :])
            break
    else:
        raise BenchError(f"wrk printed no summary: {out[-500:]}")
    errors = sum(data["errors"].values())
    latency = {k: v / 1000 for k, v in data["latency_us"].items()}
    return SaturationRun(data["requests"], data["duration_us"] / 1e6, errors, latency)


def constant_rate(
    url: str,
    *,
    host: str,
    qps: float,
    connections: int,
    seconds: float,
    core: int,
    work: Path,
    sample: Callable[[], None] = lambda: None,
) -> RateRun:
    """Open-loop load with fortio at `qps` requests/s; latency percentiles in ms."""
    report = work / "fortio.json"
    report.unlink(missing_ok=True)
    argv = [
        find_tool("taskset"), "-c", str(core), find_tool("fortio"), "load",
        "-qps", str(qps), "-c", str(connections), "-t", f"{seconds:g}s", "-uniform",
        "-r", "0.000001", "-p", "50,90,99,99.9", "-H", f"Host: {host}",
        "-loglevel", "Error", "-json", str(report), url,
    ]  # fmt: skip
    _run_bounded(argv, seconds=seconds, sample=sample, what="fortio")
    data = json.loads(report.read_text())
    histogram = data["DurationHistogram"]
    latency = {
        f"p{p['Percentile']:g}": p["Value"] * 1000 for p in histogram.get("Percentiles") or []
    }
    latency["max"] = histogram["Max"] * 1000
    codes = data.get("RetCodes") or {}
    ok = int(codes.get("200", 0))
    return RateRun(
        requests=int(histogram["Count"]),
        seconds=data["ActualDuration"] / 1e9,
        errors=int(histogram["Count"]) - ok,
        latency_ms=latency,
    )
