"""The `lightmesh` command: run the daemons, the demo, and inspect a running mesh.

Subcommands import only what they use, so `lightmesh sidecar` never loads the control plane's
libraries (aiohttp, kubernetes) into the sidecar process.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from lightmesh.logs import setup_logging
from lightmesh.runtime import run_main

DEFAULT_DEBUG = "http://127.0.0.1:15014"


def _controlplane(args: argparse.Namespace) -> int:
    from controlplane.app import run
    from lightmeshctl.flags.controlplane import from_arguments

    setup_logging("controlplane", level=args.log_level)
    try:
        settings = from_arguments(args)
    except ValueError as error:
        print(f"lightmesh controlplane: {error}", file=sys.stderr)
        return 2
    run_main(run(settings))
    return 0


def _sidecar(args: argparse.Namespace) -> int:
    # The sidecar imports no grpcio (sidecar/config/channel.py speaks gRPC itself).
    from lightmeshctl.flags.sidecar import from_arguments
    from sidecar.app import run

    try:
        settings = from_arguments(args)
    except ValueError as error:
        print(f"lightmesh sidecar: {error}", file=sys.stderr)
        return 2
    setup_logging("sidecar", level=settings.log_level)
    run_main(run(settings))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from lightmeshctl.demo.runner import run_demo

    return run_demo(check=args.check, config_dir=Path(args.config_dir) if args.config_dir else None)


def _analyze(args: argparse.Namespace) -> int:
    if args.cluster:
        return _analyze_cluster(args)
    if not args.files:
        print("lightmesh analyze: give -f FILES... or --cluster", file=sys.stderr)
        return 2
    from controlplane.sources.files import FileSet, read_directory

    files: dict[str, str] = {}
    for name in args.files:
        path = Path(name)
        try:
            files.update(read_directory(path) if path.is_dir() else {name: path.read_text()})
        except OSError as error:
            print(f"lightmesh analyze: {name}: {error.strerror}", file=sys.stderr)
            return 2
    resources, problems = FileSet().load(files)
    errors = [p for p in problems if p.severity == "error"]
    for problem in problems:
        # A warning's own text starts with "warning:"; it does not fail the analysis.
        print(str(problem) if problem.severity == "warning" else f"Error: {problem}")
    print(f"{len(resources)} resources accepted, {len(errors)} problems in {len(files)} files")
    return 1 if errors else 0


def _analyze_cluster(args: argparse.Namespace) -> int:
    """The same validation the control plane runs, over the mesh resources stored in a cluster."""
    from kubernetes import client, config
    from kubernetes.client.exceptions import ApiException

    from controlplane.schema import KINDS
    from controlplane.sources.kube_index import KINDS as WATCHED
    from controlplane.sources.kube_index import MESH_KINDS, KubeIndex, istio_kind, mesh_kind

    try:
        if args.kubeconfig or not os.environ.get("KUBERNETES_SERVICE_HOST"):
            api = config.new_client_from_config(config_file=args.kubeconfig or None)  # type: ignore[no-untyped-call]
        else:
            config.load_incluster_config()  # type: ignore[no-untyped-call]
            api = client.ApiClient()
    except Exception as error:  # the kubernetes client raises several unrelated types here
        print(f"lightmesh analyze: cannot load kubeconfig: {error}", file=sys.stderr)
        return 2
    objects = client.CustomObjectsApi(api)
    index = KubeIndex()
    count = 0
    # Ours, then Istio's groups (when their CRDs are installed: crds/istio/ or Istio's own).
    for watched in (*MESH_KINDS, *(istio_kind(k) for k in MESH_KINDS if istio_kind(k) in WATCHED)):
        group, _, version = WATCHED[watched][0].partition("/")
        plural = KINDS[mesh_kind(watched)][0]  # authorizationpolicies, not a naive "-s"
        found: Any
        try:
            if args.namespace:
                found = objects.list_namespaced_custom_object(
                    group, version, args.namespace, plural
                )
            else:
                found = objects.list_cluster_custom_object(group, version, plural)
        except ApiException as error:
            if error.status == 404 and watched not in MESH_KINDS:
                continue  # no such CRD: nothing of Istio's group to analyze
            print(
                f"lightmesh analyze: listing {plural}.{group}: {error.status} {error.reason}",
                file=sys.stderr,
            )
            return 2
        items = found.get("items") or []
        count += len(items)
        index.replace(watched, items)
    resources, problems = index.resources()
    errors = [p for p in problems if p.severity == "error"]
    for problem in problems:
        print(str(problem) if problem.severity == "warning" else f"Error: {problem}")
    where = f"namespace {args.namespace}" if args.namespace else "the cluster"
    print(
        f"{len(resources)} resources accepted, {len(errors)} problems in {count} resources in {where}"
    )
    return 1 if errors else 0


def _inject(args: argparse.Namespace) -> int:
    import yaml

    from controlplane.injection.template import InjectionError
    from controlplane.injection.workloads import inject_document
    from lightmeshctl.flags.controlplane import injection_config

    try:
        config = injection_config(args)
    except OSError as error:
        print(f"lightmesh inject: --ca-bundle {args.ca_bundle}: {error.strerror}", file=sys.stderr)
        return 2
    out: list[Any] = []
    for name in args.filename:
        try:
            text = sys.stdin.read() if name == "-" else Path(name).read_text()
            documents = [d for d in yaml.safe_load_all(text) if d is not None]
        except OSError as error:
            print(f"lightmesh inject: {name}: {error.strerror}", file=sys.stderr)
            return 2
        except yaml.YAMLError as error:
            print(f"lightmesh inject: {name}: not YAML: {error}", file=sys.stderr)
            return 2
        for index, document in enumerate(documents, 1):
            where = f"{'stdin' if name == '-' else name}: document {index}"
            try:
                injected, note = inject_document(document, config, where=where)
            except InjectionError as error:
                print(f"lightmesh inject: {error}", file=sys.stderr)
                return 2
            if args.verbose:
                print(note, file=sys.stderr)
            out.append(injected)
    sys.stdout.write(yaml.safe_dump_all(out, sort_keys=False))
    return 0


def _intercept(args: argparse.Namespace) -> int:
    from lightmesh.intercept import (
        InterceptSpec,
        cleanup_plan,
        install_plan,
        parse_cidrs,
        parse_ports,
    )
    from lightmeshctl.iptables import InterceptError, run_plan

    try:
        if args.action == "cleanup":
            plan = cleanup_plan()
        else:
            plan = install_plan(
                InterceptSpec(
                    inbound_port=args.inbound_port,
                    outbound_port=args.outbound_port,
                    proxy_uid=args.proxy_uid,
                    exclude_inbound_ports=parse_ports(
                        args.exclude_inbound_ports, field="--exclude-inbound-ports"
                    ),
                    exclude_outbound_ports=parse_ports(
                        args.exclude_outbound_ports, field="--exclude-outbound-ports"
                    ),
                    exclude_outbound_cidrs=parse_cidrs(
                        args.exclude_outbound_cidrs, field="--exclude-outbound-cidrs"
                    ),
                )
            )
    except ValueError as error:
        print(f"lightmesh intercept: {error}", file=sys.stderr)
        return 2
    if args.dry_run:
        print("\n".join(" ".join(["iptables", *c.args]) for c in plan))
        return 0
    try:
        for line in run_plan(plan):
            print(line)
    except InterceptError as error:
        print(f"lightmesh intercept {args.action}: {error}", file=sys.stderr)
        return 1
    return 0


def _wait_ready(args: argparse.Namespace) -> int:
    import time
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + args.timeout
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(args.url, timeout=2) as response:  # noqa: S310 - our URL
                if response.status == 200:
                    return 0
        except urllib.error.HTTPError as error:
            last = f"HTTP {error.code}: {error.read(200).decode(errors='replace').strip()}"
            error.close()
        except OSError as error:
            last = str(error)
        time.sleep(0.2)  # bounded by the deadline above
    print(
        f"lightmesh wait-ready: {args.url} not ready in {args.timeout:g}s ({last})", file=sys.stderr
    )
    return 1


def fetch_json(url: str, *, timeout: float = 5.0) -> Any:
    """GET a JSON document (raises OSError with a readable message when unreachable or refused)."""
    import urllib.error  # here, not at the top: the sidecar process never needs it
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - http(s) URL we build
            return json.load(response)
    except urllib.error.HTTPError as error:
        detail = error.read().decode(errors="replace").strip()
        raise OSError(f"{url}: {error.code} {detail}") from None
    except urllib.error.URLError as error:
        raise OSError(f"cannot reach {url}: {error.reason}") from None


def format_proxy_status(proxies: list[dict[str, Any]]) -> str:
    """The proxy-status table: one row per sidecar, one column per resource type."""
    columns = ["CLUSTERS", "ENDPOINTS", "ROUTES"]
    if any(proxy.get("gateway") for proxy in proxies):
        columns.append("GATEWAY")  # the listeners of ingress gateways (docs/gateway.md)
    rows = [["NAME", *columns]]
    errors = []
    for proxy in proxies:
        cells = [proxy["id"]]
        for column in columns:
            entry = proxy["types"].get(column, {})
            state = entry.get("state", "NOT_SENT")
            if state == "SYNCED":
                cells.append(f"SYNCED ({entry.get('acked', '')[:8]})")
            elif state == "STALE":
                cells.append(f"STALE ({entry.get('pending_seconds', 0):.1f}s)")
            elif state == "NACKED":
                cells.append(f"NACKED ({entry.get('nacked_version', '')[:8]})")
                errors.append(f"{proxy['id']} {column}: {entry.get('nack', '')}")
            else:
                cells.append(state)
        rows.append(cells)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    if errors:
        lines += ["", "Rejected config:", *(f"  {e}" for e in errors)]
    return "\n".join(lines)


def _proxy_status(args: argparse.Namespace) -> int:
    # Each replica reports the sidecars connected to it; with several (one port-forward each),
    # the table is their union, as istioctl merges every istiod's answer.
    proxies: list[dict[str, Any]] = []
    for url in args.control_plane or [DEFAULT_DEBUG]:
        try:
            data = fetch_json(f"{url.rstrip('/')}/debug/proxies")
        except OSError as error:
            print(f"lightmesh proxy-status: {error}", file=sys.stderr)
            return 1
        proxies += data["proxies"]
    proxies.sort(key=lambda proxy: str(proxy["id"]))
    if args.json:
        print(json.dumps({"proxies": proxies}, indent=2))
    else:
        print(format_proxy_status(proxies))
    return 0


def format_certs(data: dict[str, Any]) -> str:
    """`proxy-config certs`: the workload certificate of one sidecar, no private material."""
    if not data.get("enabled"):
        return "no workload certificate (the sidecar was started without --token-file)"
    cert = data.get("certificate")
    lines = []
    if cert is None:
        lines.append("certificate: none yet")
    else:
        lines += [
            f"identity:   {cert['identity']}",
            f"serial:     {cert['serial']}",
            f"expires in: {cert['expires_in_seconds']:.0f}s",
            *(f"trust root: sha256:{fp}" for fp in cert["trust_roots_sha256"]),
        ]
    lines.append(f"rotations:  {data['rotations']} (failed requests: {data['failed_requests']})")
    return "\n".join(lines)


def _proxy_config(args: argparse.Namespace) -> int:
    path = {"certs": "/certs", "all": "/config_dump"}[args.section]
    try:
        data = fetch_json(f"{args.admin.rstrip('/')}{path}")
    except OSError as error:
        print(f"lightmesh proxy-config: {error}", file=sys.stderr)
        return 1
    if args.json or args.section == "all":
        print(json.dumps(data, indent=2))
    else:
        print(format_certs(data))
    return 0


def format_top(graph: dict[str, Any]) -> str:
    """`lightmesh top`: one row per edge, busiest first, with its golden signals."""

    def num(value: Any, digits: int = 1) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    def pct(value: Any) -> str:
        return "-" if value is None else f"{value * 100:.1f}%"

    labels = {n["id"]: n["label"] for n in graph["nodes"]}
    rows = [["SOURCE", "DESTINATION", "RPS", "5XX", "P50", "P95", "P99", "MTLS", "FLAGS"]]
    for edge in sorted(graph["edges"], key=lambda e: (-e["rps"], e["id"])):
        target = labels.get(edge["target"], edge["target"])
        if edge["subset"]:
            target += f" ({edge['subset']})"
        flags = ",".join(f"{k}:{v:.0f}" for k, v in edge["flags"].items()) or "-"
        rows.append(
            [
                labels.get(edge["source"], edge["source"]),
                target,
                num(edge["rps"], 2),
                pct(edge["error_rate"]),
                f"{num(edge['p50_ms'])}ms",
                f"{num(edge['p95_ms'])}ms",
                f"{num(edge['p99_ms'])}ms",
                pct(edge["mtls"]),
                flags,
            ]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(
            cell.ljust(w) if i < 2 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in rows
    ]
    if len(rows) == 1:
        lines.append("(no traffic reported in the window)")
    return "\n".join(lines)


def _top(args: argparse.Namespace) -> int:
    import time

    url = f"{args.control_plane.rstrip('/')}/debug/graph?window={args.window}"
    while True:
        try:
            graph = fetch_json(url)
        except OSError as error:
            print(f"lightmesh top: {error}", file=sys.stderr)
            return 1
        if args.json:
            print(json.dumps(graph, indent=2))
            return 0
        table = format_top(graph)
        if args.once:
            print(table)
            return 0
        # Clear the screen and redraw in place, like top(1).
        print(
            f"\x1b[H\x1b[2J{url}  (every {args.interval:g}s, Ctrl-C to stop)\n\n{table}", flush=True
        )
        try:
            time.sleep(args.interval)
        except KeyboardInterrupt:
            return 0


def format_tap_event(event: dict[str, Any]) -> str:
    """One tapped request on one line."""
    import datetime

    when = datetime.datetime.fromtimestamp(event["time"], datetime.UTC).strftime("%H:%M:%S.%f")[:-3]
    peer = event["peer_identity"] or ("mtls" if event["mtls"] else "plaintext")
    flags = f" {event['flags']}" if event["flags"] else ""
    sidecar = f"{event['sidecar']} " if "sidecar" in event else ""
    return (
        f"{sidecar}{when} {event['listener']:<8} {event['method']} {event['host']}{event['path']} "
        f"-> {event['status']}{flags} {event['duration_ms']:.1f}ms "
        f"upstream={event['upstream'] or '-'} peer={peer}"
    )


def _tap(args: argparse.Namespace) -> int:
    """Long-poll each chosen sidecar's /tap from a thread of its own; print events as they come."""
    import queue
    import threading
    from urllib.parse import urlencode

    query = {
        k: v
        for k, v in (
            ("path", args.path),
            ("method", args.method),
            ("status", args.status),
            ("listener", args.listener),
        )
        if v
    }
    admins = [a.rstrip("/") for a in (args.admin or ["http://127.0.0.1:15000"])]
    several = len(admins) > 1
    # (admin, batch) or (admin, error message); None: that admin's poller is done.
    out: queue.Queue[tuple[str, dict[str, Any] | str] | None] = queue.Queue(maxsize=64)
    stop = threading.Event()
    # With several sidecars, each answers at least every second: a busy one must not fill the
    # output with whole batches while a quiet one's wait out the poll.
    seconds = min(args.poll, 1.0) if several else args.poll

    def poll(admin: str) -> None:
        try:
            while not stop.is_set():
                params = urlencode({**query, "max": 100, "seconds": seconds})
                try:
                    batch = fetch_json(f"{admin}/tap?{params}", timeout=seconds + 5)
                except OSError as error:
                    out.put((admin, str(error)))
                    return
                out.put((admin, batch))
                if args.once:
                    return
        finally:
            out.put(None)

    threads = [threading.Thread(target=poll, args=(a,), daemon=True) for a in admins]
    for thread in threads:
        thread.start()
    seen = 0
    running = len(threads)
    failed = False
    try:
        while running and (args.max == 0 or seen < args.max):
            item = out.get()
            if item is None:
                running -= 1
                continue
            admin, batch = item
            if isinstance(batch, str):
                print(f"lightmesh tap: {batch}", file=sys.stderr)
                failed = True
                continue
            for event in batch["events"]:
                if args.max and seen >= args.max:
                    break
                if several:
                    event = {"sidecar": admin, **event}
                line = json.dumps(event) if args.json else format_tap_event(event)
                print(line, flush=True)
                seen += 1
            if batch["dropped"] and not args.json:
                print(f"({admin}: {batch['dropped']} more matched, dropped)", file=sys.stderr)
    except KeyboardInterrupt:
        pass
    finally:
        stop.set()
    return 1 if failed and not seen else 0


