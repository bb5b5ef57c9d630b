"""What the proxy engine asks of the routing layer, and what it reports back.

The engine parses a request head, hands it to a `Resolver`, and either forwards the request to the
chosen endpoint or answers locally. These types are the whole contract between the two: the engine
knows nothing of routes, clusters or config versions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field


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

    def header(self, name: bytes) -> bytes | None:
        """Return the first value of a header (name given in lower case), or None."""
        for key, value in self.headers:
            if key == name:
                return value
        return None


@dataclass(frozen=True, slots=True, kw_only=True)
class Forward:
    """Send the request to this endpoint."""

    address: str
    port: int
    cluster: str
    # Overall deadline for the upstream exchange (connect + response head), seconds; None: no limit.
    timeout: float | None = None
    connect_timeout: float = 5.0


@dataclass(frozen=True, slots=True, kw_only=True)
class LocalReply:
    """Answer the request from the proxy itself (no route, no healthy upstream, ...)."""

    status: int
    body: str
    # Envoy-style response flags, e.g. "NR" (no route), "UH" (no healthy upstream).
    flags: str = ""


Decision = Forward | LocalReply
Resolver = Callable[[RequestHead], Decision]


@dataclass(frozen=True, slots=True, kw_only=True)
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


Recorder = Callable[[Completed], None]
