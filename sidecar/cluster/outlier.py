"""Outlier detection (passive health checking) of one cluster: a pure state machine.

Fed with each finished exchange (endpoint, status) and the current time; answers which endpoints
are ejected. Semantics follow Envoy/Istio:
- `consecutive_5xx` 5xx answers in a row (proxy-made 503/504 for connect failures and timeouts
  included) eject an endpoint; `consecutive_gateway` counts only 502, 503 and 504. Any other answer
  resets both counters.
- An ejection lasts `base_ejection` x (number of times the endpoint was ejected), capped at
  `max_ejection`; the count decays by one for every `interval` spent healthy. Unlike Envoy, which
  returns endpoints on its next `interval` tick, an endpoint returns as soon as its time is up.
- At most `max_ejection_percent` of the endpoints are ejected at once, but always at least one
  (as Envoy does), so a two-endpoint cluster can still shed its bad half.
- Panic: when fewer than `min_health_percent` of the endpoints (or none at all) are healthy, the
  balancer is given every endpoint — a degraded answer beats certain failure.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from lightmesh.v1 import config_pb2 as pb

_E = TypeVar("_E")
_GATEWAY = (502, 503, 504)


@dataclass(frozen=True, slots=True, kw_only=True)
class OutlierConfig:
    """When to eject and for how long (seconds)."""

    consecutive_5xx: int = 5
    consecutive_gateway: int = 0  # 0: disabled
    interval: float = 10.0
    base_ejection: float = 30.0
    max_ejection: float = 300.0
    max_ejection_percent: int = 10
    min_health_percent: int = 0

    @classmethod
    def from_proto(cls, message: pb.OutlierDetection) -> OutlierConfig:
        """From the cluster config (zero durations take the defaults)."""
        return cls(
            consecutive_5xx=message.consecutive_5xx,
            consecutive_gateway=message.consecutive_gateway,
            interval=(message.interval_ms or 10_000) / 1000,
            base_ejection=(message.base_ejection_ms or 30_000) / 1000,
            max_ejection_percent=message.max_ejection_percent,
            min_health_percent=message.min_health_percent,
        )


@dataclass(slots=True)
class _Host:
    errors_5xx: int = 0
    errors_gateway: int = 0
    ejections: int = 0  # the multiplier of the next ejection time
    ejected_until: float | None = None
    healthy_since: float = 0.0


class OutlierDetector:
    """Ejection state of one cluster's endpoints (by key "address:port")."""

    def __init__(self, config: OutlierConfig) -> None:
        self.config = config
        self._hosts: dict[str, _Host] = {}
        self._ejected: set[str] = set()
        self.next_check = math.inf  # when `refresh` has something to do
        self.ejections_total = 0

    @property
    def ejected(self) -> frozenset[str]:
        """Keys of the endpoints currently ejected."""
        return frozenset(self._ejected)

    def set_endpoints(self, keys: Iterable[str]) -> None:
        """The cluster's endpoints changed: keep the state of those that remain."""
        keep = set(keys)
        self._hosts = {k: self._hosts.get(k) or _Host() for k in keep}
        self._ejected &= keep
        self._schedule()

    def record(self, key: str, status: int, now: float) -> bool:
        """One finished exchange with `key`; True when this ejected it."""
        host = self._hosts.get(key)
        if host is None:
            return False  # an endpoint removed meanwhile
        if status < 500:
            host.errors_5xx = host.errors_gateway = 0
            return False
        host.errors_5xx += 1
        if status in _GATEWAY:
            host.errors_gateway += 1
        config = self.config
        tripped = (config.consecutive_5xx and host.errors_5xx >= config.consecutive_5xx) or (
            config.consecutive_gateway and host.errors_gateway >= config.consecutive_gateway
        )
        if not tripped or key in self._ejected or not self._may_eject():
            return False
        host.errors_5xx = host.errors_gateway = 0
        host.ejections += 1
        ejection = min(config.base_ejection * host.ejections, config.max_ejection)
        host.ejected_until = now + ejection
        self._ejected.add(key)
        self.ejections_total += 1
        self._schedule()
        return True

    def _may_eject(self) -> bool:
        allowed = max(1, len(self._hosts) * self.config.max_ejection_percent // 100)
        return len(self._ejected) < allowed

    def refresh(self, now: float) -> bool:
        """Return endpoints whose ejection is over; decay ejection counts. True if any returned."""
        if now < self.next_check:
            return False
        returned = False
        for key, host in self._hosts.items():
            if host.ejected_until is not None and host.ejected_until <= now:
                host.ejected_until = None
                host.healthy_since = now
                self._ejected.discard(key)
                returned = True
            elif (
                host.ejected_until is None
                and host.ejections
                and now - host.healthy_since >= self.config.interval
            ):
                host.ejections -= 1
                host.healthy_since = now
        self._schedule()
        return returned

    def _schedule(self) -> None:
        deadlines = [h.ejected_until for h in self._hosts.values() if h.ejected_until is not None]
        deadlines += [
            h.healthy_since + self.config.interval
            for h in self._hosts.values()
            if h.ejected_until is None and h.ejections
        ]
        self.next_check = min(deadlines, default=math.inf)


def filter_available(
    endpoints: Sequence[_E],
    keys: Sequence[str],
    ejected: frozenset[str],
    *,
    min_health_percent: int,
) -> tuple[_E, ...]:
    """The endpoints the balancer may use: the healthy ones, or all of them in panic mode."""
    if not ejected:
        return tuple(endpoints)
    healthy = tuple(e for e, k in zip(endpoints, keys, strict=True) if k not in ejected)
    if not healthy or len(healthy) * 100 < min_health_percent * len(endpoints):
        return tuple(endpoints)  # panic: route to all
    return healthy
