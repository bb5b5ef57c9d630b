"""Profile a running sidecar under saturation load with py-spy; report the top hot spots.

py-spy samples the process from outside (`record --format raw --function`, 250 Hz, with native
frames so time inside uvloop and httptools shows up under its C function), while wrk drives the
sidecar at saturation from the load core. Samples of a thread that waits (the event loop or a grpc
thread in epoll_wait and the like) are left out by `hot_spots` (with native frames py-spy keeps
them), so the shares are of the time the sidecar spent working. "self" counts
samples whose innermost frame is the function; "total" counts samples with the function anywhere
on the stack; "from" names the innermost lightmesh function above a hot spot.
"""

from __future__ import annotations

import collections
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.procs import BenchError, find_tool

RATE_HZ = 250
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")


def _py_spy() -> str:
    candidate = Path(sys.executable).with_name("py-spy")
    return str(candidate) if candidate.exists() else find_tool("py-spy")


def _short(frame: str) -> str:
    match = _FRAME.match(frame.strip())
    if not match:
        return frame.strip()
    path = match["file"]
    for marker in ("/site-packages/", "/lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    else:
        root = str(Path(__file__).resolve().parents[1]) + "/"
        path = path.removeprefix(root)
    return f"{match['func']} ({path})"


IDLE = frozenset(
    {
        "epoll_wait", "epoll_pwait", "epoll_pwait2", "poll", "ppoll", "select", "pselect",
        "__futex_abstimed_wait_common", "futex_wait", "pthread_cond_wait",
        "pthread_cond_timedwait", "sem_wait", "nanosleep", "clock_nanosleep",
    }
)  # fmt: skip
OWN_CODE = ("sidecar/", "lightmesh/")
OUTER = frozenset({"run_main", "_sidecar", "main", "<module>"})  # below the event loop
EVENT_LOOP = "(event loop)"


def _function(frame: str) -> str:
    return frame.split(" (", 1)[0]


def hot_spots(raw: str, *, top: int = 10) -> dict[str, Any]:
    """Parse py-spy's raw (collapsed) output into the top functions by self and by total.

    Stacks whose innermost frame waits (epoll_wait and friends, in the event loop or in
    grpc's threads) are idle and left out; shares are of the remaining, busy samples.
    """
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    callers: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    busy = idle = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_short(f) for f in stack.split(";") if f.strip()]
        frames = [f for f in frames if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        if _function(frames[-1]) in IDLE:
            idle += count
            continue
        busy += count
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
        mine = [f for f in frames[:-1] if f.split(" (", 1)[-1].startswith(OWN_CODE)]
        caller = _function(mine[-1]) if mine else "-"
        callers[frames[-1]][EVENT_LOOP if caller in OUTER else caller] += count

    def pct(samples: int) -> float:
        return round(100 * samples / busy, 1) if busy else 0.0

    by_self = [
        {
            "function": name,
            "self_pct": pct(samples),
            "total_pct": pct(inclusive[name]),
            "from": [
                {"caller": caller, "pct": pct(n)} for caller, n in callers[name].most_common(2)
            ],
        }
        for name, samples in own.most_common(top)
    ]
    ours = [
        (n, c)
        for n, c in inclusive.items()
        if n.split(" (", 1)[-1].startswith(OWN_CODE) and _function(n) not in OUTER
    ]
    ours.sort(key=lambda item: -item[1])
    by_total = [
        {"function": name, "self_pct": pct(own[name]), "total_pct": pct(samples)}
        for name, samples in ours
        # skip the frames every request passes through (the CLI, the serve loop's outer frames)
        if pct(samples) < 90
    ][:top]
    return {"busy_samples": busy, "idle_samples": idle, "by_self": by_self, "by_total": by_total}


def profile_sidecar(
    pid: int,
    *,
    seconds: float,
    load: Callable[[], object],
    core: int,
    work: Path,
) -> dict[str, Any]:
    """Sample `pid` for `seconds` while `load()` runs in a thread; return the hot spots."""
    output = work / "py-spy.txt"
    failure: list[BaseException] = []

    def drive() -> None:
        try:
            load()
        except BaseException as error:  # reported after py-spy finishes
            failure.append(error)

    thread = threading.Thread(target=drive, name="profile-load", daemon=True)
    thread.start()
    time.sleep(1.0)  # let the load ramp up first
    argv = [
        find_tool("taskset"), "-c", str(core), _py_spy(), "record",
        "--pid", str(pid), "--duration", str(round(seconds)), "--rate", str(RATE_HZ),
        "--format", "raw", "--function", "--native", "--output", str(output),
    ]  # fmt: skip
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=seconds + 30, check=False
        )
    except subprocess.TimeoutExpired as error:
        raise BenchError("py-spy did not finish") from error
    thread.join(timeout=seconds + 30)
    if done.returncode != 0 or not output.exists():
        raise BenchError(f"py-spy failed ({done.returncode}): {done.stderr.strip()[-400:]}")
    if failure:
        raise BenchError(f"load during profiling failed: {failure[0]}")
    return {
        "tool": f"py-spy record --rate {RATE_HZ} --native --function, wrk at saturation",
        "seconds": seconds,
        **hot_spots(output.read_text()),
    }
