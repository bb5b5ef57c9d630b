"""Retry policy (conditions, idempotency), backoff with jitter, and the retry budget."""

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar.policies.retry import (
    DEFAULT_RETRY,
    MAX_BACKOFF,
    Failure,
    RetryBudget,
    RetryPolicy,
    backoff,
)


def policy(retry_on: str, attempts: int = 3) -> RetryPolicy:
    return RetryPolicy.parse(attempts, retry_on.split(","), per_try_timeout=None)


def test_conditions_select_what_is_retried() -> None:
    p = policy("5xx")
    assert p.should_retry(attempt=1, failure=Failure.STATUS, status=500, method="GET", sent=True)
    assert not p.should_retry(
        attempt=1, failure=Failure.STATUS, status=404, method="GET", sent=True
    )
    gw = policy("gateway-error")
    assert not gw.should_retry(
        attempt=1, failure=Failure.STATUS, status=500, method="GET", sent=True
    )
    assert gw.should_retry(attempt=1, failure=Failure.STATUS, status=503, method="GET", sent=True)
    assert policy("retriable-4xx").retriable(Failure.STATUS, 409)
    assert policy("retriable-status-codes,418").retriable(Failure.STATUS, 418)
    assert policy("reset").retriable(Failure.RESET)
    assert not policy("5xx").retriable(Failure.RESET)


def test_attempts_bound_the_retries() -> None:
    p = policy("5xx", attempts=2)
    assert p.should_retry(attempt=2, failure=Failure.STATUS, status=503, method="GET", sent=True)
    assert not p.should_retry(
        attempt=3, failure=Failure.STATUS, status=503, method="GET", sent=True
    )


def test_non_idempotent_requests_that_reached_the_upstream_are_not_retried() -> None:
    p = policy("5xx,reset,connect-failure")
    assert not p.should_retry(
        attempt=1, failure=Failure.STATUS, status=503, method="POST", sent=True
    )
    assert not p.should_retry(attempt=1, failure=Failure.RESET, method="POST", sent=True)
    # Never sent: always safe.
    assert p.should_retry(attempt=1, failure=Failure.CONNECT, method="POST", sent=False)
    # Opt-in: the user listed the status code the upstream answers when it did not process it.
    explicit = policy("503")
    assert explicit.should_retry(
        attempt=1, failure=Failure.STATUS, status=503, method="POST", sent=True
    )


def test_default_retries_only_what_never_reached_the_upstream() -> None:
    d = DEFAULT_RETRY
    assert d.should_retry(attempt=1, failure=Failure.CONNECT, method="POST", sent=False)
    assert d.should_retry(attempt=1, failure=Failure.REFUSED, method="GET", sent=True)
    assert not d.should_retry(
        attempt=1, failure=Failure.STATUS, status=503, method="GET", sent=True
    )
    assert not d.should_retry(attempt=1, failure=Failure.RESET, method="GET", sent=True)
    assert d.should_retry(attempt=2, failure=Failure.REFUSED, method="POST", sent=True)
    assert not d.should_retry(attempt=3, failure=Failure.CONNECT, method="GET", sent=False)


def test_unknown_condition_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown retryOn condition '5xxx'"):
        policy("5xxx")


@given(st.integers(min_value=1, max_value=20), st.integers(min_value=0, max_value=2**32))
def test_backoff_is_jittered_under_an_exponential_cap(attempt: int, seed: int) -> None:
    delay = backoff(attempt, random.Random(seed))
    assert 0.0 <= delay <= min(MAX_BACKOFF, 0.025 * 2 ** (attempt - 1))


def test_budget_allows_a_minimum_then_a_share_of_requests() -> None:
    budget = RetryBudget(ratio=0.2, min_per_second=1.0, window=10.0)
    allowed = sum(budget.try_retry(0.0) for _ in range(50))
    assert allowed == 10  # the floor: 1/s over the 10 s window
    for _ in range(100):
        budget.request(1.0)
    assert sum(budget.try_retry(1.0) for _ in range(50)) == 20  # 20% of 100 requests
    # Eleven seconds later everything expired: the floor again.
    assert sum(budget.try_retry(12.5) for _ in range(50)) == 10


def test_grpc_statuses_are_retried_by_name_whatever_the_method() -> None:
    from sidecar.policies.retry import Failure, RetryPolicy

    policy = RetryPolicy.parse(
        2, ["unavailable", "resource-exhausted", "5xx"], per_try_timeout=None
    )
    assert policy.grpc_codes == frozenset({14, 8})
    assert policy.should_retry(attempt=1, failure=Failure.GRPC, status=14, method="POST", sent=True)
    assert not policy.should_retry(
        attempt=1, failure=Failure.GRPC, status=13, method="POST", sent=True
    )
    assert not policy.should_retry(
        attempt=3, failure=Failure.GRPC, status=14, method="POST", sent=True
    )
