"""Decoding the InboundPolicy's JWT rules and rate limit (fields 50-51), and NACKs: a JWKS that
does not parse and a zero rate leave the previous policy serving."""

from __future__ import annotations

import pytest

from lightmesh import types
from lightmesh.v1 import config_pb2 as pb
from sidecar.config.apply import DataPlane
from sidecar.errors import ConfigError
from sidecar.security.inbound import decode
from sidecar.security.ratelimit import Bucket
from tests.support.config import pack
from tests.support.jwks import Issuer

ISSUER = Issuer("https://issuer.test", alg="ES256")


def policy(**fields: object) -> pb.InboundPolicy:
    return pb.InboundPolicy(**fields)  # type: ignore[arg-type]


def test_jwt_rules_and_rate_limit_are_decoded() -> None:
    decoded = decode(policy(
        jwt_rules=[pb.JwtRule(issuer=ISSUER.name, jwks=ISSUER.jwks(), audiences=["a"],
                              from_headers=[pb.JwtHeader(name="X-Token", prefix="")],
                              output_claim_to_headers=[pb.ClaimToHeader(header="X-Sub", claim="sub")],
                              policy="shop/jwt")],
        rate_limit=pb.LocalRateLimit(
            name="shop/limit",
            total=pb.RateLimitBucket(requests_per_second=10),
            overrides=[pb.RateLimitOverride(limit=pb.RateLimitBucket(requests_per_second=5, burst=9),
                                            principals=["td/ns/shop/sa/a", "td/ns/shop/sa/b"])],
        ),
    ))  # fmt: skip
    assert decoded.authenticator is not None
    (rule,) = decoded.authenticator.rules
    assert rule.from_headers == (("x-token", ""),) and rule.output_claim_to_headers == (
        ("x-sub", "sub"),
    )
    limit = decoded.rate_limit
    assert limit is not None and limit.total == Bucket(rate=10, burst=10) and limit.identity is None
    assert limit.overrides == (("td/ns/shop/sa/a", Bucket(rate=5, burst=9)),
                               ("td/ns/shop/sa/b", Bucket(rate=5, burst=9)))  # fmt: skip
    assert decode(policy()).authenticator is None and decode(policy()).rate_limit is None


@pytest.mark.parametrize(
    "bad",
    [
        policy(jwt_rules=[pb.JwtRule(issuer="i", jwks="{not json")]),
        policy(rate_limit=pb.LocalRateLimit(name="p", total=pb.RateLimitBucket())),
    ],
    ids=["jwks", "zero-rate"],
)
def test_a_bad_policy_is_nacked_and_the_previous_keeps_serving(bad: pb.InboundPolicy) -> None:
    plane = DataPlane()
    good = policy(
        rate_limit=pb.LocalRateLimit(name="p", total=pb.RateLimitBucket(requests_per_second=1))
    )
    plane.apply(types.INBOUND, pack(good))
    with pytest.raises(ConfigError):
        plane.apply(types.INBOUND, pack(bad))
    assert plane.inbound.rate_limit is not None and plane.inbound.rate_limit.name == "p"
