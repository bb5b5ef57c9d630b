"""Sidecar settings, from command-line flags with LIGHTMESH_* environment variables as defaults."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """Everything the sidecar is started with."""

    control_plane: str = "127.0.0.1:15010"
    workload: str
    namespace: str = "default"
    services: tuple[str, ...] = ()
    labels: tuple[tuple[str, str], ...] = ()
    service_account: str = "default"
    app_host: str = "127.0.0.1"
    app_port: int = 0  # 0: no inbound listener
    bind: str = "127.0.0.1"
    advertise: str = ""  # address other sidecars reach this one at; default: bind
    outbound_port: int = 15001
    inbound_port: int = 15006
    admin_port: int = 15000
    max_regex_length: int = 1024
    drain_timeout: float = 5.0
    # On SIGTERM /ready turns 503 at once, listeners keep serving this long (so load balancers
    # and endpoint lists stop sending new work), then stop accepting and drain.
    drain_delay: float = 0.0
    log_level: str = "info"


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
    add("--workload", default=_env("WORKLOAD", ""), help="workload name (required)")
    add("--namespace", default=_env("NAMESPACE", "default"))
    add(
        "--service",
        action="append",
        default=[s for s in _env("SERVICES", "").split(",") if s],
        help="service this workload serves (local mode registration); repeatable",
    )
    add("--labels", default=_env("LABELS", ""), help="workload labels, k=v,k2=v2")
    add("--service-account", default=_env("SERVICE_ACCOUNT", "default"))
    add("--app-host", default=_env("APP_HOST", "127.0.0.1"))
    add("--app-port", type=int, default=int(_env("APP_PORT", "0")))
    add("--bind", default=_env("BIND", "127.0.0.1"))
    add("--advertise", default=_env("ADVERTISE", ""))
    add("--outbound-port", type=int, default=int(_env("OUTBOUND_PORT", "15001")))
    add("--inbound-port", type=int, default=int(_env("INBOUND_PORT", "15006")))
    add("--admin-port", type=int, default=int(_env("ADMIN_PORT", "15000")))
    add("--max-regex-length", type=int, default=int(_env("MAX_REGEX_LENGTH", "1024")))
    add("--drain-timeout", type=float, default=float(_env("DRAIN_TIMEOUT", "5")))
    add(
        "--drain-delay",
        type=float,
        default=float(_env("DRAIN_DELAY", "0")),
        help="seconds to keep serving after SIGTERM (with /ready 503) before draining",
    )
    add("--log-level", default=_env("LOG_LEVEL", "info"))


def from_arguments(args: argparse.Namespace) -> Settings:
    """Build settings from parsed flags; raise ValueError with the flag at fault."""
    if not args.workload:
        raise ValueError("--workload (or LIGHTMESH_WORKLOAD) is required")
    return Settings(
        control_plane=args.control_plane,
        workload=args.workload,
        namespace=args.namespace,
        services=tuple(args.service),
        labels=parse_labels(args.labels),
        service_account=args.service_account,
        app_host=args.app_host,
        app_port=args.app_port,
        bind=args.bind,
        advertise=args.advertise,
        outbound_port=args.outbound_port,
        inbound_port=args.inbound_port,
        admin_port=args.admin_port,
        max_regex_length=args.max_regex_length,
        drain_timeout=args.drain_timeout,
        drain_delay=args.drain_delay,
        log_level=args.log_level,
    )
