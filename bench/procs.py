"""Processes under test: start them pinned to a core, wait for their port, read CPU and RSS from /proc.

A `Service` is one process tree (nginx's master and worker, haproxy, one sidecar). CPU time is
utime + stime of every process in the tree (for a process, /proc/PID/stat already sums its
threads); RSS is the sum of VmRSS over the tree.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
TOOLS_BIN = Path(os.environ.get("LIGHTMESH_BIN", Path.home() / ".cache" / "lightmesh" / "bin"))


class BenchError(RuntimeError):
    """Something the benchmark needs is missing or did not start; the message says what."""


def find_tool(name: str) -> str:
    """The path of `name` (PATH, then ~/.cache/lightmesh/bin, /usr/sbin) or a BenchError."""
    for candidate in (
        shutil.which(name),
        str(TOOLS_BIN / name),
        f"/usr/sbin/{name}",
    ):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise BenchError(f"{name} not found: run scripts/install-bench-tools.sh")


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        tree.setdefault(ppid, []).append(int(entry))
    return tree


def process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants."""
    tree = _children()
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(tree.get(current, []))
    return found


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of these processes (all their threads), in seconds."""
    ticks = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return ticks / CLOCK_TICKS


def rss_mb(pids: list[int]) -> float:
    """Sum of VmRSS of these processes, in MiB."""
    total_kb = 0
    for pid in pids:
        try:
            lines = Path(f"/proc/{pid}/status").read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            if line.startswith("VmRSS:"):
                total_kb += int(line.split()[1])
                break
    return total_kb / 1024


def core_times(core: int) -> dict[str, float]:
    """Seconds core `core` spent per state since boot (from /proc/stat)."""
    names = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith(f"cpu{core} "):
            values = [int(v) / CLOCK_TICKS for v in line.split()[1 : 1 + len(names)]]
            return dict(zip(names, values, strict=True))
    raise BenchError(f"no cpu{core} in /proc/stat")


def wait_port(port: int, *, timeout: float, what: str, process: subprocess.Popen[bytes]) -> None:
    """Wait until 127.0.0.1:`port` accepts connections; fail early if `process` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise BenchError(f"{what} exited with {process.returncode} before listening")
        with socket.socket() as sock:
            sock.settimeout(0.2)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.02)
    raise BenchError(f"{what} not listening on {port} after {timeout:.0f}s")


@dataclass
class Service:
    """A process tree started by the benchmark, pinned to one CPU core."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pids(self) -> list[int]:
        """The main process and its descendants (nginx's worker is a child of its master)."""
        return process_tree(self.popen.pid)

    def cpu(self) -> float:
        """CPU seconds used so far by the whole tree."""
        return cpu_seconds(self.pids)

    def rss(self) -> float:
        """Current RSS of the whole tree, MiB."""
        return rss_mb(self.pids)

    def check(self) -> None:
        """Raise if the process died."""
        if self.popen.poll() is not None:
            tail = self.log.read_text(errors="replace").splitlines()[-10:]
            raise BenchError(f"{self.name} exited ({self.popen.returncode}): " + " | ".join(tail))

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after `timeout`."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout)


def start_pinned(name: str, argv: list[str], *, core: int, log_dir: Path) -> Service:
    """Start `argv` under `taskset -c core`, output to log_dir/name.log."""
    taskset = find_tool("taskset")
    log = log_dir / f"{name}.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with log.open("ab") as out:
        popen = subprocess.Popen(
            [taskset, "-c", str(core), *argv],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
        )
    return Service(name, popen, log)
