"""Load balancers: smooth weighted round robin, P2C (least request, peak EWMA), random, ring hash."""

import random
from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from lightmesh.v1 import config_pb2 as pb
from sidecar.cluster.balancers import (
    Endpoint,
    LoadStats,
    PowerOfTwo,
    RandomPick,
    RingHash,
    RoundRobin,
    hash64,
)

A, B, C = Endpoint("h", 1), Endpoint("h", 2), Endpoint("h", 3)


def test_round_robin_cycles_evenly() -> None:
    rr = RoundRobin()
    picks = [rr.pick((A, B, C), hash_key=None, now=0) for _ in range(6)]
    assert picks == [A, B, C, A, B, C]


@given(st.lists(st.integers(min_value=1, max_value=20), min_size=1, max_size=8))
def test_smooth_weighted_round_robin_gives_exact_shares_per_cycle(weights: list[int]) -> None:
    endpoints = tuple(Endpoint("h", i + 1, weight=w) for i, w in enumerate(weights))
    rr = RoundRobin()
    counts = Counter(rr.pick(endpoints, hash_key=None, now=0) for _ in range(sum(weights) * 3))
    assert {e.port: counts[e] for e in endpoints} == {e.port: 3 * e.weight for e in endpoints}


def test_smooth_weighted_round_robin_interleaves() -> None:
    heavy, light = Endpoint("h", 1, weight=5), Endpoint("h", 2, weight=1)
    rr = RoundRobin()
    picks = [rr.pick((heavy, light), hash_key=None, now=0) for _ in range(6)]
    assert picks.count(light) == 1 and picks[0] == heavy and picks[-1] == heavy  # not 5 then 1


def test_least_request_prefers_idle_endpoints() -> None:
    stats = LoadStats()
    p2c = PowerOfTwo(policy=pb.LEAST_REQUEST, stats=stats, rng=random.Random(1))
    for _ in range(3):
        stats.started(A.key)
    assert {p2c.pick((A, B), hash_key=None, now=0) for _ in range(20)} == {B}
    for _ in range(3):
        stats.finished(A.key)
    assert stats.in_flight == {} and stats.total_in_flight == 0


def test_peak_ewma_avoids_a_slow_endpoint_and_probes_it_again_after_idling() -> None:
    stats = LoadStats(decay=10.0)
    p2c = PowerOfTwo(policy=pb.PEAK_EWMA, stats=stats, rng=random.Random(2))
    stats.finished(A.key, rtt=0.5, now=0.0)  # a peak counts at once
    stats.finished(B.key, rtt=0.01, now=0.0)
    picks = Counter(p2c.pick((A, B), hash_key=None, now=0.0) for _ in range(50))
    assert picks == {B: 50}
    # An hour later A's estimate decayed toward zero: it is cheap again and gets probed.
    assert stats.latency(A.key, 3600.0) < stats.latency(B.key, 0.0)


def test_peak_ewma_probes_a_new_endpoint_at_once() -> None:
    stats = LoadStats()
    p2c = PowerOfTwo(policy=pb.PEAK_EWMA, stats=stats, rng=random.Random(4))
    stats.finished(A.key, rtt=0.001, now=0.0)  # A is fast, B never measured
    assert p2c.pick((A, B), hash_key=None, now=0.0) == B
    stats.started(B.key)  # ...but not flooded while its first answer is outstanding
    assert p2c.pick((A, B), hash_key=None, now=0.0) == A


def test_peak_ewma_spreads_over_endpoints_of_similar_latency() -> None:
    """At low load, a 10% latency difference is noise: both endpoints get traffic."""
    stats = LoadStats()
    p2c = PowerOfTwo(policy=pb.PEAK_EWMA, stats=stats, rng=random.Random(5))
    stats.finished(A.key, rtt=0.010, now=0.0)
    stats.finished(B.key, rtt=0.011, now=0.0)
    picks = Counter(p2c.pick((A, B), hash_key=None, now=0.0) for _ in range(400))
    assert 150 <= picks[A] <= 250, picks  # Binomial(400, 0.5): ± 5 sd


