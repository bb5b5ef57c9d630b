"""Translation of RequestAuthentication and HTTPLocalRateLimitPolicy into a sidecar's
InboundPolicy: which apply to a workload, the keys of a jwksUri as last fetched, and what the
sidecar's cached translation depends on (a new fetch changes the pushed policy)."""

from __future__ import annotations

from typing import Any

from controlplane.model import ResourceKey
from controlplane.translate.inbound import inbound_key, inbound_policy
from controlplane.validate import parse_document
from controlplane.world import NodeInfo, World, jwks_key
from tests.support.jwks import Issuer

NODE = NodeInfo(id="catalog-1.shop", workload="catalog", namespace="shop",
                labels=(("app", "catalog"),), service_account="catalog")  # fmt: skip
JWKS = Issuer("https://a.example").jwks()


def put(
    world: World, kind: str, name: str, spec: dict[str, Any], namespace: str = "shop"
) -> ResourceKey:
    document = {"apiVersion": "lightmesh.io/v1alpha1", "kind": kind,
                "metadata": {"name": name, "namespace": namespace}, "spec": spec}  # fmt: skip
    parsed = parse_document(document, origin="test")
    assert parsed.resource is not None and parsed.key is not None, parsed.problems
    world.put(parsed.key, parsed.resource)
    return parsed.key


def test_jwt_rules_of_every_selecting_request_authentication_add_up() -> None:
    world = World()
    put(world, "RequestAuthentication", "a", {"jwtRules": [{"issuer": "a", "jwks": JWKS,
        "outputClaimToHeaders": [{"header": "X-Sub", "claim": "sub"}]}]})  # fmt: skip
    put(world, "RequestAuthentication", "b", {"selector": {"matchLabels": {"app": "catalog"}},
        "jwtRules": [{"issuer": "b", "jwksUri": "https://b.example/jwks"}]})  # fmt: skip
    put(world, "RequestAuthentication", "c", {"selector": {"matchLabels": {"app": "other"}},
        "jwtRules": [{"issuer": "c", "jwks": JWKS}]})  # fmt: skip
    policy = inbound_policy(world, NODE)
    assert [(r.issuer, r.policy) for r in policy.jwt_rules] == [("a", "shop/a"), ("b", "shop/b")]
    assert policy.jwt_rules[0].jwks == JWKS
    assert [(c.header, c.claim) for c in policy.jwt_rules[0].output_claim_to_headers] == [
        ("x-sub", "sub")
    ]
    # Not fetched yet: no keys (the sidecar refuses b's tokens rather than letting them through).
    assert policy.jwt_rules[1].jwks == ""
    world.put(jwks_key("https://b.example/jwks"), JWKS)
    assert inbound_policy(world, NODE).jwt_rules[1].jwks == JWKS
    key = inbound_key(world, NODE)
    assert jwks_key("https://b.example/jwks") in key.inputs(world)


def test_one_rate_limit_policy_applies_the_named_workload_first() -> None:
    world = World()
    put(world, "HTTPLocalRateLimitPolicy", "by-labels",
        {"selector": {"matchLabels": {"app": "catalog"}}, "total": {"requestsPerSecond": 5}})  # fmt: skip
    named = put(world, "HTTPLocalRateLimitPolicy", "z-by-name", {
        "targetRef": {"kind": "Deployment", "name": "catalog"},
        "total": {"requestsPerSecond": 10, "burst": 20},
        "identity": {"requestsPerSecond": 2},
        "overrides": [{"requestsPerSecond": 4,
                       "clientRefs": [{"kind": "ServiceAccount", "name": "frontend"}]}],
    })  # fmt: skip
    put(world, "HTTPLocalRateLimitPolicy", "elsewhere",
        {"targetRef": {"kind": "Deployment", "name": "catalog"}, "total": {"requestsPerSecond": 1}},
        namespace="other")  # fmt: skip
    assert inbound_key(world, NODE).rate_limit in (
        named,
        ResourceKey("HTTPLocalRateLimitPolicy", "shop", "by-labels"),
    )
    limit = inbound_policy(world, NODE).rate_limit
    # Both select the workload equally narrowly: the first name wins.
    assert limit.name == "shop/by-labels"
    world.put(ResourceKey("HTTPLocalRateLimitPolicy", "shop", "by-labels"), None)
    limit = inbound_policy(world, NODE).rate_limit
    assert limit.name == "shop/z-by-name"
    assert (limit.total.requests_per_second, limit.total.burst) == (10, 20)
    assert limit.identity.requests_per_second == 2
    (override,) = limit.overrides
    assert list(override.principals) == ["cluster.local/ns/shop/sa/frontend"]
    other = NodeInfo(id="x", workload="inventory", namespace="shop", labels=(("app", "inventory"),))
    assert not inbound_policy(world, other).HasField("rate_limit")


def test_authorization_rule_jwt_fields_are_translated() -> None:
    world = World()
    put(world, "AuthorizationPolicy", "need-jwt", {"rules": [{
        "from": [{"source": {"requestPrincipals": ["a/*"], "notRequestPrincipals": ["a/bob"]}}],
        "when": [{"key": "request.auth.claims[groups]", "values": ["admins"], "notValues": ["x"]}],
    }]})  # fmt: skip
    (rule,) = inbound_policy(world, NODE).policies[0].rules
    assert list(rule.request_principals) == ["a/*"]
    assert list(rule.not_request_principals) == ["a/bob"]
    (when,) = rule.when
    assert (when.key, list(when.values), list(when.not_values)) == (
        "request.auth.claims[groups]",
        ["admins"],
        ["x"],
    )


def test_a_mesh_wide_request_authentication_applies_in_every_namespace() -> None:
    world = World()
    put(world, "RequestAuthentication", "all", {"jwtRules": [{"issuer": "a", "jwks": JWKS}]},
        namespace="lightmesh-system")  # fmt: skip
    node = NodeInfo(id="x", workload="orders", namespace="billing")
    assert [r.policy for r in inbound_policy(world, node).jwt_rules] == ["lightmesh-system/all"]
