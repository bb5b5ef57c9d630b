"""The `lightmesh` command: run the daemons, the demo, and inspect a running mesh.

Subcommands import only what they use, so `lightmesh sidecar` never loads the control plane's
libraries (aiohttp, kubernetes) into the sidecar process.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from lightmesh.logs import setup_logging
from lightmesh.runtime import run_main

DEFAULT_DEBUG = "http://127.0.0.1:15014"


def _controlplane(args: argparse.Namespace) -> int:
    from controlplane.app import Settings, run

    setup_logging("controlplane", level=args.log_level)
    if not args.config_dir and not args.kubeconfig and not args.in_cluster:
        print(
            "lightmesh controlplane: give --config-dir, --kubeconfig or --in-cluster",
            file=sys.stderr,
        )
        return 2
    settings = Settings(
        config_dir=Path(args.config_dir) if args.config_dir else None,
        kubeconfig=Path(args.kubeconfig) if args.kubeconfig else None,
        in_cluster=args.in_cluster,
        lease_namespace=args.lease_namespace,
        host=args.host,
        port=args.port,
        debug_port=args.debug_port,
        state_dir=Path(args.state_dir) if args.state_dir else None,
    )
    if settings.config_dir is not None and not settings.config_dir.is_dir():
        print(
            f"lightmesh controlplane: --config-dir {args.config_dir}: not a directory",
            file=sys.stderr,
        )
        return 2
    run_main(run(settings))
    return 0


def _sidecar(args: argparse.Namespace) -> int:
    from sidecar.app import run
    from sidecar.settings import from_arguments

    try:
        settings = from_arguments(args)
    except ValueError as error:
        print(f"lightmesh sidecar: {error}", file=sys.stderr)
        return 2
    setup_logging("sidecar", level=settings.log_level)
    run_main(run(settings))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from lightmesh.demo.runner import run_demo

    return run_demo(check=args.check, config_dir=Path(args.config_dir) if args.config_dir else None)


def _analyze(args: argparse.Namespace) -> int:
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


def fetch_json(url: str) -> Any:
    """GET a JSON document (raises OSError with a readable message when unreachable)."""
    import urllib.error  # here, not at the top: the sidecar process never needs it
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - http(s) URL we build
            return json.load(response)
    except urllib.error.URLError as error:
        raise OSError(f"cannot reach {url}: {error.reason}") from None


def format_proxy_status(proxies: list[dict[str, Any]]) -> str:
    """The proxy-status table: one row per sidecar, one column per resource type."""
    columns = ["CLUSTERS", "ENDPOINTS", "ROUTES"]
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
    try:
        data = fetch_json(f"{args.control_plane.rstrip('/')}/debug/proxies")
    except OSError as error:
        print(f"lightmesh proxy-status: {error}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        print(format_proxy_status(data["proxies"]))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    from sidecar.settings import add_arguments as add_sidecar_arguments

    parser = argparse.ArgumentParser(prog="lightmesh", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    cp = sub.add_parser("controlplane", help="run the control plane")
    cp.add_argument("--config-dir", default="", help="directory of lightmesh.io YAML resources")
    cp.add_argument("--kubeconfig", default="", help="watch this cluster's resources and services")
    cp.add_argument("--in-cluster", action="store_true", help="watch the cluster this pod runs in")
    cp.add_argument("--lease-namespace", default="default", help="namespace of the leader Lease")
    cp.add_argument("--host", default="127.0.0.1")
    cp.add_argument("--port", type=int, default=15010, help="gRPC config stream port")
    cp.add_argument("--debug-port", type=int, default=15014, help="debug/metrics HTTP port")
    cp.add_argument("--state-dir", default="", help="persist the local registry here")
    cp.add_argument("--log-level", default="info")
    cp.set_defaults(func=_controlplane)

    sc = sub.add_parser("sidecar", help="run a sidecar proxy")
    add_sidecar_arguments(sc)
    sc.set_defaults(func=_sidecar)

    demo = sub.add_parser("demo", help="run the shop demo on loopback (no cluster needed)")
    demo.add_argument("--check", action="store_true", help="run the scenario headless, exit 0/1")
    demo.add_argument("--config-dir", default="", help="resources to use (default: examples/demo)")
    demo.set_defaults(func=_demo)

    an = sub.add_parser(
        "analyze", help="validate resource files offline, as the control plane would"
    )
    an.add_argument("-f", "--files", nargs="+", required=True, help="YAML files or directories")
    an.set_defaults(func=_analyze)

    ps = sub.add_parser("proxy-status", help="show which config each sidecar runs")
    ps.add_argument("--control-plane", default=DEFAULT_DEBUG, help="control plane debug URL")
    ps.add_argument("--json", action="store_true")
    ps.set_defaults(func=_proxy_status)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `lightmesh` console script."""
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
