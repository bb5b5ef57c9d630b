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
        watch_namespaces=tuple(args.watch_namespace),
        host=args.host,
        port=args.port,
        debug_port=args.debug_port,
        state_dir=Path(args.state_dir) if args.state_dir else None,
        trust_domain=args.trust_domain,
        ca_file=Path(args.ca_file) if args.ca_file else None,
        ca_secret_name=args.ca_secret,
        ca_namespace=args.ca_namespace,
        workload_cert_ttl=args.workload_cert_ttl,
        server_names=("localhost", *args.server_name),
        plaintext=args.plaintext,
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
    # gRPC's fork handlers only matter to children that use gRPC; ours (key generation) do not,
    # and with them on every spawn logs a warning. Must be set before grpc is imported.
    os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
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
    for problem in problems:
        print(f"Error: {problem}")
    print(f"{len(resources)} resources accepted, {len(problems)} problems in {len(files)} files")
    return 1 if problems else 0


def _analyze_cluster(args: argparse.Namespace) -> int:
    """The same validation the control plane runs, over the mesh resources stored in a cluster."""
    from kubernetes import client, config
    from kubernetes.client.exceptions import ApiException

    from controlplane.schema import GROUP, VERSION
    from controlplane.sources.kube_index import MESH_KINDS, KubeIndex

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
    for kind in MESH_KINDS:
        plural = f"{kind.lower()}s"
        found: Any
        try:
            if args.namespace:
                found = objects.list_namespaced_custom_object(
                    GROUP, VERSION, args.namespace, plural
                )
            else:
                found = objects.list_cluster_custom_object(GROUP, VERSION, plural)
        except ApiException as error:
            print(
                f"lightmesh analyze: listing {plural}: {error.status} {error.reason}",
                file=sys.stderr,
            )
            return 2
        items = found.get("items") or []
        count += len(items)
        index.replace(kind, items)
    resources, problems = index.resources()
    for problem in problems:
        print(f"Error: {problem}")
    where = f"namespace {args.namespace}" if args.namespace else "the cluster"
    print(
        f"{len(resources)} resources accepted, {len(problems)} problems in {count} resources in {where}"
    )
    return 1 if problems else 0


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
    cp.add_argument(
        "--watch-namespace",
        action="append",
        default=[],
        help="watch only this namespace (repeatable; default: the whole cluster)",
    )
    cp.add_argument("--host", default="127.0.0.1")
    cp.add_argument("--port", type=int, default=15010, help="gRPC config stream port")
    cp.add_argument("--debug-port", type=int, default=15014, help="debug/metrics HTTP port")
    cp.add_argument(
        "--state-dir",
        default="",
        help="keep the local registry, the CA (ca.pem, 0600), the bootstrap token and the trust "
        "bundle (root.pem) here",
    )
    cp.add_argument("--trust-domain", default="cluster.local", help="SPIFFE trust domain")
    cp.add_argument(
        "--ca-file", default="", help="CA certificate (+chain) and key PEM to sign with (your own)"
    )
    cp.add_argument("--ca-secret", default="lightmesh-ca", help="cluster mode: the CA's Secret")
    cp.add_argument("--ca-namespace", default="", help="namespace of that Secret (default: lease)")
    cp.add_argument(
        "--workload-cert-ttl", type=float, default=24 * 3600.0, help="seconds (default 24 h)"
    )
    cp.add_argument(
        "--server-name",
        action="append",
        default=[],
        help="DNS name sidecars use to reach the control plane (repeatable)",
    )
    cp.add_argument("--plaintext", action="store_true", help="serve the config stream without TLS")
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
    an.add_argument("-f", "--files", nargs="+", default=[], help="YAML files or directories")
    an.add_argument(
        "--cluster", action="store_true", help="analyze the resources stored in the cluster"
    )
    an.add_argument("--kubeconfig", default="", help="with --cluster (default: $KUBECONFIG)")
    an.add_argument("-n", "--namespace", default="", help="with --cluster: only this namespace")
    an.set_defaults(func=_analyze)

    ps = sub.add_parser("proxy-status", help="show which config each sidecar runs")
    ps.add_argument("--control-plane", default=DEFAULT_DEBUG, help="control plane debug URL")
    ps.add_argument("--json", action="store_true")
    ps.set_defaults(func=_proxy_status)

    pc = sub.add_parser("proxy-config", help="show one sidecar's certificates or whole config")
    pc.add_argument("section", choices=["certs", "all"])
    pc.add_argument("--admin", default="http://127.0.0.1:15000", help="the sidecar's admin URL")
    pc.add_argument("--json", action="store_true")
    pc.set_defaults(func=_proxy_config)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `lightmesh` console script."""
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
