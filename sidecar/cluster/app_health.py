"""Whether the sidecar's own app is reachable: a pure state machine with an injected clock.

The inbound listener feeds it every exchange it forwarded to the app (`finished`) and the results
of TCP probes (`probed`); it answers three questions:
- `down`: the app refused (or failed) the last connection or probe. The inbound router then
  answers at once, without connecting, that the request was never delivered (503 UF with the
  mesh's never-processed mark), so the calling sidecar can send it elsewhere, whatever its method.
- `ready`: what the sidecar's /ready says about the app. False only while `down` *after* the app
  has answered once since the sidecar started: a pod whose app waits for its proxy to be ready
  (the `lightmesh wait-ready` postStart hook) must not wait for itself.
- `next_probe`: when the prober should next try to connect (infinity: no probe needed).

Transitions (event → state; the probe schedule in brackets):

    any state   refused (connect failed / probe failed)   → DOWN     [probe after PROBE_INTERVAL]
    any state   answered (a response head came / probe ok) → UP       [no probe]
    UP          reset (closed before a response head)     → UP       [probe now: is it dying?]
    (start)                                                → STARTING [probe now]

An answer means the app is listening, whatever the status it answered with; a reset alone does
not make the app down (an app may close one connection), it only asks for a probe.
"""

from __future__ import annotations

import enum
import math

from lightmesh.response_flags import ResponseFlag
from sidecar.contract import Completed

PROBE_INTERVAL = 0.2  # seconds between probes while the app is down
_UF = ResponseFlag.UF.value
_UC = ResponseFlag.UC.value


class AppState(enum.Enum):
    """Where the app is, as far as its sidecar knows."""

    STARTING = "starting"  # not answered yet since the sidecar started
    UP = "up"
    DOWN = "down"


class AppHealth:
    """Reachability of one app (the inbound listener's only upstream)."""

    __slots__ = ("answered_once", "down_since", "interval", "next_probe", "state", "transitions")

    def __init__(self, *, interval: float = PROBE_INTERVAL) -> None:
        self.interval = interval
        self.state = AppState.STARTING
        self.answered_once = False
        self.next_probe = 0.0  # at once: learn whether the app is there before traffic does
        self.down_since: float | None = None
        self.transitions = 0  # UP/STARTING → DOWN changes (for logs and metrics)

    @property
    def down(self) -> bool:
        """The app refused its last connection: requests are not worth trying."""
        return self.state is AppState.DOWN

    @property
    def ready(self) -> bool:
        """Readiness as far as the app is concerned (see the module docstring)."""
        return not (self.down and self.answered_once)

    def answered(self) -> None:
        """The app answered (a response head, or a probe connected)."""
        self.state = AppState.UP
        self.answered_once = True
        self.down_since = None
        self.next_probe = math.inf

    def refused(self, now: float) -> None:
        """A connection to the app failed (refused, unreachable, timed out)."""
        if self.state is not AppState.DOWN:
            self.state = AppState.DOWN
            self.down_since = now
            self.transitions += 1
        self.next_probe = now + self.interval

    def reset(self, now: float) -> None:
        """The app closed a connection before answering: check it at once."""
        if self.state is not AppState.DOWN:
            self.next_probe = min(self.next_probe, now)

    def probed(self, *, ok: bool, now: float) -> None:
        """A probe's result."""
        if ok:
            self.answered()
        else:
            self.refused(now)

    def finished(self, done: Completed, now: float) -> None:
        """An inbound exchange ended; only those that tried the app tell anything."""
        if not done.upstream:
            return  # answered by the sidecar itself (denied, or refused early while down)
        flags = done.flags
        if _UF in flags:
            self.refused(now)
        elif _UC in flags:
            self.reset(now)
        elif done.status:
            self.answered()
