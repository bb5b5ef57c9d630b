"""The resolvers the listeners use: outbound (route → cluster → endpoint) and inbound (the app).

The outbound router applies a route's action in this order: redirect (answer at once), fault
abort (answer at once, flag FI), weighted cluster choice, circuit breaking (503, flag UO),
endpoint choice (load balancer over endpoints not ejected by outlier detection), then the edits of
the request the engine forwards: uri and authority rewrite, request header edits. It is fed back
every finished exchange (`finished`) for in-flight accounting, latency and outlier detection.

It is also the engine's `Retrier`: a retry goes to another endpoint of the same cluster when one
is available (each attempt's endpoint counted in flight and fed to outlier detection on its own),
paid from the cluster's retry budget, after a jittered exponential backoff.
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Callable, Mapping, Sequence
from http.cookies import CookieError, SimpleCookie
from typing import Protocol

from lightmesh.protocols import H2_PROTOCOLS, http_status_of_grpc
from lightmesh.response_flags import ResponseFlag
from lightmesh.spiffe import principal_of
from lightmesh.v1 import config_pb2 as pb
from sidecar.cluster.app_health import AppHealth
from sidecar.cluster.cluster import Cluster
from sidecar.contract import Completed, Decision, Forward, LocalReply, RequestHead
from sidecar.http.grpc import is_grpc, request_timeout
from sidecar.http.http1 import UNPROCESSED
from sidecar.http.http2 import HTTP_VERSION as HTTP2
from sidecar.policies.retry import DEFAULT_RETRY, RetryPolicy, backoff
from sidecar.routing.destinations import PASSTHROUGH, Destinations
from sidecar.routing.table import CompiledRoute, Redirect, RouteTable
from sidecar.security.admission import Admission
from sidecar.security.inbound import InboundPolicy


class DataPlane(Protocol):
    """What the routers read of the config currently serving (sidecar/config/apply.py's
    `DataPlane`, swapped in whole per push): routes, clusters, intercepted destinations and the
    inbound policy."""

    @property
    def routes(self) -> RouteTable:
        """The compiled route table."""

    @property
    def clusters(self) -> Mapping[str, Cluster]:
        """Clusters by name, with their endpoints."""

    @property
    def destinations(self) -> Destinations:
        """Which intercepted connections are HTTP, raw TCP to a cluster, or passed through."""

    @property
    def inbound(self) -> InboundPolicy:
        """The mTLS mode and AuthorizationPolicies this workload enforces."""


class OutboundRouter:
    """Resolves the app's outbound requests against the data plane's current config."""

    def __init__(
        self,
        dataplane: DataPlane,
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        default_retries: bool = True,
        route_gate: Callable[[RequestHead, CompiledRoute], LocalReply | None] | None = None,
    ) -> None:
        self._dataplane = dataplane
        # Asked once the route is known, before its action (a gateway's per-route rate limit):
        # a LocalReply is the answer.
        self._route_gate = route_gate
        self._clock = clock
        self._rng = rng or random.Random()
        # Off: a route without retries of its own never retries (DEFAULT_RETRY is not applied).
        self._default_retries = default_retries

    def resolve(self, head: RequestHead) -> Decision:
        """Pick the destination of one request, or say why there is none."""
        dataplane = self._dataplane
        host, route = dataplane.routes.route(head)
        if host is None and head.original_dst is not None:
            # An intercepted connection whose Host names no service (the app called an IP, or
            # sent a Host we do not know): the address it dialled may be a service's.
            address, port = head.original_dst
            host, route = dataplane.routes.route(head, domain=address)
            if host is None:
                # Not a mesh destination: let it through to where the app was going.
                return Forward(
                    address=address,
                    port=port,
                    cluster=PASSTHROUGH,
                    http2=head.http_version == HTTP2,  # the caller's protocol, as it was going
                )
        if host is None:
            return LocalReply(
                status=404, body=f"no route to host {head.host!r}", flags=ResponseFlag.NR
            )
        if route is None:
            return LocalReply(
                status=404,
                body=f"no route of {host.name} matches {head.path!r}",
                flags=ResponseFlag.NR,
            )
        gate = self._route_gate
        if gate is not None and (refused := gate(head, route)) is not None:
            return refused
        if route.redirect is not None:
            return _redirect(head, route.redirect)
        delay = 0.0
        fault = route.fault
        if fault is not None:
            if fault.abort_status and self._chance(fault.abort_percent):
                return LocalReply(
                    status=fault.abort_status,
                    body="fault filter abort",
                    flags=ResponseFlag.FI,
                    grpc_status=fault.abort_grpc,
                    # The destination the abort stands for (a weighted route picks one).
                    cluster=route.clusters.pick() or "",
                )
            if fault.delay and self._chance(fault.delay_percent):
                delay = fault.delay
        name = route.clusters.pick()
        cluster = dataplane.clusters.get(name) if name else None
        if cluster is None:
            return LocalReply(status=503, body=f"cluster {name!r} not found", flags=ResponseFlag.NC)
        if cluster.overloaded():
            return LocalReply(
                status=503,
                body=f"upstream overflow: {cluster.max_in_flight} requests in flight to "
                f"{cluster.name} (connectionPool limits)",
                flags=ResponseFlag.UO,
                cluster=cluster.name,
            )
        now = self._clock()
        hash_key = _hash_key(cluster.hash, head) if cluster.policy == pb.RING_HASH else None
        endpoint = cluster.pick(hash_key=hash_key, now=now)
        if endpoint is None:
            return LocalReply(
                status=503,
                body=f"no healthy upstream in {cluster.name}",
                flags=ResponseFlag.UH,
                cluster=cluster.name,
            )
        _edit_request(route, head)
        retry: RetryPolicy | None = route.retry
        if retry is DEFAULT_RETRY and not self._default_retries:
            retry = None
        return Forward(
            address=endpoint.address,
            port=endpoint.port,
            cluster=cluster.name,
            timeout=_deadline(route.timeout, head),
            connect_timeout=cluster.connect_timeout,
            retry=retry,
            retrier=self,
            retry_budget=cluster.retry_budget,
            delay=delay,
            response_headers=route.response_headers,
            mirror=self._mirror(route, now),
            max_requests_per_connection=cluster.max_requests_per_connection,
            idle_timeout=cluster.idle_timeout,
            max_connection_age=cluster.max_connection_age,
            tls_server_name=cluster.tls_server_name,
            tls_identities=cluster.tls_identities,
            meshed=cluster.meshed,
            # HTTP/2 if the port says so; else to a sidecar (which knows its app's protocol) for
            # a caller that spoke HTTP/2, and to anyone for a gRPC call.
            http2=cluster.http2
            or (head.http_version == HTTP2 and (cluster.h2_peer or _needs_h2(head))),
            max_concurrent_streams=cluster.max_concurrent_streams,
        )

    def divert(self, original_dst: tuple[str, int]) -> Forward | LocalReply | None:
        """For an intercepted connection, once on accept: None when it is HTTP for the engine;
        else where to splice its raw bytes (LocalReply: refuse it, with the reason's flags)."""
        name = self._dataplane.destinations.classify(original_dst)
        if name is None:
            return None
        if name == PASSTHROUGH:
            address, port = original_dst
            return Forward(address=address, port=port, cluster=PASSTHROUGH)
        return self.tcp_target(name)

    def tcp_target(self, name: str | None) -> Forward | LocalReply:
        """An endpoint of cluster `name` for a raw TCP connection (counted in flight until its
        `finished`), or why there is none."""
        cluster = self._dataplane.clusters.get(name) if name else None
        if cluster is None:
            return LocalReply(status=503, body=f"cluster {name!r} not found", flags=ResponseFlag.NC)
        endpoint = cluster.pick(hash_key=None, now=self._clock())
        if endpoint is None:
            return LocalReply(
                status=503, body=f"no healthy upstream in {name}", flags=ResponseFlag.UH
            )
        return Forward(
            address=endpoint.address,
            port=endpoint.port,
            cluster=cluster.name,
            connect_timeout=cluster.connect_timeout,
        )

    def _chance(self, percent: float) -> bool:
        return percent >= 100.0 or self._rng.random() * 100.0 < percent

    def _mirror(self, route: CompiledRoute, now: float) -> Forward | None:
        if not route.mirror_cluster or not self._chance(route.mirror_percent):
            return None
        cluster = self._dataplane.clusters.get(route.mirror_cluster)
        if cluster is None:
            return None
        # Not counted in flight: a mirror must never take capacity from real traffic.
        endpoint = cluster.balancer.pick(cluster.available, hash_key=None, now=now)
        if endpoint is None:
            return None
        return Forward(
            address=endpoint.address,
            port=endpoint.port,
            cluster=cluster.name,
            timeout=route.timeout,
            connect_timeout=cluster.connect_timeout,
            tls_server_name=cluster.tls_server_name,
            tls_identities=cluster.tls_identities,
        )

    def retry_target(self, target: Forward, *, tried: Sequence[str], now: float) -> Forward | None:
        """`target` re-aimed for a retry (see `Cluster.pick_retry`); None: budget spent or the
        cluster is gone (a config push removed it meanwhile)."""
        cluster = self._dataplane.clusters.get(target.cluster)
        if cluster is None:
            return None
        endpoint = cluster.pick_retry(tried=tried, now=now)
        if endpoint is None:
            return None
        if endpoint.address == target.address and endpoint.port == target.port:
            return target
        return dataclasses.replace(target, address=endpoint.address, port=endpoint.port)

    def retry_backoff(self, retry: int) -> float:
        """Full-jitter exponential backoff (sidecar/policies/retry.py)."""
        return backoff(retry, self._rng)

    def attempt_finished(
        self, target: Forward, *, status: int, duration: float, local_origin: bool = False
    ) -> None:
        """A retried attempt ended: release its endpoint, feed latency and outlier detection."""
        cluster = self._dataplane.clusters.get(target.cluster)
        if cluster is not None:
            key = f"{target.address}:{target.port}"
            cluster.finished(
                key,
                status=status,
                duration=duration,
                now=self._clock(),
                local_origin=local_origin,
            )

    def finished(self, completed: Completed) -> None:
        """Release the in-flight slot taken by `resolve`; feed latency and outlier detection."""
        if completed.upstream:
            cluster: Cluster | None = self._dataplane.clusters.get(completed.cluster)
            if cluster is not None:
                status = completed.status
                if completed.grpc_status and status == 200:
                    # A gRPC call's outcome is its grpc-status (UNAVAILABLE counts as a 503).
                    status = http_status_of_grpc(int(completed.grpc_status))
                cluster.finished(
                    completed.upstream,
                    status=status,
                    duration=completed.duration,
                    now=self._clock(),
                    # This sidecar could not connect (or the server was not who it should be).
                    local_origin=_UF in completed.flags,
                )


def _needs_h2(head: RequestHead) -> bool:
    """A gRPC call: HTTP/2 or nothing (its trailers, its streams)."""
    return head.http_version == HTTP2 and is_grpc(head.headers)


def _deadline(timeout: float | None, head: RequestHead) -> float | None:
    """The route timeout, shortened to a gRPC caller's grpc-timeout (its deadline)."""
    if head.http_version != HTTP2:
        return timeout
    caller = request_timeout(head.headers)
    if caller is None:
        return timeout
    return caller if timeout is None else min(timeout, caller)


def _redirect(head: RequestHead, redirect: Redirect) -> LocalReply:
    authority = redirect.authority or _host_header(head)
    path = head.path
    if redirect.uri:
        _, sep, query = head.path.partition("?")
        path = redirect.uri if "?" in redirect.uri else redirect.uri + sep + query
    location = f"http://{authority}{path}"
    return LocalReply(
        status=redirect.code,
        body=f"redirecting to {location}",
        headers=((b"location", location.encode("latin-1")),),
    )


def _host_header(head: RequestHead) -> str:
    value = head.header(b"host")
    return value.decode("latin-1") if value else head.host


def _edit_request(route: CompiledRoute, head: RequestHead) -> None:
    if route.rewrite_uri is not None:
        head.path = route.rewritten_path(head)
    if route.rewrite_authority:
        authority = route.rewrite_authority.encode("latin-1")
        head.headers = [(k, v) for k, v in head.headers if k != b"host"]
        head.headers.insert(0, (b"host", authority))
    if route.request_headers is not None:
        route.request_headers.apply(head.headers)


def _hash_key(hashing: pb.ConsistentHash, head: RequestHead) -> bytes | None:
    if hashing.header:
        return head.header(hashing.header.encode())
    if hashing.cookie:
        raw = head.header(b"cookie")
        if raw is None:
            return None
        try:
            morsel = SimpleCookie(raw.decode("latin-1")).get(hashing.cookie)
        except CookieError:
            return None
        return morsel.value.encode("latin-1") if morsel is not None else None
    if hashing.source_ip:
        return head.peer.encode() if head.peer else None
    return None


_XFCC = b"x-forwarded-client-cert"
_UF = ResponseFlag.UF.value


# The inbound answer while the app refuses connections: nothing was delivered, and the caller's
# sidecar may say so to nobody but itself (the mark is hop-by-hop; see sidecar/http/http1.py).
APP_UNREACHABLE = LocalReply(
    status=503,
    body="upstream connect error: the app is not accepting connections",
    flags=ResponseFlag.UF,
    headers=((UNPROCESSED, b"1"),),
)


class InboundRouter:
    """Everything arriving on the inbound listener goes to the application, unless admission
    refuses it (sidecar/security/admission.py: an invalid JWT 401, an AuthorizationPolicy 403 flag
    RBAC, the local rate limit 429 flag RL), or the app is known to refuse connections
    (`app_health.down`: 503 UF marked never-processed, at once).

    The caller's verified identity (mutual TLS) is what policies see, and what the app is told in
    `x-forwarded-client-cert` (Envoy's format: `By=<us>;URI=<caller>`); a header of that name
    from the client never gets this far (the engine drops it: anyone could have written it).
    """

    def __init__(
        self,
        *,
        app_host: str,
        app_port: int,
        dataplane: DataPlane | None = None,
        own_identity: Callable[[], str] = lambda: "",
        app_health: AppHealth | None = None,
        app_protocol: str = "",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.admission = Admission(clock)
        self._forward = Forward(
            address=app_host, port=app_port, cluster=f"inbound|{app_port}", mark_unprocessed=True
        )
        # The app's protocol (--app-protocol, else the Service port's pushed in the inbound
        # policy: Istio's rules, lightmesh/protocols.py): HTTP/2
        # (h2c) for grpc/http2, HTTP/1.1 for http; undeclared: h2c for a gRPC call (it cannot
        # be anything else), HTTP/1.1 for the rest (what every HTTP app speaks), whatever the
        # calling sidecar spoke.
        self._h2_forward = dataclasses.replace(self._forward, http2=True)
        self._app_protocol = app_protocol
        self._dataplane = dataplane
        self._own_identity = own_identity
        self._app_health = app_health

    def resolve(self, head: RequestHead) -> Decision:
        """The app, or a denial."""
        # The engine already dropped any x-forwarded-client-cert the client sent (messages.py).
        identity = head.peer_identity
        if identity:
            xfcc = f"By={self._own_identity()};URI={identity}"
            head.headers.append((_XFCC, xfcc.encode("latin-1")))
        dataplane = self._dataplane
        if dataplane is not None:
            policy = dataplane.inbound
            if policy.policies or policy.authenticator is not None or policy.rate_limit is not None:
                refused = self.admission.check(policy, head, principal_of(identity))
                if refused is not None:
                    return refused
        health = self._app_health
        if health is not None and health.down:
            return APP_UNREACHABLE
        # The flag's protocol, else the one the control plane has from the Services' ports.
        protocol = self._app_protocol or (dataplane.inbound.app_protocol if dataplane else "")
        if protocol in H2_PROTOCOLS or (not protocol and _needs_h2(head)):
            return self._h2_forward
        return self._forward
