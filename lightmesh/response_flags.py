"""Response flags: why the proxy answered or ended an exchange itself (Envoy's vocabulary).

One vocabulary for every place that sets or reads them: the `x-lightmesh-response-flags` header
of a local reply, the access log's `response_flags`, the `response_flags` metric label, spans.
An exchange may carry several, joined by commas in that order ("UF,URX"): the one it ended with
first, then those noted along the way (URX, DI). The set is fixed, so metric cardinality is too.
"""

from __future__ import annotations

import enum


class ResponseFlag(enum.StrEnum):
    """One response flag; a `str`, so it joins and compares as the text it is."""

    NR = "NR"  # no route matched the request (or no TCP destination)
    NC = "NC"  # the route's cluster is unknown to this sidecar
    UH = "UH"  # no healthy upstream: every endpoint ejected, or none
    UO = "UO"  # upstream overflow: the cluster's connection-pool limits (circuit breaking)
    UF = "UF"  # upstream connection failure (refused, unreachable, TLS, secure naming)
    UC = "UC"  # upstream connection closed before a response head
    UT = "UT"  # upstream request timeout (route timeout or per-try timeout)
    UPE = "UPE"  # upstream protocol error: the response was not valid HTTP/1.1
    URX = "URX"  # retries were made and ran out (retry limit)
    DC = "DC"  # downstream connection closed mid-exchange
    DPE = "DPE"  # downstream protocol error: the request was not valid (or unambiguous) HTTP
    DT = "DT"  # downstream timeout: a request head did not arrive in time
    DI = "DI"  # the request was delayed by fault injection
    FI = "FI"  # the request was aborted by fault injection
    RBAC = "RBAC"  # denied by an AuthorizationPolicy
    RL = "RL"  # refused by the local rate limit (HTTPLocalRateLimitPolicy), 429


def joined(*flags: str) -> str:
    """Flags as carried in one field: the non-empty ones, comma-separated, in order."""
    return ",".join(flag for flag in flags if flag)
