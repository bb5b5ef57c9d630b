"""`lightmesh demo`: the shop on loopback, interactive or as a headless check (`--check`)."""

from __future__ import annotations

import contextlib
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from lightmeshctl.demo.mesh import LocalMesh, Process, http_get, wait_for

# The demo's sidecars report traffic every DEMO_REPORT seconds (default 5): a livelier dashboard.
DEMO_REPORT = ("--report-interval", "2")

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "demo"
VS_FILE = "catalog-virtualservice.yaml"

ALL_TO_V2 = """\
apiVersion: lightmesh.io/v1alpha1
kind: VirtualService
metadata:
  name: catalog
  namespace: default
spec:
  hosts: [catalog]
  http:
    - name: all-to-v2
      route:
        - destination: {host: catalog, subset: v2}
"""

# Each broken edit of the VirtualService, and the field its rejection must name.
BROKEN = {
    "unknown field": (ALL_TO_V2.replace("name: all-to-v2", "name: all-to-v2\n      retriez: 3"),
                      "spec.http[0].retriez"),
    "weights not summing to 100": (
        ALL_TO_V2.replace(
            "- destination: {host: catalog, subset: v2}",
            "- destination: {host: catalog, subset: v2}\n          weight: 70\n"
            "        - destination: {host: catalog, subset: v1}\n          weight: 40",
        ),
        "spec.http[0].route",
    ),
    "regex that does not compile": (
        ALL_TO_V2.replace(
            "    - name: all-to-v2\n",
            "    - name: all-to-v2\n      match:\n        - uri: {regex: '/items/(['}\n",
        ),
        "spec.http[0].match[0].uri.regex",
    ),
}  # fmt: skip


def start_shop(mesh: LocalMesh, *, sidecar_args: tuple[str, ...] = ()) -> None:
    """Start the control plane and the four workloads of the shop, and wait until all are ready."""
    mesh.start_control_plane()
    args = sidecar_args
    mesh.start_workload("frontend", service="frontend", call="catalog", sidecar_args=args)
    mesh.start_workload(
        "catalog-v1", service="catalog", version="v1", call="customer", sidecar_args=args
    )
    mesh.start_workload(
        "catalog-v2", service="catalog", version="v2", call="customer", sidecar_args=args
    )
    mesh.start_workload("customer", service="customer", sidecar_args=args)
    mesh.wait_ready(timeout=30)
    # Every sidecar must also know every endpoint before the demo is usable: the first sidecars
    # connect before the others have registered. Ten requests of the 80/20 split reach both.
    wait_for(
        lambda: set(_catalog_versions(mesh, 10) or ()) == {"v1", "v2"},
        timeout=15,
        what="frontend → catalog v1 and v2 → customer to answer",
    )


def _shop(mesh: LocalMesh, headers: dict[str, str] | None = None) -> dict[str, object] | None:
    reply = http_get(f"{mesh.workloads['frontend'].inbound}/", headers=headers, timeout=5)
    if reply.status != 200:
        return None
    body: dict[str, object] = reply.json()
    return body


def _catalog_versions(mesh: LocalMesh, n: int, **kw: dict[str, str]) -> Counter[str] | None:
    seen: Counter[str] = Counter()
    for _ in range(n):
        body = _shop(mesh, kw.get("headers"))
        if body is None:
            return None
        catalog = body.get("upstream")
        # catalog's own call failing still yields an "upstream" object ({"error": ...}): require
        # that customer answered, or the check races the push of customer's endpoints.
        if not isinstance(catalog, dict) or "workload" not in (catalog.get("upstream") or {}):
            return None
        # The whole chain answered: a catalog whose sidecar does not know customer yet still
        # answers 200, with the sidecar's 404 (no route) as its upstream error.
        if catalog["upstream"].get("workload") != "customer":
            return None
        seen[str(catalog.get("version"))] += 1
    return seen


