"""The dashboard in a real headless browser against the demo shop under traffic: every edge of
frontend → catalog v1/v2 → customer with a rate, an injected fault as errors on its edge, mTLS
under a STRICT namespace; and `lightmesh top` / `lightmesh tap` through their JSON output.

Screenshots are saved as artefacts (see tests/support/browser.py: $LIGHTMESH_ARTEFACTS or
pytest's temporary directory), named after the test.
"""

import contextlib
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lightmeshctl.demo.mesh import LocalMesh, http_get, wait_for
from lightmeshctl.demo.runner import start_shop
from tests.support.browser import artefacts_dir, chromium, edge_rows
from tests.support.prometheus import prometheus, static_job

pytestmark = pytest.mark.integration

# Sidecars report every half second, so a few seconds of traffic fill the graph.
REPORTING = ("--report-interval", "0.5")
MAX_REQUESTS = 4000  # per load thread: bounded whatever happens
SHOP_EDGES = (
    "default/frontend->default/catalog-v1",
    "default/frontend->default/catalog-v2",
    "default/catalog-v1->default/customer",
    "default/catalog-v2->default/customer",
)

# The demo's routes, with half of the requests of user jason (all sent to v2) aborted 503 by
# frontend's sidecar: the fault sits on frontend → catalog v2 alone.
JASON_FAULT = """\
apiVersion: lightmesh.io/v1alpha1
kind: VirtualService
metadata:
  name: catalog
spec:
  hosts: [catalog]
  http:
    - name: jason-tries-v2
      match:
        - headers:
            end-user: {exact: jason}
      route:
        - destination: {host: catalog, subset: v2}
      fault:
        abort:
          httpStatus: 503
          percentage: {value: 50}
    - name: canary
      route:
        - destination: {host: catalog, subset: v1}
          weight: 80
        - destination: {host: catalog, subset: v2}
          weight: 20
"""

# At most 2 requests in flight from each sidecar to customer (1 connection + 1 pending).
CUSTOMER_BREAKER = """\
apiVersion: lightmesh.io/v1alpha1
kind: DestinationRule
metadata:
  name: customer
  namespace: default
spec:
  host: customer
  trafficPolicy:
    connectionPool:
      tcp: {maxConnections: 1}
      http: {http1MaxPendingRequests: 1}
"""

STRICT = """\
apiVersion: lightmesh.io/v1alpha1
kind: PeerAuthentication
metadata:
  name: default
  namespace: default
spec:
  mtls:
    mode: STRICT
"""


class Load:
    """GETs one URL in a loop from a thread, until stopped or MAX_REQUESTS."""

    def __init__(self, url: str, headers: dict[str, str] | None = None) -> None:
        self.url = url
        self.headers = headers
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="load", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set() and self.sent < MAX_REQUESTS:
            # A refused request is part of what the page must show.
            with contextlib.suppress(OSError):
                http_get(self.url, headers=self.headers, timeout=5)
            self.sent += 1
            self._stop.wait(0.02)

    def __enter__(self) -> "Load":
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


@pytest.fixture
def artefacts(tmp_path: Path) -> Path:
    return artefacts_dir(tmp_path / "artefacts")


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    with chromium(tmp_path / "chromium-profile") as driver:
        yield driver


# Where each node is drawn: id -> its translate().
PLACES = """
return Object.fromEntries([...document.querySelectorAll('#graph [data-node]')]
  .map(n => [n.dataset.node, n.getAttribute('transform')]));
"""


def open_dashboard(driver: Any, mesh: LocalMesh) -> None:
    driver.get(f"{mesh.debug_url}/dashboard")
    wait_for(
        lambda: driver.execute_script("return document.body.dataset.loaded"),
        timeout=30,
        what="the dashboard's first graph",
    )


def rate(row: dict[str, Any]) -> float:
    return float(row["rps"])


def wait_for_rows(driver: Any, predicate: Any, what: str) -> dict[str, dict[str, Any]]:
    """The page's edge table once `predicate(rows)` holds (the page redraws every 2 s)."""
    return wait_for(  # type: ignore[no-any-return]
        lambda: (rows := edge_rows(driver)) and predicate(rows) and rows,
        timeout=60,
        interval=0.5,
        what=what,
    )


