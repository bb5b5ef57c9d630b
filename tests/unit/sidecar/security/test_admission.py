"""Admission order of sidecar/security/admission.py: authentication (401), then authorization
(403 RBAC), then the rate limit (429 RL); a refused request never spends a rate-limit token."""

from __future__ import annotations

from sidecar.contract import RequestHead
from sidecar.security.admission import Admission
from sidecar.security.authn import Authenticator, JwtRule
from sidecar.security.authz import Condition, Policy, Rule
from sidecar.security.inbound import InboundPolicy
from sidecar.security.ratelimit import Bucket, RateLimitConfig
from tests.support.jwks import Issuer

ISSUER = Issuer("https://issuer.example", alg="ES256")
AUTHN = Authenticator([JwtRule(issuer=ISSUER.name, jwks=ISSUER.jwks())])
REQUIRE_JWT = Policy(
    name="shop/require-jwt", action="ALLOW", rules=(Rule(request_principals=("*",)),)
)
ADMINS = Policy(name="shop/admins", action="ALLOW", rules=(
    Rule(conditions=(Condition(key="request.auth.claims[groups]", values=("admins",)),)),))  # fmt: skip
LIMIT = RateLimitConfig(name="shop/limit", total=Bucket(rate=1, burst=2))


def head(token: str = "") -> RequestHead:
    headers = [(b"authorization", f"Bearer {token}".encode())] if token else []
    return RequestHead(method="GET", path="/", host="catalog", http_version="1.1", headers=headers)


def status(admission: Admission, policy: InboundPolicy, token: str = "") -> int:
    reply = admission.check(policy, head(token), "cluster.local/ns/shop/sa/frontend")
    return 200 if reply is None else reply.status


def test_missing_token_passes_unless_a_policy_requires_a_principal() -> None:
    admission = Admission(clock=lambda: 0.0)
    assert status(admission, InboundPolicy(authenticator=AUTHN)) == 200
    required = InboundPolicy(authenticator=AUTHN, policies=(REQUIRE_JWT,))
    assert status(admission, required) == 403
    assert status(admission, required, ISSUER.token()) == 200


def test_order_is_authn_then_authz_then_rate_limit() -> None:
    admission = Admission(clock=lambda: 0.0)
    policy = InboundPolicy(authenticator=AUTHN, policies=(ADMINS,), rate_limit=LIMIT)
    admin = ISSUER.token(groups=["admins"])
    assert status(admission, policy, ISSUER.token(lifetime=-3600, groups=["admins"])) == 401
    assert status(admission, policy, ISSUER.token(groups=["users"])) == 403
    assert [status(admission, policy, admin) for _ in range(3)] == [200, 200, 429]
    assert (admission.unauthenticated, admission.denied, admission.rate_limited) == (1, 1, 1)
    reply = admission.check(policy, head(admin), "")
    assert reply is not None and reply.flags == "RL"


def test_buckets_survive_a_push_of_the_same_numbers_and_reset_on_new_ones() -> None:
    admission = Admission(clock=lambda: 0.0)
    assert [status(admission, InboundPolicy(rate_limit=LIMIT)) for _ in range(3)] == [200, 200, 429]
    # The same policy decoded again (a push of something else): still empty.
    again = RateLimitConfig(name="shop/limit", total=Bucket(rate=1, burst=2))
    assert status(admission, InboundPolicy(rate_limit=again)) == 429
    bigger = RateLimitConfig(name="shop/limit", total=Bucket(rate=1, burst=3))
    assert status(admission, InboundPolicy(rate_limit=bigger)) == 200
