"""Whether an inbound request is admitted, in the order Istio's and Linkerd's proxies apply it:
end-user authentication (an invalid JWT: 401), then authorization (403, flag RBAC), then the
local rate limit (429, flag RL). Pure: the caller passes the clock; the one piece of state is the
rate limiter's buckets, kept across config pushes while the policy's numbers are unchanged.

Used by the sidecar's inbound listener (sidecar/routing/router.py) and usable as is by a gateway:
give it the policy and the request head.
"""

from __future__ import annotations

from collections.abc import Callable

from lightmesh.response_flags import ResponseFlag
from sidecar.contract import LocalReply, RequestHead
from sidecar.security.authn import Refused
from sidecar.security.authz import NO_AUTH, Peer, evaluate
from sidecar.security.inbound import InboundPolicy
from sidecar.security.ratelimit import RateLimitConfig, RateLimiter

FORBIDDEN = LocalReply(status=403, body="RBAC: access denied", flags=ResponseFlag.RBAC)
RATE_LIMITED = LocalReply(status=429, body="local_rate_limited", flags=ResponseFlag.RL)


def unauthenticated(refused: Refused) -> LocalReply:
    """The 401 of a refused token, with RFC 6750's challenge (as Envoy answers)."""
    return LocalReply(
        status=401,
        body=refused.reason,
        headers=((b"www-authenticate", b'Bearer realm="lightmesh", error="invalid_token"'),),
    )


class Admission:
    """Admission for one listener (the rate limiter's state lives here)."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._limiter: RateLimiter | None = None
        # Requests refused, by answer (read by the metrics at scrape time).
        self.unauthenticated = 0  # 401
        self.denied = 0  # 403
        self.rate_limited = 0  # 429

    def check(self, policy: InboundPolicy, head: RequestHead, principal: str) -> LocalReply | None:
        """None: admitted (the head may have been edited: token removed, claims added); else the
        answer. `principal`: the caller's verified mesh identity without "spiffe://" ("" for
        plaintext)."""
        auth = NO_AUTH
        if policy.authenticator is not None:
            result = policy.authenticator.authenticate(head)
            if isinstance(result, Refused):
                self.unauthenticated += 1
                return unauthenticated(result)
            if result is not None:
                auth = result
        if policy.policies:
            verdict = evaluate(
                policy.policies, Peer(principal=principal), head.method, head.path, auth
            )
            if not verdict.allowed:
                self.denied += 1
                return FORBIDDEN
        limit = policy.rate_limit
        if limit is not None and not self._limiter_for(limit).admit(principal, self._clock()):
            self.rate_limited += 1
            return RATE_LIMITED
        return None

    def _limiter_for(self, config: RateLimitConfig) -> RateLimiter:
        limiter = self._limiter
        if limiter is None or limiter.config != config:
            limiter = self._limiter = RateLimiter(config, self._clock())
        return limiter