def wait_for_traffic(driver: Any, edges: tuple[str, ...], what: str) -> dict[str, dict[str, Any]]:
    """The page's edge table once every one of `edges` shows a non-zero rate."""
    return wait_for_rows(
        driver,
        lambda rows: all(e in rows and rate(rows[e]) > 0 for e in edges),
        f"{what} on the page",
    )


def test_the_page_shows_every_edge_of_the_shop_with_its_rate(
    mesh: LocalMesh, browser: Any, artefacts: Path
) -> None:
    start_shop(mesh, sidecar_args=REPORTING)
    with Load(f"{mesh.workloads['frontend'].inbound}/"):
        open_dashboard(browser, mesh)
        rows = wait_for_traffic(browser, SHOP_EDGES, "every shop edge with a non-zero rate")
        for edge in SHOP_EDGES:
            assert rows[edge]["errors"] == "0.0%", rows[edge]
            assert rows[edge]["health"] == "healthy"
        # The callers outside the mesh (this test) into frontend.
        assert rate(rows["unknown->default/frontend"]) > 0
        # The graph draws them too: a node per workload, an arrow per edge.
        drawn = browser.execute_script(
            "return [...document.querySelectorAll('#graph [data-edge]')].map(e => e.dataset.edge)"
        )
        assert set(SHOP_EDGES) <= set(drawn)
        nodes = browser.execute_script(
            "return [...document.querySelectorAll('#graph [data-node]')].map(n => n.dataset.node)"
        )
        assert {"default/frontend", "default/catalog-v1", "default/catalog-v2"} <= set(nodes)
        # The layout does not jump: after further redraws every node is where it was.
        places = browser.execute_script(PLACES)
        loaded = int(browser.execute_script("return document.body.dataset.loaded"))
        wait_for(
            lambda: (
                int(browser.execute_script("return document.body.dataset.loaded")) >= loaded + 2
            ),
            timeout=30,
            what="two more redraws",
        )
        assert browser.execute_script(PLACES) == places
        # A node's details: its proxy's config sync state.
        browser.find_element("css selector", '[data-node="default/catalog-v2"]').click()
        details = browser.find_element("id", "details").text
        assert "catalog-v2" in details and "SYNCED" in details
        browser.save_screenshot(str(artefacts / "dashboard-shop.png"))


def test_a_node_shows_the_problems_of_its_services_resources(
    mesh: LocalMesh, config_dir: Path, browser: Any
) -> None:
    """A broken edit of catalog's VirtualService is rejected (the last good one keeps serving)
    and named in the details of catalog's workloads."""
    start_shop(mesh, sidecar_args=REPORTING)
    with Load(f"{mesh.workloads['frontend'].inbound}/"):
        open_dashboard(browser, mesh)
        wait_for_traffic(browser, SHOP_EDGES, "every shop edge")
        vs = config_dir / "catalog-virtualservice.yaml"
        vs.write_text(
            vs.read_text().replace("    - name: canary\n", "    - name: canary\n      retriez: 3\n")
        )
        browser.find_element("css selector", '[data-node="default/catalog-v1"]').click()
        details = wait_for(
            lambda: "retriez" in (text := browser.find_element("id", "details").text) and text,
            timeout=30,
            what="the problem in catalog-v1's details",
        )
        assert "VirtualService default/catalog" in details
        assert "spec.http[1].retriez" in details


def test_an_injected_fault_shows_as_errors_on_its_edge(
    mesh: LocalMesh, config_dir: Path, browser: Any, artefacts: Path
) -> None:
    """Half of jason's requests (all routed to catalog v2) are aborted 503 by frontend's sidecar:
    frontend → catalog v2 fails with the fault's flag; its sibling to v1 and the edges to
    customer stay healthy."""
    (config_dir / "catalog-virtualservice.yaml").write_text(JASON_FAULT)
    start_shop(mesh, sidecar_args=REPORTING)
    front = f"{mesh.workloads['frontend'].inbound}/"
    with Load(front), Load(front, headers={"end-user": "jason"}):
        open_dashboard(browser, mesh)
        faulty = "default/frontend->default/catalog-v2"
        rows = wait_for_rows(
            browser,
            lambda rows: (
                faulty in rows
                and rows[faulty]["health"] == "failing"
                and all(e in rows and rate(rows[e]) > 0 for e in SHOP_EDGES)
            ),
            "frontend → catalog v2 failing on the page",
        )
        assert float(rows[faulty]["errors"].rstrip("%")) > 20, rows[faulty]
        assert float(rows[faulty]["c5xx"]) > 0
        assert "FI" in rows[faulty]["flags"]  # the fault's response flag
        for edge in SHOP_EDGES:
            if edge != faulty:
                row = rows[edge]
                assert row["errors"] == "0.0%" and row["health"] == "healthy", row
        colour = browser.execute_script(
            f"return document.querySelector('#graph [data-edge=\"{faulty}\"] path')"
            ".getAttribute('stroke')"
        )
        assert colour == "#c62828"  # drawn red
        browser.save_screenshot(str(artefacts / "dashboard-fault.png"))


