"""The ingress gateway's ports (`lightmesh gateway`): one listener per GatewayListener pushed.

The gateway is the sidecar's process in another mode (sidecar/app.py): the same config client,
certificate manager, telemetry and admin, and the same HTTP engine and outbound router, with
the mesh's mutual TLS to upstreams under the gateway's own identity. What differs is here: the
listeners follow the config (a port appears, changes or goes with its GatewayListener), each
port routes by its own table (sidecar/routing/gateway.py), and its connections are sorted by
sidecar/listeners/gateway.py into plain HTTP, terminated TLS and passthrough.

Certificates: each terminating server's `ssl.SSLContext` is built from the PEM the control plane
pushed (a Kubernetes Secret) or from files (local mode, or Istio's serverCertificate), and keyed
by a fingerprint of its inputs (the files' size and mtime), checked on every new connection: a
rotated Secret or file is used from the next handshake on, while connections already open keep
the context they started with, so nothing in flight is dropped. A credential that does not load
(a half-written pair, a key that does not match) keeps the last good context and is logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import ssl
import tempfile
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from lightmesh.response_flags import ResponseFlag
from lightmesh.spiffe import principal_of
from lightmesh.v1 import config_pb2 as pb
from sidecar.cluster.cluster import Cluster
from sidecar.config.apply import DataPlane
from sidecar.contract import Completed, Decision, Forward, LocalReply, Recorder, RequestHead
from sidecar.listeners.engine import ProxyListener, start_proxy
from sidecar.listeners.gateway import GatewayAccept
from sidecar.listeners.tcp import DEFAULT_IDLE_TIMEOUT, TcpProxyListener
from sidecar.routing.destinations import Destinations
from sidecar.routing.gateway import CompiledListener, GatewayRoutes, Server, https_location
from sidecar.routing.router import OutboundRouter
from sidecar.routing.table import CompiledRoute
from sidecar.security.admission import Admission
from sidecar.security.inbound import InboundPolicy
from sidecar.telemetry.exposition import Collector, CounterMetricFamily, Metric
from sidecar.telemetry.hooks import Telemetry, wrap_recorder, wrap_resolver
from sidecar.upstream.pool import PoolKey

log = logging.getLogger("sidecar.gateway")

BIND_RETRY = 5.0  # seconds between attempts to listen on a port that was in use
_VERSIONS = {"TLSV1_2": ssl.TLSVersion.TLSv1_2, "TLSV1_3": ssl.TLSVersion.TLSv1_3}


@dataclass(frozen=True, slots=True)
class _Built:
    fingerprint: str
    context: ssl.SSLContext | None


def _file_state(path: str) -> str:
    try:
        stat = os.stat(path)
    except OSError as error:
        return f"{path}:missing:{error.errno}"
    return f"{path}:{stat.st_size}:{stat.st_mtime_ns}:{stat.st_ino}"


def fingerprint(tls: pb.GatewayTls) -> str:
    """What a server's context is built from (PEM digests, files' size and mtime, versions)."""
    digest = hashlib.sha256()
    for part in (
        str(tls.mode),
        tls.cert_chain_pem,
        tls.private_key_pem,
        tls.ca_pem,
        tls.min_protocol_version,
        tls.max_protocol_version,
        *(_file_state(p) for p in (tls.cert_file, tls.key_file, tls.ca_file) if p),
    ):
        digest.update(part.encode())
        digest.update(b"\0")
    return digest.hexdigest()


def build_context(tls: pb.GatewayTls) -> ssl.SSLContext:
    """A server context for one terminating server; raises OSError/ssl.SSLError/ValueError."""
    if tls.credential_error:
        raise ValueError(tls.credential_error)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = _VERSIONS.get(tls.min_protocol_version, ssl.TLSVersion.TLSv1_2)
    if tls.max_protocol_version:
        context.maximum_version = _VERSIONS[tls.max_protocol_version]
    # h2 first (what Envoy offers at Istio's gateways): the engine above the TLS layer tells
    # HTTP/2 by its preface, so gRPC clients (which require ALPN h2) and HTTP/1.1 ones share it.
    context.set_alpn_protocols(["h2", "http/1.1"])
    if tls.cert_chain_pem:
        # ssl loads a key pair from files only: a private directory that lives for the load.
        with tempfile.TemporaryDirectory(prefix="lightmesh-gw-") as directory:
            cert, key = Path(directory, "tls.crt"), Path(directory, "tls.key")
            cert.write_text(tls.cert_chain_pem)
            fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write(tls.private_key_pem)
            context.load_cert_chain(cert, key)
    elif tls.cert_file and tls.key_file:
        context.load_cert_chain(tls.cert_file, tls.key_file)
    else:
        raise ValueError("no certificate (credentialName or serverCertificate and privateKey)")
    if tls.mode == pb.GATEWAY_TLS_MUTUAL:
        if tls.ca_pem:
            context.load_verify_locations(cadata=tls.ca_pem)
        elif tls.ca_file:
            context.load_verify_locations(cafile=tls.ca_file)
        else:
            raise ValueError("mode MUTUAL without a client CA (ca.crt or caCertificates)")
        context.verify_mode = ssl.CERT_REQUIRED
    return context


class _PortPlane:
    """The data plane as one port's router sees it: the port's routes, everyone's clusters."""

    def __init__(self, dataplane: DataPlane, port: GatewayPortState) -> None:
        self._dataplane = dataplane
        self._port = port

    @property
    def routes(self) -> GatewayRoutes:
        return self._port.listener.routes

    @property
    def clusters(self) -> Mapping[str, Cluster]:
        return self._dataplane.clusters

    @property
    def destinations(self) -> Destinations:
        return self._dataplane.destinations

    @property
    def inbound(self) -> InboundPolicy:
        return self._dataplane.inbound


