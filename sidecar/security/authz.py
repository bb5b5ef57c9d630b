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

End-user identity (a JWT verified by sidecar/security/authn.py) is what `requestPrincipals`
("<iss>/<sub>"), `notRequestPrincipals` and the `when` conditions on `request.auth.*` see; a
request without a valid token has no request principal, so `requestPrincipals: ["*"]` in an ALLOW
policy is how a token is required (Istio's way), and no claim matches any `values`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from lightmesh.spiffe import namespace_of

Action = Literal["ALLOW", "DENY"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Condition:
    """One `when` entry: the value(s) of `key` match one of `values` (when given) and none of
    `not_values`."""

    key: str
    values: tuple[str, ...] = ()
    not_values: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Rule:
    """One `rules` entry; an empty tuple means "any"."""

    principals: tuple[str, ...] = ()
    namespaces: tuple[str, ...] = ()
    methods: tuple[str, ...] = ()
    paths: tuple[str, ...] = ()
    request_principals: tuple[str, ...] = ()
    not_request_principals: tuple[str, ...] = ()
    conditions: tuple[Condition, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestAuth:
    """The end user of a request, from its verified JWT (`NO_AUTH`: no valid token)."""

    principal: str = ""  # "<iss>/<sub>"
    audiences: tuple[str, ...] = ()
    presenter: str = ""  # the azp claim
    claims: Mapping[str, Any] = field(default_factory=dict)

    def values(self, key: str) -> tuple[str, ...]:
        """The values a `when` key has for this request: none when absent; a list claim gives
        each of its elements (strings, numbers and booleans as text)."""
        if key == "request.auth.principal":
            return (self.principal,) if self.principal else ()
        if key == "request.auth.audiences":
            return self.audiences
        if key == "request.auth.presenter":
            return (self.presenter,) if self.presenter else ()
        value: Any = self.claims
        for name in key.removeprefix("request.auth.claims")[1:-1].split("]["):
            if not isinstance(value, Mapping) or name not in value:
                return ()
            value = value[name]
        items = value if isinstance(value, list) else [value]
        return tuple(_text(v) for v in items if isinstance(v, str | int | float | bool))


def _text(value: str | int | float | bool) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


NO_AUTH = RequestAuth()


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


def _condition_holds(condition: Condition, auth: RequestAuth) -> bool:
    found = auth.values(condition.key)
    if condition.values and not any(matches_value(p, v) for p in condition.values for v in found):
        return False
    return not any(matches_value(p, v) for p in condition.not_values for v in found)


def rule_matches(
    rule: Rule, peer: Peer, method: str, path: str, auth: RequestAuth = NO_AUTH
) -> bool:
    """Every field the rule lists must match."""
    return (
        _any(rule.principals, peer.principal)
        and _any(rule.namespaces, peer.namespace)
        and _any(rule.methods, method)
        and _any(rule.paths, path.partition("?")[0])
        and _any(rule.request_principals, auth.principal)
        and not (
            rule.not_request_principals
            and any(matches_value(p, auth.principal) for p in rule.not_request_principals)
        )
        and all(_condition_holds(c, auth) for c in rule.conditions)
    )


def evaluate(
    policies: Sequence[Policy], peer: Peer, method: str, path: str, auth: RequestAuth = NO_AUTH
) -> Verdict:
    """Decide one request against the policies selecting this workload."""
    allow_policies = False
    for policy in policies:
        if policy.action == "DENY" and any(
            rule_matches(r, peer, method, path, auth) for r in policy.rules
        ):
            return Verdict(False, policy.name)
        allow_policies = allow_policies or policy.action == "ALLOW"
    if not allow_policies:
        return ALLOWED
    for policy in policies:
        if policy.action == "ALLOW" and any(
            rule_matches(r, peer, method, path, auth) for r in policy.rules
        ):
            return Verdict(True, policy.name)
    return Verdict(False)
