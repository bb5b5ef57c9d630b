"""The store: the control plane's versioned world state, fed key by key by any number of sources.

Each source sets or deletes its own keys (`update`); where two sources hold the same key, the
first source by name wins. Every key has its own version (the store revision at which its value
last changed), and each accepted update tells the subscribers a `Change`: the keys whose value
changed, the hosts whose translation inputs changed, and when the source saw it (the start of
convergence). An update that changes nothing tells nobody. Pure apart from calling its listeners.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass

from controlplane.model import ResourceKey
from controlplane.validate import Problem
from controlplane.world import TRUST_BUNDLE, TRUST_DOMAIN, Value, World

MESH_SOURCE = "mesh"  # the CA's trust bundle and domain


@dataclass(frozen=True, slots=True, kw_only=True)
class Change:
    """What one accepted update (or a debounced burst of them) changed."""

    keys: frozenset[ResourceKey]
    hosts: frozenset[str]
    at: float  # monotonic time the source observed the first of these changes

    def merge(self, other: Change) -> Change:
        """Both changes as one."""
        return Change(
            keys=self.keys | other.keys, hosts=self.hosts | other.hosts, at=min(self.at, other.at)
        )


Listener = Callable[[Change], None]


class Store:
    """Values by source and key; the merged view is `world`."""

    def __init__(self, *, default_export_to: tuple[str, ...] = ("*",)) -> None:
        self._layers: dict[str, dict[ResourceKey, Value]] = {}
        self._versions: dict[ResourceKey, int] = {}
        self._problems: dict[str, dict[str, tuple[Problem, ...]]] = {}
        self._revision = 0
        self._world = World(default_export_to=default_export_to)
        self._listeners: list[Listener] = []

    def subscribe(self, listener: Listener) -> None:
        """Call `listener(change)` after every update that changed something."""
        self._listeners.append(listener)

    @property
    def revision(self) -> int:
        """Revision of the latest change."""
        return self._revision

    @property
    def world(self) -> World:
        """The merged, indexed state (changed in place by updates; read it, never change it)."""
        return self._world

    def version(self, key: ResourceKey) -> int:
        """Revision at which `key`'s value last changed (0: never set)."""
        return self._versions.get(key, 0)

    def update(
        self, source: str, changes: Mapping[ResourceKey, Value | None], *, at: float
    ) -> Change | None:
        """Set (or, with None, delete) keys of `source`; notify and return what changed."""
        layer = self._layers.setdefault(source, {})
        keys: set[ResourceKey] = set()
        hosts: set[str] = set()
        for key, value in changes.items():
            before = self._merged(key)
            if value is None:
                layer.pop(key, None)
            else:
                layer[key] = value
            after = self._merged(key)
            if after == before:
                continue
            keys.add(key)
            hosts |= self._world.put(key, after)
        if not keys:
            return None
        self._revision += 1
        for key in keys:
            self._versions[key] = self._revision
        change = Change(keys=frozenset(keys), hosts=frozenset(hosts), at=at)
        for listener in self._listeners:
            listener(change)
        return change

    def replace(
        self,
        source: str,
        values: Mapping[ResourceKey, Value],
        *,
        kinds: Collection[str],
        at: float,
    ) -> Change | None:
        """Make `source`'s keys of `kinds` exactly `values` (a relist); only differences count."""
        layer = self._layers.get(source, {})
        gone = {k: None for k in layer if k.kind in kinds and k not in values}
        return self.update(source, {**gone, **values}, at=at)

    def keys(self, source: str) -> set[ResourceKey]:
        """The keys `source` holds."""
        return set(self._layers.get(source, {}))

    def _merged(self, key: ResourceKey) -> Value | None:
        for source in sorted(self._layers):
            value = self._layers[source].get(key)
            if value is not None:
                return value
        return None

    # --- problems (reported by sources per origin: a file, a Kubernetes object) ---

    def set_problems(self, source: str, origin: str, problems: tuple[Problem, ...]) -> None:
        """Replace the problems `source` reports for one origin (empty: none)."""
        mine = self._problems.setdefault(source, {})
        if problems:
            mine[origin] = problems
        else:
            mine.pop(origin, None)

    def problems(self) -> list[Problem]:
        """Current problems of every source."""
        return [
            p
            for source in sorted(self._problems)
            for origin in sorted(self._problems[source])
            for p in self._problems[source][origin]
        ]

    # --- the CA's settings ---

    def set_trust_domain(self, domain: str, *, at: float = 0.0) -> None:
        """The CA's trust domain (the SPIFFE IDs sidecars expect of their upstreams)."""
        self.update(MESH_SOURCE, {TRUST_DOMAIN: domain}, at=at)

    def set_trust_bundle(self, pem: str, *, at: float = 0.0) -> None:
        """The CA's trust roots, sent to every sidecar (both roots while one is rotated out)."""
        self.update(MESH_SOURCE, {TRUST_BUNDLE: pem}, at=at)
