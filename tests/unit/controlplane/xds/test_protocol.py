"""The server side of the delta config stream, Playbook style: each test feeds events (requests,
snapshot changes) and states the actions expected (plans to send, outcomes recorded)."""

from dataclasses import dataclass, field

from controlplane.xds.protocol import (
    Acked,
    Ignored,
    Nacked,
    Plan,
    StreamProtocol,
    Subscribed,
    SyncState,
    Target,
)
from lightmesh import types
from lightmesh.versions import set_version

R = types.ROUTES
C = types.CLUSTER


@dataclass
class Snapshots:
    """A resource set the way the server keeps one: revisions and a log of changed names."""

    versions: dict[str, str] = field(default_factory=dict)
    log: list[tuple[int, set[str], float]] = field(default_factory=list)
    revision: int = 0

    def change(self, at: float = 0.0, **versions: str | None) -> None:
        self.revision += 1
        self.versions = dict(self.versions)
        for name, version in versions.items():
            if version is None:
                self.versions.pop(name, None)
            else:
                self.versions[name] = version
        self.log.append((self.revision, set(versions), at))

    def target(self) -> Target:
        return Target(tag=(1, self.revision), versions=self.versions)

    def changed(self, tag: tuple[int, int]) -> tuple[set[str], float | None] | None:
        if tag[0] != 1:
            return None
        names: set[str] = set()
        times = [
            at for rev, changed, at in self.log if rev > tag[1] for _ in [names.update(changed)]
        ]
        return names, min(times) if times else None


class Playbook:
    """`request(...)` feeds a request and returns its outcomes; `push()` returns the plan."""

    def __init__(self, snapshots: Snapshots, type_url: str = R) -> None:
        self.protocol = StreamProtocol()
        self.snapshots = snapshots
        self.type_url = type_url
        self.now = 0.0

    def request(self, **fields: object) -> list[object]:
        self.now += 1
        snap = self.snapshots
        return self.protocol.on_request(  # type: ignore[arg-type]
            type_url=self.type_url,
            target=snap.target(),
            target_digest=set_version(snap.versions),
            now=self.now,
            **fields,
        )

    def push(self) -> Plan | None:
        self.now += 1
        return self.protocol.plan(
            self.type_url, self.snapshots.target(), changed=self.snapshots.changed, now=self.now
        )

    def ack(self, plan: Plan) -> list[object]:
        return self.request(nonce=plan.nonce)

    def state(self) -> SyncState:
        return self.protocol.sync_state(self.type_url, self.snapshots.target().tag)


def sent(plan: Plan | None) -> tuple[tuple[str, ...], tuple[str, ...]] | None:
    return None if plan is None else (plan.send, plan.remove)


def test_wildcard_subscription_is_sent_everything_then_only_what_changed() -> None:
    """A fresh sidecar gets every resource; after its ACK, one change sends one resource."""
    snap = Snapshots()
    snap.change(a="1", b="1")
    book = Playbook(snap)
    (outcome,) = book.request(subscribe=["*"])
    assert outcome == Subscribed(type_url=R, wildcard=True, added=(), removed=(), held=0)
    plan = book.push()
    assert plan is not None and plan.full and sent(plan) == (("a", "b"), ())
    assert book.push() is None  # one response in flight at a time
    assert book.state() is SyncState.STALE
    (acked,) = book.ack(plan)
    assert isinstance(acked, Acked) and acked.resources == 2
    assert book.state() is SyncState.SYNCED
    snap.change(at=0.5, b="2")
    plan = book.push()
    assert sent(plan) == (("b",), ()) and plan is not None and not plan.full
    (acked,) = book.ack(plan)
    assert isinstance(acked, Acked) and acked.since == 0.5  # convergence starts at the source
    assert book.push() is None


def test_removed_resources_are_sent_as_removals() -> None:
    snap = Snapshots()
    snap.change(a="1", b="1")
    book = Playbook(snap)
    book.request(subscribe=["*"])
    book.ack(book.push())  # type: ignore[arg-type]
    snap.change(a=None)
    assert sent(book.push()) == ((), ("a",))


def test_fresh_subscription_to_an_empty_set_is_answered() -> None:
    """The sidecar must learn it has everything, even when everything is nothing."""
    book = Playbook(Snapshots())
    book.request(subscribe=["*"])
    plan = book.push()
    assert sent(plan) == ((), ())
    assert book.push() is None