class GatewayPortState:
    """One port: its current config, its TLS contexts, its HTTP and passthrough listeners."""

    def __init__(
        self,
        listener: CompiledListener,
        dataplane: DataPlane,
        mesh_server: Callable[[], ssl.SSLContext | None] = lambda: None,
        admission: Admission | None = None,
    ) -> None:
        self.listener = listener
        self._mesh_server = mesh_server
        self._admission = admission or Admission(time.monotonic)
        self._dataplane = dataplane
        self.router = OutboundRouter(_PortPlane(dataplane, self), route_gate=self._limit_route)
        self._contexts: dict[str, _Built] = {}
        self.certificate_failures = 0
        self.handshakes = 0
        self.refused_plaintext = 0
        self.failed_handshakes = 0
        self.proxy: ProxyListener | None = None
        self.tcp: TcpProxyListener | None = None

    @property
    def server(self) -> ssl.SSLContext | None:
        return None  # contexts are per server (`context`)

    def context(self, server: Server) -> ssl.SSLContext | None:
        """The current context of a terminating server (rebuilt when its inputs changed)."""
        if server.tls.mode == pb.GATEWAY_TLS_ISTIO_MUTUAL:
            return self._mesh_server()  # the workload certificate, rotated by its manager
        print_ = fingerprint(server.tls)
        built = self._contexts.get(server.name)
        if built is not None and built.fingerprint == print_:
            return built.context
        try:
            context: ssl.SSLContext | None = build_context(server.tls)
            log.info(
                "gateway certificate loaded",
                extra={"event": "gateway_certificate", "server": server.name},
            )
        except (OSError, ssl.SSLError, ValueError) as error:
            self.certificate_failures += 1
            context = built.context if built is not None else None
            log.error(
                "gateway certificate of %s not loaded (%s): %s",
                server.name,
                "keeping the last good one" if context is not None else "refusing its handshakes",
                error,
                extra={"event": "gateway_certificate_failed", "server": server.name},
            )
        self._contexts[server.name] = _Built(print_, context)
        return context

    def forget_contexts(self, keep: set[str]) -> None:
        """Drop the contexts of servers no longer on the port."""
        for name in set(self._contexts) - keep:
            del self._contexts[name]

    def resolve(self, head: RequestHead) -> Decision:
        """A request on this port: httpsRedirect, else the port's routes. The gateway is the
        edge: x-forwarded-proto says how the client reached it, whatever the client sent."""
        listener = self.listener
        proto = b"http" if listener.has_plaintext else b"https"
        head.headers = [h for h in head.headers if h[0] != b"x-forwarded-proto"]
        head.headers.append((b"x-forwarded-proto", proto))
        # RequestAuthentication and AuthorizationPolicy selecting the gateway (its INBOUND
        # policy), before routing as in Istio's filter chain: a JWT's claims put in headers can
        # then be routed on. Its rate limit once the route is known (`_limit_route`), so a route
        # can have buckets of its own.
        policy = self._dataplane.inbound
        if policy.policies or policy.authenticator is not None:
            refused = self._admission.authenticate(policy, head, principal_of(head.peer_identity))
            if refused is not None:
                return refused
        if listener.has_plaintext:
            server = listener.server_for(head.host, tls=False)
            if server is not None and server.tls.https_redirect:
                if policy.rate_limit is not None:
                    refused = self._admission.limit(policy, principal_of(head.peer_identity), "")
                    if refused is not None:
                        return refused
                return LocalReply(
                    status=301,
                    body="",
                    headers=((b"location", https_location(head)),),
                )
        return self.router.resolve(head)

    def _limit_route(self, head: RequestHead, route: CompiledRoute) -> LocalReply | None:
        policy = self._dataplane.inbound
        if policy.rate_limit is None:
            return None
        return self._admission.limit(policy, principal_of(head.peer_identity), route.name)

    def passthrough(self, sni: str) -> Forward | LocalReply:
        """The endpoint of a PASSTHROUGH connection, by its SNI's TLS route."""
        route = self.listener.tls_route(sni)
        if route is None:
            return LocalReply(status=404, body=f"no TLS route for {sni!r}", flags=ResponseFlag.NR)
        return self.router.tcp_target(route.clusters.pick())

    def adopt(self, transport: asyncio.Transport, decided: Forward | LocalReply) -> None:
        """Hand a passthrough connection to the port's TCP listener."""
        if self.tcp is None:
            transport.abort()  # the port is closing
            return
        self.tcp.adopt(transport, decided)


