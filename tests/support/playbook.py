"""Event/action scripts for the sans-IO exchange (mitmproxy's Playbook tests are the model).

    assert (
        Playbook(machine)
        >> begin()
        << Like(Connect, attempt=1, fresh=False)
        >> connected(1)
        << Like(WriteUp, data=starts(b"GET / HTTP/1.1"))
    )

`>> event` feeds the machine; each `<< expected` must match the next action it returned, in
order (an `Action` by equality, `Like(Type, field=value | predicate)` by fields); an action left
unmatched when the next event comes, or at the end, fails the script with a transcript.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sidecar.exchange.machine import Action, ExchangeMachine, Timer
from sidecar.http.http1 import ParseError, ResponseParser


class Event:
    """One event fed to the machine (named for the transcript)."""

    def __init__(self, name: str, feed: Callable[[ExchangeMachine], list[Action]]) -> None:
        self.name = name
        self.feed = feed

    def __repr__(self) -> str:
        return self.name


def begin() -> Event:
    return Event("begin", lambda m: m.begin())


def body(data: bytes) -> Event:
    return Event(f"body({data!r})", lambda m: m.request_body(data))


def end() -> Event:
    return Event("end", lambda m: m.request_end())


def request_failed(text: str = "bad chunk") -> Event:
    return Event(f"request_failed({text!r})", lambda m: m.request_failed(ParseError(text)))


def client_lost() -> Event:
    return Event("client_lost", lambda m: m.downstream_lost())


def connected(attempt: int, *, tls: bool = False, reused: bool = False, requests: int = 1) -> Event:
    def feed(m: ExchangeMachine) -> list[Action]:
        return m.upstream_connected(
            attempt, ResponseParser(m.start.method), tls=tls, reused=reused, requests=requests
        )

    return Event(f"connected({attempt}, tls={tls}, reused={reused})", feed)


def connect_failed(attempt: int) -> Event:
    from sidecar.errors import UpstreamConnectFailure

    error = UpstreamConnectFailure("connect refused")
    return Event(f"connect_failed({attempt})", lambda m: m.upstream_connect_failed(attempt, error))


def upstream(data: bytes) -> Event:
    return Event(f"upstream({data[:40]!r}...)", lambda m: m.upstream_data(data))


def upstream_eof() -> Event:
    return Event("upstream_eof", lambda m: m.upstream_eof())


def upstream_lost() -> Event:
    return Event("upstream_lost", lambda m: m.upstream_lost("ConnectionResetError()"))


def fired(timer: Timer) -> Event:
    return Event(f"fired({timer.name})", lambda m: m.timer_fired(timer))


def tunnel_ended(sent: int, received: int) -> Event:
    return Event(
        f"tunnel_ended({sent}, {received})", lambda m: m.tunnel_ended(sent=sent, received=received)
    )


class Like:
    """An expected action: of type `kind`, with the given fields equal (or a predicate true)."""

    def __init__(self, kind: type[Action], **fields: Any) -> None:
        self.kind = kind
        self.fields = fields

    def matches(self, action: Action) -> bool:
        if type(action) is not self.kind:
            return False
        for name, want in self.fields.items():
            got = getattr(action, name)
            if callable(want) and not isinstance(want, type):
                if not want(got):
                    return False
            elif got != want:
                return False
        return True

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in self.fields.items())
        return f"Like({self.kind.__name__}, {fields})"


class _Predicate:
    def __init__(self, text: str, test: Callable[[Any], bool]) -> None:
        self.text = text
        self.test = test

    def __call__(self, value: Any) -> bool:
        return self.test(value)

    def __repr__(self) -> str:
        return self.text


def starts(prefix: bytes) -> _Predicate:
    """A bytes field starting with `prefix`."""
    return _Predicate(f"starts({prefix!r})", lambda v: v.startswith(prefix))


def contains(*parts: bytes) -> _Predicate:
    """A bytes field containing each of `parts`."""
    return _Predicate(f"contains{parts!r}", lambda v: all(p in v for p in parts))


def lacks(part: bytes) -> _Predicate:
    """A bytes field not containing `part`."""
    return _Predicate(f"lacks({part!r})", lambda v: part not in v)


def completed(**fields: Any) -> _Predicate:
    """A Finish's `completed` record with the given fields."""
    return _Predicate(
        f"completed({fields!r})", lambda c: all(getattr(c, k) == v for k, v in fields.items())
    )


class Playbook:
    """A script of events and the actions each must return."""

    def __init__(self, machine: ExchangeMachine) -> None:
        self.machine = machine
        self.steps: list[Event | Like | Action] = []

    def __rshift__(self, event: Event) -> Playbook:
        self.steps.append(event)
        return self

    def __lshift__(self, expected: Like | Action) -> Playbook:
        self.steps.append(expected)
        return self

    def __bool__(self) -> bool:
        transcript: list[str] = []
        pending: list[Action] = []

        def fail(why: str) -> None:
            raise AssertionError("\n".join([*transcript, f"!! {why}"]))

        for step in self.steps:
            if isinstance(step, Event):
                if pending:
                    fail(f"unexpected actions before {step!r}: {pending!r}")
                transcript.append(f">> {step!r}")
                pending = list(step.feed(self.machine))
                self.machine.out.clear()
                continue
            if not pending:
                fail(f"expected {step!r}, got nothing")
            action = pending.pop(0)
            ok = step.matches(action) if isinstance(step, Like) else step == action
            if not ok:
                fail(f"expected {step!r}, got {action!r}")
            transcript.append(f"<< {action!r}")
        if pending:
            fail(f"unexpected actions at the end: {pending!r}")
        return True


def h2_connected(attempt: int, *, tls: bool = False) -> Event:
    """An HTTP/2 stream bound for `attempt` (its connection's codec is not the machine's)."""
    return Event(
        f"h2_connected({attempt})",
        lambda m: m.upstream_connected(attempt, None, tls=tls, reused=False, requests=1),
    )


def h2_response(*events: Any) -> Event:
    """Response events of an HTTP/2 stream."""
    return Event(f"h2_response{events!r}", lambda m: m.upstream_response(list(events)))


def h2_refused() -> Event:
    return Event("h2_refused", lambda m: m.upstream_refused("REFUSED_STREAM"))
