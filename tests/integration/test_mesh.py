"""The mesh end to end: real control plane, sidecars and apps as processes, real HTTP on loopback."""

import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from lightmeshctl.demo.mesh import LocalMesh, http_get, wait_for
from lightmeshctl.demo.runner import ALL_TO_V2, VS_FILE, start_shop

pytestmark = pytest.mark.integration

LONG_REGEX_VS = """\
apiVersion: lightmesh.io/v1alpha1
kind: VirtualService
metadata: {name: catalog, namespace: default}
spec:
  hosts: [catalog]
  http:
    - name: items
      match:
        - uri: {regex: '/items/[0-9]+/(reviews|ratings|details)/[a-z]+'}
      route:
        - destination: {host: catalog, subset: v2}
    - name: rest
      route:
        - destination: {host: catalog, subset: v1}
"""


def catalog_version(mesh: LocalMesh, path: str = "/") -> str:
    reply = http_get(f"{mesh.workloads['frontend'].inbound}{path}")
    assert reply.status == 200, reply.body
    return str(reply.json()["upstream"]["version"])


def write(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def lightmesh(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lightmeshctl.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_demo_check_passes() -> None:
    result = lightmesh("demo", "--check")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[-1].startswith("demo check passed: 8 checks")


def test_requests_cross_two_sidecars_and_are_counted(mesh: LocalMesh) -> None:
    start_shop(mesh)
    reply = http_get(f"{mesh.workloads['frontend'].inbound}/items?id=1")
    body = reply.json()
    assert body["workload"] == "frontend" and body["path"] == "/items?id=1"
    assert body["upstream"]["service"] == "catalog" and body["upstream"]["path"] == "/items?id=1"
    assert body["upstream"]["upstream"]["workload"] == "customer"
    outbound = samples(f"{mesh.workloads['frontend'].admin}/metrics", "lightmesh_requests_total")
    assert any(
        labels["reporter"] == "source"
        and labels["source_workload"] == "frontend"
        and labels["destination_service"] == "catalog.default.svc.cluster.local"
        and labels["destination_subset"] in ("v1", "v2")
        and labels["response_code"] == "200"
        and value >= 1
        for labels, value in outbound
    ), outbound
    inbound = samples(f"{mesh.workloads['customer'].admin}/metrics", "lightmesh_requests_total")
    assert any(
        labels["reporter"] == "destination"
        and labels["destination_service"] == "customer.default.svc.cluster.local"
        for labels, _ in inbound
    ), inbound


def samples(url: str, name: str) -> list[tuple[dict[str, str], float]]:
    text = http_get(url).body.decode()
    return [
        (sample.labels, sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    ]


def test_sidecar_is_ready_only_after_its_first_config(mesh: LocalMesh) -> None:
    workload = mesh.start_workload("customer", service="customer")
    reply = wait_for(
        lambda: _reachable(f"{workload.admin}/ready"), timeout=20, what="sidecar admin server"
    )
    assert reply.status == 503
    assert b"waiting for first config" in reply.body
    mesh.start_control_plane()
    wait_for(workload.ready, timeout=20, what="sidecar ready")


def _reachable(url: str) -> object:
    try:
        return http_get(url, timeout=1)
    except OSError:
        return None


def test_config_the_sidecar_cannot_apply_is_nacked_and_old_config_serves(mesh: LocalMesh) -> None:
    mesh.start_control_plane()
    frontend = mesh.start_workload(
        "frontend", service="frontend", call="catalog", sidecar_args=("--max-regex-length", "16")
    )
    mesh.start_workload("catalog-v1", service="catalog", version="v1", call="customer")
    mesh.start_workload("catalog-v2", service="catalog", version="v2", call="customer")
    mesh.start_workload("customer", service="customer")
    mesh.wait_ready()
    wait_for(
        lambda: http_get(f"{frontend.inbound}/").status == 200, timeout=10, what="shop answering"
    )

    write(mesh.config_dir / VS_FILE, LONG_REGEX_VS)

    def frontend_nacked() -> dict[str, object] | None:
        for proxy in mesh.proxies():
            if proxy["workload"] == "frontend" and proxy["types"]["ROUTES"]["state"] == "NACKED":
                return proxy["types"]["ROUTES"]  # type: ignore[no-any-return]
        return None

    routes = wait_for(frontend_nacked, timeout=10, what="frontend to NACK its routes")
    assert "over this sidecar's limit of 16 (--max-regex-length)" in str(routes["nack"])

    status = lightmesh("proxy-status", "--control-plane", mesh.debug_url)
    assert status.returncode == 0, status.stderr
    row = next(line for line in status.stdout.splitlines() if line.startswith("frontend-"))
    assert "NACKED" in row
    assert "limit of 16" in status.stdout.split("Rejected config:")[1]
    others = [line for line in status.stdout.splitlines() if line.startswith("catalog-v1-")]
    assert "NACKED" not in others[0]  # sidecars with the default limit applied the same config

    dump = http_get(f"{frontend.admin}/config_dump").json()
    assert "limit of 16" in dump["versions"]["ROUTES"]["last_nack"]["error"]
    assert dump["versions"]["ROUTES"]["version"] == routes["acked"]

    assert mesh.control_plane is not None
    assert wait_for(
        lambda: '"event": "nack"' in mesh.control_plane.log.read_text(),  # type: ignore[union-attr]
        timeout=5,
        what="the NACK in the control plane log",
    )
    # The old routes (80/20 split, no regex route) keep serving.
    versions = Counter(catalog_version(mesh, "/items/1/reviews/all") for _ in range(20))
    assert versions["v1"] >= 12, versions


class Traffic:
    """Sequential GETs to a URL from a background thread (bounded in count and time), counting
    every request that did not answer 200. A context manager: stops and joins on exit."""

    def __init__(self, url: str, *, seconds: float = 90, limit: int = 20_000, pause: float = 0):
        self.url = url
        self.failures: list[str] = []
        self.sent = 0
        self._deadline = time.monotonic() + seconds
        self._limit = limit
        self._pause = pause
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "Traffic":
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while (
            not self._stop.is_set()
            and time.monotonic() < self._deadline
            and self.sent < self._limit
        ):
            try:
                reply = http_get(self.url, timeout=5)
                self.sent += 1
                if reply.status != 200:
                    self.failures.append(f"{reply.status} {reply.body[:200]!r}")
            except OSError as error:
                self.failures.append(repr(error))
            if self._pause:
                self._stop.wait(self._pause)

    def wait_for_more(self, count: int, *, what: str) -> None:
        """Block until `count` more requests were sent."""
        before = self.sent
        wait_for(lambda: self.sent >= before + count, timeout=20, what=what)


def test_control_plane_restart_fails_no_request_and_sidecars_catch_up(mesh: LocalMesh) -> None:
    start_shop(mesh)
    with Traffic(f"{mesh.workloads['frontend'].inbound}/", pause=0.005) as traffic:
        traffic.wait_for_more(20, what="traffic to flow")
        assert mesh.control_plane is not None
        # Killed at once: every registration a sidecar was served under is on disk already, so the
        # first sidecar back is not told a service is gone.
        mesh.control_plane.stop(kill=True)
        traffic.wait_for_more(50, what="traffic without a control plane")
        write(mesh.config_dir / VS_FILE, ALL_TO_V2)  # changed while the control plane is away
        mesh.start_control_plane()
        wait_for(
            lambda: all(
                http_get(f"{mesh.workloads['frontend'].inbound}/").json()["upstream"]["version"]
                == "v2"
                for _ in range(5)
            ),
            timeout=30,
            what="the change made during the outage to arrive",
        )
        traffic.wait_for_more(20, what="traffic after the restart")
    assert traffic.failures == []
    sidecar_log = mesh.workloads["frontend"].sidecar.log.read_text()  # type: ignore[union-attr]
    assert '"event": "reconnect_wait"' in sidecar_log
    # Sidecars announced the versions they held: unchanged clusters were not sent again.
    metrics = http_get(f"{mesh.debug_url}/metrics").body.decode()
    assert 'lightmesh_controlplane_pushes_total{type="ROUTES"}' in metrics
    assert 'lightmesh_controlplane_pushes_total{type="CLUSTERS"}' not in metrics


def test_config_changes_under_load_fail_no_request(mesh: LocalMesh) -> None:
    """Routes and clusters are swapped repeatedly while requests flow; none may fail."""
    start_shop(mesh)
    vs_path = mesh.config_dir / VS_FILE
    dr_path = mesh.config_dir / "catalog-destinationrule.yaml"
    split, rule = vs_path.read_text(), dr_path.read_text()
    with Traffic(f"{mesh.workloads['frontend'].inbound}/", seconds=60) as traffic:
        for round_ in range(8):
            # Alternate the routes and the load-balancing policy (new routes, new clusters).
            write(vs_path, ALL_TO_V2 if round_ % 2 == 0 else split)
            policy = "RANDOM" if round_ % 2 == 0 else "ROUND_ROBIN"
            write(dr_path, rule.replace("simple: ROUND_ROBIN", f"simple: {policy}"))
            # all-to-v2 rounds: every request on v2; split rounds: v1 is back.
            check = all if round_ % 2 == 0 else any
            expected = "v2" if round_ % 2 == 0 else "v1"
            wait_for(
                lambda check=check, expected=expected: check(
                    catalog_version(mesh) == expected for _ in range(10)
                ),
                timeout=10,
                what=f"round {round_} applied",
            )
            traffic.wait_for_more(20, what="traffic")
    assert traffic.failures == []
    assert traffic.sent >= 160
