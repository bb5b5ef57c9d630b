"""Retry policy and retry budget: what the engine asks before re-sending a request. Pure.

Nothing here touches a socket; the engine (not yet wired) will ask `RetryPolicy.should_retry`
after each failed attempt, sleep `backoff(attempt)`, and take a token from the cluster's
`RetryBudget` so retries cannot amplify an outage.

Rules (from the lightmesh issue, after Envoy/Istio and Linkerd):
- `retry_on` conditions: `5xx`, `gateway-error` (502/503/504), `connect-failure`, `reset`,
  `refused-stream`, `retriable-4xx` (409), `retriable-status-codes` plus explicit status codes.
- A request with a non-idempotent method (POST, PATCH, ...) that may have reached the upstream is
  retried only when the upstream answered with a status code the user listed explicitly in
  `retry_on` (e.g. "503": the upstream itself says it did not process it). Failures before the
  request was sent (connect failure, refused stream) are always safe to retry.
- Default with no `retries` on the route (`DEFAULT_RETRY`): two retries, only of requests that
  never reached an app — connect failure, or refused-stream, which is also what the engine makes
  of a server-side sidecar's never-processed mark (its app refused the connection) — whatever
  the method, since no app saw them; never a silent re-send of a request an app may have seen.
- Exponential backoff with full jitter: base 25 ms doubling per attempt, capped at 250 ms (Envoy's
  defaults), uniformly drawn in [0, cap].
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from enum import Enum

from lightmesh.v1 import config_pb2 as pb

# Envoy's and Istio's retryOn names for gRPC statuses (sidecar/http/grpc.py has the codes).
GRPC_RETRY_ON = {
    "cancelled": 1,
    "deadline-exceeded": 4,
    "resource-exhausted": 8,
    "internal": 13,
    "unavailable": 14,
}

IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
BASE_BACKOFF = 0.025
MAX_BACKOFF = 0.250
_GATEWAY = frozenset({502, 503, 504})


class Failure(Enum):
    """How an attempt failed, as the engine sees it."""

    CONNECT = "connect-failure"  # never reached the upstream
    REFUSED = "refused-stream"  # upstream refused before processing (never reached the app)
    RESET = "reset"  # connection reset/closed after the request was (maybe) sent
    TIMEOUT = "per-try-timeout"
    STATUS = "status"  # a response arrived; see the status code
    GRPC = "grpc-status"  # a trailers-only gRPC response; the status is its gRPC code


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    """A route's retry policy, parsed once per config."""

    attempts: int  # retries after the first try
    per_try_timeout: float | None = None
    on_5xx: bool = False
    on_gateway: bool = False
    on_connect: bool = False
    on_refused: bool = False
    on_reset: bool = False
    on_4xx: bool = False
    status_codes: frozenset[int] = frozenset()
    # gRPC statuses retried (cancelled, deadline-exceeded, internal, resource-exhausted,
    # unavailable), read from a trailers-only response before anything is relayed.
    grpc_codes: frozenset[int] = frozenset()

    @classmethod
    def parse(
        cls, attempts: int, retry_on: list[str] | tuple[str, ...], *, per_try_timeout: float | None
    ) -> RetryPolicy:
        """Parse Envoy-style conditions; raise ValueError for an unknown one."""
        flags = {
            "5xx": "on_5xx",
            "gateway-error": "on_gateway",
            "connect-failure": "on_connect",
            "refused-stream": "on_refused",
            "reset": "on_reset",
            "retriable-4xx": "on_4xx",
        }
        chosen: dict[str, bool] = {}
        codes: set[int] = set()
        grpc: set[int] = set()
        for raw in retry_on:
            condition = raw.strip()
            if condition in flags:
                chosen[flags[condition]] = True
            elif condition in GRPC_RETRY_ON:
                grpc.add(GRPC_RETRY_ON[condition])
            elif condition == "retriable-status-codes":
                continue  # the codes themselves come as numbers
            elif condition.isdigit() and 100 <= int(condition) < 600:
                codes.add(int(condition))
            else:
                raise ValueError(f"unknown retryOn condition {condition!r}")
        if not retry_on:
            # Istio's behaviour when retryOn is unset but attempts are: the safe conditions.
            chosen = {"on_connect": True, "on_refused": True, "on_gateway": True}
        return cls(
            attempts=attempts,
            per_try_timeout=per_try_timeout,
            status_codes=frozenset(codes),
            grpc_codes=frozenset(grpc),
            **chosen,
        )

    @classmethod
    def from_proto(cls, message: pb.RetryPolicy) -> RetryPolicy:
        """From a route's config; raise ValueError for an unknown condition."""
        return cls.parse(
            message.attempts,
            list(message.retry_on),
            per_try_timeout=message.per_try_timeout_ms / 1000
            if message.per_try_timeout_ms
            else None,
        )

    def retriable(self, failure: Failure, status: int = 0) -> bool:
        """Whether `retry_on` covers this failure."""
        if failure is Failure.CONNECT:
            return self.on_connect
        if failure is Failure.REFUSED:
            return self.on_refused or self.on_connect
        if failure is Failure.RESET:
            return self.on_reset
        if failure is Failure.TIMEOUT:
            return self.on_5xx or self.on_gateway  # Envoy counts a per-try timeout as both
        if failure is Failure.GRPC:
            return status in self.grpc_codes
        return (
            (self.on_5xx and status >= 500)
            or (self.on_gateway and status in _GATEWAY)
            or (self.on_4xx and status == 409)
            or status in self.status_codes
        )

    def should_retry(
        self, *, attempt: int, failure: Failure, status: int = 0, method: str, sent: bool
    ) -> bool:
        """After failed try number `attempt` (1 = the first): try again?

        `sent`: the request (head and any body) may have reached the upstream application.
        """
        if attempt > self.attempts or not self.retriable(failure, status):
            return False
        if not sent or failure in (Failure.CONNECT, Failure.REFUSED):
            return True
        if method.upper() in IDEMPOTENT:
            return True
        # Non-idempotent and the upstream may have acted on it: only an explicit status code the
        # user listed (the upstream answered, so it says itself whether it processed the request).
        if failure is Failure.GRPC:
            return True  # listed by name: the server says how the call ended (Envoy's grpc-on)
        return failure is Failure.STATUS and status in self.status_codes


