"""A gateway port's config, compiled from its `GatewayListener`: servers, routes, TLS routes. Pure.

- `server_for(name, tls=...)` picks the server of a connection: among the TLS servers by the SNI
  of its ClientHello, among the plain-text ones by the request's Host; the first whose hosts match
  (exact name, then `*.suffix`, then `*`, as Istio's filter chains), in the listener's order.
- `GatewayRoutes` is the port's route table: a request's Host is looked up exactly, then by
  wildcard suffixes from the longest (`a.b.example.com` → `*.b.example.com` → `*.example.com`),
  then `*`.
- `tls_route(sni)`: PASSTHROUGH servers' routes by SNI, same lookup order.

`compile_listener` raises `ConfigError` (the config client NACKs) for what it cannot apply.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from lightmesh.v1 import config_pb2 as pb
from sidecar.contract import RequestHead
from sidecar.errors import ConfigError
from sidecar.routing.table import (
    CompiledHost,
    CompiledRoute,
    RouteTable,
    WeightedClusters,
    compile_host,
)

_TLS_VERSIONS = ("", "TLSV1_2", "TLSV1_3")


def lookup_order(name: str) -> Iterator[str]:
    """The keys a name is looked up under: itself, its wildcard suffixes longest first, `*`."""
    name = name.lower().rstrip(".")
    if name:
        yield name
        labels = name.split(".")
        for start in range(1, len(labels)):
            yield "*." + ".".join(labels[start:])
    yield "*"


@dataclass(frozen=True, slots=True)
class Server:
    """One Gateway server on this port."""

    name: str
    hosts: tuple[str, ...]
    protocol: str
    tls: pb.GatewayTls

    @property
    def terminates(self) -> bool:
        """Whether it speaks TLS to clients (SIMPLE or MUTUAL)."""
        return self.tls.mode in (
            pb.GATEWAY_TLS_SIMPLE,
            pb.GATEWAY_TLS_MUTUAL,
            pb.GATEWAY_TLS_ISTIO_MUTUAL,
        )

    @property
    def passthrough(self) -> bool:
        """Whether its connections are routed by SNI and spliced, never decrypted."""
        return self.tls.mode == pb.GATEWAY_TLS_PASSTHROUGH

    @property
    def is_tls(self) -> bool:
        """Whether its clients start with a TLS ClientHello."""
        return self.tls.mode != pb.GATEWAY_TLS_NONE


class GatewayRoutes(RouteTable):
    """Virtual hosts by domain, with the wildcard lookup of a gateway."""

    def route(
        self, head: RequestHead, *, domain: str | None = None
    ) -> tuple[CompiledHost | None, CompiledRoute | None]:
        """The first virtual host matching the request's Host (or `domain`), and its route."""
        for key in lookup_order(head.host if domain is None else domain):
            if key in self._by_domain:
                return super().route(head, domain=key)
        return None, None


@dataclass(frozen=True, slots=True)
class TlsRoute:
    """A PASSTHROUGH route: SNI patterns and the weighted clusters taking them."""

    sni_hosts: tuple[str, ...]
    clusters: WeightedClusters
    origin: str


@dataclass(frozen=True, slots=True)
class CompiledListener:
    """Everything one gateway port serves."""

    name: str
    port: int
    servers: tuple[Server, ...]
    routes: GatewayRoutes
    tls_routes: tuple[TlsRoute, ...]

    @property
    def has_plaintext(self) -> bool:
        """Whether some server takes plain-text HTTP."""
        return any(not s.is_tls for s in self.servers)

    def server_for(self, name: str, *, tls: bool) -> Server | None:
        """The server of a connection named `name` (SNI or Host; "" when it sent none)."""
        candidates = [s for s in self.servers if s.is_tls == tls]
        for key in lookup_order(name):
            for server in candidates:
                if key in server.hosts:
                    return server
        if not name and tls:
            # No SNI (a client dialling an IP): the first terminating server, as Envoy's
            # default filter chain; PASSTHROUGH needs a name to route by.
            return next((s for s in candidates if s.terminates), None)
        return None

    def tls_route(self, sni: str) -> TlsRoute | None:
        """The PASSTHROUGH route of a connection's SNI."""
        for key in lookup_order(sni):
            for route in self.tls_routes:
                if key in route.sni_hosts or (not route.sni_hosts and key == "*"):
                    return route
        return None


def compile_listener(listener: pb.GatewayListener, *, max_regex: int) -> CompiledListener:
    """Compile one port, or raise ConfigError naming what this gateway cannot apply."""
    where = f"gateway listener {listener.name}"
    servers = []
    for message in listener.servers:
        tls = message.tls
        if tls.mode not in pb.GatewayTlsMode.values():
            raise ConfigError(f"{where} {message.name}: TLS mode {tls.mode} is not supported")
        for version in (tls.min_protocol_version, tls.max_protocol_version):
            if version not in _TLS_VERSIONS:
                raise ConfigError(f"{where} {message.name}: TLS version {version!r} unsupported")
        servers.append(
            Server(
                name=message.name,
                hosts=tuple(h.lower() for h in message.hosts),
                protocol=message.protocol,
                tls=tls,
            )
        )
    by_domain: dict[str, CompiledHost] = {}
    for vhost in listener.virtual_hosts:
        compiled = compile_host(vhost, max_regex=max_regex)
        for domain in vhost.domains:
            by_domain.setdefault(domain.lower(), compiled)
    tls_routes = tuple(
        TlsRoute(
            sni_hosts=tuple(h.lower() for h in route.sni_hosts),
            clusters=WeightedClusters([(c.cluster, c.weight) for c in route.clusters]),
            origin=route.origin,
        )
        for route in listener.tls_routes
    )
    return CompiledListener(
        name=listener.name,
        port=listener.port,
        servers=tuple(servers),
        routes=GatewayRoutes(by_domain),
        tls_routes=tls_routes,
    )


def https_location(head: RequestHead) -> bytes:
    """Where httpsRedirect sends a request: the same host and path over https."""
    return f"https://{head.host}{head.path}".encode("latin-1")
