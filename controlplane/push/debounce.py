"""Debouncing of store changes, with the clock passed in. Pure.

Istio's rule: a burst of changes is flushed once nothing new arrived for `quiet` seconds, or
`max_delay` seconds after its first change, whichever comes first, so a steady stream of changes
(an endpoint flapping, a rolling update) still converges every `max_delay`. Changes are merged
(keys and hosts united, the earliest source time kept).
"""

from __future__ import annotations

from controlplane.store import Change


class Debouncer:
    """Pending changes and when they are due."""

    def __init__(self, *, quiet: float, max_delay: float) -> None:
        self._quiet = quiet
        self._max_delay = max_delay
        self._pending: Change | None = None
        self._first = 0.0
        self._last = 0.0

    def add(self, change: Change, *, now: float) -> None:
        """Record a change observed at `now`."""
        if self._pending is None:
            self._pending = change
            self._first = now
        else:
            self._pending = self._pending.merge(change)
        self._last = now

    @property
    def first_at(self) -> float:
        """When the first pending change was added (meaningful while `pending`)."""
        return self._first

    @property
    def pending(self) -> bool:
        """Whether changes wait to be flushed."""
        return self._pending is not None

    def due_at(self) -> float | None:
        """When the pending changes are due (None: none pending)."""
        if self._pending is None:
            return None
        return min(self._last + self._quiet, self._first + self._max_delay)

    def take(self, *, now: float) -> Change | None:
        """The merged pending change if it is due at `now` (and forget it), else None."""
        due = self.due_at()
        if due is None or now < due:
            return None
        change, self._pending = self._pending, None
        return change
