"""Server side of the config stream as a pure state machine (no I/O, clock passed in).

Rules (after Envoy's state-of-the-world xDS):
- The first request of a type subscribes; its `version_info` is the version the sidecar already
  holds (reconnect), and nothing is sent while the snapshot still has that version.
- A request whose `response_nonce` is not the last nonce sent for its type is stale and ignored.
- A request with the current nonce ACKs (no error) or NACKs (error_detail) the version just sent.
- A version is sent at most once per stream: a NACKed version is not re-sent; the next different
  snapshot version is.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from lightmesh.types import PUSH_ORDER


class SyncState(Enum):
    """What proxy-status shows per resource type."""

    SYNCED = "SYNCED"  # the sidecar ACKed the latest version
    STALE = "STALE"  # the latest version was sent (or is due) and is not ACKed yet
    NACKED = "NACKED"  # the sidecar rejected the latest version sent
    NOT_SENT = "NOT_SENT"  # subscribed, but nothing to send yet


@dataclass(slots=True)
class TypeState:
    """Per-type bookkeeping of one stream."""

    sent_version: str = ""
    sent_nonce: str = ""
    sent_at: float = 0.0
    acked_version: str = ""
    acked_at: float = 0.0
    nacked_version: str = ""
    nack_message: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Acked:
    """The sidecar applied `version` of `type_url`."""

    type_url: str
    version: str
    latency: float  # seconds from send to ACK


@dataclass(frozen=True, slots=True, kw_only=True)
class Nacked:
    """The sidecar rejected `version` of `type_url` and keeps serving its last good version."""

    type_url: str
    version: str
    kept_version: str
    message: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Ignored:
    """A stale or unknown request, dropped."""

    type_url: str
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Subscribed:
    """A new subscription; `held_version` is what the sidecar already has."""

    type_url: str
    held_version: str


Outcome = Acked | Nacked | Ignored | Subscribed


@dataclass(slots=True)
class StreamProtocol:
    """Protocol state of one stream. `on_request` interprets requests; `due` says what to send."""

    types: dict[str, TypeState] = field(default_factory=dict)
    _nonce: int = 0

    def on_request(
        self, *, type_url: str, version: str, nonce: str, error: str | None, now: float
    ) -> Outcome:
        """Interpret one request from the sidecar."""
        if type_url not in PUSH_ORDER:
            return Ignored(type_url=type_url, reason="unknown type")
        state = self.types.get(type_url)
        if state is None:
            state = self.types[type_url] = TypeState()
            # A reconnecting sidecar holds `version`: treat it as sent and ACKed already.
            state.sent_version = state.acked_version = version
            state.acked_at = now
            return Subscribed(type_url=type_url, held_version=version)
        if nonce != state.sent_nonce:
            return Ignored(type_url=type_url, reason=f"stale nonce {nonce!r}")
        if error is not None:
            state.nacked_version = state.sent_version
            state.nack_message = error
            return Nacked(
                type_url=type_url, version=state.sent_version, kept_version=version, message=error
            )
        state.acked_version = version
        state.acked_at = now
        state.nacked_version = state.nack_message = ""
        return Acked(type_url=type_url, version=version, latency=now - state.sent_at)

    def due(self, versions: dict[str, str]) -> list[str]:
        """Types (in push order) whose snapshot version has not been sent on this stream."""
        return [
            t
            for t in PUSH_ORDER
            if t in self.types and t in versions and versions[t] != self.types[t].sent_version
        ]

    def mark_sent(self, type_url: str, version: str, *, now: float) -> str:
        """Record that `version` is being sent; return the nonce to put in the response."""
        self._nonce += 1
        state = self.types[type_url]
        state.sent_version = version
        state.sent_nonce = str(self._nonce)
        state.sent_at = now
        return state.sent_nonce

    def sync_state(self, type_url: str, latest: str | None) -> SyncState:
        """Where this stream stands for one type relative to the latest snapshot version."""
        state = self.types.get(type_url)
        if state is None or latest is None:
            return SyncState.NOT_SENT
        if state.acked_version == latest:
            return SyncState.SYNCED
        if state.nacked_version == latest:
            return SyncState.NACKED
        return SyncState.STALE
