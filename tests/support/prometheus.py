"""A real Prometheus server (Debian package `prometheus`) for tests, and `promtool check metrics`.

Installed by scripts/install-prometheus.sh, which `make test` / `make integration` run when missing.
"""

import json
import shutil
import subprocess
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from lightmeshctl.demo.mesh import free_port, http_get, wait_for


def binary(name: str) -> str:
    """Path of `prometheus` or `promtool`; fails the test naming the install script if absent."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found: run scripts/install-prometheus.sh (make test does)")
    return path


def promtool_check_metrics(text: str) -> tuple[int, str]:
    """(exit code, output) of `promtool check metrics` over one exposition."""
    result = subprocess.run(
        [binary("promtool"), "check", "metrics"],
        input=text,
        capture_output=True,
        text=True,
        timeout=30,
    )
    return result.returncode, result.stdout + result.stderr


@dataclass
class Prometheus:
    """A running server and its HTTP API."""

    url: str
    popen: subprocess.Popen[bytes]
    log: Path

    def query(self, promql: str) -> list[dict[str, Any]]:
        """Instant query; the result vector (fails the test on an API error)."""
        reply = http_get(f"{self.url}/api/v1/query?{urllib.parse.urlencode({'query': promql})}")
        body = json.loads(reply.body)
        assert body.get("status") == "success", f"{promql}: {body}"
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def targets(self) -> list[dict[str, Any]]:
        """The active scrape targets and their health."""
        body = json.loads(http_get(f"{self.url}/api/v1/targets").body)
        targets: list[dict[str, Any]] = body["data"]["activeTargets"]
        return targets


def static_job(name: str, hosts: list[str], *, interval: str = "1s") -> dict[str, Any]:
    """A scrape job for fixed host:port targets (path /metrics)."""
    return {
        "job_name": name,
        "scrape_interval": interval,
        "scrape_timeout": interval,
        "static_configs": [{"targets": hosts}],
    }


@contextmanager
def prometheus(
    tmp: Path, jobs: list[dict[str, Any]], *, interval: str = "1s"
) -> Iterator[Prometheus]:
    """Prometheus running `jobs` (scrape_configs entries), data in `tmp`."""
    tmp.mkdir(parents=True, exist_ok=True)
    config = tmp / "prometheus.yml"
    # JSON is YAML: no YAML writer needed.
    config.write_text(
        json.dumps({"global": {"evaluation_interval": interval}, "scrape_configs": jobs})
    )
    port = free_port()
    log = tmp / "prometheus.log"
    with log.open("ab") as out:
        popen = subprocess.Popen(
            [
                binary("prometheus"),
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    server = Prometheus(url=f"http://127.0.0.1:{port}", popen=popen, log=log)
    try:
        wait_for(
            lambda: http_get(f"{server.url}/-/ready", timeout=1).status == 200,
            timeout=30,
            what=f"prometheus ready (log: {log})",
        )
        yield server
    finally:
        popen.terminate()
        try:
            popen.wait(10)
        except subprocess.TimeoutExpired:
            popen.kill()
            popen.wait()
