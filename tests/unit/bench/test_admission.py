"""`python -m bench admission` runs every case (tiny counts: a smoke test, not a measurement)."""

from bench.admission import measure


def test_every_case_is_measured() -> None:
    results = measure(requests=3, runs=1)
    assert set(results) == {
        "none", "authorization_policy", "jwt_RS256_new_token", "jwt_RS256_cached",
        "jwt_ES256_new_token", "jwt_ES256_cached", "rate_limit",
    }  # fmt: skip
    assert all(value > 0 for value in results.values())
