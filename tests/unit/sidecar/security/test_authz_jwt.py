"""AuthorizationPolicy on end-user identity: requestPrincipals, notRequestPrincipals and `when`
conditions on request.auth.*, with Istio's semantics for requests without a valid token."""

from __future__ import annotations

import pytest

from sidecar.security.authz import NO_AUTH, Condition, Peer, Policy, RequestAuth, Rule, evaluate

ALICE = RequestAuth(
    principal="https://issuer.test/alice",
    audiences=("catalog", "orders"),
    presenter="web-app",
    claims={"iss": "https://issuer.test", "sub": "alice", "groups": ["admins", "dev"],
            "realm": {"role": "owner"}, "level": 3},
)  # fmt: skip
PEER = Peer(principal="cluster.local/ns/shop/sa/frontend")


def allowed(rule: Rule, auth: RequestAuth, action: str = "ALLOW") -> bool:
    policy = Policy(name="shop/p", action="DENY" if action == "DENY" else "ALLOW", rules=(rule,))
    return evaluate([policy], PEER, "GET", "/items", auth).allowed


def test_request_principals_require_a_valid_token() -> None:
    rule = Rule(request_principals=("*",))
    assert allowed(rule, ALICE) and not allowed(rule, NO_AUTH)
    assert allowed(Rule(request_principals=("https://issuer.test/*",)), ALICE)
    assert not allowed(Rule(request_principals=("https://other.test/*",)), ALICE)


def test_not_request_principals_in_a_deny_refuses_requests_without_a_token() -> None:
    rule = Rule(not_request_principals=("*",))
    assert not allowed(rule, NO_AUTH, "DENY")
    assert allowed(rule, ALICE, "DENY")
    assert not allowed(Rule(not_request_principals=("*/bob",)), ALICE, "DENY")


@pytest.mark.parametrize(
    ("condition", "expected"),
    [
        (Condition(key="request.auth.claims[groups]", values=("admins",)), True),
        (Condition(key="request.auth.claims[groups]", values=("ops",)), False),
        (Condition(key="request.auth.claims[groups]", values=("ad*",)), True),
        (Condition(key="request.auth.claims[groups]", not_values=("dev",)), False),
        (Condition(key="request.auth.claims[realm][role]", values=("owner",)), True),
        (Condition(key="request.auth.claims[level]", values=("3",)), True),
        (Condition(key="request.auth.claims[missing]", values=("*",)), False),
        (Condition(key="request.auth.claims[missing]", not_values=("x",)), True),
        (Condition(key="request.auth.audiences", values=("orders",)), True),
        (Condition(key="request.auth.presenter", values=("web-app",)), True),
        (Condition(key="request.auth.principal", values=("*/alice",)), True),
        (Condition(key="request.auth.principal", not_values=("*/alice",)), False),
    ],
)
def test_when_conditions(condition: Condition, expected: bool) -> None:
    assert allowed(Rule(conditions=(condition,)), ALICE) is expected


def test_conditions_are_anded_and_see_no_claims_without_a_token() -> None:
    both = Rule(conditions=(Condition(key="request.auth.claims[groups]", values=("admins",)),
                            Condition(key="request.auth.audiences", values=("billing",))))  # fmt: skip
    assert not allowed(both, ALICE)
    assert not allowed(
        Rule(conditions=(Condition(key="request.auth.claims[groups]", values=("*",)),)), NO_AUTH
    )
