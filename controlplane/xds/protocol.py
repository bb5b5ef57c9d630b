"""Server side of the delta config stream as a pure state machine (no I/O, clock passed in).

Rules (after Envoy's incremental xDS; everything that decides what is sent lives in this file):
1. The first request of a type subscribes: "*" is the wildcard (the sidecar's scope), other names
   are asked for on top. `initial_resource_versions` is what the sidecar holds (reconnect), taken
   as already ACKed: only resources whose version differs are sent, held ones that left the scope
   are removed. A matching `initial_resources_digest` stands for the whole map.
2. Subscribe/unsubscribe of names is honoured in any request, whatever its nonce.
3. At most one response per type is in flight. A request whose `response_nonce` is not the nonce
   of that response is stale: its ACK or NACK is ignored.
4. ACK (matching nonce, no error): the sidecar now holds what was sent. NACK (error_detail): it
   applied nothing of the response and keeps its last good resources; each version it rejected is
   not sent again (the next different version of that resource is).
5. A plan sends every resource whose target version differs from what the sidecar holds (and was
   not rejected), and removes every held name that is not in the target. A name subscribed
   explicitly that does not exist is answered once in `removed` (so an on-demand request need not
   wait). A fresh subscription with nothing held is always answered, possibly empty.
6. Make before break across types: the server plans types in push order (clusters, endpoints,
   routes, inbound) and holds a later type back while an earlier one has changes waiting behind
   its own in-flight response (`behind`).

What the sidecar holds is a reference to a shared snapshot plus a few per-stream overrides, so a
stream costs O(1) memory however many resources it holds; `changed` (the snapshot log) makes a
plan cost O(names changed), not O(resources).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum

from lightmesh.types import PUSH_ORDER, WILDCARD
from lightmesh.versions import set_version

Tag = tuple[int, int]
# tag of the sidecar's base snapshot -> (names changed since, earliest source time) or None
ChangedSince = Callable[[Tag], tuple[set[str], float | None] | None]

_ABSENT: dict[str, str] = {}


class SyncState(Enum):
    """What proxy-status shows per resource type."""

    SYNCED = "SYNCED"  # the sidecar ACKed the latest resources
    STALE = "STALE"  # a change was sent (or is due) and is not ACKed yet
    NACKED = "NACKED"  # the sidecar rejected a resource it should hold
    NOT_SENT = "NOT_SENT"  # not subscribed (yet)


@dataclass(frozen=True, slots=True, kw_only=True)
class Target:
    """What a sidecar should hold of one type: a snapshot (name -> version) and its tag."""

    tag: Tag
    versions: Mapping[str, str]


@dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    """A response to send."""

    type_url: str
    nonce: str
    send: tuple[str, ...]  # names, sorted
    remove: tuple[str, ...]
    full: bool  # every resource of the target, to a sidecar that held nothing


@dataclass(slots=True)
class _Sent:
    plan: Plan
    target: Target
    excluded: dict[str, str | None]  # names whose held value stays (rejected versions)
    at: float
    since: float | None  # earliest source event among the changes it carries


@dataclass(slots=True)
class TypeState:
    """Per-type bookkeeping of one stream."""

    wildcard: bool = False
    names: set[str] = field(default_factory=set)
    # What the sidecar holds: base snapshot plus overrides (None: not held).
    base: Mapping[str, str] = field(default_factory=dict)
    base_tag: Tag | None = None
    overrides: dict[str, str | None] = field(default_factory=dict)
    inflight: _Sent | None = None
    rejected: dict[str, str] = field(default_factory=dict)  # name -> version NACKed
    nack_message: str = ""
    nacked_at: float = 0.0
    acked_at: float = 0.0
    sent_at: float = 0.0
    must_answer: bool = False
    unanswered: set[str] = field(default_factory=set)  # explicit names not answered yet

    def held(self, name: str) -> str | None:
        """Version of `name` the sidecar holds (None: not held)."""
        if name in self.overrides:
            return self.overrides[name]
        return self.base.get(name)

    def held_names(self) -> set[str]:
        """Every name held."""
        names = set(self.base)
        for name, version in self.overrides.items():
            if version is None:
                names.discard(name)
            else:
                names.add(name)
        return names

    def held_versions(self) -> dict[str, str]:
        """name -> version of everything held."""
        return {n: v for n in self.held_names() if (v := self.held(n)) is not None}


@dataclass(frozen=True, slots=True, kw_only=True)
class Subscribed:
    """A subscription (first request of a type) or a change of subscribed names."""

    type_url: str
    wildcard: bool
    added: tuple[str, ...]
    removed: tuple[str, ...]
    held: int  # resources the sidecar said it holds


@dataclass(frozen=True, slots=True, kw_only=True)
class Acked:
    """The sidecar applied the response `nonce`."""

    type_url: str
    nonce: str
    latency: float  # seconds from send to ACK
    since: float | None  # earliest source event of the changes it carried (convergence start)
    resources: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Nacked:
    """The sidecar rejected the response `nonce` and keeps serving what it held."""

    type_url: str
    nonce: str
    rejected: tuple[str, ...]
    message: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Ignored:
    """A stale or unknown request, dropped."""

    type_url: str
    reason: str


Outcome = Subscribed | Acked | Nacked | Ignored


@dataclass(slots=True)
class StreamProtocol:
    """Protocol state of one stream: `on_request` interprets requests, `plan` says what to send."""

    types: dict[str, TypeState] = field(default_factory=dict)
    _nonce: int = 0

    def on_request(
        self,
        *,
        type_url: str,
        subscribe: Iterable[str] = (),
        unsubscribe: Iterable[str] = (),
        initial: Mapping[str, str] = _ABSENT,
        initial_digest: str = "",
        target_digest: str = "",
        target: Target | None = None,
        nonce: str = "",
        error: str | None = None,
        now: float,
    ) -> list[Outcome]:
        """Interpret one request. `target` and `target_digest` (the current snapshot and its
        digest) let a reconnect whose digest matches skip the per-name comparison."""
        if type_url not in PUSH_ORDER:
            return [Ignored(type_url=type_url, reason="unknown type")]
        outcomes: list[Outcome] = []
        state = self.types.get(type_url)
        subscribe = list(subscribe)
        if state is None:
            state = self.types[type_url] = TypeState()
            if initial_digest and target is not None and initial_digest == target_digest:
                state.base, state.base_tag = target.versions, target.tag
            else:
                state.base = dict(initial)
            state.must_answer = not initial
            outcomes.append(
                self._subscribe(type_url, state, subscribe, list(unsubscribe), len(initial))
            )
        elif subscribe or unsubscribe:
            outcomes.append(self._subscribe(type_url, state, subscribe, list(unsubscribe), 0))
        if nonce:
            outcomes.append(self._answer(type_url, state, nonce, error, now))
        return outcomes

    def _subscribe(
        self,
        type_url: str,
        state: TypeState,
        subscribe: list[str],
        unsubscribe: list[str],
        held: int,
    ) -> Subscribed:
        added = [n for n in subscribe if n != WILDCARD and n not in state.names]
        removed = [n for n in unsubscribe if n != WILDCARD and n in state.names]
        if WILDCARD in subscribe:
            state.wildcard = True
        if WILDCARD in unsubscribe:
            state.wildcard = False
        state.names.update(added)
        state.names.difference_update(removed)
        state.unanswered.update(added)
        state.unanswered.difference_update(removed)
        return Subscribed(
            type_url=type_url,
            wildcard=state.wildcard,
            added=tuple(added),
            removed=tuple(removed),
            held=held,
        )

    def _answer(
        self, type_url: str, state: TypeState, nonce: str, error: str | None, now: float
    ) -> Outcome:
        sent = state.inflight
        if sent is None or nonce != sent.plan.nonce:
            return Ignored(type_url=type_url, reason=f"stale nonce {nonce!r}")
        state.inflight = None
        if error is not None:
            rejected = {n: sent.target.versions[n] for n in sent.plan.send}
            state.rejected.update(rejected)
            state.nack_message = error
            state.nacked_at = now
            return Nacked(type_url=type_url, nonce=nonce, rejected=tuple(rejected), message=error)
        state.base, state.base_tag = sent.target.versions, sent.target.tag
        state.overrides = sent.excluded
        for name in sent.plan.send:
            state.rejected.pop(name, None)
        if not state.rejected:
            state.nack_message = ""
        state.acked_at = now
        return Acked(
            type_url=type_url,
            nonce=nonce,
            latency=now - sent.at,
            since=sent.since,
            resources=len(sent.plan.send) + len(sent.plan.remove),
        )

    def subscribed(self, type_url: str) -> bool:
        """Whether the sidecar subscribed to the type (by wildcard or names)."""
        return type_url in self.types

    def names(self) -> dict[str, set[str]]:
        """Explicitly subscribed names per type (on-demand)."""
        return {t: set(s.names) for t, s in self.types.items() if s.names}

    def in_flight(self, type_url: str) -> bool:
        """Whether a response of the type awaits its ACK/NACK."""
        state = self.types.get(type_url)
        return state is not None and state.inflight is not None

    def behind(self, type_url: str, latest: Tag) -> bool:
        """Whether changes of the type wait behind its in-flight response (rule 6)."""
        state = self.types.get(type_url)
        return (
            state is not None and state.inflight is not None and state.inflight.target.tag != latest
        )

    def plan(
        self, type_url: str, target: Target, *, changed: ChangedSince, now: float
    ) -> Plan | None:
        """The response to send now for one type, or None (nothing to say, or one in flight)."""
        state = self.types.get(type_url)
        if state is None or state.inflight is not None:
            return None
        if not state.wildcard:
            visible = state.names
            versions: Mapping[str, str] = {n: v for n, v in target.versions.items() if n in visible}
            target = Target(tag=(-1, -1), versions=versions)
        since: float | None = None
        found = changed(state.base_tag) if state.base_tag is not None else None
        if found is None:
            candidates = set(target.versions) | state.held_names()
        else:
            candidates, since = found
        candidates |= state.overrides.keys() | state.rejected.keys() | state.unanswered
        send: list[str] = []
        remove: list[str] = []
        excluded: dict[str, str | None] = {}
        for name in candidates:
            want = target.versions.get(name)
            have = state.held(name)
            if want == have:
                state.rejected.pop(name, None)
                continue
            if want is None:
                remove.append(name)
            elif state.rejected.get(name) == want:
                excluded[name] = have
            else:
                send.append(name)
        for name in state.unanswered:
            if name not in target.versions and state.held(name) is None:
                remove.append(name)  # rule 5: "no such resource"
        state.unanswered = set()
        if not send and not remove and not state.must_answer:
            # Nothing to say; re-base on the target so the next plan starts from it.
            state.base, state.base_tag, state.overrides = target.versions, target.tag, excluded
            if not state.rejected:
                state.nack_message = ""
            return None
        state.must_answer = False
        self._nonce += 1
        holds_nothing = not state.base and not any(v is not None for v in state.overrides.values())
        full = holds_nothing and len(send) == len(target.versions) and not excluded
        plan = Plan(
            type_url=type_url,
            nonce=str(self._nonce),
            send=tuple(sorted(send)),
            remove=tuple(sorted(set(remove))),
            full=full,
        )
        state.inflight = _Sent(plan=plan, target=target, excluded=excluded, at=now, since=since)
        state.sent_at = now
        return plan

    def sync_state(self, type_url: str, latest: Tag) -> SyncState:
        """Where this stream stands for one type relative to the latest snapshot."""
        state = self.types.get(type_url)
        if state is None:
            return SyncState.NOT_SENT
        if state.rejected and state.inflight is None:
            return SyncState.NACKED
        if state.inflight is None and state.base_tag == latest and not state.overrides:
            return SyncState.SYNCED
        return SyncState.STALE

    def held_digest(self, type_url: str, latest: Tag, latest_digest: str) -> str:
        """set_version of what the sidecar holds (cheap when it holds the latest snapshot)."""
        state = self.types.get(type_url)
        if state is None:
            return ""
        if state.base_tag == latest and not state.overrides:
            return latest_digest
        return set_version(state.held_versions())
