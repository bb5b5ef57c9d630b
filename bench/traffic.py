"""`python -m bench traffic`: the cost of the routing path, and which load balancer to default to.

1. Route lookup: CPU per `OutboundRouter.resolve` + `finished` with 1 route and with 200 routes of
   regex and header matches (the request matching the last route: the worst case), measured on
   the real DataPlane/OutboundRouter in this process.
2. Load balancers: a discrete-event simulation (simulated time, seeded rng, no sockets) of one
   sidecar sending Poisson traffic to 5 endpoints of 4 worker slots each (all equal, then one of
   them 10x slower), using the real balancer classes. Reports mean / p99 latency per policy. This is the measurement
   behind PEAK_EWMA as the default.
"""

from __future__ import annotations

import argparse
import heapq
import json
import random
import statistics
import time
from collections import deque
from dataclasses import dataclass, field

from google.protobuf.any_pb2 import Any as AnyPb
from google.protobuf.message import Message

from lightmesh import types
from lightmesh.v1 import config_pb2 as pb
from sidecar.cluster.balancers import Endpoint, LoadStats, make_balancer
from sidecar.config.apply import DataPlane
from sidecar.contract import Completed, Forward, RequestHead
from sidecar.routing.router import OutboundRouter

CLUSTER = "outbound||catalog.default.svc.cluster.local"


def _pack(message: Message) -> list[AnyPb]:
    item = AnyPb()
    item.Pack(message)
    return [item]


def _router(routes: int) -> OutboundRouter:
    plane = DataPlane(rng=random.Random(1))
    plane.apply(types.CLUSTER, _pack(pb.Cluster(name=CLUSTER, lb_policy=pb.PEAK_EWMA)))
    plane.apply(
        types.ENDPOINTS,
        _pack(
            pb.ClusterLoadAssignment(
                cluster_name=CLUSTER,
                endpoints=[pb.Endpoint(address="127.0.0.1", port=p) for p in (1, 2, 3)],
            )
        ),
    )
    to = [pb.WeightedCluster(cluster=CLUSTER, weight=100)]
    table = [
        pb.Route(
            name=f"r{i}",
            matches=[
                pb.RouteMatch(
                    uri=pb.StringMatch(regex=f"/api/v{i}/items/[0-9]+/(reviews|ratings)"),
                    headers=[pb.HeaderMatch(name="x-tenant", value=pb.StringMatch(exact=f"t{i}"))],
                )
            ],
            clusters=to,
        )
        for i in range(routes - 1)
    ]
    table.append(pb.Route(name="last", clusters=to))
    plane.apply(
        types.ROUTES,
        _pack(pb.VirtualHost(name="catalog", domains=["catalog"], routes=table)),
    )
    return OutboundRouter(plane)


def route_cost(routes: int, iterations: int) -> float:
    """Microseconds of CPU per resolve + finished."""
    router = _router(routes)
    headers = [(b"host", b"catalog"), (b"x-tenant", b"other"), (b"user-agent", b"bench")]
    start = time.process_time()
    for _ in range(iterations):
        head = RequestHead(
            method="GET",
            path="/api/v7/items/42/reviews?x=1",
            host="catalog",
            http_version="1.1",
            headers=list(headers),
        )
        decision = router.resolve(head)
        if not isinstance(decision, Forward):
            raise RuntimeError(f"benchmark route table broken: {decision}")
        router.finished(
            Completed(
                method="GET", host="catalog", cluster=decision.cluster, status=200, flags="",
                duration=0.001, request_bytes=0, response_bytes=0,
                upstream=f"{decision.address}:{decision.port}",
            )
        )  # fmt: skip
    return (time.process_time() - start) / iterations * 1e6


@dataclass
class _Server:
    mean: float  # seconds of service time
    slots: int
    busy: int = 0
    queue: deque[tuple[float, int]] = field(default_factory=deque)


