"""The `lightmesh sidecar` flags: declared with LIGHTMESH_* environment variables as defaults,
checked, and turned into the sidecar's `Settings`."""

from __future__ import annotations

import argparse
import os
from urllib.parse import urlsplit

from lightmesh.protocols import port_protocol
from sidecar.settings import Settings


def _env(name: str, default: str) -> str:
    return os.environ.get(f"LIGHTMESH_{name}", default)


def parse_labels(text: str) -> tuple[tuple[str, str], ...]:
    """Parse "k=v,k2=v2"; raise ValueError naming the bad item."""
    labels = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--labels: {item!r} is not key=value")
        labels.append((key, value))
    return tuple(sorted(labels))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the sidecar's flags."""
    add = parser.add_argument
    add("--control-plane", default=_env("CONTROL_PLANE", "127.0.0.1:15010"), help="host:port")
    add(
        "--mode",
        choices=["sidecar", "gateway"],
        default=_env("MODE", "sidecar"),
        help="sidecar (default), or gateway: an ingress gateway serving the Gateways that "
        "select its --labels (`lightmesh gateway` sets it)",
    )
    add("--workload", default=_env("WORKLOAD", ""), help="workload name (required)")
    add("--namespace", default=_env("NAMESPACE", "default"))
    add(
        "--service",
        action="append",
        default=[s for s in _env("SERVICES", "").split(",") if s],
        help="service this workload serves (local mode registration), NAME or NAME:PROTOCOL "
        "(grpc, http2, h2c, http: what a Kubernetes Service port's appProtocol would say); "
        "repeatable",
    )
    add("--labels", default=_env("LABELS", ""), help="workload labels, k=v,k2=v2")
    add("--service-account", default=_env("SERVICE_ACCOUNT", "default"))
    add("--app-host", default=_env("APP_HOST", "127.0.0.1"))
    add("--app-port", type=int, default=int(_env("APP_PORT", "0")))
    add(
        "--app-protocol",
        default=_env("APP_PROTOCOL", ""),
        help="the app port's protocol: grpc, http2 or h2c (HTTP/2 cleartext), http (HTTP/1.1); "
        "overrides what the control plane says from the workload's Service ports; undeclared "
        "there too: h2c for gRPC calls, HTTP/1.1 for the rest (Istio's appProtocol / port-name "
        "values)",
    )
    add("--bind", default=_env("BIND", "127.0.0.1"))
    add("--advertise", default=_env("ADVERTISE", ""))
    add("--outbound-port", type=int, default=int(_env("OUTBOUND_PORT", "15001")))
    add("--inbound-port", type=int, default=int(_env("INBOUND_PORT", "15006")))
    add(
        "--admin-port",
        type=int,
        default=int(_env("ADMIN_PORT", "15000")),
        help="admin interface (config dump, certs, quit, metrics, ready), on 127.0.0.1 only",
    )
    add(
        "--metrics-port",
        type=int,
        default=int(_env("METRICS_PORT", "0")),
        help="serve only /metrics, /ready and /healthz here, on --bind (0: off; injected: 15020)",
    )
    add("--max-regex-length", type=int, default=int(_env("MAX_REGEX_LENGTH", "1024")))
    add("--drain-timeout", type=float, default=float(_env("DRAIN_TIMEOUT", "5")))
    add(
        "--drain-delay",
        type=float,
        default=float(_env("DRAIN_DELAY", "0")),
        help="seconds to keep serving after SIGTERM (with /ready 503) before draining",
    )
    add("--log-level", default=_env("LOG_LEVEL", "info"))
    add("--ca-bundle", default=_env("CA_BUNDLE", ""), help="PEM roots to verify the control plane")
    add(
        "--token-file",
        default=_env("TOKEN_FILE", ""),
        help="bearer token for certificate requests (bootstrap or projected SA token)",
    )
    add("--cert-ttl", type=int, default=int(_env("CERT_TTL", "0")), help="seconds")
    add("--identity-dir", default=_env("IDENTITY_DIR", ""))
    add(
        "--intercept",
        action="store_true",
        default=_env("INTERCEPT", "") == "1",
        help="outbound connections are redirected by iptables: read their original destination",
    )
    add(
        "--metrics",
        action=argparse.BooleanOptionalAction,
        default=_env("METRICS", "true") == "true",
        help="record request metrics (default on)",
    )
    add(
        "--istio-metrics",
        action=argparse.BooleanOptionalAction,
        default=_env("ISTIO_METRICS", "false") == "true",
        help="also expose istio_* metrics with Istio's labels (for Istio dashboards and Kiali)",
    )
    add("--zipkin-url", default=_env("ZIPKIN_URL", ""), help="Zipkin v2 span endpoint URL")
    add(
        "--trace-sampling",
        type=float,
        default=float(_env("TRACE_SAMPLING", "1")),
        help="percent of new traces to sample, 0-100 (default 1)",
    )
    add("--access-log", default=_env("ACCESS_LOG", ""), help="JSON access log: '-' or a path")
    add(
        "--report-interval",
        type=float,
        default=float(_env("REPORT_INTERVAL", "5")),
        help="seconds between traffic reports to the control plane (its dashboard); 0: none",
    )
    switches = {
        "app-health": "while the app refuses connections, answer its requests as never delivered "
        "and report /ready 503",
        "default-ejection": "eject, for a second or more, endpoints that refuse connections or "
        "whose sidecar reports its app unreachable",
        "default-retries": "on routes without VirtualService retries, retry (twice, elsewhere) "
        "requests no app saw: connect failures and never-processed 503s, any method",
    }
    for name, text in switches.items():
        env = name.upper().replace("-", "_")
        add(
            f"--{name}",
            action=argparse.BooleanOptionalAction,
            default=_env(env, "true") == "true",
            help=f"{text} (default on; LIGHTMESH_{env}=false turns it off)",
        )


