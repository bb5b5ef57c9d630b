"""Local rate limiting (Linkerd's HTTPLocalRateLimitPolicy): token buckets over a workload's
inbound requests. Pure: the caller passes the time.

A request passes when its client's bucket (an override's, else `identity`'s; plaintext clients
share the bucket of the empty identity) and the `total` bucket both hold a token; then it takes
one from each. A bucket holds at most `burst` tokens and refills at `requests_per_second`, so over
a long run at most rate x seconds + burst requests pass. Buckets live as long as the policy's
numbers are unchanged (`RateLimiter.config`); the admission layer keeps one limiter across
config pushes.
"""

from __future__ import annotations

from dataclasses import dataclass

# Per-identity buckets kept at most; past it, full (idle) buckets are forgotten first, then the
# table is cleared: a flood of identities cannot grow the sidecar's memory.
MAX_IDENTITIES = 10_000


@dataclass(frozen=True, slots=True)
class Bucket:
    """A token bucket's numbers."""

    rate: float  # tokens per second
    burst: int  # capacity


@dataclass(frozen=True, slots=True, kw_only=True)
class RateLimitConfig:
    """The pushed policy: "namespace/name", and its buckets (None: that bucket is not used)."""

    name: str
    total: Bucket | None = None
    identity: Bucket | None = None
    # principal -> its bucket (override), instead of `identity`
    overrides: tuple[tuple[str, Bucket], ...] = ()


class TokenBucket:
    """`burst` tokens, refilled continuously at `rate` per second."""

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, bucket: Bucket, now: float) -> None:
        self.rate = bucket.rate
        self.burst = float(bucket.burst)
        self.tokens = self.burst
        self.stamp = now

    def refill(self, now: float) -> float:
        """The tokens held at `now`."""
        if now > self.stamp:
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
        return self.tokens


class RateLimiter:
    """The buckets of one policy."""

    def __init__(self, config: RateLimitConfig, now: float) -> None:
        self.config = config
        self._total = TokenBucket(config.total, now) if config.total is not None else None
        self._overrides = dict(config.overrides)
        self._identities: dict[str, TokenBucket] = {}
        self.limited = 0  # requests refused (429) by this limiter

    def admit(self, principal: str, now: float) -> bool:
        """Whether a request of `principal` ("" for plaintext clients) passes; it takes a token
        from each bucket it passes through only when it passes all of them."""
        own = self._bucket(principal, now)
        total = self._total
        if (own is not None and own.refill(now) < 1.0) or (
            total is not None and total.refill(now) < 1.0
        ):
            self.limited += 1
            return False
        if own is not None:
            own.tokens -= 1.0
        if total is not None:
            total.tokens -= 1.0
        return True

    def _bucket(self, principal: str, now: float) -> TokenBucket | None:
        found = self._identities.get(principal)
        if found is not None:
            return found
        numbers = self._overrides.get(principal, self.config.identity)
        if numbers is None:
            return None
        if len(self._identities) >= MAX_IDENTITIES:
            self._forget_idle(now)
        bucket = self._identities[principal] = TokenBucket(numbers, now)
        return bucket

    def _forget_idle(self, now: float) -> None:
        # A full bucket is what a new one would be: forgetting it changes no decision.
        self._identities = {p: b for p, b in self._identities.items() if b.refill(now) < b.burst}
        if len(self._identities) >= MAX_IDENTITIES:
            self._identities.clear()
