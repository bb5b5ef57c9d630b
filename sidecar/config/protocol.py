"""Client side of the config stream as a pure state machine.

For each subscribed type it remembers the last version applied (sent back in every ACK, in every
NACK as the version still serving, and in the subscription after a reconnect so that nothing
unchanged is re-sent) and the last rejection.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lightmesh.types import PUSH_ORDER


@dataclass(slots=True)
class Held:
    """What the sidecar holds of one type."""

    version: str = ""
    applied_at: float = 0.0
    nacked_version: str = ""
    nack_message: str = ""
    nacked_at: float = 0.0
    nacks: int = 0  # versions of this type rejected so far (for metrics)


@dataclass(frozen=True, slots=True, kw_only=True)
class Reply:
    """The ACK or NACK to send for a response."""

    type_url: str
    version: str
    nonce: str
    error: str | None


@dataclass(slots=True)
class ClientProtocol:
    """Versions held per type, and the rules for answering responses."""

    held: dict[str, Held] = field(default_factory=lambda: {t: Held() for t in PUSH_ORDER})

    def subscriptions(self) -> list[tuple[str, str]]:
        """(type URL, version held) for every type, in push order: the first requests of a stream."""
        return [(t, self.held[t].version) for t in PUSH_ORDER]

    def on_response(
        self, *, type_url: str, version: str, nonce: str, error: str | None, now: float
    ) -> Reply:
        """Record the outcome of applying a response (error None = applied) and say what to send."""
        held = self.held.setdefault(type_url, Held())
        if error is None:
            held.version = version
            held.applied_at = now
            held.nacked_version = held.nack_message = ""
            return Reply(type_url=type_url, version=version, nonce=nonce, error=None)
        held.nacked_version = version
        held.nack_message = error
        held.nacked_at = now
        held.nacks += 1
        return Reply(type_url=type_url, version=held.version, nonce=nonce, error=error)

    @property
    def complete(self) -> bool:
        """Whether a version of every type has been applied (the sidecar can serve)."""
        return all(h.version for h in self.held.values())