def test_circuit_breaker_overflows_show_on_the_edge_and_its_caller(
    mesh: LocalMesh, config_dir: Path, browser: Any, artefacts: Path
) -> None:
    """customer answers after 0.2 s and its callers may have 2 requests in flight: four
    concurrent clients overflow catalog's breaker (UO), which the page shows on catalog v1 →
    customer and in catalog-v1's details."""
    (config_dir / "customer-breaker.yaml").write_text(CUSTOMER_BREAKER)
    mesh.start_control_plane()
    for name, service, version, call in (
        ("frontend", "frontend", "v1", "catalog"),
        ("catalog-v1", "catalog", "v1", "customer"),
        ("catalog-v2", "catalog", "v2", "customer"),
    ):
        mesh.start_workload(
            name, service=service, version=version, call=call, sidecar_args=REPORTING
        )
    mesh.start_workload(
        "customer", service="customer", sidecar_args=REPORTING, app_args=("--delay", "0.2")
    )
    mesh.wait_ready(timeout=30)
    front = f"{mesh.workloads['frontend'].inbound}/"
    with Load(front), Load(front), Load(front), Load(front):
        open_dashboard(browser, mesh)
        edge = "default/catalog-v1->default/customer"
        rows = wait_for_rows(
            browser,
            lambda rows: edge in rows and float(rows[edge]["overflows"]) > 0,
            "catalog v1 → customer overflowing on the page",
        )
        assert "UO" in rows[edge]["flags"]
        browser.find_element("css selector", '[data-node="default/catalog-v1"]').click()
        details = browser.find_element("id", "details").text
        overflows = next(line for line in details.splitlines() if "overflows" in line)
        assert int(overflows.split()[-2]) > 0, details
        browser.save_screenshot(str(artefacts / "dashboard-breaker.png"))


def test_a_strict_namespace_shows_mtls_on_every_edge(
    mesh: LocalMesh, config_dir: Path, browser: Any, artefacts: Path
) -> None:
    """Under STRICT nothing reaches a workload in plaintext, so the load enters through a meshed
    client (its app calls frontend through its own sidecar)."""
    start_shop(mesh, sidecar_args=REPORTING)
    client = mesh.start_workload(
        "client", service="client", call="frontend", sidecar_args=REPORTING
    )
    mesh.wait_ready(timeout=30)
    (config_dir / "strict.yaml").write_text(STRICT)
    # Plaintext from outside the mesh is refused once STRICT is applied.
    wait_for(
        lambda: http_get_fails(f"{mesh.workloads['frontend'].inbound}/"),
        timeout=30,
        what="frontend refusing plaintext under STRICT",
    )
    meshed = (*SHOP_EDGES, "default/client->default/frontend")
    with Load(f"http://127.0.0.1:{client.app_port}/"):
        open_dashboard(browser, mesh)
        rows = wait_for_traffic(browser, meshed, "every meshed edge")
        for edge in meshed:
            assert rows[edge]["mtls"] == "100.0%", rows[edge]
        label = browser.execute_script(
            "return document.querySelector('#graph [data-edge=\"default/frontend->default/"
            "catalog-v1\"]').textContent"
        )
        assert "mTLS 100%" in label
        browser.save_screenshot(str(artefacts / "dashboard-strict.png"))


def http_get_fails(url: str) -> bool:
    try:
        return http_get(url, timeout=5).status >= 500
    except OSError:
        return True


