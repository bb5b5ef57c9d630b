"""Load balancers: pick one endpoint of a cluster among those available. Pure; rng and time injected.

- ROUND_ROBIN: smooth weighted round robin (nginx's): exact shares, evenly interleaved.
- RANDOM: weighted uniform choice.
- LEAST_REQUEST: power of two choices on requests in flight (divided by weight).
- PEAK_EWMA: power of two choices on peak-EWMA latency x (in flight + 1), as Linkerd and Finagle do:
  a latency spike counts at once, recovery is smoothed, and an idle endpoint's estimate decays so it
  is tried again. The default, because it steers around slow and overloaded endpoints. Unlike
  Linkerd's: new endpoints are probed at once, the decay is 2 s, and costs within 25% are a tie, so
  low, sequential traffic still spreads (docs/traffic.md has the measurements).
- RING_HASH: consistent hashing on a ring of virtual nodes (a fixed number per unit of weight);
  adding or removing one of N endpoints moves only the keys it gains or owned, about 1/N. Requests without a hash key fall back to a random pick.

The caller passes the endpoints currently available (outlier detection removes ejected ones); the
ring is built over every endpoint and walks past unavailable ones, so an ejection moves only the
keys of the ejected endpoint.
"""

from __future__ import annotations

import bisect
import hashlib
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from lightmesh.v1 import config_pb2 as pb

DEFAULT_RTT = 0.030  # seconds assumed for an endpoint never measured (Linkerd's default)
EWMA_DECAY = 2.0  # seconds: time constant of the peak-EWMA estimate (see docs/traffic.md)


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One upstream instance."""

    address: str
    port: int
    workload: str = ""
    weight: int = 1
    key: str = field(init=False, compare=False, repr=False)  # "address:port"

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", f"{self.address}:{self.port}")


class LoadStats:
    """Requests in flight and peak-EWMA latency per endpoint key ("address:port")."""

    __slots__ = ("_ewma", "decay", "default_rtt", "in_flight", "total_in_flight")

    def __init__(self, *, decay: float = EWMA_DECAY, default_rtt: float = DEFAULT_RTT) -> None:
        self.decay = decay
        self.default_rtt = default_rtt
        self.in_flight: dict[str, int] = {}
        self.total_in_flight = 0
        self._ewma: dict[str, tuple[float, float]] = {}  # key -> (estimate seconds, stamp)

    def started(self, key: str) -> None:
        """A request to `key` began."""
        self.in_flight[key] = self.in_flight.get(key, 0) + 1
        self.total_in_flight += 1

    def finished(self, key: str, *, rtt: float | None = None, now: float = 0.0) -> None:
        """A request to `key` ended after `rtt` seconds (None: no latency sample)."""
        count = self.in_flight.get(key, 0)
        if count > 0:
            self.total_in_flight -= 1
            if count > 1:
                self.in_flight[key] = count - 1
            else:
                del self.in_flight[key]
        if rtt is not None:
            self._observe(key, rtt, now)

    def _observe(self, key: str, rtt: float, now: float) -> float:
        estimate, stamp = self._ewma.get(key, (self.default_rtt, now))
        if rtt > estimate:
            estimate = rtt  # peak: a slowdown counts at once
        else:
            weight = math.exp(-max(now - stamp, 0.0) / self.decay)
            estimate = estimate * weight + rtt * (1.0 - weight)
        self._ewma[key] = (estimate, now)
        return estimate

    def cost(self, key: str, pending: int, now: float) -> float:
        """Peak-EWMA cost: latency x (in flight + 1). An endpoint never measured costs nothing
        when idle (so it is probed at once) and `default_rtt` per request in flight otherwise."""
        if key not in self._ewma:
            return self.default_rtt * pending
        return self.latency(key, now) * (pending + 1)

    def latency(self, key: str, now: float) -> float:
        """The current estimate, decayed toward zero over idle time (so idle endpoints get probed)."""
        found = self._ewma.get(key)
        if found is None:
            return self.default_rtt
        estimate, stamp = found
        return estimate * math.exp(-max(now - stamp, 0.0) / self.decay)

    def forget(self, keep: set[str]) -> None:
        """Drop latency estimates of endpoints that are gone (in-flight counts drain by themselves)."""
        for key in [k for k in self._ewma if k not in keep]:
            del self._ewma[key]


class Balancer(Protocol):
    """Picks one of the available endpoints."""

    policy: int  # pb.LbPolicy value

    def set_endpoints(self, endpoints: Sequence[Endpoint]) -> None:
        """The cluster's endpoints changed (all of them, available or not)."""

    def pick(
        self, available: Sequence[Endpoint], *, hash_key: bytes | None, now: float
    ) -> Endpoint | None:
        """The endpoint for the next request, or None when `available` is empty."""


class RoundRobin:
    """Smooth weighted round robin; state keyed by endpoint so it survives endpoint changes."""

    policy: int = pb.ROUND_ROBIN

    def __init__(self) -> None:
        self._current: dict[str, int] = {}

    def set_endpoints(self, endpoints: Sequence[Endpoint]) -> None:
        """Forget the position of endpoints that are gone."""
        keys = {e.key for e in endpoints}
        self._current = {k: v for k, v in self._current.items() if k in keys}

    def pick(
        self, available: Sequence[Endpoint], *, hash_key: bytes | None, now: float
    ) -> Endpoint | None:
        """Each endpoint gains its weight; the richest is picked and pays the total."""
        if len(available) <= 1:
            return available[0] if available else None
        current = self._current
        best = available[0]
        best_value = current.get(best.key, 0) + best.weight
        current[best.key] = best_value
        total = best.weight
        for endpoint in available[1:]:
            value = current.get(endpoint.key, 0) + endpoint.weight
            current[endpoint.key] = value
            total += endpoint.weight
            if value > best_value:
                best, best_value = endpoint, value
        current[best.key] = best_value - total
        return best


