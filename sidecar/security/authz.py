"""AuthorizationPolicy evaluation for one inbound request. Pure.

Semantics follow Istio's: DENY policies are evaluated first, and any match denies; then, if any
ALLOW policy selects the workload, the request must match one of them; with no ALLOW policy,
everything not denied is allowed. Within a policy, rules are OR; within a rule, `from` and `to` are
AND, and inside each the listed fields are AND of (OR over values). A policy without rules matches
nothing (an ALLOW policy with no rules therefore denies everything: Istio's "allow-nothing").

Strings match exactly, or with one `*` at the start (suffix match) or end (prefix match), or `*`
alone (anything present). Principals are SPIFFE IDs without the `spiffe://` scheme, as in Istio
("cluster.local/ns/shop/sa/frontend"); plaintext peers have no principal and no namespace, so any
rule naming principals or namespaces does not match them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from lightmesh.spiffe import namespace_of

Action = Literal["ALLOW", "DENY"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Rule:
    """One `rules` entry; an empty tuple means "any"."""

    principals: tuple[str, ...] = ()
    namespaces: tuple[str, ...] = ()
    methods: tuple[str, ...] = ()
    paths: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Policy:
    """One AuthorizationPolicy that selects this workload."""

    name: str  # "namespace/name", for the denial message and logs
    action: Action
    rules: tuple[Rule, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Peer:
    """Who sent the request, from the verified peer certificate ("" for plaintext peers)."""

    principal: str = ""

    @property
    def namespace(self) -> str:
        """The namespace segment of a "td/ns/<namespace>/sa/<account>" principal."""
        return namespace_of(self.principal)


@dataclass(frozen=True, slots=True)
class Verdict:
    """The decision and the policy that made it ("" when no policy decided)."""

    allowed: bool
    policy: str = ""


ALLOWED = Verdict(True)


def matches_value(pattern: str, value: str) -> bool:
    """Exact, "prefix*", "*suffix" or "*" (any non-empty value)."""
    if pattern == "*":
        return bool(value)
    if pattern.endswith("*"):
        return value.startswith(pattern[:-1])
    if pattern.startswith("*"):
        return value.endswith(pattern[1:])
    return value == pattern


def _any(patterns: tuple[str, ...], value: str) -> bool:
    return not patterns or any(matches_value(p, value) for p in patterns)


def rule_matches(rule: Rule, peer: Peer, method: str, path: str) -> bool:
    """Every field the rule lists must match."""
    return (
        _any(rule.principals, peer.principal)
        and _any(rule.namespaces, peer.namespace)
        and _any(rule.methods, method)
        and _any(rule.paths, path.partition("?")[0])
    )


def evaluate(policies: Sequence[Policy], peer: Peer, method: str, path: str) -> Verdict:
    """Decide one request against the policies selecting this workload."""
    allow_policies = False
    for policy in policies:
        if policy.action == "DENY" and any(
            rule_matches(r, peer, method, path) for r in policy.rules
        ):
            return Verdict(False, policy.name)
        allow_policies = allow_policies or policy.action == "ALLOW"
    if not allow_policies:
        return ALLOWED
    for policy in policies:
        if policy.action == "ALLOW" and any(
            rule_matches(r, peer, method, path) for r in policy.rules
        ):
            return Verdict(True, policy.name)
    return Verdict(False)