def _write(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def check(
    mesh: LocalMesh, config_dir: Path, report: Callable[[str, bool, str], None]
) -> dict[str, float]:
    """Run the demo scenario against a started shop; report each check; return timings."""
    timings: dict[str, float] = {}

    body = _shop(mesh)
    chain = []
    node = body
    while isinstance(node, dict):
        chain.append(str(node.get("workload")))
        node = node.get("upstream")  # type: ignore[assignment]
    report(
        "app → sidecar → sidecar → app",
        len(chain) == 3 and chain[0] == "frontend" and chain[2] == "customer",
        " → ".join(chain),
    )

    split = _catalog_versions(mesh, 100) or Counter()
    report(
        "weighted split 80/20",
        70 <= split["v1"] <= 90 and split["v2"] >= 10,
        dict(split).__repr__(),
    )

    edges = (
        "default/frontend->default/catalog-v1",
        "default/frontend->default/catalog-v2",
        "default/catalog-v1->default/customer",
        "default/catalog-v2->default/customer",
    )

    def graph_rates() -> dict[str, float] | None:
        # Keep traffic flowing while the sidecars' next reports are due.
        _shop(mesh)
        graph = http_get(f"{mesh.debug_url}/debug/graph?window=60", timeout=5).json()
        rates = {e["id"]: e["rps"] for e in graph["edges"]}
        return rates if all(rates.get(edge, 0) > 0 for edge in edges) else None

    try:
        rates = wait_for(graph_rates, timeout=20, interval=0.2, what="every edge on the dashboard")
        shown = ", ".join(
            f"{e.replace('default/', '').replace('->', ' → ')} {rates[e]:.1f}/s" for e in edges
        )
        report("dashboard graph has every edge", True, shown)
    except TimeoutError as error:
        report("dashboard graph has every edge", False, str(error))

    jason = _catalog_versions(mesh, 10, headers={"end-user": "jason"}) or Counter()
    report("header match end-user: jason → v2", jason == Counter({"v2": 10}), repr(dict(jason)))

    vs_path = config_dir / VS_FILE
    started = time.monotonic()
    _write(vs_path, ALL_TO_V2)
    try:
        wait_for(
            lambda: (_catalog_versions(mesh, 5) or Counter()) == Counter({"v2": 5}),
            timeout=10,
            interval=0.02,
            what="all traffic on v2",
        )
        timings["reroute_seconds"] = time.monotonic() - started
        report(
            "edit re-routes",
            timings["reroute_seconds"] <= 1.0,
            f"100% to v2 after {timings['reroute_seconds']:.2f}s",
        )
    except TimeoutError as error:
        report("edit re-routes", False, str(error))

    for label, (text, field) in BROKEN.items():
        _write(vs_path, text)
        try:
            problem = wait_for(
                lambda field=field: next(
                    (p for p in mesh.problems() if p["path"].startswith(field)), None
                ),
                timeout=5,
                what=f"a problem naming {field}",
            )
            message = problem["text"]
            named = str(vs_path) in message and "VirtualService default/catalog" in message
            still = (_catalog_versions(mesh, 5) or Counter()) == Counter({"v2": 5})
            report(f"rejects {label}", named and still, message)
        except TimeoutError as error:
            report(f"rejects {label}", False, str(error))
    _write(vs_path, ALL_TO_V2)
    return timings


def run_demo(*, check: bool = False, config_dir: Path | None = None) -> int:
    """Run the demo; with `check`, run the scenario headless and exit 0/1."""
    source = config_dir or EXAMPLES
    if not source.is_dir():
        print(f"lightmesh demo: {source} not found; pass --config-dir", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="lightmesh-demo-") as tmp:
        work = Path(tmp)
        config = source
        if check:
            config = work / "config"
            shutil.copytree(source, config)
        started = time.monotonic()
        with LocalMesh(config_dir=config, work_dir=work) as mesh:
            try:
                start_shop(mesh, sidecar_args=DEMO_REPORT)
            except TimeoutError as error:
                print(f"lightmesh demo: {error}", file=sys.stderr)
                for process in [mesh.control_plane, *_sidecars(mesh)]:
                    if process is not None:
                        print(f"--- {process.name}\n{process.tail()}", file=sys.stderr)
                return 1
            ready = time.monotonic() - started
            if check:
                return _run_check(mesh, config, started, ready)
            _print_intro(mesh, config, ready)
            # A trickle of shop requests, so the dashboard has a live graph out of the box.
            stop = threading.Event()
            traffic = threading.Thread(
                target=_send_traffic, args=(mesh, stop), name="demo-traffic", daemon=True
            )
            traffic.start()
            try:
                _wait_for_interrupt()
            finally:
                stop.set()
                traffic.join(timeout=10)
            print("\nstopping…")
    return 0


TRAFFIC_INTERVAL = 0.2  # seconds between the demo's own shop requests (5 req/s)


def _send_traffic(mesh: LocalMesh, stop: threading.Event) -> None:
    """GET the shop every TRAFFIC_INTERVAL until `stop` (loopback only; errors are part of the
    picture: a fault you inject shows up on the dashboard)."""
    url = f"{mesh.workloads['frontend'].inbound}/"
    while not stop.wait(TRAFFIC_INTERVAL):
        with contextlib.suppress(OSError, ValueError):
            http_get(url, timeout=5)


def _sidecars(mesh: LocalMesh) -> list[Process | None]:
    return [w.sidecar for w in mesh.workloads.values()]


def _run_check(mesh: LocalMesh, config: Path, started: float, ready: float) -> int:
    results: list[tuple[str, bool, str]] = []

    def report(name: str, ok: bool, detail: str) -> None:
        results.append((name, ok, detail))
        print(f"{'ok  ' if ok else 'FAIL'} {name}: {detail}", flush=True)

    timings = check(mesh, config, report)
    failed = [name for name, ok, _ in results if not ok]
    total = time.monotonic() - started
    reroute = timings.get("reroute_seconds")
    extra = f", re-route {reroute:.2f}s" if reroute is not None else ""
    if failed:
        print(
            f"demo check FAILED: {len(failed)} of {len(results)} checks failed "
            f"({', '.join(failed)}) in {total:.1f}s"
        )
        return 1
    print(
        f"demo check passed: {len(results)} checks in {total:.1f}s (mesh ready {ready:.1f}s{extra})"
    )
    return 0


def _print_intro(mesh: LocalMesh, config: Path, ready: float) -> None:
    front = mesh.workloads["frontend"]
    lines = [
        f"lightmesh demo is running (ready in {ready:.1f}s). Press Ctrl-C to stop.",
        "",
        "Call the shop through the frontend's sidecar (frontend → catalog v1/v2 → customer):",
        f"  curl -s {front.inbound}/ | python3 -m json.tool",
        f"  curl -s -H 'end-user: jason' {front.inbound}/     # always catalog v2",
        "Call a service the way an app does, through a sidecar's outbound listener:",
        f"  curl -s -x http://{front.outbound} http://catalog/",
        "",
        f"Edit the routing live: {config / VS_FILE}",
        f"Dashboard:       {mesh.debug_url}/dashboard   (the service graph, live)",
        f"Golden signals:  lightmesh top --control-plane {mesh.debug_url}",
        f"Live requests:   lightmesh tap --admin {front.admin}",
        f"Proxy status:    lightmesh proxy-status --control-plane {mesh.debug_url}",
        f"Problems:        curl -s {mesh.debug_url}/debug/problems",
        "Sidecar admin, loopback only (/config_dump /certs /ready /metrics):",
    ]
    lines += [f"  {w.name:<11} {w.admin}/config_dump" for w in mesh.workloads.values()]
    lines.append("Sidecar metrics ports (/metrics /ready /healthz only, what Prometheus scrapes):")
    lines += [
        f"  {w.name:<11} http://127.0.0.1:{w.metrics_port}/metrics" for w in mesh.workloads.values()
    ]
    lines.append(f"Logs: {mesh.work_dir / 'logs'}")
    print("\n".join(lines), flush=True)


def _wait_for_interrupt() -> None:
    stop = {"now": False}

    def handler(signum: int, frame: object) -> None:
        stop["now"] = True

    signal.signal(signal.SIGTERM, handler)
    try:
        while not stop["now"]:
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