def test_nack_keeps_old_versions_and_a_rejected_version_is_not_resent() -> None:
    snap = Snapshots()
    snap.change(a="1")
    book = Playbook(snap)
    book.request(subscribe=["*"])
    book.ack(book.push())  # type: ignore[arg-type]
    snap.change(a="2")
    plan = book.push()
    assert plan is not None
    (nacked,) = book.request(nonce=plan.nonce, error="bad regex")
    assert nacked == Nacked(type_url=R, nonce=plan.nonce, rejected=("a",), message="bad regex")
    assert book.state() is SyncState.NACKED
    assert book.protocol.types[R].held("a") == "1"
    assert book.push() is None  # not sent again in a loop
    snap.change(b="1")  # another resource changes: only it goes
    plan = book.push()
    assert sent(plan) == (("b",), ())
    book.ack(plan)  # type: ignore[arg-type]
    assert book.protocol.types[R].held("a") == "1"
    snap.change(a="3")  # the next version of the rejected resource is sent
    plan = book.push()
    assert sent(plan) == (("a",), ())
    book.ack(plan)  # type: ignore[arg-type]
    assert book.state() is SyncState.SYNCED


def test_stale_nonce_is_ignored() -> None:
    snap = Snapshots()
    snap.change(a="1")
    book = Playbook(snap)
    book.request(subscribe=["*"])
    plan = book.push()
    assert plan is not None
    (ignored,) = book.request(nonce="99")
    assert isinstance(ignored, Ignored)
    assert book.protocol.in_flight(R)
    (acked,) = book.ack(plan)
    assert isinstance(acked, Acked)
    (ignored,) = book.ack(plan)  # the same ACK twice: stale now
    assert isinstance(ignored, Ignored)


def test_reconnect_sends_only_what_changed_meanwhile() -> None:
    snap = Snapshots()
    snap.change(a="1", b="2", c="3")
    book = Playbook(snap)
    (outcome,) = book.request(subscribe=["*"], initial={"a": "1", "b": "old", "gone": "x"})
    assert isinstance(outcome, Subscribed) and outcome.held == 3
    assert sent(book.push()) == (("b", "c"), ("gone",))


def test_reconnect_with_the_current_digest_sends_nothing() -> None:
    snap = Snapshots()
    snap.change(a="1", b="2")
    book = Playbook(snap)
    held = dict(snap.versions)
    book.request(subscribe=["*"], initial=held, initial_digest=set_version(held))
    assert book.push() is None
    assert book.state() is SyncState.SYNCED
    snap.change(b="3")
    assert sent(book.push()) == (("b",), ())


def test_named_subscription_of_a_missing_resource_is_answered_as_removed() -> None:
    """On-demand: the sidecar waiting for a name learns at once that it does not exist."""
    snap = Snapshots()
    snap.change(a="1")
    book = Playbook(snap)
    book.request(subscribe=["a", "nope"])
    assert sent(book.push()) == (("a",), ("nope",))


def test_names_subscribed_later_are_sent_without_a_nonce() -> None:
    snap = Snapshots()
    snap.change(a="1", b="1")
    book = Playbook(snap)
    book.request(subscribe=["a"])
    book.ack(book.push())  # type: ignore[arg-type]
    (outcome,) = book.request(subscribe=["b"])
    assert isinstance(outcome, Subscribed) and outcome.added == ("b",)
    assert sent(book.push()) == (("b",), ())


def test_later_types_wait_while_an_earlier_one_has_changes_behind_its_response() -> None:
    """Make before break: a route never overtakes the cluster it needs."""
    clusters = Snapshots()
    clusters.change(x="1")
    protocol = StreamProtocol()
    protocol.on_request(type_url=C, subscribe=["*"], now=0)
    plan = protocol.plan(C, clusters.target(), changed=clusters.changed, now=0)
    assert plan is not None
    assert not protocol.behind(C, clusters.target().tag)
    clusters.change(y="1")
    assert protocol.behind(C, clusters.target().tag)


def test_unknown_type_is_ignored() -> None:
    (outcome,) = StreamProtocol().on_request(type_url="nope", now=0)
    assert isinstance(outcome, Ignored)
