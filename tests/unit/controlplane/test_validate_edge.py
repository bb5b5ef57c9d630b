"""RequestAuthentication and HTTPLocalRateLimitPolicy, and AuthorizationPolicy's JWT fields
(requestPrincipals, notRequestPrincipals, when): accepted under lightmesh.io (and Istio's
security.istio.io for the first), and every bad field named in the problem."""

from typing import Any

import pytest

from controlplane.model import (
    AuthorizationPolicy,
    Condition,
    HTTPLocalRateLimitPolicy,
    RateLimit,
    RequestAuthentication,
    Resource,
)
from controlplane.validate import parse_document
from tests.support.jwks import Issuer

JWKS = Issuer("https://issuer.example", alg="ES256").jwks()


def doc(kind: str, spec: dict[str, Any], api: str = "lightmesh.io/v1alpha1") -> dict[str, Any]:
    return {"apiVersion": api, "kind": kind,
            "metadata": {"name": "p", "namespace": "shop"}, "spec": spec}  # fmt: skip


def accepted(document: dict[str, Any]) -> tuple[Resource, list[str]]:
    parsed = parse_document(document, origin="f.yaml")
    errors = [str(p) for p in parsed.problems if p.severity == "error"]
    assert parsed.resource is not None and not errors, errors
    return parsed.resource, [f"{p.path}: {p.message}" for p in parsed.problems]


def errors(document: dict[str, Any]) -> list[str]:
    parsed = parse_document(document, origin="f.yaml")
    assert parsed.resource is None
    return [f"{p.path}: {p.message}" for p in parsed.problems]


def ra(*rules: dict[str, Any], api: str = "security.istio.io/v1") -> dict[str, Any]:
    spec = {"selector": {"matchLabels": {"app": "catalog"}}, "jwtRules": list(rules)}
    return doc("RequestAuthentication", spec, api)


@pytest.mark.parametrize(
    "api", ["lightmesh.io/v1alpha1", "security.istio.io/v1beta1", "security.istio.io/v1"]
)
def test_request_authentication_is_accepted_with_every_field(api: str) -> None:
    resource, warnings = accepted(
        ra(
            {
                "issuer": "https://issuer.example",
                "audiences": ["catalog"],
                "jwks": JWKS,
                "fromHeaders": [{"name": "X-Jwt", "prefix": "Token "}],
                "fromParams": ["token"],
                "forwardOriginalToken": True,
                "outputPayloadToHeader": "X-Jwt-Payload",
                "outputClaimToHeaders": [{"header": "X-Sub", "claim": "sub"}],
            },
            {"issuer": "other", "jwksUri": "https://other.example/jwks.json"},
            api=api,
        )
    )
    assert isinstance(resource, RequestAuthentication) and not warnings
    first, second = resource.rules
    assert first.from_headers == (("x-jwt", "Token "),)
    assert first.output_claim_to_headers == (("x-sub", "sub"),)
    assert first.output_payload_to_header == "x-jwt-payload"
    assert first.forward_original_token and first.jwks == JWKS
    assert resource.jwks_uris() == frozenset({"https://other.example/jwks.json"})
    assert second.from_headers == () and not second.forward_original_token


def test_both_jwks_and_uri_keep_the_inline_keys_with_a_warning() -> None:
    rule = {"issuer": "i", "jwks": JWKS, "jwksUri": "https://i/jwks"}
    resource, warnings = accepted(ra(rule))
    assert isinstance(resource, RequestAuthentication)
    assert resource.rules[0].jwks_uri == ""
    assert warnings == [
        "spec.jwtRules[0].jwksUri: ignored, spec.jwtRules[0].jwks is set (as in Istio)"
    ]


