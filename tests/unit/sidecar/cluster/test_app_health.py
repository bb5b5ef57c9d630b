"""The app's reachability as its sidecar sees it: events in, state and probe schedule out."""

import math

from sidecar.cluster.app_health import AppHealth, AppState
from sidecar.contract import Completed

APP = "127.0.0.1:8080"


def done(*, status: int, flags: str = "", upstream: str = APP) -> Completed:
    return Completed(
        method="GET",
        host="h",
        cluster="inbound|8080",
        status=status,
        flags=flags,
        duration=0.001,
        request_bytes=0,
        response_bytes=0,
        upstream=upstream,
    )


def test_a_refused_connection_makes_the_app_down_and_schedules_probes() -> None:
    health = AppHealth(interval=0.2)
    health.finished(done(status=200), 0.0)
    assert health.state is AppState.UP and health.ready and math.isinf(health.next_probe)
    health.finished(done(status=503, flags="UF"), 1.0)
    assert health.down and not health.ready
    assert health.next_probe == 1.2
    health.probed(ok=False, now=1.2)
    assert health.down and health.next_probe == 1.4
    health.probed(ok=True, now=1.4)
    assert health.state is AppState.UP and health.ready and math.isinf(health.next_probe)
    assert health.transitions == 1


def test_before_the_app_ever_answered_the_sidecar_stays_ready() -> None:
    # The app may be held until its proxy is ready (lightmesh wait-ready): no deadlock.
    health = AppHealth()
    assert health.next_probe == 0.0  # probed at start, so it knows once the app listens
    health.finished(done(status=503, flags="UF"), 0.0)
    assert health.down  # requests are still refused early (nothing listens)
    assert health.ready
    health.probed(ok=True, now=0.2)
    health.probed(ok=False, now=5.0)
    assert health.down and not health.ready


def test_a_reset_asks_for_a_probe_but_does_not_make_the_app_down() -> None:
    health = AppHealth()
    health.finished(done(status=200), 0.0)
    health.finished(done(status=503, flags="UC"), 3.0)
    assert health.state is AppState.UP and health.next_probe == 3.0
    health.probed(ok=True, now=3.0)
    assert math.isinf(health.next_probe)


def test_any_answer_of_the_app_means_up_and_local_replies_tell_nothing() -> None:
    health = AppHealth()
    health.refused(0.0)
    health.finished(done(status=503, flags="UF", upstream=""), 0.1)  # our own early answer
    assert health.down and health.next_probe == 0.2
    health.finished(done(status=500), 0.15)  # the app itself answered 500: it is there
    assert not health.down
    health.finished(done(status=0, flags="DC"), 0.3)  # the client left: says nothing
    assert not health.down
