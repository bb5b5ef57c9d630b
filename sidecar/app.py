"""Sidecar wiring: outbound, inbound and admin listeners, and the config client, in one loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from google.protobuf.json_format import MessageToDict

import lightmesh
from lightmesh.memory import return_freed_memory
from lightmesh.runtime import stop_on_signals
from lightmesh.v1 import discovery_pb2 as pb
from sidecar.admin.endpoints import Admin
from sidecar.admin.server import start_local_server
from sidecar.cluster.app_health import AppHealth
from sidecar.cluster.outlier import DEFAULT as DEFAULT_OUTLIER
from sidecar.config.apply import DataPlane
from sidecar.config.client import ConfigClient
from sidecar.contract import Completed
from sidecar.gateway import GatewayCollector, GatewayPorts
from sidecar.identity.manager import CertificateManager
from sidecar.identity.tls import MeshTLS
from sidecar.listeners.engine import ProxyListener, start_proxy
from sidecar.routing.router import InboundRouter, OutboundRouter
from sidecar.settings import Settings
from sidecar.telemetry import wiring
from sidecar.telemetry.exposition import Registry
from sidecar.telemetry.hooks import wrap_recorder, wrap_resolver
from sidecar.telemetry.report import TrafficReporter
from sidecar.telemetry.resilience import ResilienceCollector
from sidecar.telemetry.state import SidecarState
from sidecar.telemetry.tcp_metrics import TcpCollector, TcpMetrics
from sidecar.upstream.app_probe import run_probes

log = logging.getLogger("sidecar")

ADMIN_HOST = "127.0.0.1"


def build_node(settings: Settings, *, inbound_port: int) -> pb.Node:
    """The identity (and local-mode registrations) announced to the control plane."""
    node = pb.Node(
        id=f"{settings.workload}-{uuid.uuid4().hex[:6]}.{settings.namespace}",
        workload=settings.workload,
        namespace=settings.namespace,
        labels=dict(settings.labels),
        service_account=settings.service_account,
        sidecar_version=lightmesh.__version__,
        proxy_type="gateway" if settings.mode == "gateway" else "",
    )
    if inbound_port:
        protocols = dict(settings.service_protocols)
        for service in settings.services:
            node.registrations.add(
                service=service,
                address=settings.advertise or settings.bind,
                port=inbound_port,
                app_protocol=protocols.get(service, ""),
            )
    return node


def _certificate_manager(
    settings: Settings,
    ca_bundle: Path | None,
    mesh_tls: MeshTLS,
    stack: contextlib.ExitStack,
) -> CertificateManager | None:
    if not settings.token_file:
        return None
    if settings.identity_dir:
        directory = Path(settings.identity_dir)
    else:
        # A private directory that goes away with the sidecar: the key must not outlive it.
        temporary = tempfile.TemporaryDirectory(prefix=f"lightmesh-{settings.workload}-")
        directory = Path(stack.enter_context(temporary))
    return CertificateManager(
        target=settings.control_plane,
        ca_bundle=ca_bundle,
        token_file=Path(settings.token_file),
        namespace=settings.namespace,
        service_account=settings.service_account,
        directory=directory,
        validity_seconds=settings.cert_ttl,
        on_rotated=mesh_tls.rotated,
    )


async def run(settings: Settings, *, stop: asyncio.Event | None = None) -> None:
    """Run the sidecar until `stop` is set or SIGINT/SIGTERM arrives, then drain."""
    stop = stop or asyncio.Event()
    stop_on_signals(stop)

    dataplane = DataPlane(
        max_regex_length=settings.max_regex_length,
        default_outlier=DEFAULT_OUTLIER if settings.default_ejection else None,
    )
    mesh_tls = MeshTLS()  # no certificate until the manager installs one: plaintext meanwhile
    dataplane.on_inbound = lambda policy: mesh_tls.set_roots(policy.trust_bundle)
    outbound_router = OutboundRouter(dataplane, default_retries=settings.default_retries)
    registry = Registry()
    telemetry = wiring.build(settings, registry)
    # Intercepted connections that are not HTTP: counted once each, when they close.
    tcp_metrics = TcpMetrics(
        reporter="source", workload=settings.workload, namespace=settings.namespace
    )
    registry.register(TcpCollector(tcp_metrics))

    def record_tcp(done: Completed) -> None:
        outbound_router.finished(done)  # the endpoint's in-flight slot, for the balancer
        tcp_metrics.record(done)

    gateway: GatewayPorts | None = None
    outbound: ProxyListener | None = None
    if settings.mode == "gateway":
        # The ports come with the config (GatewayListener); upstreams as the outbound listener's.
        gateway = GatewayPorts(
            bind=settings.bind,
            dataplane=dataplane,
            telemetry=telemetry.outbound,
            client_tls=lambda: mesh_tls.client,
            client_tls_h2=lambda: mesh_tls.client_h2,
            mesh_server=lambda: mesh_tls.server,
            tcp_recorder=tcp_metrics.record,
            drain_timeout=settings.drain_timeout,
        )
        dataplane.on_gateway = gateway.update
        dataplane.on_upstreams = gateway.retire_upstreams
        registry.register(GatewayCollector(gateway))
    else:
        outbound = await start_proxy(
            settings.bind,
            settings.outbound_port,
            resolver=wrap_resolver(outbound_router.resolve, telemetry.outbound),
            recorder=wrap_recorder(
                telemetry.outbound, outbound=True, then=outbound_router.finished
            ),
            listener="outbound",
            client_tls=lambda: mesh_tls.client,
            client_tls_h2=lambda: mesh_tls.client_h2,
            intercept=settings.intercept,
            divert=outbound_router.divert,
            tcp_recorder=record_tcp,
        )
        # A cluster or endpoint gone from the config: GOAWAY its pooled HTTP/2 connections.
        dataplane.on_upstreams = outbound.retire_upstreams
    inbound = None
    inbound_router: InboundRouter | None = None
    app_health = AppHealth() if settings.app_port and settings.app_health else None
    if settings.app_port:
        inbound_router = InboundRouter(
            app_host=settings.app_host,
            app_port=settings.app_port,
            dataplane=dataplane,
            own_identity=lambda: mesh_tls.identity,
            app_health=app_health,
            app_protocol=settings.app_protocol,
        )

        def app_finished(done: Completed) -> None:
            if app_health is not None:
                app_health.finished(done, time.monotonic())

        inbound = await start_proxy(
            settings.bind,
            settings.inbound_port,
            resolver=wrap_resolver(inbound_router.resolve, telemetry.inbound),
            recorder=wrap_recorder(
                telemetry.inbound, outbound=False, then=app_finished if app_health else None
            ),
            listener="inbound",
            inbound_tls=mesh_tls,
            mtls_mode=lambda: dataplane.inbound.mode,
            hide_mesh_headers=True,
        )
    node = build_node(settings, inbound_port=inbound.port if inbound else 0)
    ca_bundle = Path(settings.ca_bundle) if settings.ca_bundle else None
    reporter = TrafficReporter(
        metrics=telemetry.recorded,
        clusters=lambda: dataplane.clusters,
        app=telemetry.app,
        version=telemetry.version,
        services=settings.services,
    )
    client = ConfigClient(
        target=settings.control_plane,
        ca_bundle=ca_bundle,
        node=node,
        dataplane=dataplane,
        report=reporter.build if settings.report_interval and telemetry.recorded else None,
        report_interval=settings.report_interval or 5.0,
        token_file=Path(settings.token_file) if settings.token_file else None,
    )
    cleanup = contextlib.ExitStack()
    certificates = _certificate_manager(settings, ca_bundle, mesh_tls, cleanup)
    active: dict[str, Callable[[], int]] = {}
    if outbound is not None:
        active["outbound"] = lambda: outbound.active
    if gateway is not None:
        active["gateway"] = lambda: gateway.active
    if inbound is not None:
        active["inbound"] = lambda: inbound.active
    registry.register(
        SidecarState(
            protocol=client.protocol,
            connected=lambda: client.connected,
            active=active,
            exporter=telemetry.exporter,
        )
    )
    registry.register(
        ResilienceCollector(
            clusters=lambda: dataplane.clusters,
            mirrors=outbound.mirrors if outbound else None,
            connections_opened=outbound.connections_opened if outbound else None,
            wrong_identity=outbound.wrong_identity if outbound else None,
            admission=inbound_router.admission
            if inbound_router is not None
            else gateway.admission
            if gateway is not None
            else None,
        )
    )
    draining = False
    admin = Admin(
        node=MessageToDict(node),
        client=client,
        dataplane=dataplane,
        registry=registry,
        draining=lambda: draining,
        certificates=certificates,
        mesh_tls=mesh_tls,
        quit=stop.set,  # POST /quitquitquit: drain and exit, as on SIGTERM
        app_health=app_health,
        logger=logging.getLogger(),
        tap=telemetry.tap,
    )
    # Loopback only, whatever --bind says: the admin interface shows the whole config and stops
    # the proxy. What the network needs (probes, Prometheus) is on the metrics port.
    admin_server = await start_local_server(ADMIN_HOST, settings.admin_port, admin.handle)
    admin_port = admin_server.sockets[0].getsockname()[1]
    metrics_server = (
        await start_local_server(settings.bind, settings.metrics_port, admin.handle_public)
        if settings.metrics_port
        else None
    )
    log.info(
        "sidecar listening",
        extra={
            "event": "started",
            "node": node.id,
            "pid": os.getpid(),
            "mode": settings.mode,
            "outbound_port": outbound.port if outbound else None,
            "inbound_port": inbound.port if inbound else None,
            "admin_port": admin_port,
            "metrics_port": metrics_server.sockets[0].getsockname()[1] if metrics_server else None,
            "control_plane": settings.control_plane,
        },
    )
    client_task = asyncio.create_task(client.run(stop), name="config-client")
    certs_task = (
        asyncio.create_task(certificates.run(stop), name="certificates") if certificates else None
    )
    telemetry_task = asyncio.create_task(telemetry.run(stop), name="telemetry")
    memory_task = asyncio.create_task(return_freed_memory(stop), name="memory")
    gateway_task = asyncio.create_task(gateway.run(stop), name="gateway-ports") if gateway else None
    probes_task = (
        asyncio.create_task(
            run_probes(app_health, settings.app_host, settings.app_port, stop), name="app-probes"
        )
        if app_health is not None
        else None
    )
    await stop.wait()
    draining = True  # /ready answers 503 from now on
    log.info(
        "draining",
        extra={
            "event": "draining",
            "delay": settings.drain_delay,
            "timeout": settings.drain_timeout,
        },
    )
    if settings.drain_delay > 0:
        # Keep serving while the endpoint is being taken out of rotation.
        await asyncio.sleep(settings.drain_delay)
    if gateway_task is not None:
        await gateway_task
    await asyncio.gather(
        *([outbound.close(settings.drain_timeout)] if outbound else []),
        *([gateway.close(settings.drain_timeout)] if gateway else []),
        *([inbound.close(settings.drain_timeout)] if inbound else []),
    )
    await client_task
    if certs_task is not None:
        await certs_task
    await telemetry_task
    if probes_task is not None:
        await probes_task
    await memory_task
    await telemetry.close()  # the spans of requests that finished while draining
    for server in (admin_server, metrics_server):
        if server is not None:
            server.close()
            await server.wait_closed()
    cleanup.close()
    log.info("stopped", extra={"event": "stopped"})
