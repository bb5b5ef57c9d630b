"""An ingress gateway's listeners: Gateways selecting it + VirtualServices bound to them. Pure.

Istio's semantics, as far as lightmesh implements them (docs/gateway.md):
- A Gateway applies to a gateway proxy when every label of its `selector` is one of the proxy's
  labels, whatever namespaces the two are in (an empty selector selects every gateway).
- A VirtualService is bound to a Gateway when its `gateways` lists it ("namespace/name"). A
  server takes it when the server's host "namespace/host" allows the VirtualService's namespace
  ("*" any, "." the Gateway's, else that name) and one of its hosts matches the server's host:
  equal, or one a wildcard ("*", "*.suffix") that covers the other. The virtual host's domain is
  the narrower of the two, so `*` on a server and `shop.example.com` on a VirtualService routes
  only shop.example.com.
- Servers are grouped by port: one `GatewayListener` per port, with every server on it (TLS
  certificates chosen by SNI among them) and the routes of every VirtualService bound there. Two
  VirtualServices giving the same domain on one port: the first by namespace/name wins.
- `credentialName`: a Kubernetes TLS Secret in the gateway's own namespace (its tls.crt,
  tls.key and, for MUTUAL, ca.crt, pushed in the listener), or, when it contains "/", a directory
  on the gateway's file system holding those three files (local mode; the gateway reads it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from controlplane.model import (
    Gateway,
    GatewayServer,
    HTTPMatch,
    ResourceKey,
    TlsSecret,
    VirtualService,
)
from controlplane.translate.clusters import cluster_name
from controlplane.translate.routes import route_message
from controlplane.world import SECRET, World
from lightmesh.v1 import config_pb2 as pb

_HTTP_PROTOCOLS = frozenset({"HTTP", "HTTPS", "HTTP2", "GRPC"})
_MODES = {
    None: pb.GATEWAY_TLS_NONE,
    "SIMPLE": pb.GATEWAY_TLS_SIMPLE,
    "MUTUAL": pb.GATEWAY_TLS_MUTUAL,
    "PASSTHROUGH": pb.GATEWAY_TLS_PASSTHROUGH,
    # Istio's ISTIO_MUTUAL on a gateway server: the gateway's workload certificate, and
    # clients with mesh certificates (the gateway's own mesh TLS; nothing to push).
    "ISTIO_MUTUAL": pb.GATEWAY_TLS_ISTIO_MUTUAL,
}

Secrets = Callable[[ResourceKey], TlsSecret | None]


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    """What one gateway proxy receives: its listeners and the hosts their routes send to."""

    listeners: tuple[pb.GatewayListener, ...]
    destinations: frozenset[str]


def selects(gateway: Gateway, labels: Mapping[str, str]) -> bool:
    """Whether the Gateway applies to a gateway proxy with these labels."""
    return all(labels.get(k) == v for k, v in gateway.selector)


def host_matches(pattern: str, host: str) -> str | None:
    """The narrower of two hosts when they overlap ("*", "*.suffix" or names), else None."""
    if pattern == host:
        return host
    for wide, narrow in ((pattern, host), (host, pattern)):
        if wide == "*":
            return narrow
        if wide.startswith("*.") and narrow.endswith(wide[1:]) and narrow != wide[1:]:
            return narrow
    return None


def namespace_allows(space: str, gateway_namespace: str, vs_namespace: str) -> bool:
    """The namespace part of a server host: which VirtualServices may bind to it."""
    if space == "*":
        return True
    if space == ".":
        return vs_namespace == gateway_namespace
    return vs_namespace == space


def _server_domains(server: GatewayServer, gateway: Gateway, vs: VirtualService) -> list[str]:
    domains: list[str] = []
    for entry in server.hosts:
        space, _, pattern = entry.rpartition("/")
        if not namespace_allows(space or "*", gateway.key.namespace, vs.key.namespace):
            continue
        for host in vs.hosts:
            domain = host_matches(pattern, host)
            if domain is not None and domain not in domains:
                domains.append(domain)
    return domains


def gateway_config(
    gateways: Iterable[Gateway],
    virtual_services: Iterable[VirtualService],
    *,
    namespace: str,
    secrets: Secrets,
) -> GatewayConfig:
    """The listeners of a gateway proxy in `namespace` from the Gateways selecting it (in
    namespace/name order) and every VirtualService (bound or not: this picks)."""
    selected = sorted(gateways, key=lambda g: g.key)
    services = sorted(virtual_services, key=lambda v: v.key)
    by_port: dict[int, pb.GatewayListener] = {}
    taken: dict[int, set[str]] = {}
    destinations: set[str] = set()
    for gateway in selected:
        gw_name = f"{gateway.key.namespace}/{gateway.key.name}"
        bound = [vs for vs in services if gw_name in vs.gateways]
        for index, server in enumerate(gateway.servers):
            listener = by_port.get(server.port)
            if listener is None:
                listener = by_port[server.port] = pb.GatewayListener(
                    name=f"port-{server.port}", port=server.port
                )
                taken[server.port] = set()
            listener.servers.append(
                pb.GatewayServer(
                    name=f"{gw_name}/servers[{index}]"
                    + (f" ({server.port_name})" if server.port_name else ""),
                    hosts=[h.rpartition("/")[2] for h in server.hosts],
                    protocol=server.protocol,
                    tls=_tls(server, namespace=namespace, secrets=secrets),
                )
            )
            if server.tls_mode == "PASSTHROUGH":
                for vs in bound:
                    for route in _tls_routes(server, gateway, vs, gw_name):
                        listener.tls_routes.append(route)
                        destinations |= {d.host for r in vs.tls for d in r.destinations}
                continue
            if server.protocol not in _HTTP_PROTOCOLS:
                continue  # TCP servers: not implemented (docs/gateway.md)
            for vs in bound:
                domains = [
                    d for d in _server_domains(server, gateway, vs) if d not in taken[server.port]
                ]
                if not domains:
                    continue
                routes = _routes(vs, gw_name)
                for domain in domains:
                    taken[server.port].add(domain)
                    listener.virtual_hosts.append(
                        pb.VirtualHost(
                            name=f"{server.port}|{domain}",
                            domains=[domain],
                            routes=routes,
                            origin=str(vs.key),
                        )
                    )
                destinations |= vs.destination_hosts()
    return GatewayConfig(
        listeners=tuple(by_port[p] for p in sorted(by_port)), destinations=frozenset(destinations)
    )


def gateway_of(world: World, namespace: str, labels: Mapping[str, str]) -> GatewayConfig:
    """The config of a gateway proxy in `namespace` with `labels`."""
    return gateway_config(
        [g for g in world.of_kind("Gateway") if isinstance(g, Gateway) and selects(g, labels)],
        [v for v in world.of_kind("VirtualService") if isinstance(v, VirtualService)],
        namespace=namespace,
        secrets=world.secrets.get,
    )


def _tls_routes(
    server: GatewayServer, gateway: Gateway, vs: VirtualService, gw_name: str
) -> list[pb.TlsRoute]:
    """The VirtualService's `tls` routes a PASSTHROUGH server takes: match entries for this
    Gateway and port, their SNI names narrowed to the server's hosts."""
    allowed = [
        entry.rpartition("/")[2]
        for entry in server.hosts
        if namespace_allows(
            entry.rpartition("/")[0] or "*", gateway.key.namespace, vs.key.namespace
        )
    ]
    out = []
    for route in vs.tls:
        names: list[str] = []
        for match in route.matches:
            if match.gateways and gw_name not in match.gateways:
                continue
            if match.port is not None and match.port != server.port:
                continue
            for sni in match.sni_hosts:
                for pattern in allowed:
                    name = host_matches(pattern, sni)
                    if name is not None and name not in names:
                        names.append(name)
        if names:
            out.append(
                pb.TlsRoute(
                    sni_hosts=names,
                    clusters=[
                        pb.WeightedCluster(cluster=cluster_name(d.host, d.subset), weight=d.weight)
                        for d in route.destinations
                    ],
                    origin=str(vs.key),
                )
            )
    return out


