"""Sidecar start → ready time, and its RSS once ready.

Starts a control plane with the demo resources, then starts a sidecar N times, measuring from
process spawn to the first 200 from its /ready (polled every 5 ms).

    python -m bench.startup [--runs 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from lightmeshctl.demo.mesh import LocalMesh, http_get

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "demo"


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> int:
    """Run the measurement and print one line per run plus a summary."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    times, rss = [], []
    with (
        tempfile.TemporaryDirectory() as tmp,
        LocalMesh(config_dir=EXAMPLES, work_dir=Path(tmp)) as mesh,
    ):
        mesh.start_control_plane()
        for run in range(args.runs):
            started = time.monotonic()
            workload = mesh.start_workload(f"w{run}", service="bench")
            deadline = started + 30
            while time.monotonic() < deadline:
                try:
                    if http_get(f"{workload.admin}/ready", timeout=1).status == 200:
                        break
                except OSError:
                    pass
                time.sleep(0.005)
            else:
                print(f"run {run}: not ready after 30 s", file=sys.stderr)
                return 1
            times.append(time.monotonic() - started)
            assert workload.sidecar is not None  # noqa: S101 - set by start_workload
            rss.append(_rss_mb(workload.sidecar.popen.pid))
            print(f"run {run}: ready after {times[-1] * 1000:.0f} ms, RSS {rss[-1]:.1f} MB")
            workload.sidecar.stop()
            if workload.app is not None:
                workload.app.stop()
    print(
        f"sidecar start→ready: median {statistics.median(times) * 1000:.0f} ms, "
        f"max {max(times) * 1000:.0f} ms over {len(times)} runs; idle RSS median "
        f"{statistics.median(rss):.1f} MB"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
