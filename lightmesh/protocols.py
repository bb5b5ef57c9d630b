"""Which protocol a Kubernetes Service port carries, by Istio's rules. Pure.

Istio's explicit protocol selection: the port's `appProtocol` wins (a `kubernetes.io/` prefix
dropped, so `kubernetes.io/h2c` is HTTP/2 cleartext); else the port's name, `<protocol>[-<suffix>]`
(`grpc-api`, `http2`, `http-web`). A name or value that names no known protocol leaves the
protocol to detection (""): the sidecar then uses the caller's.
"""

from __future__ import annotations

from collections.abc import Iterable

# appProtocol values and name prefixes -> the protocol lightmesh speaks to that port.
_KNOWN = {
    "http": "http",
    "http2": "http2",
    "h2c": "http2",
    "grpc": "grpc",
    "grpc-web": "http",  # gRPC-Web is HTTP/1.1 (browsers)
    "https": "tcp",  # TLS the app terminates: bytes for us
    "tcp": "tcp",
    "tls": "tcp",
    "mongo": "tcp",
    "mysql": "tcp",
    "redis": "tcp",
    "postgres": "tcp",
}

# The protocols whose upstream connections are HTTP/2.
H2_PROTOCOLS = frozenset({"http2", "grpc"})


def port_protocol(name: str, app_protocol: str = "") -> str:
    """ "http", "http2", "grpc", "tcp", or "" (not declared: detect / the caller's protocol)."""
    if app_protocol:
        return _KNOWN.get(app_protocol.lower().removeprefix("kubernetes.io/"), "")
    lowered = name.lower()
    if lowered in _KNOWN:
        return _KNOWN[lowered]
    prefix = lowered.partition("-")[0]
    if prefix == "grpc" and lowered.startswith("grpc-web"):
        return "http"
    return _KNOWN.get(prefix, "")


def agreed_protocol(protocols: Iterable[str]) -> str:
    """The protocol a set of declared port protocols agrees on, TCP ports aside: "grpc",
    "http2" or "http"; "" when one is undeclared, they differ, or there is no HTTP port. What
    an inbound sidecar speaks to an app serving those ports (one app port, one protocol)."""
    http = {p for p in protocols if p != "tcp"}
    return http.pop() if len(http) == 1 else ""


# gRPC status names (grpc/status.h) and the HTTP status a non-gRPC caller gets for each
# (Envoy's grpcToHttpStatus), for fault injection's abort.grpcStatus.
GRPC_STATUSES: dict[str, tuple[int, int]] = {
    "OK": (0, 200),
    "CANCELLED": (1, 499),
    "UNKNOWN": (2, 500),
    "INVALID_ARGUMENT": (3, 400),
    "DEADLINE_EXCEEDED": (4, 504),
    "NOT_FOUND": (5, 404),
    "ALREADY_EXISTS": (6, 409),
    "PERMISSION_DENIED": (7, 403),
    "RESOURCE_EXHAUSTED": (8, 429),
    "FAILED_PRECONDITION": (9, 400),
    "ABORTED": (10, 409),
    "OUT_OF_RANGE": (11, 400),
    "UNIMPLEMENTED": (12, 501),
    "INTERNAL": (13, 500),
    "UNAVAILABLE": (14, 503),
    "DATA_LOSS": (15, 500),
    "UNAUTHENTICATED": (16, 401),
}


_HTTP_OF_CODE = dict(GRPC_STATUSES.values())


def http_status_of_grpc(code: int) -> int:
    """The HTTP status a gRPC status stands for (UNAVAILABLE: 503): what outlier detection and
    the balancers count a gRPC call's outcome as, since its HTTP status is 200 either way."""
    return _HTTP_OF_CODE.get(code, 500)


def speaks_h2(protocol: str) -> bool:
    """Whether a port of `protocol` takes HTTP/2 (h2c, or h2 over the mesh's TLS)."""
    return protocol in H2_PROTOCOLS
