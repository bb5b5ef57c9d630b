"""Clusters and their endpoints for one destination host. Pure.

One `Cluster` and one `ClusterLoadAssignment` for the whole service, and one of each per subset of
its DestinationRule. They depend on the service, the DestinationRule chosen for the host and the
trust domain only, never on the sidecar, so they are translated once and shared by every sidecar
whose DestinationRule lookup picks the same rule.
"""

from __future__ import annotations

from typing import TypeVar

from controlplane.model import DestinationRule, Service, TrafficPolicy
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

_T = TypeVar("_T")


def cluster_name(host: str, subset: str = "") -> str:
    """Name of the cluster for a service FQDN and optional subset, Istio style."""
    return f"outbound|{subset}|{host}"


def cluster_host(name: str) -> str:
    """The host of a cluster name ("" when it is not one of ours)."""
    parts = name.split("|")
    return parts[2] if len(parts) == 3 and parts[0] == "outbound" else ""


def host_clusters(
    service: Service, rule: DestinationRule | None, *, trust_domain: str
) -> list[pb.Cluster]:
    """The clusters of one service: the whole service, then one per subset."""
    host = service.fqdn
    meshed = all(e.sidecar for e in service.endpoints)
    wide = rule.policy if rule else TrafficPolicy()
    http2 = service.http2
    clusters = [
        _cluster(host, "", wide, meshed, _identities(trust_domain, service, ()), http2=http2)
    ]
    for subset in rule.subsets if rule else ():
        identities = _identities(trust_domain, service, subset.labels)
        clusters.append(
            _cluster(
                host, subset.name, _merge(subset.policy, wide), meshed, identities, http2=http2
            )
        )
    return clusters


def host_assignments(
    service: Service, rule: DestinationRule | None
) -> list[pb.ClusterLoadAssignment]:
    """The endpoints of each cluster of `host_clusters`, in the same order."""
    host = service.fqdn
    out = [_assignment(cluster_name(host), service, ())]
    for subset in rule.subsets if rule else ():
        out.append(_assignment(cluster_name(host, subset.name), service, subset.labels))
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
        max_connection_duration=pick(narrow.max_connection_duration, wide.max_connection_duration),
        http2_max_requests=pick(narrow.http2_max_requests, wide.http2_max_requests),
        max_concurrent_streams=pick(narrow.max_concurrent_streams, wide.max_concurrent_streams),
        h2_upgrade_policy=pick(narrow.h2_upgrade_policy, wide.h2_upgrade_policy),
        outlier=pick(narrow.outlier, wide.outlier),
        tls_mode=pick(narrow.tls_mode, wide.tls_mode),
    )


def ms(seconds: float | None) -> int:
    """Seconds as whole milliseconds (0 for unset)."""
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
    host: str,
    subset: str,
    policy: TrafficPolicy,
    meshed: bool,
    identities: list[str],
    *,
    http2: bool = False,
) -> pb.Cluster:
    # Mutual TLS unless the DestinationRule disables it or some endpoint has no sidecar to
    # terminate it (Istio's auto mTLS).
    mode = policy.tls_mode or ("MESH_MUTUAL" if meshed else "DISABLE")
    cluster = pb.Cluster(
        name=cluster_name(host, subset),
        service=host,
        subset=subset,
        lb_policy=_LB[policy.lb_policy or DEFAULT_LB],
        connect_timeout_ms=ms(policy.connect_timeout or DEFAULT_CONNECT_TIMEOUT),
        max_connections=policy.max_connections or 0,
        max_pending_requests=policy.max_pending_requests or 0,
        max_requests_per_connection=policy.max_requests_per_connection or 0,
        idle_timeout_ms=ms(policy.idle_timeout),
        tls=pb.MESH_MUTUAL if mode == "MESH_MUTUAL" else pb.TLS_DISABLE,
        tls_identities=identities if mode == "MESH_MUTUAL" else [],
        meshed=meshed,
        # HTTP/2 to the endpoints: the service's ports say so (Istio's protocol selection; a
        # gRPC port is HTTP/2 whatever the policy), or the rule upgrades HTTP/1.1 callers.
        http2=http2 or policy.h2_upgrade_policy == "UPGRADE",
        max_concurrent_streams=policy.max_concurrent_streams or 0,
        http2_max_requests=policy.http2_max_requests or 0,
        max_connection_duration_ms=ms(policy.max_connection_duration),
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
                interval_ms=ms(od.interval),
                base_ejection_ms=ms(od.base_ejection),
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