class RandomPick:
    """Uniform (weighted) random choice."""

    policy: int = pb.RANDOM

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng

    def set_endpoints(self, endpoints: Sequence[Endpoint]) -> None:
        """Stateless."""

    def pick(
        self, available: Sequence[Endpoint], *, hash_key: bytes | None, now: float
    ) -> Endpoint | None:
        """A random endpoint, in proportion to its weight."""
        return _random(self._rng, available)


def _random(rng: random.Random, available: Sequence[Endpoint]) -> Endpoint | None:
    if len(available) <= 1:
        return available[0] if available else None
    if all(e.weight == 1 for e in available):
        return available[rng.randrange(len(available))]
    return rng.choices(available, weights=[e.weight for e in available])[0]


class PowerOfTwo:
    """Power of two choices: sample two endpoints, keep the cheaper (LEAST_REQUEST, PEAK_EWMA)."""

    def __init__(
        self, *, policy: int, stats: LoadStats, rng: random.Random, tolerance: float = 1.25
    ) -> None:
        self.policy = policy
        self._stats = stats
        self._rng = rng
        self.tolerance = tolerance if policy == pb.PEAK_EWMA else 1.0

    def set_endpoints(self, endpoints: Sequence[Endpoint]) -> None:
        """Stateless apart from the shared stats."""

    def cost(self, endpoint: Endpoint, now: float) -> float:
        """In flight (LEAST_REQUEST) or latency x (in flight + 1) (PEAK_EWMA), per unit of weight."""
        pending = self._stats.in_flight.get(endpoint.key, 0)
        if self.policy == pb.LEAST_REQUEST:
            return pending / endpoint.weight
        return self._stats.cost(endpoint.key, pending, now) / endpoint.weight

    def pick(
        self, available: Sequence[Endpoint], *, hash_key: bytes | None, now: float
    ) -> Endpoint | None:
        """The cheaper of two distinct random endpoints; a coin decides near-ties."""
        count = len(available)
        if count <= 1:
            return available[0] if available else None
        # Two distinct indices from two draws (cheaper than rng.sample on the hot path).
        i = self._rng.randrange(count)
        j = self._rng.randrange(count - 1)
        first, second = available[i], available[j + 1 if j >= i else j]
        a, b = self.cost(first, now), self.cost(second, now)
        # Costs within `tolerance` (25%) are noise for one sidecar's samples: spread instead of
        # chasing it (otherwise, at low load, the endpoint that happened to be faster takes all).
        if a <= b * self.tolerance and b <= a * self.tolerance:
            return first  # i was drawn at random: this is the coin
        return first if a < b else second


def hash64(data: bytes) -> int:
    """A stable 64-bit hash (the same in every sidecar and across restarts)."""
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


VNODES = 128  # ring points per unit of endpoint weight


class RingHash:
    """Consistent hashing over a ring with `vnodes` points per unit of endpoint weight.

    An endpoint's points depend only on its own key and weight, never on the other endpoints, so
    adding or removing one endpoint moves exactly the keys it gains or owned: about 1/N.
    """

    policy: int = pb.RING_HASH

    def __init__(self, *, vnodes: int = VNODES, rng: random.Random) -> None:
        self._vnodes = max(vnodes, 1)
        self._rng = rng
        self._hashes: list[int] = []
        self._owners: list[Endpoint] = []
        self._members: frozenset[Endpoint] = frozenset()

    def set_endpoints(self, endpoints: Sequence[Endpoint]) -> None:
        """Rebuild the ring."""
        points: list[tuple[int, str, Endpoint]] = []
        for endpoint in endpoints:
            points += [
                (hash64(f"{endpoint.key}_{i}".encode()), endpoint.key, endpoint)
                for i in range(self._vnodes * endpoint.weight)
            ]
        points.sort(key=lambda p: (p[0], p[1]))
        self._hashes = [p[0] for p in points]
        self._owners = [p[2] for p in points]
        self._members = frozenset(endpoints)

    def pick(
        self, available: Sequence[Endpoint], *, hash_key: bytes | None, now: float
    ) -> Endpoint | None:
        """The first available endpoint clockwise from the key's hash."""
        if hash_key is None or not self._hashes:
            return _random(self._rng, available)
        return self.lookup(hash64(hash_key), available)

    def lookup(self, point: int, available: Sequence[Endpoint]) -> Endpoint | None:
        """The owner of `point`, skipping endpoints not in `available`."""
        if not available:
            return None
        everyone = len(available) == len(self._members)
        allowed = None if everyone else set(available)
        start = bisect.bisect_left(self._hashes, point)
        size = len(self._hashes)
        for step in range(size):
            owner = self._owners[(start + step) % size]
            if allowed is None or owner in allowed:
                return owner
        return _random(self._rng, available)


def make_balancer(
    policy: int, *, stats: LoadStats, rng: random.Random, vnodes: int = VNODES
) -> Balancer:
    """The balancer for a pb.LbPolicy value (the caller has checked it is known)."""
    if policy == pb.ROUND_ROBIN:
        return RoundRobin()
    if policy == pb.RANDOM:
        return RandomPick(rng)
    if policy == pb.RING_HASH:
        return RingHash(vnodes=vnodes, rng=rng)
    return PowerOfTwo(policy=policy, stats=stats, rng=rng)
