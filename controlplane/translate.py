"""Translation: world + sidecar identity → that sidecar's config, as protobuf resources. Pure.

Small named conversions (one per resource shape) keep each rule readable and testable. The output
is deterministic (sorted by name) so its content hash is a stable version across restarts.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeVar

from google.protobuf.message import Message

from controlplane.model import (
    HeaderOps,
    HTTPMatch,
    HTTPRoute,
    Service,
    StringMatch,
    TrafficPolicy,
    VirtualService,
)
from controlplane.security import AuthorizationPolicy, authorization_policies, mtls_mode
from controlplane.world import NodeInfo, World
from lightmesh import types
from lightmesh.spiffe import spiffe_id
from lightmesh.v1 import config_pb2 as pb

DEFAULT_CONNECT_TIMEOUT = 10.0  # seconds, as Istio's default

# Latency-aware P2C is the default, as in Linkerd: it steers away from slow or overloaded
# endpoints, which round robin and random cannot see.
DEFAULT_LB = "PEAK_EWMA"

_LB = {
    "ROUND_ROBIN": pb.ROUND_ROBIN,
    "LEAST_REQUEST": pb.LEAST_REQUEST,
    "RANDOM": pb.RANDOM,
    "PEAK_EWMA": pb.PEAK_EWMA,
}

ProxyConfig = dict[str, list[Message]]
_T = TypeVar("_T")


def cluster_name(host: str, subset: str = "") -> str:
    """Name of the cluster for a service FQDN and optional subset, Istio style."""
    return f"outbound|{subset}|{host}"


def translate(world: World, node: NodeInfo) -> ProxyConfig:
    """Return the complete config of one sidecar, keyed by type URL."""
    rules = _first_by_host((dr.host, dr) for dr in world.destination_rules)
    clusters: list[Message] = []
    assignments: list[Message] = []
    for host in sorted(world.services):
        service = world.services[host]
        rule = rules.get(host)
        meshed = all(e.sidecar for e in service.endpoints)
        whole = _identities(world.trust_domain, service, ())
        clusters.append(_cluster(host, "", rule.policy if rule else TrafficPolicy(), meshed, whole))
        assignments.append(_assignment(cluster_name(host), service, ()))
        for subset in rule.subsets if rule else ():
            policy = _merge(subset.policy, rule.policy if rule else TrafficPolicy())
            identities = _identities(world.trust_domain, service, subset.labels)
            clusters.append(_cluster(host, subset.name, policy, meshed, identities))
            assignments.append(_assignment(cluster_name(host, subset.name), service, subset.labels))
    return {
        types.CLUSTER: clusters,
        types.ENDPOINTS: assignments,
        types.ROUTES: [_route_configuration(world, node)],
        types.INBOUND: [inbound_policy(world, node)],
    }


_MTLS = {"PERMISSIVE": pb.MTLS_PERMISSIVE, "STRICT": pb.MTLS_STRICT, "DISABLE": pb.MTLS_DISABLE}


def inbound_policy(world: World, node: NodeInfo) -> pb.InboundPolicy:
    """How the node's inbound listener admits callers: the narrowest PeerAuthentication's mode and
    every AuthorizationPolicy selecting the workload (by its namespace and labels)."""
    labels = dict(node.labels)
    mode = mtls_mode(world.peer_authentications, namespace=node.namespace, labels=labels)
    selected = authorization_policies(
        world.authorization_policies, namespace=node.namespace, labels=labels
    )
    return pb.InboundPolicy(
        mtls_mode=_MTLS[mode],
        policies=[_authorization_policy(p) for p in selected],
        trust_bundle=world.trust_bundle,
    )


def _authorization_policy(policy: AuthorizationPolicy) -> pb.AuthorizationPolicy:
    return pb.AuthorizationPolicy(
        name=f"{policy.key.namespace}/{policy.key.name}",
        action=pb.AUTHZ_DENY if policy.action == "DENY" else pb.AUTHZ_ALLOW,
        rules=[
            pb.AuthorizationRule(
                principals=list(r.principals),
                namespaces=list(r.namespaces),
                methods=list(r.methods),
                paths=list(r.paths),
            )
            for r in policy.rules
        ],
    )


def _first_by_host(pairs: Iterable[tuple[str, _T]]) -> dict[str, _T]:
    # Resources arrive sorted by namespace/name, so when two claim one host the choice is stable.
    out: dict[str, _T] = {}
    for host, value in pairs:
        out.setdefault(host, value)
    return out


def _merge(narrow: TrafficPolicy, wide: TrafficPolicy) -> TrafficPolicy:
    """Subset policy over host policy, field by field (unset fields inherit)."""
    hashing = narrow.consistent_hash
    lb_policy = narrow.lb_policy
    if lb_policy is None and hashing is None:
        # The subset says nothing about load balancing: the host's choice applies whole.
        lb_policy, hashing = wide.lb_policy, wide.consistent_hash

    def pick(a: _T | None, b: _T | None) -> _T | None:
        return a if a is not None else b

    return TrafficPolicy(
        lb_policy=lb_policy,
        consistent_hash=hashing,
        connect_timeout=pick(narrow.connect_timeout, wide.connect_timeout),
        max_connections=pick(narrow.max_connections, wide.max_connections),
        max_pending_requests=pick(narrow.max_pending_requests, wide.max_pending_requests),
        max_requests_per_connection=pick(
            narrow.max_requests_per_connection, wide.max_requests_per_connection
        ),
        idle_timeout=pick(narrow.idle_timeout, wide.idle_timeout),
        outlier=pick(narrow.outlier, wide.outlier),
        tls_mode=pick(narrow.tls_mode, wide.tls_mode),
    )


def _ms(seconds: float | None) -> int:
    return round(seconds * 1000) if seconds else 0


def _identities(
    trust_domain: str, service: Service, selector: tuple[tuple[str, str], ...]
) -> list[str]:
    """Secure naming: the SPIFFE IDs of the service accounts the cluster's endpoints run as
    (endpoints whose account is unknown add none; an empty list lets the sidecar accept any)."""
    return sorted(
        {
            spiffe_id(trust_domain, service.namespace, e.service_account)
            for e in service.endpoints
            if e.service_account and set(selector) <= set(e.labels)
        }
    )


def _cluster(
    host: str, subset: str, policy: TrafficPolicy, meshed: bool, identities: list[str]
) -> pb.Cluster:
    # Mutual TLS unless the DestinationRule disables it or some endpoint has no sidecar to
    # terminate it (Istio's auto mTLS).
    mode = policy.tls_mode or ("MESH_MUTUAL" if meshed else "DISABLE")
    cluster = pb.Cluster(
        name=cluster_name(host, subset),
        service=host,
        subset=subset,
        lb_policy=_LB[policy.lb_policy or DEFAULT_LB],
        connect_timeout_ms=_ms(policy.connect_timeout or DEFAULT_CONNECT_TIMEOUT),
        max_connections=policy.max_connections or 0,
        max_pending_requests=policy.max_pending_requests or 0,
        max_requests_per_connection=policy.max_requests_per_connection or 0,
        idle_timeout_ms=_ms(policy.idle_timeout),
        tls=pb.MESH_MUTUAL if mode == "MESH_MUTUAL" else pb.TLS_DISABLE,
        tls_identities=identities if mode == "MESH_MUTUAL" else [],
        meshed=meshed,
    )
    if policy.consistent_hash is not None:
        ch = policy.consistent_hash
        cluster.lb_policy = pb.RING_HASH
        cluster.hash.CopyFrom(
            pb.ConsistentHash(header=ch.header, cookie=ch.cookie, source_ip=ch.source_ip)
        )
    if policy.outlier is not None:
        od = policy.outlier
        cluster.outlier.CopyFrom(
            pb.OutlierDetection(
                consecutive_5xx=od.consecutive_5xx,
                consecutive_gateway=od.consecutive_gateway,
                interval_ms=_ms(od.interval),
                base_ejection_ms=_ms(od.base_ejection),
                max_ejection_percent=od.max_ejection_percent,
                min_health_percent=od.min_health_percent,
            )
        )
    return cluster


def _assignment(
    name: str, service: Service, selector: tuple[tuple[str, str], ...]
) -> pb.ClusterLoadAssignment:
    endpoints = [
        pb.Endpoint(address=e.address, port=e.port, workload=e.workload, labels=dict(e.labels))
        for e in service.endpoints
        if set(selector) <= set(e.labels)
    ]
    endpoints.sort(key=lambda e: (e.address, e.port))
    return pb.ClusterLoadAssignment(cluster_name=name, endpoints=endpoints)


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


def _route_configuration(world: World, node: NodeInfo) -> pb.RouteConfiguration:
    by_host = _first_by_host((host, vs) for vs in world.virtual_services for host in vs.hosts)
    hosts = sorted(set(world.services) | set(by_host))
    config = pb.RouteConfiguration(
        name="outbound",
        virtual_hosts=[_virtual_host(host, by_host.get(host), node) for host in hosts],
    )
    for vhost in config.virtual_hosts:
        # A service's virtual IPs are domains too: the sidecar looks up the address an
        # intercepted connection was dialled at (SO_ORIGINAL_DST) when the Host is not enough.
        service = world.services.get(vhost.name)
        vhost.domains.extend(service.addresses if service else ())
        if service is not None:
            vhost.tcp_routes.extend(
                pb.TcpRoute(port=port, cluster=cluster_name(vhost.name))
                for port in service.tcp_ports
            )
    return config


def _virtual_host(host: str, vs: VirtualService | None, node: NodeInfo) -> pb.VirtualHost:
    if vs is None:
        default = pb.Route(
            name="default", clusters=[pb.WeightedCluster(cluster=cluster_name(host), weight=100)]
        )
        return pb.VirtualHost(name=host, domains=_domains(host, node.namespace), routes=[default])
    return pb.VirtualHost(
        name=host,
        domains=_domains(host, node.namespace),
        routes=[_route(route, index) for index, route in enumerate(vs.http)],
        origin=str(vs.key),
    )


def _route(route: HTTPRoute, index: int) -> pb.Route:
    out = pb.Route(
        name=route.name or f"http[{index}]",
        matches=[_match(m) for m in route.matches],
        clusters=[
            pb.WeightedCluster(cluster=cluster_name(d.host, d.subset), weight=d.weight)
            for d in route.destinations
        ],
        timeout_ms=_ms(route.timeout),
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
                per_try_timeout_ms=_ms(t.per_try_timeout),
                retry_on=list(t.retry_on),
            )
        )
    if route.fault is not None:
        f = route.fault
        out.fault.CopyFrom(
            pb.Fault(
                delay_ms=_ms(f.delay),
                delay_percent=f.delay_percent,
                abort_status=f.abort_status or 0,
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
    )
