"""End-user authentication: the JWT of a request, verified against the RequestAuthentication
rules of this workload. Pure (PyJWT and cryptography do the signature arithmetic).

Istio's semantics (Envoy's jwt_authn as istiod configures it):
- A rule's token is looked for where the rule says (`from_headers`, `from_params`,
  `from_cookies`); a rule that says nothing looks in `Authorization: Bearer <token>` and the
  `access_token` query parameter.
- No token anywhere: the request goes on without a request principal (AuthorizationPolicy decides
  whether that is enough: `requestPrincipals: ["*"]` requires one).
- A token that does not verify is refused (401): unknown issuer for that location, bad signature,
  no key for it (a jwksUri the control plane could not fetch yet), expired or not yet valid
  (60 s of clock skew allowed, Envoy's default), an audience not listed (when audiences are).
- Once verified: the principal is "<iss>/<sub>"; the token is removed from the request unless
  `forward_original_token` (its header, its query parameter or its cookie, wherever it was found;
  the rest of the query and the other cookies are kept as sent); `output_payload_to_header` gets the payload (base64url, as in the
  token) and `output_claim_to_headers` a claim each. Those output headers are always taken out of
  what the client sent first, so only a verified token can set them.

PyJWT (and through it cryptography) is imported only when a workload has JWT rules: sidecars
without RequestAuthentication never load it (the sidecar's footprint, docs/reliability.md).

A signature check costs 150-220 us (RS256, ES256), more than the rest of the request's path, and
clients send the same token many times: verified tokens are remembered (at most `CACHE_SIZE` per
push, like Envoy's jwt_cache_config) until they expire. Refused tokens are not remembered.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, unquote_plus

from sidecar.contract import RequestHead
from sidecar.errors import ConfigError
from sidecar.security.authz import RequestAuth

if TYPE_CHECKING:
    from jwt import PyJWK

# Envoy's default clock skew for exp/nbf.
CLOCK_SKEW = 60.0
DEFAULT_HEADER = (b"authorization", "Bearer ")
DEFAULT_PARAM = "access_token"
CACHE_SIZE = 1024
# Signature algorithms by key type: asymmetric only (a JWKS is public; an "oct" key would let
# anyone holding the JWKS sign), and never "none".
_ALGORITHMS = {
    "RSA": frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}),
    "EC": frozenset({"ES256", "ES384", "ES512"}),
    "OKP": frozenset({"EdDSA"}),
}


@dataclass(frozen=True, slots=True, kw_only=True)
class JwtRule:
    """One jwtRules entry as pushed (names lower case)."""

    issuer: str
    jwks: str = ""
    audiences: tuple[str, ...] = ()
    from_headers: tuple[tuple[str, str], ...] = ()
    from_params: tuple[str, ...] = ()
    from_cookies: tuple[str, ...] = ()
    forward_original_token: bool = False
    output_payload_to_header: str = ""
    output_claim_to_headers: tuple[tuple[str, str], ...] = ()
    policy: str = ""  # "namespace/name" of its RequestAuthentication


@dataclass(frozen=True, slots=True)
class Refused:
    """Why a request's token was refused (answered 401)."""

    reason: str


@dataclass(frozen=True, slots=True)
class _Location:
    header: bytes = b""  # lower case; "" for a query parameter or a cookie
    prefix: str = ""
    param: str = ""
    cookie: str = ""


@dataclass(frozen=True, slots=True)
class _Compiled:
    rule: JwtRule
    keys: tuple[PyJWK, ...]


def _locations(rule: JwtRule) -> list[_Location]:
    if not rule.from_headers and not rule.from_params and not rule.from_cookies:
        return [_Location(header=DEFAULT_HEADER[0], prefix=DEFAULT_HEADER[1]),
                _Location(param=DEFAULT_PARAM)]  # fmt: skip
    return (
        [_Location(header=n.encode("latin-1"), prefix=p) for n, p in rule.from_headers]
        + [_Location(param=p) for p in rule.from_params]
        + [_Location(cookie=c) for c in rule.from_cookies]
    )


