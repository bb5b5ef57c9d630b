"""The neutral contract of the sidecar: what the codec, the router and the engine share.

The codec produces a `RequestHead`; a `Resolver` (the router) turns it into a `Decision` (forward
to an endpoint, or answer locally); the engine carries it out and reports a `Completed` to a
`Recorder` (telemetry, the router's accounting). These types are the whole interface between the
layers: the engine knows nothing of routes, clusters or config versions, the router nothing of
sockets. This module imports no other sidecar layer but the pure policy values a decision carries.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:  # the policy values a Forward carries (sidecar/policies, pure)
    from sidecar.policies.headers import HeaderEdits
    from sidecar.policies.retry import RetryBudget, RetryPolicy


# The mesh's own headers, written by sidecars for sidecars (peer announcement, never-processed
# mark, response flags). Whatever a client or an app sends under this prefix is dropped before it
# is forwarded: no app sees them and nobody outside a sidecar can forge one.
MESH_HEADER_PREFIX = b"x-lightmesh-"
# The calling sidecar announces its workload to the called one: "workload;namespace;app;version".
PEER_HEADER = b"x-lightmesh-peer"


@dataclass(slots=True, kw_only=True)
class RequestHead:
    """A parsed request head. Header names are lower-case bytes, values as received."""

    method: str
    # Origin-form path with query ("/a?b=1"); absolute-form targets are reduced to this.
    path: str
    # Host without port, lower-case; from the absolute-form target or the Host header.
    host: str
    http_version: str  # "1.1" or "1.0"
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    # Address of the downstream peer, for x-forwarded-for.
    peer: str = ""
    # Where the app addressed the connection before iptables redirected it to this listener
    # (SO_ORIGINAL_DST, see sidecar/listeners/original_dst.py); None when it was not intercepted. The
    # listener reads it once per connection and copies it into every request head.
    original_dst: tuple[str, int] | None = None
    # The SPIFFE ID in the downstream's verified client certificate; "" for plaintext peers.
    peer_identity: str = ""
    # The PEER_HEADER value the downstream sent, taken out of `headers` by the codec (the app
    # never sees it). Telemetry believes it only alongside a verified `peer_identity`.
    mesh_peer: bytes = b""

    def header(self, name: bytes) -> bytes | None:
        """Return the first value of a header (name given in lower case), or None."""
        for key, value in self.headers:
            if key == name:
                return value
        return None


# Forward and Completed are made once per request on the hot path, so they are not frozen: a
# frozen dataclass's __init__ sets each field through object.__setattr__, about 4x the cost for
# their 13-17 fields. Nothing mutates them (a retry makes a new Forward with dataclasses.replace).
@dataclass(slots=True, kw_only=True)
class Forward:
    """Send the request to this endpoint."""

    address: str
    port: int
    cluster: str
    # Overall deadline for the upstream exchange (connect + response head), seconds; None: no limit.
    timeout: float | None = None
    connect_timeout: float = 5.0
    # --- Optional, decided by the router for the engine to apply ---
    # Retry policy of the route (always set by the outbound router: the default retries only
    # what never reached the upstream); the engine asks `retry.should_retry(...)`.
    retry: RetryPolicy | None = None
    # Who picks the endpoint of a retry (and its backoff); None: never retry.
    retrier: Retrier | None = None
    # The cluster's retry budget (this request already deposited); the retrier spends it.
    retry_budget: RetryBudget | None = None
    # Fault injection: wait this long (seconds) before forwarding.
    delay: float = 0.0
    # Edits of the upstream response's headers before it is relayed: `response_headers.apply(list)`.
    response_headers: HeaderEdits | None = None
    # Send a copy here too (fire-and-forget, response discarded, never delays the original).
    mirror: Forward | None = None
    # Upstream connection pool limits of the cluster; 0 / None: unlimited.
    max_requests_per_connection: int = 0
    idle_timeout: float | None = None
    # An upstream HTTP/2 connection this old (seconds) takes no new streams; 0: no limit.
    max_connection_age: float = 0.0
    # Non-empty: connect with mutual TLS (the sidecar's current certificate), this as SNI.
    tls_server_name: str = ""
    # Secure naming: the SPIFFE IDs the cluster's endpoints run as; a mutual-TLS server presenting
    # another is refused (connect failure). Empty: any identity the trust bundle vouches for.
    tls_identities: frozenset[str] = frozenset()
    # The endpoint is a mesh sidecar (the control plane says so): a 503 it marks never-processed
    # is believed over plaintext too (over mutual TLS its verified identity says so already).
    meshed: bool = False
    # An inbound forward to the local app: a connect failure before any request byte was written
    # is answered with the never-processed mark (the calling sidecar may send it elsewhere).
    mark_unprocessed: bool = False
    # Speak HTTP/2 to the endpoint (h2c, or ALPN h2 over mutual TLS): its port is gRPC/HTTP/2, or
    # it is a sidecar and the caller spoke HTTP/2. Its requests are multiplexed as streams.
    http2: bool = False
    # The cluster's cap on concurrent streams per HTTP/2 connection (0: the peer's setting).
    max_concurrent_streams: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class LocalReply:
    """Answer the request from the proxy itself (no route, no healthy upstream, ...)."""

    status: int
    body: str
    # Response flags (lightmesh.response_flags), e.g. "NR" (no route), "UH" (no healthy upstream).
    flags: str = ""
    # Extra response headers (lower-case names), e.g. Location of a redirect.
    headers: tuple[tuple[bytes, bytes], ...] = ()
    # The gRPC status a gRPC caller is answered with (fault abort.grpcStatus); None: derived
    # from `status` and `flags` (sidecar/http/grpc.py).
    grpc_status: int | None = None
    # The cluster the request was headed for when the proxy answered instead (fault abort,
    # overflow, no healthy upstream): telemetry labels the reply with its destination.
    cluster: str = ""


Decision = Forward | LocalReply
Resolver = Callable[[RequestHead], Decision]


class Retrier(Protocol):
    """The routing layer's side of a retry: a new endpoint, the wait, and per-attempt accounting.

    The engine decides *whether* to retry (the route's `RetryPolicy`, the body held, the method);
    the retrier decides *where* and *whether the cluster can afford it* (retry budget).
    """

    def retry_target(self, target: Forward, *, tried: Sequence[str], now: float) -> Forward | None:
        """`target` re-aimed at an endpoint not in `tried` ("address:port") when one exists,
        counted in flight and paid from the retry budget; None when the budget is spent."""

    def retry_backoff(self, retry: int) -> float:
        """Seconds to wait before retry number `retry` (1 = the first retry)."""

    def attempt_finished(
        self, target: Forward, *, status: int, duration: float, local_origin: bool = False
    ) -> None:
        """An attempt that is being retried ended (its endpoint's in-flight slot and outlier
        record; `local_origin`: the endpoint never processed it, refused or marked so); the
        exchange's last attempt is reported through `Completed` instead."""


@dataclass(slots=True, kw_only=True)  # not frozen, like Forward
class Completed:
    """One finished exchange, reported to telemetry."""

    method: str
    host: str
    cluster: str
    status: int
    flags: str
    duration: float  # seconds
    request_bytes: int
    response_bytes: int
    # "address:port" of the endpoint of a Forward decision, "" for local replies.
    upstream: str = ""
    # The forwarded head after the resolver ran (path, x-request-id, trace headers for telemetry);
    # None when no head was parsed (a refused or timed-out request).
    head: RequestHead | None = None
    # time.time() when the request began (its head was parsed), for spans and access logs.
    start_time: float = 0.0
    # Upstream attempts made (1 + retries); 0 for local replies.
    attempts: int = 0
    # Whether the last upstream connection used was mutual TLS (source-side `mtls` label).
    upstream_tls: bool = False
    # The gRPC status of a gRPC call ("14"), from its trailers or the proxy's own reply; "" else.
    grpc_status: str = ""
    # gRPC messages of the call each way (0 for anything else).
    request_messages: int = 0
    response_messages: int = 0


Recorder = Callable[[Completed], None]

# Outbound with interception, once per connection on accept, from its original destination:
# None keeps the connection HTTP; a Forward splices its raw bytes there; a LocalReply refuses it.
Divert = Callable[[tuple[str, int]], Forward | LocalReply | None]
