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

Local-origin failures (Envoy's term) are those where the endpoint never processed the request:
the connection was refused or failed, or the endpoint's own sidecar answered that it could not
reach its app (the mesh's never-processed mark). They are unambiguous, so they eject at once
(`consecutive_local_origin`, default 1), and briefly: `local_base_ejection` doubling with every
ejection that follows without an answer in between, capped at `local_max_ejection`. When the time
is up the endpoint is admitted again, and its next request is the probe: another local-origin
failure ejects it again (for twice as long), any answer (even a 5xx: the app answered) returns it
for good and resets the doubling. The same bookkeeping of ejections applies (the percentage cap,
panic). Local-origin failures that are proxy-made 5xx still count toward `consecutive_5xx` too.

`DEFAULT` is the detector of a cluster that configures no outlierDetection: local-origin
ejection only, at most half the endpoints at once.
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
    consecutive_local_origin: int = 1  # 0: local-origin failures never eject
    local_base_ejection: float = 1.0
    local_max_ejection: float = 10.0

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
    local_failures: int = 0  # local-origin failures in a row
    local_ejections: int = 0  # local-origin ejections since the endpoint last answered


# A cluster without outlierDetection: eject only endpoints that refuse or report their app gone.
DEFAULT = OutlierConfig(consecutive_5xx=0, consecutive_gateway=0, max_ejection_percent=50)


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

    def record(self, key: str, status: int, now: float, *, local_origin: bool = False) -> bool:
        """One finished exchange (or attempt) with `key`; True when this ejected it.

        `local_origin`: the endpoint never processed the request (see the module docstring).
        """
        host = self._hosts.get(key)
        if host is None:
            return False  # an endpoint removed meanwhile
        ejected = False
        if local_origin:
            host.local_failures += 1
            ejected = self._eject_local(key, host, now)
        else:
            host.local_failures = host.local_ejections = 0  # it answered
        if status < 500:
            host.errors_5xx = host.errors_gateway = 0
            return ejected
        host.errors_5xx += 1
        if status in _GATEWAY:
            host.errors_gateway += 1
        config = self.config
        tripped = (config.consecutive_5xx and host.errors_5xx >= config.consecutive_5xx) or (
            config.consecutive_gateway and host.errors_gateway >= config.consecutive_gateway
        )
        if not tripped or key in self._ejected or not self._may_eject():
            return ejected
        host.errors_5xx = host.errors_gateway = 0
        host.ejections += 1
        self._eject(
            key, host, now + min(config.base_ejection * host.ejections, config.max_ejection)
        )
        return True

    def _eject_local(self, key: str, host: _Host, now: float) -> bool:
        config = self.config
        threshold = config.consecutive_local_origin
        if not threshold or host.local_failures < threshold:
            return False
        if key in self._ejected or not self._may_eject():
            return False
        host.local_failures = 0
        host.local_ejections += 1
        seconds = config.local_base_ejection * 2 ** min(host.local_ejections - 1, 30)
        self._eject(key, host, now + min(seconds, config.local_max_ejection))
        return True

    def _eject(self, key: str, host: _Host, until: float) -> None:
        host.ejected_until = until
        self._ejected.add(key)
        self.ejections_total += 1
        self._schedule()

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
