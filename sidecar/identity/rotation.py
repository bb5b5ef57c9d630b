"""When to renew a certificate: pure arithmetic, so it is unit-tested without clocks or sockets."""

from __future__ import annotations

import random

# Renew at about 80% of the lifetime (the choice; Istio and SPIRE renew at half-life, which
# doubles the signings for slack a 24 h certificate does not need), spread by ±5% so sidecars
# started together do not all renew together.
RENEW_AT = 0.8
JITTER = 0.05
MIN_DELAY = 1.0


def renewal_delay(*, issued_at: float, not_after: float, now: float, rng: random.Random) -> float:
    """Seconds from `now` until the certificate valid from `issued_at` to `not_after` is renewed."""
    lifetime = max(not_after - issued_at, 0.0)
    fraction = RENEW_AT + rng.uniform(-JITTER, JITTER)
    return max(MIN_DELAY, issued_at + lifetime * fraction - now)
