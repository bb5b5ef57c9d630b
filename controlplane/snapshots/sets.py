"""A versioned set of resources of one type, shared by every sidecar of one view. Pure.

Each change makes a new immutable `Snapshot` (copy on write) with the next revision, and logs the
names it changed and when their source event happened, so a sidecar that holds revision r is sent
exactly the names changed since r (go-control-plane's LinearCache: per-resource versions,
`notify({names})`). A sidecar further behind than the log reaches is compared name by name.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

from controlplane.snapshots.resources import Resource
from lightmesh.versions import set_version

LOG_LENGTH = 256
_ids = itertools.count(1)

Tag = tuple[int, int]  # (set id, revision)


@dataclass(frozen=True, slots=True, eq=False)
class Snapshot:
    """One revision of a set: never changed once made."""

    tag: Tag
    resources: Mapping[str, Resource]
    versions: Mapping[str, str]


class ResourceSet:
    """The current snapshot of one type for one view, and the log of its changes."""

    def __init__(self, type_url: str) -> None:
        self.id = next(_ids)
        self.type_url = type_url
        self.current = Snapshot(tag=(self.id, 0), resources={}, versions={})
        self._log: deque[tuple[int, frozenset[str], float]] = deque(maxlen=LOG_LENGTH)
        self._digest: tuple[Tag, str] | None = None
        self._full: tuple[Tag, bytes] | None = None

    @property
    def revision(self) -> int:
        """Revision of the current snapshot."""
        return self.current.tag[1]

    def update(self, changes: Mapping[str, Resource | None], *, at: float) -> bool:
        """Apply upserts (and None: removals); a new snapshot only when something differs."""
        old = self.current
        changed = {
            name
            for name, resource in changes.items()
            if (resource.version if resource is not None else None) != old.versions.get(name)
        }
        if not changed:
            return False
        resources = dict(old.resources)
        versions = dict(old.versions)
        for name in changed:
            resource = changes[name]
            if resource is None:
                del resources[name], versions[name]
            else:
                resources[name] = resource
                versions[name] = resource.version
        revision = old.tag[1] + 1
        self.current = Snapshot(tag=(self.id, revision), resources=resources, versions=versions)
        self._log.append((revision, frozenset(changed), at))
        return True

    def changed_since(self, tag: Tag) -> tuple[set[str], float | None] | None:
        """Names changed after `tag` and the earliest source time among them; None when `tag` is
        of another set or older than the log reaches (compare everything then)."""
        set_id, revision = tag
        if set_id != self.id:
            return None
        if revision == self.revision:
            return set(), None
        if not self._log or self._log[0][0] > revision + 1:
            return None
        names: set[str] = set()
        earliest: float | None = None
        for logged, changed, at in reversed(self._log):
            if logged <= revision:
                break
            names |= changed
            earliest = at if earliest is None else min(earliest, at)
        return names, earliest

    def digest(self) -> str:
        """set_version of the current snapshot (computed once per revision)."""
        tag = self.current.tag
        if self._digest is None or self._digest[0] != tag:
            self._digest = (tag, set_version(self.current.versions))
        return self._digest[1]

    def full_entries(self) -> bytes:
        """Every resource of the current snapshot as response entries (joined once per revision,
        then sent to every sidecar that needs all of it)."""
        tag = self.current.tag
        if self._full is None or self._full[0] != tag:
            resources = self.current.resources
            self._full = (tag, b"".join(resources[n].entry for n in sorted(resources)))
        return self._full[1]