@pytest.mark.parametrize(
    ("rule", "problem"),
    [
        ({"issuer": "i"}, "spec.jwtRules[0]: set jwks (the keys) or jwksUri"),
        ({"issuer": "i", "jwks": "{"}, "spec.jwtRules[0].jwks: not JSON"),
        ({"issuer": "i", "jwks": '{"keys": []}'}, "spec.jwtRules[0].jwks: a JWKS is"),
        (
            {"issuer": "i", "jwks": '{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}'},
            "spec.jwtRules[0].jwks.keys[0].kty: 'oct' is not one of RSA, EC, OKP",
        ),
        (
            {"issuer": "i", "jwks": '{"keys": [{"kty": "RSA", "n": "x"}]}'},
            "spec.jwtRules[0].jwks.keys[0]: not a usable RSA key",
        ),
        ({"issuer": "i", "jwksUri": "ftp://x/keys"}, "spec.jwtRules[0].jwksUri: 'ftp://x/keys'"),
        ({"issuer": "", "jwksUri": "https://x/k"}, "spec.jwtRules[0].issuer: must not be empty"),
        (
            {"issuer": "i", "jwks": JWKS, "fromHeaders": [{"name": "bad header"}]},
            "spec.jwtRules[0].fromHeaders[0].name: 'bad header' is not a valid header name",
        ),
        (
            {
                "issuer": "i",
                "jwks": JWKS,
                "outputClaimToHeaders": [{"header": "Host", "claim": "sub"}],
            },
            "spec.jwtRules[0].outputClaimToHeaders[0].header: 'Host' cannot be written",
        ),
        (
            {"issuer": "i", "jwks": JWKS, "jwksURL": "x"},
            "spec.jwtRules[0].jwksURL: unknown field",
        ),
        (
            {"issuer": "i", "jwks": JWKS, "fromCookies": [""]},
            "spec.jwtRules[0].fromCookies[0]: must not be empty",
        ),
        (
            {"issuer": "i", "jwks": JWKS, "forwardOriginalToken": "yes"},
            "spec.jwtRules[0].forwardOriginalToken: must be a boolean",
        ),
    ],
)
def test_bad_jwt_rules_are_rejected_naming_the_field(rule: dict[str, Any], problem: str) -> None:
    found = errors(ra(rule))
    assert any(p.startswith(problem) for p in found), found


def test_istio_s_proto_name_jwks_uri_is_read_as_jwks_uri_with_a_warning() -> None:
    resource, warnings = accepted(
        ra({"issuer": "i", "jwks_uri": "https://i/jwks", "fromCookies": ["session"]})
    )
    assert isinstance(resource, RequestAuthentication)
    assert resource.rules[0].jwks_uri == "https://i/jwks"
    assert resource.rules[0].from_cookies == ("session",)
    assert warnings == ["spec.jwtRules[0].jwks_uri: read as jwksUri (write that)"]
    _, warnings = accepted(ra({"issuer": "i", "jwks_uri": "https://a/k", "jwksUri": "https://b/k"}))
    assert warnings == ["spec.jwtRules[0].jwks_uri: ignored, spec.jwtRules[0].jwksUri is set"]


def test_an_issuer_listed_twice_is_rejected() -> None:
    found = errors(ra({"issuer": "i", "jwks": JWKS}, {"issuer": "i", "jwksUri": "https://i/k"}))
    assert found == ["spec.jwtRules[1].issuer: 'i' is also spec.jwtRules[0]'s issuer"]


def ap(rule: dict[str, Any]) -> dict[str, Any]:
    return doc("AuthorizationPolicy", {"action": "ALLOW", "rules": [rule]}, "security.istio.io/v1")


def test_authorization_policy_request_principals_and_conditions() -> None:
    resource, _ = accepted(
        ap(
            {
                "from": [
                    {
                        "source": {
                            "requestPrincipals": ["https://issuer.example/*"],
                            "notRequestPrincipals": ["*/mallory"],
                        }
                    }
                ],
                "when": [
                    {"key": "request.auth.claims[groups]", "values": ["admins"]},
                    {"key": "request.auth.claims[realm][role]", "notValues": ["guest"]},
                    {"key": "request.auth.audiences", "values": ["catalog"]},
                ],
            }
        )
    )
    assert isinstance(resource, AuthorizationPolicy)
    (rule,) = resource.rules
    assert rule.request_principals == ("https://issuer.example/*",)
    assert rule.not_request_principals == ("*/mallory",)
    assert rule.conditions[1] == Condition(
        key="request.auth.claims[realm][role]", not_values=("guest",)
    )