def _dashboard(args: argparse.Namespace) -> int:
    url = f"{args.control_plane.rstrip('/')}/dashboard"
    try:
        fetch_json(f"{args.control_plane.rstrip('/')}/debug/graph?window=30")
    except OSError as error:
        print(f"lightmesh dashboard: {error}", file=sys.stderr)
        return 1
    print(url)
    if args.open:
        import webbrowser

        webbrowser.open(url)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    from lightmeshctl.flags.controlplane import add_arguments as add_controlplane_arguments
    from lightmeshctl.flags.controlplane import add_injection_arguments
    from lightmeshctl.flags.sidecar import add_arguments as add_sidecar_arguments

    parser = argparse.ArgumentParser(prog="lightmesh", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    cp = sub.add_parser("controlplane", help="run the control plane")
    add_controlplane_arguments(cp)
    cp.set_defaults(func=_controlplane)

    sc = sub.add_parser("sidecar", help="run a sidecar proxy")
    add_sidecar_arguments(sc)
    sc.set_defaults(func=_sidecar)
    gw = sub.add_parser(
        "gateway", help="run an ingress gateway (the proxy in gateway mode; docs/gateway.md)"
    )
    add_sidecar_arguments(gw)
    gw.set_defaults(func=_sidecar, mode="gateway")

    demo = sub.add_parser("demo", help="run the shop demo on loopback (no cluster needed)")
    demo.add_argument("--check", action="store_true", help="run the scenario headless, exit 0/1")
    demo.add_argument("--config-dir", default="", help="resources to use (default: examples/demo)")
    demo.set_defaults(func=_demo)

    an = sub.add_parser(
        "analyze", help="validate resource files offline, as the control plane would"
    )
    an.add_argument("-f", "--files", nargs="+", default=[], help="YAML files or directories")
    an.add_argument(
        "--cluster", action="store_true", help="analyze the resources stored in the cluster"
    )
    an.add_argument("--kubeconfig", default="", help="with --cluster (default: $KUBECONFIG)")
    an.add_argument("-n", "--namespace", default="", help="with --cluster: only this namespace")
    an.set_defaults(func=_analyze)

    inj = sub.add_parser(
        "inject", help="add the sidecar to workload manifests (as the webhook does), to stdout"
    )
    inj.add_argument(
        "-f", "--filename", action="append", required=True, help="YAML file, or - for stdin"
    )
    inj.add_argument("-v", "--verbose", action="store_true", help="say what happened per document")
    inj.add_argument(
        "--ca-bundle",
        default="",
        help="mesh root PEM to embed (default: the webhook fills it in when the pod is created)",
    )
    add_injection_arguments(inj)
    inj.set_defaults(func=_inject)

    ic = sub.add_parser("intercept", help="install or remove the pod's redirect rules (init step)")
    ic.add_argument("action", choices=["install", "cleanup"])
    ic.add_argument("--inbound-port", type=int, default=15006)
    ic.add_argument("--outbound-port", type=int, default=15001)
    ic.add_argument(
        "--proxy-uid", type=int, default=1337, help="the sidecar's UID (not redirected)"
    )
    ic.add_argument("--exclude-inbound-ports", default="15000,15020", help="e.g. 15000,15020,9090")
    ic.add_argument("--exclude-outbound-ports", default="", help="e.g. 5432,443")
    ic.add_argument("--exclude-outbound-cidrs", default="", help="e.g. 169.254.169.254/32")
    ic.add_argument("--dry-run", action="store_true", help="print the iptables commands only")
    ic.set_defaults(func=_intercept)

    wr = sub.add_parser("wait-ready", help="wait until the sidecar is ready (postStart hook)")
    wr.add_argument("--url", default="http://127.0.0.1:15000/ready")
    wr.add_argument("--timeout", type=float, default=120.0)
    wr.set_defaults(func=_wait_ready)

    ps = sub.add_parser("proxy-status", help="show which config each sidecar runs")
    ps.add_argument(
        "--control-plane",
        action="append",
        help=f"control plane debug URL (default {DEFAULT_DEBUG}); repeat it for every replica",
    )
    ps.add_argument("--json", action="store_true")
    ps.set_defaults(func=_proxy_status)

    pc = sub.add_parser("proxy-config", help="show one sidecar's certificates or whole config")
    pc.add_argument("section", choices=["certs", "all"])
    pc.add_argument(
        "--admin",
        default="http://127.0.0.1:15000",
        help="the sidecar's admin URL (loopback only: in a cluster, first "
        "`kubectl port-forward POD 15000:15000`)",
    )
    pc.add_argument("--json", action="store_true")
    pc.set_defaults(func=_proxy_config)

    db = sub.add_parser("dashboard", help="print (and --open) the service graph page's URL")
    db.add_argument(
        "--control-plane",
        default=DEFAULT_DEBUG,
        help=f"control plane debug URL (default {DEFAULT_DEBUG}; in a cluster, first "
        "`kubectl port-forward deploy/lightmesh-controlplane 15014`)",
    )
    db.add_argument("--open", action="store_true", help="open it in the default browser")
    db.set_defaults(func=_dashboard)

    tp = sub.add_parser("top", help="live golden signals per edge of the service graph")
    tp.add_argument("--control-plane", default=DEFAULT_DEBUG, help="control plane debug URL")
    tp.add_argument("--window", default="60", help="seconds (or 30s, 5m) of traffic to show")
    tp.add_argument("--interval", type=float, default=2.0, help="seconds between redraws")
    tp.add_argument("--once", action="store_true", help="print the table once and exit")
    tp.add_argument("--json", action="store_true", help="print the graph as JSON once")
    tp.set_defaults(func=_top)

    ta = sub.add_parser("tap", help="stream a sidecar's live requests (sampled, filtered)")
    ta.add_argument(
        "--admin",
        action="append",
        help="a sidecar's admin URL (default http://127.0.0.1:15000; loopback only: in a "
        "cluster, port-forward first); repeat it to tap several sidecars at once",
    )
    ta.add_argument("--path", default="", help="only paths starting with this")
    ta.add_argument("--method", default="", help="only this method")
    ta.add_argument("--status", default="", help="only this status (503) or class (5xx)")
    ta.add_argument("--listener", default="", choices=["", "inbound", "outbound"])
    ta.add_argument("--max", type=int, default=0, help="stop after this many requests (0: never)")
    ta.add_argument("--poll", type=float, default=5.0, help="seconds per long-poll of /tap")
    ta.add_argument("--once", action="store_true", help="one poll, then exit")
    ta.add_argument("--json", action="store_true", help="one JSON object per request per line")
    ta.set_defaults(func=_tap)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `lightmesh` console script."""
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