def lightmesh(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lightmeshctl.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_top_and_tap_report_the_running_shop_as_json(mesh: LocalMesh) -> None:
    start_shop(mesh, sidecar_args=REPORTING)
    catalog = mesh.workloads["catalog-v1"]
    with Load(f"{mesh.workloads['frontend'].inbound}/"):

        def top() -> dict[str, Any] | None:
            result = lightmesh("top", "--json", "--control-plane", mesh.debug_url)
            assert result.returncode == 0, result.stderr
            graph: dict[str, Any] = json.loads(result.stdout)
            edges = {e["id"]: e for e in graph["edges"]}
            return graph if all(e in edges and edges[e]["rps"] > 0 for e in SHOP_EDGES) else None

        graph = wait_for(top, timeout=60, interval=0.5, what="top --json listing every shop edge")
        edge = next(e for e in graph["edges"] if e["id"] == SHOP_EDGES[0])
        assert edge["p99_ms"] is not None and edge["error_rate"] == 0.0 and edge["mtls"] == 1.0

        result = lightmesh(
            "tap", "--admin", catalog.admin, "--listener", "outbound", "--max", "3", "--json"
        )
        assert result.returncode == 0, result.stderr
        events = [json.loads(line) for line in result.stdout.splitlines()]
        assert len(events) == 3
        for event in events:
            assert event["listener"] == "outbound" and event["host"] == "customer"
            assert event["status"] == 200 and event["mtls"] is True
            assert event["duration_ms"] > 0

        # Several sidecars at once: each event says whose it is.
        both = [mesh.workloads[name].admin for name in ("catalog-v1", "catalog-v2")]
        result = lightmesh(
            "tap", "--admin", both[0], "--admin", both[1], "--listener", "outbound",
            "--max", "60", "--json",
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        tapped = [json.loads(line) for line in result.stdout.splitlines()]
        assert len(tapped) == 60 and {e["sidecar"] for e in tapped} == set(both)

        # Filters: a path nobody calls gives nothing within one poll.
        result = lightmesh(
            "tap", "--admin", catalog.admin, "--path", "/nothing", "--once", "--poll", "1", "--json"
        )
        assert result.returncode == 0 and result.stdout == ""
        inbound = lightmesh(
            "tap", "--admin", catalog.admin, "--listener", "inbound", "--status", "2xx",
            "--max", "1", "--json",
        )  # fmt: skip
        event = json.loads(inbound.stdout)
        assert event["peer_identity"] == "spiffe://cluster.local/ns/default/sa/default"

    bad = lightmesh("tap", "--admin", catalog.admin, "--status", "5x", "--once")
    assert bad.returncode == 1 and "status" in bad.stderr


def test_with_a_prometheus_url_the_graph_comes_from_promql(mesh: LocalMesh, tmp_path: Path) -> None:
    """A real Prometheus scrapes the sidecars' metrics ports; the control plane, restarted with
    --prometheus-url, builds the same edges from PromQL (no sidecar reports: interval 0)."""
    start_shop(mesh, sidecar_args=("--report-interval", "0"))
    targets = [f"127.0.0.1:{w.metrics_port}" for w in mesh.workloads.values()]
    with prometheus(tmp_path / "prometheus", [static_job("sidecars", targets)]) as prom:
        assert mesh.control_plane is not None
        mesh.control_plane.stop()
        mesh.start_control_plane(extra_args=("--prometheus-url", prom.url))
        with Load(f"{mesh.workloads['frontend'].inbound}/"):

            def graph() -> dict[str, Any] | None:
                result = lightmesh(
                    "top", "--json", "--window", "30", "--control-plane", mesh.debug_url
                )
                assert result.returncode == 0, result.stderr
                body: dict[str, Any] = json.loads(result.stdout)
                edges = {e["id"]: e for e in body["edges"]}
                return body if all(e in edges and edges[e]["rps"] > 0 for e in SHOP_EDGES) else None

            body = wait_for(graph, timeout=90, interval=1, what="every shop edge from PromQL")
    assert body["source"] == "prometheus"
    edge = next(e for e in body["edges"] if e["id"] == SHOP_EDGES[0])
    assert edge["mtls"] == 1.0 and edge["error_rate"] == 0.0 and edge["p99_ms"] is not None
    # The sidecars sent no reports: the same request without Prometheus has no edges.
    reports = http_get(f"{mesh.debug_url}/debug/graph?source=sidecars").json()
    assert reports["edges"] == []