def _routes(vs: VirtualService, gateway: str) -> list[pb.Route]:
    def applies(match: HTTPMatch) -> bool:
        return not match.gateways or gateway in match.gateways

    return [
        route_message(route, index, applies)
        for index, route in enumerate(vs.http)
        # A route whose every match entry is for other Gateways (or the mesh) never matches here.
        if not route.matches or any(applies(m) for m in route.matches)
    ]


def _tls(server: GatewayServer, *, namespace: str, secrets: Secrets) -> pb.GatewayTls:
    tls = pb.GatewayTls(
        mode=_MODES[server.tls_mode]
        if server.protocol in ("HTTPS", "TLS")
        else pb.GATEWAY_TLS_NONE,
        https_redirect=server.https_redirect,
        min_protocol_version=server.min_protocol,
        max_protocol_version=server.max_protocol,
        client_subject_alt_names=list(server.subject_alt_names),
    )
    if tls.mode in (pb.GATEWAY_TLS_NONE, pb.GATEWAY_TLS_PASSTHROUGH, pb.GATEWAY_TLS_ISTIO_MUTUAL):
        return tls
    name = server.credential_name
    if name and "/" in name:
        # Local mode: a directory laid out as a mounted TLS Secret.
        directory = name.rstrip("/")
        tls.cert_file, tls.key_file = f"{directory}/tls.crt", f"{directory}/tls.key"
        if tls.mode == pb.GATEWAY_TLS_MUTUAL:
            tls.ca_file = f"{directory}/ca.crt"
    elif name:
        secret = secrets(ResourceKey(SECRET, namespace, name))
        if secret is None:
            tls.credential_error = f"Secret {namespace}/{name} not found"
        elif not secret.cert_chain or not secret.private_key:
            tls.credential_error = f"Secret {namespace}/{name} has no tls.crt and tls.key"
        else:
            tls.cert_chain_pem, tls.private_key_pem = secret.cert_chain, secret.private_key
            if tls.mode == pb.GATEWAY_TLS_MUTUAL:
                if secret.ca:
                    tls.ca_pem = secret.ca
                else:
                    # Istio also reads the client CA from a Secret named <name>-cacert.
                    ca = secrets(ResourceKey(SECRET, namespace, f"{name}-cacert"))
                    if ca is not None and ca.ca:
                        tls.ca_pem = ca.ca
                    else:
                        tls.credential_error = (
                            f"Secret {namespace}/{name} has no ca.crt (mode MUTUAL needs the "
                            f"client CA; or a Secret {name}-cacert with ca.crt)"
                        )
    else:
        tls.cert_file, tls.key_file = server.server_certificate, server.private_key
        tls.ca_file = server.ca_certificates
    return tls