def _services(values: list[str]) -> list[tuple[str, str]]:
    """`--service` values as (name, protocol) pairs; raise ValueError for an unknown protocol."""
    found = []
    for value in values:
        name, _, declared = value.partition(":")
        protocol = port_protocol("", declared) if declared else ""
        if declared and protocol not in ("grpc", "http2", "http"):
            raise ValueError(
                f"--service {value}: protocol {declared!r} is not one of grpc, http2, h2c, http"
            )
        found.append((name, protocol))
    return found


def from_arguments(args: argparse.Namespace) -> Settings:
    """Build settings from parsed flags; raise ValueError with the flag at fault."""
    if not args.workload:
        raise ValueError("--workload (or LIGHTMESH_WORKLOAD) is required")
    if args.mode == "gateway" and args.app_port:
        raise ValueError("--app-port: a gateway has no app (its routes come from Gateways)")
    return Settings(
        mode=args.mode,
        control_plane=args.control_plane,
        workload=args.workload,
        namespace=args.namespace,
        services=tuple(name for name, _ in _services(args.service)),
        service_protocols=tuple((n, p) for n, p in _services(args.service) if p),
        labels=parse_labels(args.labels),
        service_account=args.service_account,
        app_host=args.app_host,
        app_protocol=port_protocol("", args.app_protocol) if args.app_protocol else "",
        app_port=args.app_port,
        bind=args.bind,
        advertise=args.advertise,
        outbound_port=args.outbound_port,
        inbound_port=args.inbound_port,
        admin_port=args.admin_port,
        metrics_port=args.metrics_port,
        max_regex_length=args.max_regex_length,
        drain_timeout=args.drain_timeout,
        drain_delay=args.drain_delay,
        log_level=args.log_level,
        ca_bundle=args.ca_bundle,
        token_file=args.token_file,
        cert_ttl=args.cert_ttl,
        identity_dir=args.identity_dir,
        intercept=args.intercept,
        metrics=args.metrics,
        istio_metrics=args.istio_metrics,
        zipkin_url=_zipkin_url(args.zipkin_url),
        trace_sampling=_sampling(args.trace_sampling),
        access_log=args.access_log,
        report_interval=_report_interval(args.report_interval),
        app_health=args.app_health,
        default_ejection=args.default_ejection,
        default_retries=args.default_retries,
    )


def _zipkin_url(url: str) -> str:
    parts = urlsplit(url)
    if url and (parts.scheme != "http" or not parts.hostname):
        raise ValueError(
            f"--zipkin-url: {url!r} is not an http://host[:port]/path URL "
            "(e.g. http://zipkin.istio-system:9411/api/v2/spans)"
        )
    return url


def _sampling(percent: float) -> float:
    if not 0.0 <= percent <= 100.0:
        raise ValueError(f"--trace-sampling: {percent} is not a percentage within 0..100")
    return percent


def _report_interval(seconds: float) -> float:
    if seconds < 0 or seconds != seconds:
        raise ValueError(f"--report-interval: {seconds} is not a number of seconds >= 0 (0: off)")
    return seconds
