"""The debouncer on a fake clock: quiet period, maximum delay, merged changes."""

from controlplane.model import ResourceKey
from controlplane.push.debounce import Debouncer
from controlplane.store import Change


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


def change(name: str, at: float) -> Change:
    return Change(
        keys=frozenset({ResourceKey("Service", "s", name)}), hosts=frozenset({name}), at=at
    )


def test_flushes_after_a_quiet_period() -> None:
    clock = FakeClock()
    debouncer = Debouncer(quiet=0.1, max_delay=1.0)
    assert debouncer.due_at() is None and debouncer.take(now=clock.now) is None
    debouncer.add(change("a", at=99.5), now=clock.now)
    assert debouncer.due_at() == 100.1
    assert debouncer.take(now=clock.advance(0.05)) is None
    debouncer.add(change("b", at=100.05), now=clock.now)  # quiet period starts again
    assert debouncer.take(now=clock.advance(0.08)) is None
    merged = debouncer.take(now=clock.advance(0.03))
    assert merged is not None and merged.hosts == {"a", "b"}
    assert merged.at == 99.5  # convergence starts at the earliest source event
    assert not debouncer.pending


def test_a_steady_stream_of_changes_flushes_every_max_delay() -> None:
    clock = FakeClock()
    debouncer = Debouncer(quiet=0.1, max_delay=1.0)
    flushes = []
    for step in range(45):  # a pod flapping every 50 ms for 2.25 s
        debouncer.add(change(f"p{step}", at=clock.now), now=clock.now)
        clock.now = 100.0 + (step + 1) * 0.05
        if debouncer.take(now=clock.now) is not None:
            flushes.append(round(clock.now - 100.0, 2))
    assert flushes == [1.0, 2.0]