@pytest.mark.parametrize(
    ("when", "problem"),
    [
        (
            {"key": "source.ip", "values": ["10.0.0.1"]},
            "spec.rules[0].when[0].key: 'source.ip' is not supported",
        ),
        ({"key": "request.auth.claims[]", "values": ["x"]}, "spec.rules[0].when[0].key:"),
        ({"key": "request.auth.principal"}, "spec.rules[0].when[0]: set values, notValues or both"),
        ({"key": "request.auth.claims[a]", "values": ["a*b"]}, "spec.rules[0].when[0].values[0]:"),
        ({"values": ["x"]}, "spec.rules[0].when[0].key: required field is missing"),
    ],
)
def test_bad_conditions_are_rejected_naming_the_field(when: dict[str, Any], problem: str) -> None:
    found = errors(ap({"when": [when]}))
    assert any(p.startswith(problem) for p in found), found


def rl(spec: dict[str, Any]) -> dict[str, Any]:
    return doc("HTTPLocalRateLimitPolicy", spec)


def test_rate_limit_policy_by_target_ref_with_overrides() -> None:
    resource, _ = accepted(
        rl(
            {
                "targetRef": {"group": "apps", "kind": "Deployment", "name": "catalog"},
                "total": {"requestsPerSecond": 100, "burst": 200},
                "identity": {"requestsPerSecond": 20},
                "overrides": [
                    {
                        "requestsPerSecond": 50,
                        "clientRefs": [
                            {"kind": "ServiceAccount", "name": "frontend"},
                            {"kind": "ServiceAccount", "namespace": "ops", "name": "bot"},
                        ],
                    },
                ],
            }
        )
    )
    assert isinstance(resource, HTTPLocalRateLimitPolicy)
    assert resource.workload == "catalog" and resource.selector is None
    assert resource.total == RateLimit(rate=100, burst=200)
    assert resource.identity == RateLimit(rate=20, burst=20)
    assert resource.overrides[0].clients == ("shop/frontend", "ops/bot")


def test_rate_limit_policy_is_not_in_istio_groups() -> None:
    spec = {"selector": {"matchLabels": {"app": "x"}}, "total": {"requestsPerSecond": 1}}
    found = errors(doc("HTTPLocalRateLimitPolicy", spec, "security.istio.io/v1"))
    assert found == [
        "apiVersion: HTTPLocalRateLimitPolicy is not in security.istio.io/v1 (one of: "
        "lightmesh.io/v1alpha1)"
    ]


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        ({"total": {"requestsPerSecond": 1}}, "spec: set exactly one of targetRef or selector"),
        (
            {"targetRef": {"kind": "Server", "name": "web"}, "total": {"requestsPerSecond": 1}},
            "spec.targetRef.kind: 'Server' is not supported",
        ),
        ({"selector": {"matchLabels": {"app": "x"}}}, "spec: set total, identity or overrides"),
        (
            {"selector": {"matchLabels": {"app": "x"}}, "total": {"requestsPerSecond": 0}},
            "spec.total.requestsPerSecond: 0 is below the minimum 1",
        ),
        (
            {"selector": {"matchLabels": {"app": "x"}}, "total": {"requestsPerSecond": 5},
             "identity": {"requestsPerSecond": 10}},
            "spec.identity.requestsPerSecond: 10 is above total.requestsPerSecond 5",
        ),
        (
            {"selector": {"matchLabels": {"app": "x"}},
             "overrides": [{"requestsPerSecond": 1, "clientRefs": [{"kind": "Pod", "name": "a"}]}]},
            "spec.overrides[0].clientRefs[0].kind: 'Pod' is not one of ServiceAccount",
        ),
        (
            {"selector": {"matchLabels": {"app": "x"}}, "total": {"requestsPerSecond": 1, "per": "s"}},
            "spec.total.per: unknown field",
        ),
    ],
)  # fmt: skip
def test_bad_rate_limit_policies_are_rejected_naming_the_field(
    spec: dict[str, Any], problem: str
) -> None:
    found = errors(rl(spec))
    assert any(p.startswith(problem) for p in found), found