def _keys(rule: JwtRule) -> tuple[PyJWK, ...]:
    """The rule's verification keys (none when its JWKS is empty: tokens of it are refused)."""
    if not rule.jwks:
        return ()
    from jwt import PyJWK, PyJWTError  # lazily: see the module docstring

    try:
        document = json.loads(rule.jwks)
        keys = document["keys"]
        return tuple(PyJWK(k) for k in keys if k.get("kty") in _ALGORITHMS)
    except (PyJWTError, ValueError, TypeError, KeyError, AttributeError) as error:
        raise ConfigError(f"jwt rule of issuer {rule.issuer!r}: bad JWKS: {error}") from None


class Authenticator:
    """The compiled JWT rules of one workload (keys parsed once per push, not per request)."""

    def __init__(self, rules: Sequence[JwtRule], *, clock: Callable[[], float] = time.time) -> None:
        self.rules = tuple(rules)
        self._clock = clock
        # (location, token) -> what it verified as, oldest first (insertion order).
        self._verified: dict[tuple[_Location, str], tuple[_Compiled, Mapping[str, Any]]] = {}
        by_location: dict[_Location, list[_Compiled]] = {}
        for rule in rules:
            compiled = _Compiled(rule, _keys(rule))
            for location in _locations(rule):
                by_location.setdefault(location, []).append(compiled)
        self._by_location = by_location
        self._outputs = frozenset(
            name.encode("latin-1")
            for rule in rules
            for name in (
                rule.output_payload_to_header,
                *(header for header, _ in rule.output_claim_to_headers),
            )
            if name
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Authenticator) and other.rules == self.rules

    def __hash__(self) -> int:
        return hash(self.rules)

    def authenticate(self, head: RequestHead) -> RequestAuth | Refused | None:
        """Verify the request's token(s) and edit the request as the rules say. None: no token
        (nothing to verify); Refused: answer 401. (exp and nbf are PyJWT's, on the wall clock.)"""
        if self._outputs:
            head.headers = [(k, v) for k, v in head.headers if k not in self._outputs]
        query: list[tuple[str, str]] | None = None
        found: RequestAuth | None = None
        for location, rules in self._by_location.items():
            if location.header:
                if sum(1 for k, _ in head.headers if k == location.header) > 1:
                    # Only the first would be read, and a second (forged) token would reach
                    # the app unverified: a token header is single-valued (RFC 9110 11.6.2).
                    return Refused(f"Jwt is ambiguous: more than one {location.header.decode()}")
                token = _from_header(head, location)
            elif location.cookie:
                token = _from_cookie(head, location.cookie)
            else:
                if query is None:
                    query = parse_qsl(head.path.partition("?")[2], keep_blank_values=True)
                token = next((v for k, v in query if k == location.param), None)
            if not token:
                continue
            result = self._verify(location, token, rules)
            if isinstance(result, Refused):
                return result
            compiled, payload = result
            _edit(head, location, compiled.rule, token, payload)
            found = found or _request_auth(payload)
        return found

    def _verify(
        self, location: _Location, token: str, rules: Sequence[_Compiled]
    ) -> tuple[_Compiled, Mapping[str, Any]] | Refused:
        key = (location, token)
        cached = self._verified.get(key)
        if cached is not None:
            expiry = cached[1].get("exp")
            if not isinstance(expiry, int | float) or self._clock() <= expiry + CLOCK_SKEW:
                return cached
            del self._verified[key]
            return Refused("Jwt is expired")
        result = _verify(token, rules)
        if not isinstance(result, Refused):
            if len(self._verified) >= CACHE_SIZE:
                del self._verified[next(iter(self._verified))]
            self._verified[key] = result
        return result


def _from_cookie(head: RequestHead, name: str) -> str | None:
    for key, value in head.headers:
        if key == b"cookie":
            for pair in value.decode("latin-1").split(";"):
                cookie, _, token = pair.strip().partition("=")
                if cookie == name and token:
                    return token.strip('"')
    return None


def _without_cookie(headers: list[tuple[bytes, bytes]], name: str) -> list[tuple[bytes, bytes]]:
    """The headers with cookie `name` taken out of every Cookie header (a header left empty is
    dropped); the other cookies are kept as they were sent."""
    kept: list[tuple[bytes, bytes]] = []
    for key, value in headers:
        if key == b"cookie":
            pairs = [p for p in value.split(b";") if p.strip().partition(b"=")[0] != name.encode()]
            if not any(p.strip() for p in pairs):
                continue
            value = b";".join(pairs).strip()
        kept.append((key, value))
    return kept


