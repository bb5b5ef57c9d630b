"""Token buckets of sidecar/security/ratelimit.py on a fake clock: burst, refill, the identity
and total buckets together, overrides, and the bound on remembered identities."""

from __future__ import annotations

import pytest

from sidecar.security import ratelimit
from sidecar.security.ratelimit import Bucket, RateLimitConfig, RateLimiter


def passes(limiter: RateLimiter, principal: str, now: float, count: int) -> int:
    return sum(limiter.admit(principal, now) for _ in range(count))


def test_burst_then_refill_at_the_rate() -> None:
    limiter = RateLimiter(RateLimitConfig(name="p", total=Bucket(rate=10, burst=5)), now=0.0)
    assert passes(limiter, "", 0.0, 20) == 5
    assert passes(limiter, "", 0.1, 20) == 1  # 0.1 s at 10/s
    assert passes(limiter, "", 10.0, 20) == 5  # never more than the burst
    assert limiter.limited == 15 + 19 + 15


def test_over_a_run_at_most_rate_times_seconds_plus_burst_pass() -> None:
    limiter = RateLimiter(RateLimitConfig(name="p", total=Bucket(rate=20, burst=20)), now=0.0)
    passed = sum(passes(limiter, "", step / 100, 3) for step in range(1000))  # 10 s, 300/s offered
    assert passed == 20 * 10 + 20 - 1  # the last step is at 9.99 s


def test_identities_have_their_own_buckets_and_all_share_total() -> None:
    config = RateLimitConfig(
        name="p",
        total=Bucket(rate=1, burst=10),
        identity=Bucket(rate=1, burst=3),
        overrides=(("td/ns/shop/sa/vip", Bucket(rate=1, burst=6)),),
    )
    limiter = RateLimiter(config, now=0.0)
    assert passes(limiter, "td/ns/shop/sa/a", 0.0, 5) == 3
    assert passes(limiter, "", 0.0, 5) == 3  # plaintext clients share one bucket
    assert passes(limiter, "td/ns/shop/sa/vip", 0.0, 10) == 4  # 6 of its own, total has 4 left
    assert passes(limiter, "td/ns/shop/sa/b", 0.0, 5) == 0  # total is empty
    # A request refused by its own bucket takes nothing from total.
    assert passes(limiter, "td/ns/shop/sa/a", 1.0, 1) == 1


def test_remembered_identities_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ratelimit, "MAX_IDENTITIES", 4)
    limiter = RateLimiter(RateLimitConfig(name="p", identity=Bucket(rate=1, burst=2)), now=0.0)
    for index in range(20):
        limiter.admit(f"id-{index}", 0.0)
    assert len(limiter._identities) <= 4
