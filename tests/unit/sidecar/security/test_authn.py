"""JWT verification of sidecar/security/authn.py with real RS256 and ES256 keys: where tokens are
found, what refuses one (401), and how the request is edited once one verifies."""

from __future__ import annotations

import base64
import json
import time

import pytest

from sidecar.contract import RequestHead
from sidecar.errors import ConfigError
from sidecar.security import authn
from sidecar.security.authn import Authenticator, JwtRule, Refused
from sidecar.security.authz import RequestAuth
from tests.support.jwks import Issuer

RSA = Issuer("https://rsa.example", alg="RS256")
EC = Issuer("https://ec.example", alg="ES256")


def head(path: str = "/", **headers: str) -> RequestHead:
    return RequestHead(method="GET", path=path, host="catalog", http_version="1.1",
                       headers=[(k.replace("_", "-").encode(), v.encode()) for k, v in headers.items()])  # fmt: skip


def bearer(token: str) -> str:
    return f"Bearer {token}"


def authenticator(*rules: JwtRule) -> Authenticator:
    return Authenticator(rules or (JwtRule(issuer=RSA.name, jwks=RSA.jwks()),
                                   JwtRule(issuer=EC.name, jwks=EC.jwks(), audiences=("catalog",))))  # fmt: skip


@pytest.mark.parametrize("issuer", [RSA, EC], ids=["RS256", "ES256"])
def test_a_valid_token_gives_the_principal_and_is_removed(issuer: Issuer) -> None:
    request = head(authorization=bearer(issuer.token(aud="catalog", azp="web", groups=["a", "b"])))
    result = authenticator().authenticate(request)
    assert isinstance(result, RequestAuth)
    assert result.principal == f"{issuer.name}/alice"
    assert result.audiences == ("catalog",) and result.presenter == "web"
    assert result.values("request.auth.claims[groups]") == ("a", "b")
    assert request.header(b"authorization") is None  # forwardOriginalToken is false


def test_no_token_is_no_result() -> None:
    assert authenticator().authenticate(head()) is None
    # Another scheme in Authorization is not a token of ours.
    assert authenticator().authenticate(head(authorization="Basic dXNlcjpwdw==")) is None


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        (RSA.token(lifetime=-3600), "Jwt is expired"),
        (RSA.token(issuer="https://unknown.example"), "Jwt issuer is not configured"),
        (EC.token(aud="other"), "Audiences in Jwt are not allowed"),
        (EC.token(), "Audiences in Jwt are not allowed"),
        ("not-a-jwt", "Jwt is not in the form of Header.Payload.Signature"),
        # Signed by another key with the same kid: the signature does not verify.
        (Issuer(RSA.name).token(), "Jwt verification fails"),
        # An ES256 token claiming the RSA issuer: no RSA key verifies ES256.
        (Issuer(RSA.name, alg="ES256").token(), "Jwks doesn't have key to match kid or alg from Jwt"),
    ],
    ids=["expired", "wrong-issuer", "wrong-audience", "no-audience", "garbage", "bad-signature", "alg-mismatch"],
)  # fmt: skip
def test_invalid_tokens_are_refused(token: str, reason: str) -> None:
    assert authenticator().authenticate(head(authorization=bearer(token))) == Refused(reason)


def test_a_second_authorization_header_is_refused_not_passed_on_unverified() -> None:
    forged = Issuer(RSA.name).token()  # signed by a key the issuer never published
    for first in ("Basic dXNlcjpwdw==", bearer(RSA.token())):
        request = head()
        request.headers = [
            (b"authorization", first.encode()),
            (b"authorization", bearer(forged).encode()),
        ]
        assert authenticator().authenticate(request) == Refused(
            "Jwt is ambiguous: more than one authorization"
        )


def test_a_token_of_an_issuer_whose_keys_are_not_fetched_is_refused() -> None:
    rule = JwtRule(issuer=RSA.name, jwks="")  # jwksUri not fetched yet
    assert isinstance(
        Authenticator([rule]).authenticate(head(authorization=bearer(RSA.token()))), Refused
    )