class GatewayPorts:
    """The gateway's ports, following the GatewayListeners the config client applies."""

    def __init__(
        self,
        *,
        bind: str,
        dataplane: DataPlane,
        telemetry: Telemetry,
        client_tls: Callable[[], ssl.SSLContext | None],
        client_tls_h2: Callable[[], ssl.SSLContext | None] = lambda: None,
        mesh_server: Callable[[], ssl.SSLContext | None] = lambda: None,
        tcp_recorder: Recorder | None = None,
        drain_timeout: float = 5.0,
    ) -> None:
        self._bind = bind
        self._dataplane = dataplane
        self._telemetry = telemetry
        self._client_tls = client_tls
        self._client_tls_h2 = client_tls_h2  # HTTP/2 upstreams (ALPN h2) to mesh sidecars
        self._mesh_server = mesh_server
        # One for every port: a rate limit is the workload's, whatever port a request came on.
        self.admission = Admission(time.monotonic)
        self._tcp_recorder = tcp_recorder
        self._drain_timeout = drain_timeout
        self.ports: dict[int, GatewayPortState] = {}
        self._wanted: Mapping[str, CompiledListener] = {}
        self._changed = asyncio.Event()
        self._closed = False
        self.bind_errors: dict[int, str] = {}

    @property
    def active(self) -> int:
        """Exchanges and passthrough connections in flight, every port."""
        return sum(
            (p.proxy.active if p.proxy else 0) + (p.tcp.active if p.tcp else 0)
            for p in self.ports.values()
        )

    def retire_upstreams(self, gone: Collection[PoolKey]) -> int:
        """GOAWAY every port's pooled HTTP/2 connections to `gone` (endpoints removed)."""
        return sum(p.proxy.retire_upstreams(gone) for p in self.ports.values() if p.proxy)

    def update(self, listeners: Mapping[str, CompiledListener]) -> None:
        """The config changed (DataPlane.on_gateway): ports follow at the next loop turn."""
        self._wanted = dict(listeners)
        for listener in listeners.values():
            port = self.ports.get(listener.port)
            if port is not None:
                port.listener = listener  # new connections and requests use it from now on
                port.forget_contexts({s.name for s in listener.servers})
        self._changed.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Open and close ports as the config says, until `stop`."""
        while not stop.is_set():
            await self._reconcile()
            self._changed.clear()
            waiter = asyncio.ensure_future(self._changed.wait())
            stopper = asyncio.ensure_future(stop.wait())
            # A port that could not be bound (in use) is tried again a little later.
            retry = BIND_RETRY if self.bind_errors else None
            try:
                await asyncio.wait(
                    {waiter, stopper}, timeout=retry, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                waiter.cancel()
                stopper.cancel()

    async def _reconcile(self) -> None:
        wanted = {listener.port: listener for listener in self._wanted.values()}
        for number in set(self.bind_errors) - set(wanted):
            del self.bind_errors[number]
        for number in sorted(set(self.ports) - set(wanted)):
            port = self.ports.pop(number)
            log.info("gateway port closed", extra={"event": "gateway_port_closed", "port": number})
            await self._close_port(port, self._drain_timeout)
        for number in sorted(set(wanted) - set(self.ports)):
            port = GatewayPortState(
                wanted[number], self._dataplane, self._mesh_server, self.admission
            )
            try:
                await self._open(port)
            except OSError as error:
                if self.bind_errors.get(number) == str(error):
                    continue  # logged already; tried again every BIND_RETRY
                self.bind_errors[number] = str(error)
                log.error(
                    "gateway port %d cannot listen: %s",
                    number,
                    error,
                    extra={"event": "gateway_port_failed", "port": number},
                )
                continue
            self.bind_errors.pop(number, None)
            self.ports[number] = port
            log.info(
                "gateway port listening",
                extra={"event": "gateway_port", "port": number, "listener": port.listener.name},
            )

    async def _open(self, port: GatewayPortState) -> None:
        telemetry = self._telemetry
        router = port.router
        tcp_recorder = self._tcp_recorder

        def record_tcp(done: Completed) -> None:
            router.finished(done)
            if tcp_recorder is not None:
                tcp_recorder(done)

        loop = asyncio.get_running_loop()
        port.tcp = TcpProxyListener(
            resolve=lambda _: None,
            recorder=record_tcp,
            listener=f"gateway-{port.listener.port}-tls",
            idle_timeout=DEFAULT_IDLE_TIMEOUT,
            clock=loop.time,
        )
        port.tcp.start_sweeper()
        try:
            port.proxy = await start_proxy(
                self._bind,
                port.listener.port,
                resolver=wrap_resolver(port.resolve, telemetry),
                recorder=wrap_recorder(telemetry, outbound=True, then=router.finished),
                listener=f"gateway-{port.listener.port}",
                client_tls=self._client_tls,
                client_tls_h2=self._client_tls_h2,
                accept=lambda state: GatewayAccept(state, port),
            )
        except OSError:
            await port.tcp.close(0)
            raise

    @staticmethod
    async def _close_port(port: GatewayPortState, drain_timeout: float) -> None:
        if port.proxy is not None:
            await port.proxy.close(drain_timeout)
        if port.tcp is not None:
            await port.tcp.close(drain_timeout)

    async def close(self, drain_timeout: float) -> None:
        """Drain every port."""
        ports, self.ports = list(self.ports.values()), {}
        with contextlib.suppress(Exception):
            await asyncio.gather(*(self._close_port(p, drain_timeout) for p in ports))


class GatewayCollector(Collector):
    """The gateway's ports at scrape time: TLS handshakes by outcome, credentials that did not
    load, passthrough connections open (the counters live on the ports)."""

    def __init__(self, ports: GatewayPorts) -> None:
        self._ports = ports

    def collect(self) -> Iterator[Metric]:
        """Metric families for the Prometheus registry."""
        handshakes = CounterMetricFamily(
            "lightmesh_gateway_tls_handshakes",
            "TLS connections of a gateway port by outcome: ok (terminated), failed (no server "
            "for the SNI, no usable certificate, handshake error, client certificate refused), "
            "plaintext_refused (plain text on a TLS-only port).",
            labels=["port", "outcome"],
        )
        failures = CounterMetricFamily(
            "lightmesh_gateway_certificate_failures",
            "Server credentials that did not load (the last good one kept serving, if any).",
            labels=["port"],
        )
        for number, port in sorted(self._ports.ports.items()):
            label = str(number)
            handshakes.add_metric([label, "ok"], port.handshakes)
            handshakes.add_metric([label, "failed"], port.failed_handshakes)
            handshakes.add_metric([label, "plaintext_refused"], port.refused_plaintext)
            failures.add_metric([label], port.certificate_failures)
        yield from (handshakes, failures)
