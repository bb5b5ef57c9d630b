"""`python -m bench controlplane` end to end at a tiny scale, so the harness cannot rot.

Real control plane, real simulator workers, file source; no timing is asserted, only that every
scenario settled with every proxy ACKed and that every figure was produced and rendered.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SCENARIO_FIGURES = {
    "cold_herd": ("seconds", "bytes_total", "cp_cpu_s", "sim_cpu_s", "healthz", "first_sync_s"),
    "vs_change": ("latency_s", "bytes_total", "bytes_per_proxy", "cp_cpu_s", "proxies_reached"),
    "endpoint_add": ("latency_s", "bytes_total", "bytes_per_audience_proxy", "cp_cpu_s"),
    "endpoint_remove": ("latency_s", "bytes_total", "bytes_per_audience_proxy", "cp_cpu_s"),
    "churn": ("toggles", "cp_cpu_s_during", "cp_cores_during", "bytes_total", "settled_after_s"),
    "restart_herd": ("seconds_from_start", "seconds_from_stop", "bytes_total", "reconnected"),
}


@pytest.mark.timeout(300)
def test_the_harness_measures_every_scenario_at_a_tiny_scale(tmp_path: Path) -> None:
    figures, doc = tmp_path / "controlplane.json", tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\nkept text\n")
    result = subprocess.run(
        [sys.executable, "-m", "bench", "controlplane", "--run", "files:5x5", "--reps", "2",
         "--churn-seconds", "1", "--cap", "60", "--label", "test",
         "--json", str(figures), "--markdown", str(doc)],
        cwd=REPO, capture_output=True, text=True, timeout=280, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    (run,) = json.loads(figures.read_text())["runs"]
    assert (run["source"], run["proxies"], run["services"], run["label"]) == ("files", 5, 5, "test")
    assert "skipped" not in run and "ramp" not in run["scenarios"]
    for scenario, keys in SCENARIO_FIGURES.items():
        measured = run["scenarios"][scenario]
        assert measured["settled"], (scenario, measured)
        for key in keys:
            assert measured[key] is not None, (scenario, key)
    scenarios = run["scenarios"]
    assert scenarios["cold_herd"]["proxies_synced"] == 5
    assert scenarios["cold_herd"]["bytes_total"] > 0
    assert scenarios["vs_change"]["acked"] == scenarios["vs_change"]["audience"] == 5
    assert scenarios["vs_change"]["repetitions"] == 2
    assert scenarios["vs_change"]["bytes_by_type"].get("ROUTES", 0) > 0
    # One service per namespace: the changed service's namespace holds one proxy.
    for name in ("endpoint_add", "endpoint_remove"):
        assert scenarios[name]["acked"] == scenarios[name]["audience"] == 1
        assert scenarios[name]["bytes_by_type"].get("ENDPOINTS", 0) > 0
    assert scenarios["churn"]["toggles"] >= 2 and scenarios["churn"]["toggles"] % 2 == 0
    assert scenarios["restart_herd"]["reconnected"] == 5
    assert scenarios["restart_herd"]["cp_stopped_by"] == "term"
    assert run["cp_rss_peak_mb"] > 0 and run["steady"]["rss_mb"] > 0
    assert run["steady"]["connected"] == 5
    assert run["sim"]["cpu_s"] > 0 and run["cp_restarts"] == 1
    assert {t["name"] for t in run["targets"]} == {
        "VS change → all ACKed, p99",
        "cold herd fully synced",
        "CP memory (peak RSS)",
        "endpoint change bytes per affected proxy",
    }
    assert run["uptime_before"] and run["uptime_after"]

    text = doc.read_text()
    assert text.startswith("# Benchmarks\n\nkept text\n")
    assert "<!-- controlplane:start -->" in text and "<!-- controlplane:end -->" in text
    assert "| files | 5 x 5 |" in text and "### test" in text
    assert ": met]" in result.stdout or ": MISSED]" in result.stdout
