"""One upstream cluster as the router uses it: endpoints, balancer, outlier detection, limits.

Built from a `pb.Cluster`; `carry_over` keeps the live state (requests in flight, latency
estimates, ejections, round-robin position) when a config update leaves the cluster's policy as it
was, so a push does not reset what the sidecar has learnt. Pure apart from the injected rng.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence

from lightmesh.v1 import config_pb2 as pb
from sidecar.cluster.balancers import VNODES, Balancer, Endpoint, LoadStats, make_balancer
from sidecar.cluster.outlier import DEFAULT as DEFAULT_OUTLIER
from sidecar.cluster.outlier import OutlierConfig, OutlierDetector, filter_available
from sidecar.policies.retry import RetryBudget


class Cluster:
    """A cluster's config plus its live state."""

    def __init__(
        self,
        config: pb.Cluster,
        *,
        rng: random.Random,
        default_outlier: OutlierConfig | None = DEFAULT_OUTLIER,
    ) -> None:
        self.name = config.name
        self.service = config.service
        self.subset = config.subset
        self.policy = config.lb_policy
        self.connect_timeout = (config.connect_timeout_ms or 10_000) / 1000
        # Circuit breaking: both limits set → at most their sum in flight (active + pending).
        both = config.max_connections and config.max_pending_requests
        self.max_in_flight = config.max_connections + config.max_pending_requests if both else 0
        if config.http2_max_requests:
            # http2MaxRequests bounds requests in flight on its own (Envoy's max_requests).
            limit = config.http2_max_requests
            self.max_in_flight = min(self.max_in_flight, limit) if self.max_in_flight else limit
        # HTTP/2 to the endpoints (see pb.Cluster.http2), and streams per connection.
        self.http2 = config.http2
        self.max_concurrent_streams = config.max_concurrent_streams
        self.max_requests_per_connection = config.max_requests_per_connection
        self.idle_timeout = config.idle_timeout_ms / 1000 if config.idle_timeout_ms else None
        # Upstream HTTP/2 connections older than this take no new streams (0: no limit).
        self.max_connection_age = config.max_connection_duration_ms / 1000
        # Non-empty: originate mutual TLS, with the service FQDN as SNI.
        self.tls_server_name = config.service if config.tls == pb.MESH_MUTUAL else ""
        # Secure naming: who the endpoints may be (see Forward.tls_identities).
        self.tls_identities = frozenset(config.tls_identities)
        # Every endpoint has a sidecar: their never-processed marks may be believed.
        self.meshed = config.meshed
        # Sidecar endpoints take HTTP/2 from a caller that speaks it, whatever their app does.
        self.h2_peer = config.meshed or bool(self.tls_server_name)
        self.hash = pb.ConsistentHash()
        self.hash.CopyFrom(config.hash)
        self._rng = rng
        self.stats = LoadStats()
        self.balancer: Balancer = self._new_balancer()
        self.outlier = _outlier(config, default_outlier)
        self.endpoints: tuple[Endpoint, ...] = ()
        self.available: tuple[Endpoint, ...] = ()
        self.overflows = 0  # requests refused by circuit breaking (flag UO)
        self.retry_budget = RetryBudget()
        self.retries = 0  # retries started
        self.retries_refused = 0  # retries the budget did not allow

    def carry_over(self, old: Cluster) -> None:
        """Keep `old`'s live state where this config allows it."""
        self.stats = old.stats
        self.retry_budget = old.retry_budget
        # Counters are monotonic for Prometheus: a config push must not reset them.
        self.overflows = old.overflows
        self.retries = old.retries
        self.retries_refused = old.retries_refused
        if old.policy == self.policy and old.hash == self.hash:
            self.balancer = old.balancer
        else:
            self.balancer = self._new_balancer()
        if (
            self.outlier is not None
            and old.outlier is not None
            and self.outlier.config == old.outlier.config
        ):
            self.outlier = old.outlier
        self.set_endpoints(old.endpoints)

    def _new_balancer(self) -> Balancer:
        return make_balancer(
            self.policy, stats=self.stats, rng=self._rng, vnodes=self.hash.ring_size or VNODES
        )

    def set_endpoints(self, endpoints: Sequence[Endpoint]) -> None:
        """The cluster's endpoints changed."""
        self.endpoints = tuple(endpoints)
        self.balancer.set_endpoints(self.endpoints)
        self.stats.forget({e.key for e in self.endpoints})
        if self.outlier is not None:
            self.outlier.set_endpoints(e.key for e in self.endpoints)
        self._update_available()

    def _update_available(self) -> None:
        if self.outlier is None:
            self.available = self.endpoints
            return
        self.available = filter_available(
            self.endpoints,
            [e.key for e in self.endpoints],
            self.outlier.ejected,
            min_health_percent=self.outlier.config.min_health_percent,
        )

    def overloaded(self) -> bool:
        """Whether one more request would exceed the circuit-breaking limit."""
        if self.max_in_flight and self.stats.total_in_flight >= self.max_in_flight:
            self.overflows += 1
            return True
        return False

    def pick(self, *, hash_key: bytes | None, now: float) -> Endpoint | None:
        """An endpoint for the next request (counted as in flight), or None when there is none."""
        outlier = self.outlier
        if outlier is not None and now >= outlier.next_check and outlier.refresh(now):
            self._update_available()
        endpoint = self.balancer.pick(self.available, hash_key=hash_key, now=now)
        if endpoint is not None:
            self.stats.started(endpoint.key)
            self.retry_budget.request(now)
        return endpoint

    def pick_retry(self, *, tried: Sequence[str], now: float) -> Endpoint | None:
        """An endpoint for a retry, not one of `tried` (keys) when another is available; paid
        from the retry budget and counted in flight. None when the budget is spent."""
        if not self.retry_budget.try_retry(now):
            self.retries_refused += 1
            return None
        available = [e for e in self.available if e.key not in tried] or self.available
        endpoint = self.balancer.pick(available, hash_key=None, now=now)
        if endpoint is not None:
            self.stats.started(endpoint.key)
            self.retries += 1
        return endpoint

    def finished(
        self,
        upstream: str,
        *,
        status: int,
        duration: float,
        now: float,
        local_origin: bool = False,
    ) -> None:
        """An exchange (or attempt) picked by `pick` ended (`upstream` is its endpoint's key);
        `local_origin`: the endpoint never processed it (refused, or its app unreachable)."""
        # Proxy-made failures (status 0: the client went away) carry no latency information.
        self.stats.finished(
            upstream, rtt=duration if status and not local_origin else None, now=now
        )
        outlier = self.outlier
        if (
            outlier is not None
            and status
            and outlier.record(upstream, status, now, local_origin=local_origin)
        ):
            self._update_available()


def _outlier(config: pb.Cluster, default: OutlierConfig | None) -> OutlierDetector | None:
    """The cluster's detector: its outlierDetection (local-origin ejection included unless the
    defaults are off), else the default one, else none."""
    if not config.HasField("outlier"):
        return OutlierDetector(default) if default is not None else None
    configured = OutlierConfig.from_proto(config.outlier)
    if default is None:
        configured = dataclasses.replace(configured, consecutive_local_origin=0)
    return OutlierDetector(configured)
