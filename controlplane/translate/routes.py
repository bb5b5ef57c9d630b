"""The routes of one host, as one `VirtualHost` resource. Pure.

A host's VirtualHost depends on its VirtualService (the one exported to the sidecar's namespace),
its service (virtual IPs, TCP ports) and on whether the sidecar is in the host's namespace (then
the short name is a domain too), so sidecars of one namespace share it.
"""

from __future__ import annotations

from collections.abc import Callable

from controlplane.model import HeaderOps, HTTPMatch, HTTPRoute, Service, StringMatch, VirtualService
from controlplane.translate.clusters import cluster_name, ms
from lightmesh.v1 import config_pb2 as pb


def virtual_host(
    host: str, vs: VirtualService | None, service: Service | None, *, namespace: str
) -> pb.VirtualHost:
    """The VirtualHost of `host` for sidecars of `namespace`: the VirtualService's routes, or one
    default route to the service's cluster."""
    if vs is None:
        default = pb.Route(
            name="default", clusters=[pb.WeightedCluster(cluster=cluster_name(host), weight=100)]
        )
        vhost = pb.VirtualHost(name=host, domains=_domains(host, namespace), routes=[default])
    else:
        vhost = pb.VirtualHost(
            name=host,
            domains=_domains(host, namespace),
            routes=[
                route_message(route, index)
                for index, route in enumerate(vs.http)
                # A route whose every match entry is for Gateways only never matches here.
                if not route.matches or any(m.for_mesh for m in route.matches)
            ],
            origin=str(vs.key),
        )
    if service is not None:
        # A service's virtual IPs are domains too: the sidecar looks up the address an
        # intercepted connection was dialled at (SO_ORIGINAL_DST) when the Host is not enough.
        vhost.domains.extend(service.addresses)
        vhost.tcp_routes.extend(
            pb.TcpRoute(port=port, cluster=cluster_name(host)) for port in service.tcp_ports
        )
    return vhost


def local_to(host: str, namespace: str) -> bool:
    """Whether sidecars of `namespace` also reach `host` by its short name."""
    parts = host.split(".")
    return len(parts) >= 4 and parts[2] == "svc" and parts[1] == namespace


def _domains(host: str, namespace: str) -> list[str]:
    name, _, rest = host.partition(".")
    parts = rest.split(".")
    if len(parts) < 3 or parts[1] != "svc":
        return [host]
    svc_ns = parts[0]
    domains = [host, f"{name}.{svc_ns}.svc", f"{name}.{svc_ns}"]
    if svc_ns == namespace:
        domains.append(name)
    return domains


def _for_mesh(match: HTTPMatch) -> bool:
    return match.for_mesh


def route_message(
    route: HTTPRoute, index: int, applies: Callable[[HTTPMatch], bool] = _for_mesh
) -> pb.Route:
    """One VirtualService route as a `Route`, with the match entries that `applies` keeps (by
    their `gateways`: the mesh's for sidecars, a Gateway's for gateways)."""
    out = pb.Route(
        name=route.name or f"http[{index}]",
        matches=[_match(m) for m in route.matches if applies(m)],
        clusters=[
            pb.WeightedCluster(cluster=cluster_name(d.host, d.subset), weight=d.weight)
            for d in route.destinations
        ],
        timeout_ms=ms(route.timeout),
        request_headers=_header_ops(route.request_headers),
        response_headers=_header_ops(route.response_headers),
    )
    if route.redirect is not None:
        r = route.redirect
        out.redirect.CopyFrom(pb.Redirect(uri=r.uri, authority=r.authority, code=r.code))
    if route.rewrite is not None:
        out.rewrite.CopyFrom(pb.Rewrite(uri=route.rewrite.uri, authority=route.rewrite.authority))
    if route.retries is not None:
        t = route.retries
        out.retries.CopyFrom(
            pb.RetryPolicy(
                attempts=t.attempts,
                per_try_timeout_ms=ms(t.per_try_timeout),
                retry_on=list(t.retry_on),
            )
        )
    if route.fault is not None:
        f = route.fault
        out.fault.CopyFrom(
            pb.Fault(
                delay_ms=ms(f.delay),
                delay_percent=f.delay_percent,
                abort_status=f.abort_status or 0,
                abort_grpc_status=f.abort_grpc or "",
                abort_percent=f.abort_percent,
            )
        )
    if route.mirror is not None:
        out.mirror.CopyFrom(
            pb.Mirror(
                cluster=cluster_name(route.mirror.host, route.mirror.subset),
                percent=route.mirror_percent,
            )
        )
    return out


def _header_ops(ops: HeaderOps) -> pb.HeaderOps:
    return pb.HeaderOps(
        set=[pb.HeaderValue(name=n, value=v) for n, v in ops.set],
        add=[pb.HeaderValue(name=n, value=v) for n, v in ops.add],
        remove=list(ops.remove),
    )


def _string_match(match: StringMatch | None) -> pb.StringMatch | None:
    if match is None:
        return None
    if match.kind == "present":
        return pb.StringMatch(present=True)
    if match.kind == "exact":
        return pb.StringMatch(exact=match.value)
    if match.kind == "prefix":
        return pb.StringMatch(prefix=match.value)
    return pb.StringMatch(regex=match.value)


def _match(match: HTTPMatch) -> pb.RouteMatch:
    return pb.RouteMatch(
        uri=_string_match(match.uri),
        method=_string_match(match.method),
        headers=[pb.HeaderMatch(name=n, value=_string_match(v)) for n, v in match.headers]
        + [
            pb.HeaderMatch(name=n, value=_string_match(v), invert=True)
            for n, v in match.without_headers
        ],
        query_params=[
            pb.QueryParamMatch(name=n, value=_string_match(v)) for n, v in match.query_params
        ],
        port=match.port or 0,
    )
