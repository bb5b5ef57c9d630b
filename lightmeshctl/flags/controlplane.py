"""The `lightmesh controlplane` flags (and the injection flags `lightmesh inject` shares): declared,
checked, and turned into the control plane's `Settings`.

Declaring them imports nothing of the control plane, so `lightmesh sidecar` (which builds the same
parser) never loads its libraries; only `from_arguments` does.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from controlplane.app import Settings
    from controlplane.injection.template import InjectionConfig


def add_arguments(cp: argparse.ArgumentParser) -> None:
    """Declare the control plane's flags."""
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
    cp.add_argument(
        "--gateway-namespace",
        action="append",
        default=[n for n in os.environ.get("LIGHTMESH_GATEWAY_NAMESPACES", "").split(",") if n],
        help="a namespace of ingress gateways: its TLS Secrets (Gateway credentialName) are "
        "watched and pushed to its gateways (repeatable; needs a Role there, deploy/gateway.yaml)",
    )
    cp.add_argument(
        "--istio-api",
        action="store_true",
        help="also watch resources in Istio's groups (networking.istio.io, security.istio.io); "
        "their CRDs must be installed (Istio's, or crds/istio/)",
    )
    cp.add_argument("--host", default="127.0.0.1")
    cp.add_argument("--port", type=int, default=15010, help="gRPC config stream port")
    cp.add_argument(
        "--debug-port",
        type=int,
        default=15014,
        help="debug HTTP port (proxy status, problems, metrics), on 127.0.0.1 only",
    )
    cp.add_argument(
        "--metrics-port",
        type=int,
        default=0,
        help="serve only /metrics, /healthz and /ready here, on --host (0: off; deployed: 15016)",
    )
    cp.add_argument(
        "--prometheus-url",
        default=os.environ.get("LIGHTMESH_PROMETHEUS_URL", ""),
        help="build /debug/graph and /dashboard from this Prometheus (PromQL over the sidecars' "
        "lightmesh_* metrics) instead of the sidecars' own reports, e.g. http://prometheus:9090",
    )
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
    cp.add_argument(
        "--default-export-to",
        default="*",
        help="namespaces a Service, VirtualService or DestinationRule without exportTo is seen "
        "from: '*' (all, Istio's default), '.' (its own) or names, comma-separated",
    )
    cp.add_argument(
        "--jwks-refresh",
        type=float,
        default=20 * 60.0,
        help="seconds between fetches of each RequestAuthentication jwksUri (default 20 min, "
        "Istio's); a failed fetch is retried sooner and the last good keys keep serving",
    )
    cp.add_argument(
        "--registry-grace",
        type=float,
        default=15.0,
        help="local mode: restored registrations expire this many seconds after the last "
        "restored sidecar reconnected",
    )
    cp.add_argument(
        "--initial-pushes",
        type=int,
        default=32,
        help="at most this many new streams get their first (full) push at once; the rest queue "
        "(FIFO)",
    )
    cp.add_argument("--log-level", default="info")
    cp.add_argument(
        "--webhook-port", type=int, default=0, help="serve the sidecar injector here (0: off)"
    )
    cp.add_argument(
        "--webhook-configuration",
        default="",
        help="MutatingWebhookConfiguration to fill the caBundle of",
    )
    cp.add_argument("--webhook-dns-name", action="append", help="injector certificate DNS name")
    cp.add_argument("--webhook-ip", action="append", default=[], help="injector certificate IP")
    add_injection_arguments(cp)


def add_injection_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of the injected sidecar (the webhook's and `lightmesh inject`'s)."""
    parser.add_argument("--proxy-image", default="", help="sidecar image to inject")
    parser.add_argument(
        "--proxy-control-plane", default="", help="control plane address injected sidecars use"
    )


def injection_config(args: argparse.Namespace) -> InjectionConfig:
    """What gets injected, from the injection flags (and `--ca-bundle` where there is one);
    raises OSError when the bundle cannot be read."""
    from controlplane.injection.template import InjectionConfig

    defaults = InjectionConfig()
    trust_root = Path(args.ca_bundle).read_text() if getattr(args, "ca_bundle", "") else ""
    return InjectionConfig(
        image=args.proxy_image or defaults.image,
        control_plane=args.proxy_control_plane or defaults.control_plane,
        trust_root=trust_root,
    )


def from_arguments(args: argparse.Namespace) -> Settings:
    """Build settings from parsed flags; raise ValueError saying which flag is at fault."""
    from controlplane.app import Settings
    from controlplane.injection.webhook import WebhookSettings

    if not args.config_dir and not args.kubeconfig and not args.in_cluster:
        raise ValueError("give --config-dir, --kubeconfig or --in-cluster")
    if args.jwks_refresh < 1:
        raise ValueError(f"--jwks-refresh {args.jwks_refresh}: at least 1 second")
    settings = Settings(
        config_dir=Path(args.config_dir) if args.config_dir else None,
        kubeconfig=Path(args.kubeconfig) if args.kubeconfig else None,
        in_cluster=args.in_cluster,
        lease_namespace=args.lease_namespace,
        watch_namespaces=tuple(args.watch_namespace),
        istio_api=args.istio_api,
        gateway_namespaces=tuple(args.gateway_namespace),
        host=args.host,
        port=args.port,
        debug_port=args.debug_port,
        metrics_port=args.metrics_port,
        prometheus_url=_prometheus_url(args.prometheus_url),
        state_dir=Path(args.state_dir) if args.state_dir else None,
        trust_domain=args.trust_domain,
        ca_file=Path(args.ca_file) if args.ca_file else None,
        ca_secret_name=args.ca_secret,
        ca_namespace=args.ca_namespace,
        workload_cert_ttl=args.workload_cert_ttl,
        server_names=("localhost", *args.server_name),
        plaintext=args.plaintext,
        default_export_to=_export_to(args.default_export_to),
        registry_grace=args.registry_grace,
        jwks_refresh=args.jwks_refresh,
        initial_pushes=args.initial_pushes,
        webhook=WebhookSettings(
            port=args.webhook_port,
            host=args.host,
            dns_names=tuple(args.webhook_dns_name or WebhookSettings().dns_names),
            ip_addresses=tuple(args.webhook_ip),
            configuration=args.webhook_configuration,
            injection=injection_config(args),
        )
        if args.webhook_port
        else None,
    )
    if settings.config_dir is not None and not settings.config_dir.is_dir():
        raise ValueError(f"--config-dir {args.config_dir}: not a directory")
    return settings


def _export_to(value: str) -> tuple[str, ...]:
    from controlplane.validate import parse_export_to

    return parse_export_to(
        [v.strip() for v in value.split(",") if v.strip()], "--default-export-to"
    )


def _prometheus_url(url: str) -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if url and (parts.scheme not in ("http", "https") or not parts.hostname):
        raise ValueError(f"--prometheus-url: {url!r} is not an http(s)://host[:port] URL")
    return url.rstrip("/")