def test_custom_locations_and_outputs() -> None:
    rule = JwtRule(
        issuer=EC.name,
        jwks=EC.jwks(),
        from_headers=(("x-jwt", "Token "),),
        from_params=("token",),
        forward_original_token=True,
        output_payload_to_header="x-jwt-payload",
        output_claim_to_headers=(
            ("x-sub", "sub"),
            ("x-role", "realm.role"),
            ("x-groups", "groups"),
        ),
    )
    token = EC.token(realm={"role": "admin"}, groups=["a"])
    # A client's own x-sub never reaches the app, token or not.
    request = head(x_jwt=f"Token {token}", x_sub="mallory")
    result = Authenticator([rule]).authenticate(request)
    assert isinstance(result, RequestAuth)
    assert request.header(b"x-jwt") == f"Token {token}".encode()  # forwarded
    assert request.header(b"x-sub") == b"alice"
    assert [v for k, v in request.headers if k == b"x-sub"] == [b"alice"]
    assert request.header(b"x-role") == b"admin"
    assert request.header(b"x-groups") is None  # a list is not written
    payload = request.header(b"x-jwt-payload")
    assert payload is not None
    decoded = json.loads(base64.urlsafe_b64decode(payload + b"=" * (-len(payload) % 4)))
    assert decoded["realm"] == {"role": "admin"}
    # The query parameter location; Authorization is not one of this rule's locations.
    assert isinstance(Authenticator([rule]).authenticate(head(f"/?token={token}")), RequestAuth)
    assert Authenticator([rule]).authenticate(head(authorization=bearer(token))) is None
    forged = head(x_sub="mallory")
    assert Authenticator([rule]).authenticate(forged) is None
    assert forged.header(b"x-sub") is None


def test_a_token_in_a_cookie() -> None:
    rule = JwtRule(issuer=RSA.name, jwks=RSA.jwks(), from_cookies=("session",))
    token = RSA.token()
    request = head(cookie=f"theme=dark; session={token}; lang=en")
    result = Authenticator([rule]).authenticate(request)
    assert isinstance(result, RequestAuth) and result.principal == f"{RSA.name}/alice"
    # The token's cookie is removed before the app (forwardOriginalToken false); the others stay.
    assert request.header(b"cookie") == b"theme=dark; lang=en"
    alone = head(cookie=f"session={token}", x_other="1")
    assert isinstance(Authenticator([rule]).authenticate(alone), RequestAuth)
    assert alone.header(b"cookie") is None and alone.header(b"x-other") == b"1"
    forwarded = JwtRule(issuer=RSA.name, jwks=RSA.jwks(), from_cookies=("session",),
                        forward_original_token=True)  # fmt: skip
    kept = head(cookie=f"session={token}; lang=en")
    assert isinstance(Authenticator([forwarded]).authenticate(kept), RequestAuth)
    assert kept.header(b"cookie") == f"session={token}; lang=en".encode()
    assert Authenticator([rule]).authenticate(head(cookie="session=garbage")) == Refused(
        "Jwt is not in the form of Header.Payload.Signature"
    )
    # A rule with cookies only does not look at Authorization.
    assert Authenticator([rule]).authenticate(head(authorization=bearer(token))) is None


def test_default_locations_include_access_token_param() -> None:
    request = head(f"/items?access_token={RSA.token()}")
    result = authenticator().authenticate(request)
    assert isinstance(result, RequestAuth) and result.principal == f"{RSA.name}/alice"
    assert request.path == "/items"  # removed, and the "?" with it


