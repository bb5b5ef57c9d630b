"""Whether an inbound request is admitted, in the order Istio's and Linkerd's proxies apply it:
end-user authentication (an invalid JWT: 401), then authorization (403, flag RBAC), then the
local rate limit (429, flag RL). Pure: the caller passes the clock; the one piece of state is the
rate limiter's buckets, kept across config pushes while the policy's numbers are unchanged.

Used by the sidecar's inbound listener (sidecar/routing/router.py), which finds a request's route
by the policy's `route_of`, and by the gateway, which checks the limit after its route selection
(`authenticate`, then `limit`): the order 401 → 403 → 429 holds on both.
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
        # Of those, refused by a route's own buckets, by route name.
        self.rate_limited_routes: dict[str, int] = {}

    def check(self, policy: InboundPolicy, head: RequestHead, principal: str) -> LocalReply | None:
        """None: admitted (the head may have been edited: token removed, claims added); else the
        answer. `principal`: the caller's verified mesh identity without "spiffe://" ("" for
        plaintext). The route limited is the one `policy.route_of` finds (after authentication:
        routes may match on the claim headers it adds)."""
        refused = self.authenticate(policy, head, principal)
        if refused is not None:
            return refused
        route_of = policy.route_of
        return self.limit(policy, principal, route_of(head) if route_of is not None else "")

    def authenticate(
        self, policy: InboundPolicy, head: RequestHead, principal: str
    ) -> LocalReply | None:
        """The JWT (401) and AuthorizationPolicy (403) steps of `check`; a gateway runs them
        before routing, and `limit` once the route is known."""
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
        return None

    def limit(self, policy: InboundPolicy, principal: str, route: str) -> LocalReply | None:
        """The rate-limit step (429) for a request on `route` ("": none known)."""
        config = policy.rate_limit
        if config is None or self._limiter_for(config).admit(principal, self._clock(), route):
            return None
        self.rate_limited += 1
        if any(name == route for name, _ in config.routes):
            self.rate_limited_routes[route] = self.rate_limited_routes.get(route, 0) + 1
        return RATE_LIMITED

    def _limiter_for(self, config: RateLimitConfig) -> RateLimiter:
        limiter = self._limiter
        if limiter is None or limiter.config != config:
            limiter = self._limiter = RateLimiter(config, self._clock())
        return limiter