# Used when a route sets no retries: only what never reached an app, at most twice (Istio's
# default count; its conditions also re-send any 503, POSTs included, which this one never does).
DEFAULT_RETRY = RetryPolicy(attempts=2, on_connect=True, on_refused=True)


def backoff(attempt: int, rng: random.Random) -> float:
    """Seconds to wait before retry number `attempt` (1 = first retry): full jitter."""
    cap = min(MAX_BACKOFF, BASE_BACKOFF * (2 ** max(attempt - 1, 0)))
    return rng.uniform(0.0, cap)


class RetryBudget:
    """Retries allowed as a share of requests (Linkerd/Finagle style), with a floor per second.

    Each request deposits `ratio` tokens; each retry withdraws one. Counts older than `window`
    seconds expire, and `min_per_second` x `window` tokens are always available, so a quiet
    service can still retry. With ratio 0.2, retries add at most 20% load in a failing period.
    """

    def __init__(
        self, *, ratio: float = 0.2, min_per_second: float = 10.0, window: float = 10.0
    ) -> None:
        self.ratio = ratio
        self.min_per_second = min_per_second
        self.window = window
        self._buckets: dict[int, tuple[int, int]] = {}  # second -> (requests, retries)
        self._second = -1  # the second of the last request; expiry runs once per second

    def _expire(self, now: float) -> None:
        oldest = int(now - self.window)
        for second in [s for s in self._buckets if s <= oldest]:
            del self._buckets[second]

    def _add(self, now: float, *, requests: int = 0, retries: int = 0) -> None:
        second = int(now)
        r, t = self._buckets.get(second, (0, 0))
        self._buckets[second] = (r + requests, t + retries)

    def request(self, now: float) -> None:
        """A request (first try) started (on the hot path: one dict update)."""
        second = int(now)
        if second != self._second:
            self._second = second
            self._expire(now)
        requests, retries = self._buckets.get(second, (0, 0))
        self._buckets[second] = (requests + 1, retries)

    def available(self, now: float) -> float:
        """Retries that may start now."""
        self._expire(now)
        requests = sum(r for r, _ in self._buckets.values())
        retries = sum(t for _, t in self._buckets.values())
        # Rounded so that 100 requests x 0.2 allow exactly 20 retries despite binary floats.
        return round(requests * self.ratio + self.min_per_second * self.window - retries, 9)

    def try_retry(self, now: float) -> bool:
        """Take a token for one retry; False when the budget is spent (do not retry)."""
        if self.available(now) < 1.0:
            return False
        self._add(now, retries=1)
        return True