def test_a_token_in_a_query_parameter_is_removed_keeping_the_rest_of_the_query() -> None:
    rule = JwtRule(issuer=EC.name, jwks=EC.jwks(), from_params=("token",))
    token = EC.token()
    request = head(f"/search?q=a%20b&token={token}&page=2&tok%65n={token}")
    assert isinstance(Authenticator([rule]).authenticate(request), RequestAuth)
    # Every occurrence (an encoded name too); the others as sent, encoding included.
    assert request.path == "/search?q=a%20b&page=2"
    forwarded = JwtRule(issuer=EC.name, jwks=EC.jwks(), from_params=("token",),
                        forward_original_token=True)  # fmt: skip
    kept = head(f"/search?token={token}")
    assert isinstance(Authenticator([forwarded]).authenticate(kept), RequestAuth)
    assert kept.path == f"/search?token={token}"
    # A refused token leaves the request as it was (it is answered 401 anyway).
    refused = head("/search?token=garbage&q=1")
    assert isinstance(Authenticator([rule]).authenticate(refused), Refused)
    assert refused.path == "/search?token=garbage&q=1"


def test_a_jwks_that_does_not_parse_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="bad JWKS"):
        Authenticator([JwtRule(issuer="i", jwks="{not json")])


def test_request_auth_values_of_when_keys() -> None:
    auth = RequestAuth(principal="i/s", audiences=("a",), presenter="p",
                       claims={"n": 3, "ok": True, "nested": {"k": "v"}, "obj": {"x": 1}})  # fmt: skip
    assert auth.values("request.auth.principal") == ("i/s",)
    assert auth.values("request.auth.presenter") == ("p",)
    assert auth.values("request.auth.claims[n]") == ("3",)
    assert auth.values("request.auth.claims[ok]") == ("true",)
    assert auth.values("request.auth.claims[nested][k]") == ("v",)
    assert auth.values("request.auth.claims[obj]") == ()
    assert auth.values("request.auth.claims[missing][k]") == ()


def test_the_sidecar_does_not_load_pyjwt_until_a_workload_has_jwt_rules() -> None:
    """PyJWT pulls in cryptography (megabytes): a sidecar without RequestAuthentication never
    imports it (the footprint contract of .importlinter covers static imports only)."""
    import subprocess
    import sys

    code = (
        "import sys, sidecar.app, sidecar.security.admission\n"
        "from sidecar.security.inbound import decode\n"
        "from lightmesh.v1 import config_pb2 as pb\n"
        "decode(pb.InboundPolicy())\n"
        "print(sorted(m for m in ('jwt', 'cryptography') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stderr


def test_a_verified_token_is_remembered_until_it_expires() -> None:
    now = [time.time()]
    auth = Authenticator([JwtRule(issuer=RSA.name, jwks=RSA.jwks())], clock=lambda: now[0])
    token = RSA.token(lifetime=120)
    first = auth.authenticate(head(authorization=bearer(token)))
    assert isinstance(first, RequestAuth)
    assert auth.authenticate(head(authorization=bearer(token))) == first  # from the cache
    now[0] += 120 + 61  # past exp and the clock skew
    assert auth.authenticate(head(authorization=bearer(token))) == Refused("Jwt is expired")
    # Refused tokens are not remembered; the cache is bounded.
    for index in range(authn.CACHE_SIZE + 5):
        auth.authenticate(head(authorization=bearer(RSA.token(sub=f"u{index}"))))
    assert len(auth._verified) == authn.CACHE_SIZE


def test_unsigned_and_symmetric_tokens_are_refused() -> None:
    """alg "none", and HS256 signed with the public key as the secret (the algorithm-confusion
    attack): neither is an algorithm of the JWKS's key type."""
    import hashlib
    import hmac

    def segment(value: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    claims = segment({"iss": RSA.name, "sub": "mallory", "exp": int(time.time()) + 60})
    unsigned = f"{segment({'alg': 'none', 'kid': RSA.kid})}.{claims}."
    signed = f"{segment({'alg': 'HS256', 'kid': RSA.kid})}.{claims}"
    # PyJWT refuses to make this token itself: sign it by hand, with the public JWK as secret.
    mac = hmac.new(json.dumps(RSA.jwk()).encode(), signed.encode(), hashlib.sha256).digest()
    confused = f"{signed}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}"
    for token in (unsigned, confused):
        result = authenticator().authenticate(head(authorization=bearer(token)))
        assert result == Refused("Jwks doesn't have key to match kid or alg from Jwt"), token
