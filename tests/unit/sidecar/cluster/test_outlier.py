"""Outlier detection state machine, driven by explicit timestamps (no clock, no sleeps)."""

from sidecar.cluster.outlier import DEFAULT, OutlierConfig, OutlierDetector, filter_available

KEYS = ["a:1", "b:1", "c:1", "d:1"]


def detector(**config: int | float) -> OutlierDetector:
    found = OutlierDetector(
        OutlierConfig(**{"base_ejection": 30.0, "max_ejection_percent": 50, **config})  # type: ignore[arg-type]
    )
    found.set_endpoints(KEYS)
    return found


def fail(d: OutlierDetector, key: str, times: int, *, now: float = 0.0, status: int = 500) -> bool:
    ejected = [d.record(key, status, now) for _ in range(times)]  # every call must happen
    return any(ejected)


def test_five_consecutive_5xx_eject_and_a_success_resets_the_count() -> None:
    d = detector()
    assert not fail(d, "a:1", 4)
    d.record("a:1", 200, 0.0)
    assert not fail(d, "a:1", 4)
    assert d.ejected == frozenset()
    assert fail(d, "a:1", 1)
    assert d.ejected == {"a:1"}


def test_ejected_endpoint_returns_after_base_time_times_ejections() -> None:
    d = detector(base_ejection=30.0, interval=1000.0)
    fail(d, "a:1", 5, now=0.0)
    assert not d.refresh(29.9) and d.ejected == {"a:1"}
    assert d.refresh(30.0) and d.ejected == frozenset()
    fail(d, "a:1", 5, now=31.0)  # second ejection: twice as long
    assert not d.refresh(31.0 + 59.9)
    assert d.refresh(31.0 + 60.0) and d.ejected == frozenset()


def test_ejection_count_decays_while_healthy() -> None:
    d = detector(base_ejection=30.0, interval=10.0)
    fail(d, "a:1", 5, now=0.0)
    d.refresh(30.0)
    d.refresh(40.0)  # one interval healthy: multiplier back to zero
    fail(d, "a:1", 5, now=41.0)
    assert not d.refresh(41.0 + 29.9) and d.refresh(41.0 + 30.0)


def test_gateway_errors_count_separately() -> None:
    d = detector(consecutive_5xx=0, consecutive_gateway=3)
    assert not fail(d, "a:1", 5, status=500)  # 500 is not a gateway error
    assert fail(d, "b:1", 3, status=503)
    assert d.ejected == {"b:1"}


def test_max_ejection_percent_is_never_exceeded_but_one_is_always_allowed() -> None:
    d = detector(max_ejection_percent=50)
    for key in KEYS:
        fail(d, key, 5)
    assert len(d.ejected) == 2
    tiny = detector(max_ejection_percent=10)  # 10% of 4 rounds to 0: still one
    for key in KEYS:
        fail(tiny, key, 5)
    assert len(tiny.ejected) == 1


def test_panic_routes_to_all_when_too_few_are_healthy() -> None:
    endpoints = ["A", "B", "C", "D"]
    half = frozenset({"a:1", "b:1"})
    assert filter_available(endpoints, KEYS, half, min_health_percent=50) == ("C", "D")
    assert filter_available(endpoints, KEYS, half, min_health_percent=75) == tuple(endpoints)
    everyone = frozenset(KEYS)
    assert filter_available(endpoints, KEYS, everyone, min_health_percent=0) == tuple(endpoints)


def test_removed_endpoints_forget_their_state() -> None:
    d = detector()
    fail(d, "a:1", 5)
    d.set_endpoints(["b:1", "c:1"])
    assert d.ejected == frozenset()
    assert not d.record("a:1", 500, 1.0)


# --- local-origin failures: refused connections, or the endpoint's sidecar saying its app is gone


def local(d: OutlierDetector, key: str, now: float) -> bool:
    return d.record(key, 503, now, local_origin=True)


def test_one_local_origin_failure_ejects_at_once_for_a_second() -> None:
    d = detector(consecutive_5xx=0)
    assert local(d, "a:1", 0.0)
    assert d.ejected == {"a:1"}
    assert not d.refresh(0.99) and d.ejected == {"a:1"}
    assert d.refresh(1.0) and d.ejected == frozenset()


def test_a_failed_probe_doubles_the_ejection_and_an_answer_resets_it() -> None:
    d = detector(consecutive_5xx=0, local_base_ejection=1.0, local_max_ejection=3.0)
    local(d, "a:1", 0.0)
    d.refresh(1.0)  # admitted again: its next request is the probe
    assert local(d, "a:1", 1.0)  # still refusing: 2 s this time
    assert not d.refresh(2.99) and d.refresh(3.0)
    assert local(d, "a:1", 3.0)  # 4 s, capped at 3 s
    assert not d.refresh(5.99) and d.refresh(6.0)
    d.record("a:1", 200, 6.0)  # it answers again: back for good, doubling forgotten
    assert local(d, "a:1", 7.0)
    assert not d.refresh(7.99) and d.refresh(8.0)


def test_an_app_5xx_is_an_answer_not_a_local_origin_failure() -> None:
    d = detector(consecutive_5xx=0)
    local(d, "a:1", 0.0)
    d.refresh(1.0)
    d.record("a:1", 503, 1.0)  # the app itself said 503: it is there
    assert d.ejected == frozenset()
    assert local(d, "a:1", 2.0)
    assert d.refresh(3.0)  # one second again: the answer reset the doubling


def test_local_origin_failures_respect_the_ejection_cap_and_count_as_5xx() -> None:
    d = detector(consecutive_5xx=2, max_ejection_percent=25)  # one of four at most
    assert local(d, "a:1", 0.0)
    assert not local(d, "b:1", 0.0)  # the cap: b stays in rotation
    assert d.ejected == {"a:1"}
    assert d.record("b:1", 503, 0.0, local_origin=True) is False  # second 5xx, cap still full
    d.refresh(1.0)
    assert d.record("b:1", 500, 1.0)  # a third 5xx in a row: 5xx ejection (30 s)
    assert d.ejected == {"b:1"}


def test_local_origin_ejection_can_be_turned_off() -> None:
    d = detector(consecutive_5xx=0, consecutive_local_origin=0)
    assert not local(d, "a:1", 0.0)
    assert d.ejected == frozenset()


def test_default_config_ejects_only_local_origin_failures_at_most_half() -> None:
    d = OutlierDetector(DEFAULT)
    d.set_endpoints(KEYS)
    assert not any(d.record("a:1", 503, 0.0) for _ in range(20))  # app 503s: never ejected
    assert local(d, "a:1", 0.0) and local(d, "b:1", 0.0)
    assert not local(d, "c:1", 0.0)  # half of four
    assert d.ejected == {"a:1", "b:1"}
