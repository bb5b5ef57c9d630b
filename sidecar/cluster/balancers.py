"""Load balancers: pick one endpoint of a cluster. Pure; randomness injected.

ROUND_ROBIN cycles; RANDOM picks uniformly; LEAST_REQUEST is power-of-two-choices over the number
of requests in flight to each endpoint (the caller reports starts and finishes).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from lightmesh.v1 import config_pb2 as pb


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One upstream instance."""

    address: str
    port: int
    workload: str = ""

    @property
    def key(self) -> str:
        """ "address:port", the identity used for in-flight accounting."""
        return f"{self.address}:{self.port}"


@dataclass(slots=True)
class Balancer:
    """Picks endpoints of one cluster according to its policy."""

    policy: int  # pb.LbPolicy value
    endpoints: tuple[Endpoint, ...] = ()
    rng: random.Random = field(default_factory=random.Random)
    _next: int = 0
    in_flight: dict[str, int] = field(default_factory=dict)

    def pick(self) -> Endpoint | None:
        """The endpoint for the next request, or None when there is none."""
        endpoints = self.endpoints
        if not endpoints:
            return None
        if len(endpoints) == 1:
            return endpoints[0]
        if self.policy == pb.RANDOM:
            return endpoints[self.rng.randrange(len(endpoints))]
        if self.policy == pb.LEAST_REQUEST:
            first, second = self.rng.sample(endpoints, 2)
            load = self.in_flight
            return first if load.get(first.key, 0) <= load.get(second.key, 0) else second
        self._next = (self._next + 1) % len(endpoints)
        return endpoints[self._next]

    def started(self, endpoint: Endpoint) -> None:
        """A request to `endpoint` began."""
        self.in_flight[endpoint.key] = self.in_flight.get(endpoint.key, 0) + 1

    def finished(self, key: str) -> None:
        """A request to the endpoint `key` ("address:port") ended."""
        count = self.in_flight.get(key, 0) - 1
        if count > 0:
            self.in_flight[key] = count
        else:
            self.in_flight.pop(key, None)
