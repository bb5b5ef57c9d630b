"""Incremental acceptance of one source's mesh resources: last known good and references. Pure.

Sources submit the latest document of each changed key (or its deletion) and commit; the ledger
re-checks only what that can affect, the submitted keys and the VirtualServices that route to
subsets of a host whose DestinationRule changed (linkerd's `IndexNamespacedResource::apply/delete`
with receivers that change only when their own target does), and returns what to serve:
- a valid resource whose references resolve is served (and becomes the last good one);
- an invalid one is reported and its last good version keeps serving (none if there is none);
- one routing to a subset no DestinationRule defines is served with a warning, as in Istio (apply
  order is free; those routes answer 503 NC until the subset exists), re-checked when a
  DestinationRule of that host changes;
- an HTTPLocalRateLimitPolicy naming a route no VirtualService has is served with a warning
  (like an unknown subset), re-checked when a VirtualService is served, changed or removed;
- a deleted one stops being served.
The file and Kubernetes sources share it, so both behave the same.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from controlplane.model import (
    DestinationRule,
    HTTPLocalRateLimitPolicy,
    Resource,
    ResourceKey,
    VirtualService,
)
from controlplane.validate import (
    Parsed,
    Problem,
    limitable_routes,
    missing_subsets,
    subset_references,
    unknown_routes,
)

_LIMITS = "HTTPLocalRateLimitPolicy"

REJECTED = "rejected; the last accepted version keeps serving"


@dataclass(frozen=True, slots=True)
class _Candidate:
    parsed: Parsed
    origin: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Committed:
    """What a commit changed."""

    served: dict[ResourceKey, Resource | None] = field(default_factory=dict)  # None: not served
    evaluated: frozenset[ResourceKey] = frozenset()  # keys whose verdict may have changed


class Ledger:
    """Candidates, last good versions, served resources and problems of one source."""

    def __init__(self) -> None:
        self._candidates: dict[ResourceKey, _Candidate] = {}
        self._good: dict[ResourceKey, Resource] = {}
        self._served: dict[ResourceKey, Resource] = {}
        self._problems: dict[ResourceKey, tuple[Problem, ...]] = {}
        self._accepted: dict[ResourceKey, bool] = {}
        self._subsets: dict[str, dict[ResourceKey, frozenset[str]]] = {}  # host -> DR -> names
        self._routing: dict[str, set[ResourceKey]] = {}  # host -> VirtualServices using subsets
        self._routes_to: dict[ResourceKey, frozenset[str]] = {}
        self._pending: set[ResourceKey] = set()
        # HTTPLocalRateLimitPolicies naming routes: re-checked when VirtualServices change.
        self._route_limits: set[ResourceKey] = set()

    def submit(self, key: ResourceKey, parsed: Parsed | None, *, origin: str) -> None:
        """The latest document of `key` (None: deleted)."""
        if parsed is None:
            self._candidates.pop(key, None)
        else:
            self._candidates[key] = _Candidate(parsed, origin)
        if parsed is not None and _names_routes(parsed):
            self._route_limits.add(key)
        else:
            self._route_limits.discard(key)
        self._pending.add(key)

    def commit(self) -> Committed:
        """Re-evaluate what the submissions can affect; return the served changes."""
        pending, self._pending = self._pending, set()
        served: dict[ResourceKey, Resource | None] = {}
        hosts: set[str] = set()
        for key in sorted(k for k in pending if k.kind not in ("VirtualService", _LIMITS)):
            before = self._served.get(key)
            after = self._evaluate(key, ())
            if after != before:
                served[key] = after
                for resource in (before, after):
                    if isinstance(resource, DestinationRule):
                        hosts.add(resource.host)
        for host in hosts:
            self._index_subsets(host)
        routes = {k for k in pending if k.kind == "VirtualService"}
        for host in hosts:
            routes |= self._routing.get(host, set())
        for key in sorted(routes):
            before = self._served.get(key)
            after = self._evaluate(key, self._broken(key))
            if after != before:
                served[key] = after
        # Rate limits after the VirtualServices whose route names they check: the pending ones,
        # and every one naming routes when the served VirtualServices changed.
        limits = {k for k in pending if k.kind == _LIMITS}
        if any(k.kind == "VirtualService" for k in served):
            limits |= self._route_limits
        for key in sorted(limits):
            before = self._served.get(key)
            after = self._evaluate(key, self._unknown_routes(key))
            if after != before:
                served[key] = after
        return Committed(served=served, evaluated=frozenset(pending | routes | limits))

    def _unknown_routes(self, key: ResourceKey) -> tuple[Problem, ...]:
        candidate = self._candidates.get(key)
        policy = candidate.parsed.resource if candidate is not None else None
        if (
            candidate is None
            or not isinstance(policy, HTTPLocalRateLimitPolicy)
            or not policy.routes
        ):
            return ()
        known = limitable_routes(policy, self._served.values())
        return unknown_routes(policy, origin=candidate.origin, known=known)

    def _index_subsets(self, host: str) -> None:
        rules = {
            k: frozenset(s.name for s in r.subsets)
            for k, r in self._served.items()
            if isinstance(r, DestinationRule) and r.host == host
        }
        if rules:
            self._subsets[host] = rules
        else:
            self._subsets.pop(host, None)

    def _broken(self, key: ResourceKey) -> tuple[Problem, ...]:
        """Subsets the candidate routes to that no served DestinationRule defines."""
        for host in self._routes_to.pop(key, frozenset()):
            users = self._routing.get(host)
            if users is not None:
                users.discard(key)
                if not users:
                    del self._routing[host]
        candidate = self._candidates.get(key)
        if candidate is None or not isinstance(candidate.parsed.resource, VirtualService):
            return ()
        vs = candidate.parsed.resource
        hosts = frozenset(dest.host for _, dest in subset_references(vs))
        self._routes_to[key] = hosts
        for host in hosts:
            self._routing.setdefault(host, set()).add(key)

        def defined(host: str) -> set[str]:
            return {name for names in self._subsets.get(host, {}).values() for name in names}

        return missing_subsets(vs, origin=candidate.origin, defined=defined)

    def _evaluate(self, key: ResourceKey, broken: tuple[Problem, ...]) -> Resource | None:
        candidate = self._candidates.get(key)
        if candidate is None:
            self._good.pop(key, None)
            self._served.pop(key, None)
            self._problems.pop(key, None)
            self._accepted.pop(key, None)
            return None
        parsed = candidate.parsed
        problems = list(parsed.problems) + list(broken)
        good = self._good.get(key)
        # Subsets not defined (yet) are warnings: served, those routes answer 503 NC.
        if parsed.resource is not None and all(p.severity == "warning" for p in broken):
            self._good[key] = parsed.resource
            result: Resource | None = parsed.resource
            self._accepted[key] = True
        else:
            result = good
            self._accepted[key] = False
            if good is not None and good != parsed.resource:
                problems.append(
                    Problem(origin=candidate.origin, resource=str(key), path="", message=REJECTED)
                )
        self._problems[key] = tuple(problems)
        if result is None:
            self._served.pop(key, None)
        else:
            self._served[key] = result
        return result

    # --- reads ---

    def served(self) -> dict[ResourceKey, Resource]:
        """Everything served now."""
        return dict(self._served)

    def problems(self, keys: Iterable[ResourceKey] | None = None) -> tuple[Problem, ...]:
        """Current problems (of `keys`, or of every key), in key order."""
        chosen = sorted(self._problems if keys is None else set(keys) & set(self._problems))
        return tuple(p for k in chosen for p in self._problems[k])

    def verdict(self, key: ResourceKey) -> tuple[bool, tuple[Problem, ...]] | None:
        """Whether the latest document of `key` is accepted, and its problems (None: unknown)."""
        if key not in self._accepted:
            return None
        return self._accepted[key], self._problems.get(key, ())

    def keys(self) -> set[ResourceKey]:
        """Every key with a document."""
        return set(self._candidates)


def _names_routes(parsed: Parsed) -> bool:
    resource = parsed.resource
    return isinstance(resource, HTTPLocalRateLimitPolicy) and bool(resource.routes)