def simulate(
    policy: int, *, requests: int, load: float, seed: int, slow: bool = True
) -> dict[str, float]:
    """Latencies (ms) of `requests` through one balancer; endpoint 0 is 10x slower if `slow`."""
    rng = random.Random(seed)
    means = [0.100 if slow else 0.010, 0.010, 0.010, 0.010, 0.010]
    servers = [_Server(mean=m, slots=4) for m in means]
    endpoints = tuple(Endpoint("10.0.0.1", 8000 + i) for i in range(len(servers)))
    index = {e.key: i for i, e in enumerate(endpoints)}
    stats = LoadStats()
    balancer = make_balancer(policy, stats=stats, rng=random.Random(seed + 1))
    balancer.set_endpoints(endpoints)
    capacity = sum(s.slots / s.mean for s in servers)
    rate = capacity * load
    events: list[tuple[float, int, str, int, float]] = []  # (time, seq, kind, server, start)
    seq = 0
    now = 0.0
    latencies: list[float] = []
    arrivals = 0
    next_arrival = rng.expovariate(rate)

    def begin(server: int, arrived: float) -> None:
        nonlocal seq
        s = servers[server]
        s.busy += 1
        seq += 1
        heapq.heappush(events, (now + rng.expovariate(1 / s.mean), seq, "done", server, arrived))

    while arrivals < requests or events:
        if arrivals < requests and (not events or next_arrival <= events[0][0]):
            now = next_arrival
            arrivals += 1
            next_arrival = now + rng.expovariate(rate)
            chosen = balancer.pick(endpoints, hash_key=None, now=now)
            if chosen is None:
                raise RuntimeError("balancer picked nothing")
            stats.started(chosen.key)
            server = index[chosen.key]
            if servers[server].busy < servers[server].slots:
                begin(server, now)
            else:
                servers[server].queue.append((now, server))
            continue
        now, _, _, server, arrived = heapq.heappop(events)
        latency = now - arrived
        latencies.append(latency)
        stats.finished(endpoints[server].key, rtt=latency, now=now)
        s = servers[server]
        s.busy -= 1
        if s.queue:
            queued_at, _ = s.queue.popleft()
            begin(server, queued_at)
    latencies.sort()
    return {
        "mean_ms": statistics.fmean(latencies) * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99)] * 1000,
    }


def main(argv: list[str]) -> int:
    """Run both parts; print a table (and JSON with --json)."""
    parser = argparse.ArgumentParser(prog="python -m bench traffic", description=__doc__)
    parser.add_argument("--iterations", type=int, default=20_000)
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--json", default="")
    args = parser.parse_args(argv)
    result: dict[str, object] = {}
    routing = {str(n): route_cost(n, args.iterations) for n in (1, 200)}
    result["resolve_us"] = routing
    print("route lookup, CPU per request (resolve + finished):")
    for n, us in routing.items():
        print(f"  {n:>4} routes: {us:8.1f} µs  ({1e6 / us:,.0f} resolves/s on one core)")
    names = {
        "ROUND_ROBIN": pb.ROUND_ROBIN,
        "RANDOM": pb.RANDOM,
        "LEAST_REQUEST": pb.LEAST_REQUEST,
        "PEAK_EWMA": pb.PEAK_EWMA,
    }
    balancing: dict[str, dict[str, dict[str, float]]] = {}
    for slow in (False, True):
        what = "one 10x slower" if slow else "all equal"
        print(f"load balancers, 5 endpoints x 4 slots ({what}), simulated:")
        for load in (0.5, 0.8):
            scenario = f"{'slow' if slow else 'equal'}@{load}"
            balancing[scenario] = {}
            for name, policy in names.items():
                found = simulate(policy, requests=args.requests, load=load, seed=7, slow=slow)
                balancing[scenario][name] = found
                print(
                    f"  load {load:.0%} {name:<14} mean {found['mean_ms']:9.1f} ms"
                    f"   p99 {found['p99_ms']:9.1f} ms"
                )
    result["balancers"] = balancing
    if args.json:
        with open(args.json, "w") as out:
            json.dump(result, out, indent=2)
    return 0
