"""Translation: world + sidecar identity → that sidecar's config, as protobuf resources. Pure.

Small named conversions (one per resource shape) keep each rule readable and testable. The output
is deterministic (sorted by name) so its content hash is a stable version across restarts.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeVar

from google.protobuf.message import Message

from controlplane.model import (
    HTTPMatch,
    HTTPRoute,
    Service,
    StringMatch,
    TrafficPolicy,
    VirtualService,
)
from controlplane.world import NodeInfo, World
from lightmesh import types
from lightmesh.v1 import config_pb2 as pb

DEFAULT_CONNECT_TIMEOUT = 10.0  # seconds, as Istio's default

_LB = {"ROUND_ROBIN": pb.ROUND_ROBIN, "LEAST_REQUEST": pb.LEAST_REQUEST, "RANDOM": pb.RANDOM}

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
        clusters.append(_cluster(host, "", rule.policy if rule else TrafficPolicy()))
        assignments.append(_assignment(cluster_name(host), service, ()))
        for subset in rule.subsets if rule else ():
            policy = _merge(subset.policy, rule.policy if rule else TrafficPolicy())
            clusters.append(_cluster(host, subset.name, policy))
            assignments.append(_assignment(cluster_name(host, subset.name), service, subset.labels))
    return {
        types.CLUSTER: clusters,
        types.ENDPOINTS: assignments,
        types.ROUTES: [_route_configuration(world, node)],
    }


def _first_by_host(pairs: Iterable[tuple[str, _T]]) -> dict[str, _T]:
    # Resources arrive sorted by namespace/name, so when two claim one host the choice is stable.
    out: dict[str, _T] = {}
    for host, value in pairs:
        out.setdefault(host, value)
    return out


def _merge(narrow: TrafficPolicy, wide: TrafficPolicy) -> TrafficPolicy:
    return TrafficPolicy(
        lb_policy=narrow.lb_policy or wide.lb_policy,
        connect_timeout=narrow.connect_timeout or wide.connect_timeout,
    )


def _cluster(host: str, subset: str, policy: TrafficPolicy) -> pb.Cluster:
    return pb.Cluster(
        name=cluster_name(host, subset),
        service=host,
        subset=subset,
        lb_policy=_LB[policy.lb_policy or "ROUND_ROBIN"],
        connect_timeout_ms=round((policy.connect_timeout or DEFAULT_CONNECT_TIMEOUT) * 1000),
    )


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
    return pb.Route(
        name=route.name or f"http[{index}]",
        matches=[_match(m) for m in route.matches],
        clusters=[
            pb.WeightedCluster(cluster=cluster_name(d.host, d.subset), weight=d.weight)
            for d in route.destinations
        ],
        timeout_ms=round(route.timeout * 1000) if route.timeout else 0,
    )


def _string_match(match: StringMatch | None) -> pb.StringMatch | None:
    if match is None:
        return None
    return pb.StringMatch(**{match.kind: match.value})


def _match(match: HTTPMatch) -> pb.RouteMatch:
    return pb.RouteMatch(
        uri=_string_match(match.uri),
        method=_string_match(match.method),
        headers=[pb.HeaderMatch(name=n, value=_string_match(v)) for n, v in match.headers],
        query_params=[
            pb.QueryParamMatch(name=n, value=_string_match(v)) for n, v in match.query_params
        ],
    )
