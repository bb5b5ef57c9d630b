"""Client side of the delta config stream as a pure state machine.

Rules:
1. On every (re)connect the sidecar subscribes to each type, in push order: "*" (its scope) plus
   the names it asked for on demand, announcing what it holds (`initial_resource_versions` and
   their digest) so that the control plane sends only what changed meanwhile.
2. A response is applied whole or not at all (by the caller). Applied: the held versions take its
   resources and drop its removals, and the reply ACKs its nonce. Rejected: nothing changes, the
   reply NACKs its nonce with the error, and the last good config keeps serving.
3. Every response is answered, in order, with its own nonce.
4. The sidecar can serve once every type has been answered at least once (`complete`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from lightmesh.types import PUSH_ORDER, WILDCARD
from lightmesh.versions import set_version


@dataclass(slots=True)
class Held:
    """What the sidecar holds of one type."""

    versions: dict[str, str] = field(default_factory=dict)
    received: bool = False  # a response was applied on this process's lifetime
    applied_at: float = 0.0
    nacked_version: str = ""  # names@versions of the last rejected response
    nack_message: str = ""
    nacked_at: float = 0.0
    nacks: int = 0  # responses of this type rejected so far (for metrics)
    _digest: str | None = None

    @property
    def version(self) -> str:
        """Digest of the held set (the compact version proxy-status shows)."""
        if self._digest is None:
            self._digest = set_version(self.versions) if self.received else ""
        return self._digest


@dataclass(frozen=True, slots=True, kw_only=True)
class Subscription:
    """A subscription request to send."""

    type_url: str
    subscribe: tuple[str, ...]
    initial: Mapping[str, str]
    digest: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Reply:
    """The ACK or NACK to send for a response."""

    type_url: str
    nonce: str
    error: str | None


@dataclass(slots=True)
class ClientProtocol:
    """Versions held per type, and the rules for answering responses."""

    held: dict[str, Held] = field(default_factory=lambda: {t: Held() for t in PUSH_ORDER})
    names: dict[str, set[str]] = field(default_factory=dict)  # asked for on demand

    def subscriptions(self) -> list[Subscription]:
        """The first requests of a stream, in push order (rule 1)."""
        out = []
        for type_url in PUSH_ORDER:
            held = self.held[type_url]
            out.append(
                Subscription(
                    type_url=type_url,
                    subscribe=(WILDCARD, *sorted(self.names.get(type_url, ()))),
                    initial=dict(held.versions),
                    digest=held.version if held.versions else "",
                )
            )
        return out

    def subscribe(self, type_url: str, names: Iterable[str]) -> tuple[str, ...]:
        """Ask for more names of a type; return those not asked for yet (to send)."""
        asked = self.names.setdefault(type_url, set())
        new = tuple(sorted(set(names) - asked))
        asked.update(new)
        return new

    def on_response(
        self,
        *,
        type_url: str,
        updated: Mapping[str, str],
        removed: Iterable[str],
        nonce: str,
        error: str | None,
        now: float,
    ) -> Reply:
        """Record the outcome of applying a response (error None = applied) and say what to send."""
        held = self.held.setdefault(type_url, Held())
        if error is None:
            held.versions.update(updated)
            for name in removed:
                held.versions.pop(name, None)
            held.received = True
            held.applied_at = now
            held.nacked_version = held.nack_message = ""
            held._digest = None
            return Reply(type_url=type_url, nonce=nonce, error=None)
        held.nacked_version = ",".join(f"{n}@{v}" for n, v in sorted(updated.items()))
        held.nack_message = error
        held.nacked_at = now
        held.nacks += 1
        return Reply(type_url=type_url, nonce=nonce, error=error)

    @property
    def complete(self) -> bool:
        """Whether every type has been received (the sidecar can serve)."""
        return all(h.received for h in self.held.values())
