"""Renewal timing: ~80% of the lifetime, jittered, never in the past."""

import random

from hypothesis import given
from hypothesis import strategies as st

from sidecar.identity.rotation import JITTER, MIN_DELAY, RENEW_AT, renewal_delay


@given(
    lifetime=st.floats(min_value=10, max_value=10 * 86400),
    elapsed=st.floats(min_value=0, max_value=1),
    seed=st.integers(0, 2**32),
)
def test_renews_near_eighty_percent_of_the_lifetime(
    lifetime: float, elapsed: float, seed: int
) -> None:
    issued = 1_000_000.0
    now = issued + elapsed * lifetime
    delay = renewal_delay(
        issued_at=issued, not_after=issued + lifetime, now=now, rng=random.Random(seed)
    )
    renew_at = now + delay
    earliest = issued + lifetime * (RENEW_AT - JITTER)
    latest = issued + lifetime * (RENEW_AT + JITTER)
    assert delay >= MIN_DELAY
    assert renew_at <= max(latest, now + MIN_DELAY) + 1e-6
    assert renew_at >= min(earliest, now + MIN_DELAY) - 1e-6


def test_jitter_spreads_sidecars_started_together() -> None:
    rng = random.Random(7)
    delays = {round(renewal_delay(issued_at=0, not_after=86400, now=0, rng=rng)) for _ in range(20)}
    assert len(delays) > 10