def test_peak_ewma_smooths_recovery() -> None:
    stats = LoadStats(decay=10.0)
    stats.finished(A.key, rtt=1.0, now=0.0)
    stats.finished(A.key, rtt=0.01, now=1.0)  # one fast answer does not erase the peak
    assert 0.8 < stats.latency(A.key, 1.0) < 1.0


@given(st.integers(min_value=0, max_value=2**32))
@settings(max_examples=25)
def test_random_pick_is_weighted(seed: int) -> None:
    heavy, light = Endpoint("h", 1, weight=9), Endpoint("h", 2, weight=1)
    picker = RandomPick(random.Random(seed))
    counts = Counter(picker.pick((heavy, light), hash_key=None, now=0) for _ in range(2000))
    # Binomial(2000, 0.9): mean 1800, sd 13.4; 6 sd either side.
    assert 1720 <= counts[heavy] <= 1880


def ring(endpoints: tuple[Endpoint, ...], size: int = 128) -> RingHash:
    ring = RingHash(vnodes=size, rng=random.Random(0))
    ring.set_endpoints(endpoints)
    return ring


def test_ring_hash_is_sticky_and_falls_back_to_random_without_a_key() -> None:
    endpoints = (A, B, C)
    r = ring(endpoints)
    first = r.pick(endpoints, hash_key=b"user-1", now=0)
    assert all(r.pick(endpoints, hash_key=b"user-1", now=0) == first for _ in range(10))
    assert r.pick(endpoints, hash_key=None, now=0) in endpoints


@given(
    count=st.integers(min_value=2, max_value=12),
    removed=st.integers(min_value=0, max_value=11),
)
@settings(max_examples=30, deadline=None)
def test_removing_one_of_n_endpoints_moves_only_its_keys(count: int, removed: int) -> None:
    endpoints = tuple(Endpoint("10.0.0.1", 8000 + i) for i in range(count))
    gone = endpoints[removed % count]
    before = ring(endpoints)
    after = ring(tuple(e for e in endpoints if e != gone))
    keys = [f"key-{i}".encode() for i in range(2000)]
    moved = [
        k
        for k in keys
        if before.pick(endpoints, hash_key=k, now=0) != after.pick(endpoints, hash_key=k, now=0)
    ]
    # Exactly the keys that lived on the removed endpoint move, and they are about 1/N.
    assert all(before.pick(endpoints, hash_key=k, now=0) == gone for k in moved)
    assert len(moved) <= len(keys) * (1 / count) * 1.6 + 40


@given(count=st.integers(min_value=1, max_value=12))
@settings(max_examples=20, deadline=None)
def test_adding_one_endpoint_moves_about_one_in_n_plus_one_keys(count: int) -> None:
    endpoints = tuple(Endpoint("10.0.0.1", 8000 + i) for i in range(count))
    added = Endpoint("10.0.0.2", 9000)
    before, after = ring(endpoints), ring((*endpoints, added))
    bigger = (*endpoints, added)
    keys = [f"k{i}".encode() for i in range(2000)]
    moved = [
        k
        for k in keys
        if before.pick(endpoints, hash_key=k, now=0) != after.pick(bigger, hash_key=k, now=0)
    ]
    assert all(after.pick(bigger, hash_key=k, now=0) == added for k in moved)
    assert len(moved) <= len(keys) / (count + 1) * 1.6 + 40


def test_ring_skips_unavailable_endpoints_moving_only_their_keys() -> None:
    endpoints = (A, B, C)
    r = ring(endpoints)
    keys = [f"k{i}".encode() for i in range(500)]
    owners = {k: r.pick(endpoints, hash_key=k, now=0) for k in keys}
    for k in keys:
        owner = r.pick((A, C), hash_key=k, now=0)
        assert owner in (A, C)
        if owners[k] != B:
            assert owner == owners[k]


def test_hash_is_stable_across_processes() -> None:
    """Not Python's salted hash(): every sidecar must put a key on the same endpoint."""
    assert hash64(b"catalog") == 0x5C18D2987F94EAAA