def _without_param(path: str, name: str) -> str:
    """`path` without the query parameter `name` (every occurrence; "?" dropped when nothing is
    left); the other parameters are kept as sent, encoding included."""
    base, sep, query = path.partition("?")
    if not sep:
        return path
    kept = [p for p in query.split("&") if unquote_plus(p.partition("=")[0]) != name]
    return base + "?" + "&".join(kept) if kept else base


def _from_header(head: RequestHead, location: _Location) -> str | None:
    raw = head.header(location.header)
    if raw is None:
        return None
    value = raw.decode("latin-1")
    if location.prefix:
        # "Bearer" is case-insensitive (RFC 6750 follows RFC 7235's auth-scheme).
        if value[: len(location.prefix)].lower() != location.prefix.lower():
            return None
        value = value[len(location.prefix) :]
    return value.strip() or None


def _verify(
    token: str, rules: Sequence[_Compiled]
) -> tuple[_Compiled, Mapping[str, Any]] | Refused:
    import jwt  # lazily: see the module docstring

    try:
        header = jwt.get_unverified_header(token)
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return Refused("Jwt is not in the form of Header.Payload.Signature")
    issuer = claims.get("iss")
    compiled = next((c for c in rules if c.rule.issuer == issuer), None)
    if compiled is None:
        return Refused("Jwt issuer is not configured")
    alg = header.get("alg")
    kid = header.get("kid")
    candidates = [
        k
        for k in compiled.keys
        if alg in _ALGORITHMS.get(str(k.key_type), frozenset()) and (kid is None or k.key_id == kid)
    ]
    if not candidates:
        return Refused("Jwks doesn't have key to match kid or alg from Jwt")
    payload: Mapping[str, Any] | None = None
    for key in candidates:
        try:
            payload = jwt.decode(
                token,
                key.key,
                algorithms=[str(alg)],
                options={"verify_aud": False, "verify_iss": False, "verify_iat": False},
                leeway=CLOCK_SKEW,
            )
            break
        except jwt.ExpiredSignatureError:
            return Refused("Jwt is expired")
        except jwt.ImmatureSignatureError:
            return Refused("Jwt not yet valid")
        except jwt.PyJWTError:
            continue
    if payload is None:
        return Refused("Jwt verification fails")
    audiences = compiled.rule.audiences
    if audiences:
        aud = payload.get("aud")
        given = aud if isinstance(aud, list) else [aud] if isinstance(aud, str) else []
        if not set(given) & set(audiences):
            return Refused("Audiences in Jwt are not allowed")
    return compiled, payload


def _edit(
    head: RequestHead, location: _Location, rule: JwtRule, token: str, payload: Mapping[str, Any]
) -> None:
    if not rule.forward_original_token:
        if location.header:
            head.headers = [(k, v) for k, v in head.headers if k != location.header]
        elif location.cookie:
            head.headers = _without_cookie(head.headers, location.cookie)
        else:
            head.path = _without_param(head.path, location.param)
    if rule.output_payload_to_header:
        segment = token.split(".")[1]
        head.headers.append((rule.output_payload_to_header.encode("latin-1"), segment.encode()))
    for header, claim in rule.output_claim_to_headers:
        value = _claim(payload, claim)
        if value is not None:
            head.headers.append((header.encode("latin-1"), value.encode("utf-8")))


def _claim(payload: Mapping[str, Any], name: str) -> str | None:
    """A claim as header text: a string, number or boolean; nested with dots ("realm.role") when
    no claim has the dotted name itself; lists and objects are not written."""
    value: Any = payload.get(name)
    if value is None and "." in name:
        value = payload
        for part in name.split("."):
            value = value.get(part) if isinstance(value, Mapping) else None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        text = str(value)
        return None if "\r" in text or "\n" in text else text
    return None


def _request_auth(payload: Mapping[str, Any]) -> RequestAuth:
    aud = payload.get("aud")
    audiences = tuple(aud) if isinstance(aud, list) else (aud,) if isinstance(aud, str) else ()
    return RequestAuth(
        principal=f"{payload.get('iss', '')}/{payload.get('sub', '')}",
        audiences=tuple(str(a) for a in audiences),
        presenter=str(payload.get("azp", "")),
        claims=payload,
    )
