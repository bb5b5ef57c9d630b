"""Errors of the sidecar, and the one function that turns them into local responses.

Deep layers raise typed errors; each class says what the client is answered (status, response
flag, text). `rescue` is the only place that turns an error into a `LocalReply` (linkerd2-proxy's
`ServerRescue::rescue`): the listener calls it when a request cannot be read or a resolver breaks,
the exchange when an upstream attempt gives no response head. Decisions that are not errors (no
route, overflow, fault abort, RBAC) are answers the router makes itself, with the same flags.
"""

from __future__ import annotations

from lightmesh.response_flags import ResponseFlag
from sidecar.contract import LocalReply


class ConfigError(Exception):
    """Config the sidecar cannot apply; its message becomes the NACK's error detail."""


class ProxyError(Exception):
    """The proxy answers the request itself: `status`, `flag`, and `text` as the body."""

    status = 500
    flag = ""
    text = "internal error"


# --- the downstream side (the codec raises ParseError; see sidecar/http/http1.py) ---


class DownstreamTimeout(ProxyError):
    """A request head did not arrive within the listener's head timeout."""

    status = 408
    flag = ResponseFlag.DT
    text = "request timeout"


# --- the upstream side (the connection pool and the exchange raise these) ---


class UpstreamError(ProxyError):
    """The proxy could not get a response head; the connection closed before one came."""

    status = 503
    flag = ResponseFlag.UC
    text = "upstream connection closed"


class UpstreamConnectFailure(UpstreamError):
    """Connecting to the endpoint failed (refused, unreachable, connect timeout, TLS)."""

    flag = ResponseFlag.UF
    text = "upstream connect error"


class UpstreamWrongIdentity(UpstreamConnectFailure):
    """Secure naming: the server's verified SPIFFE ID is not one its cluster's endpoints run as."""


class UpstreamReset(UpstreamError):
    """The upstream closed or reset the connection before a response head."""


class UpstreamTimeout(UpstreamError):
    """The route's timeout (or the retry policy's per-try timeout) passed before a response head."""

    status = 504
    flag = ResponseFlag.UT
    text = "upstream request timeout"


class UpstreamProtocolError(UpstreamError):
    """The upstream sent something that is not a valid HTTP/1.1 response."""

    status = 502
    flag = ResponseFlag.UPE
    text = "upstream protocol error"


def rescue(error: BaseException, *, also: str = "") -> LocalReply:
    """The local reply for `error`: its status, text and flag (then `also`, flags noted along the
    way such as URX or DI); anything untyped (a bug) is a 500 "internal error" without a flag."""
    if isinstance(error, ProxyError):
        status, text, flag = error.status, error.text, error.flag
    else:
        status, text, flag = ProxyError.status, ProxyError.text, ProxyError.flag
    flags = f"{flag},{also}" if also and flag else (flag or also)
    return LocalReply(status=status, body=text, flags=flags)
