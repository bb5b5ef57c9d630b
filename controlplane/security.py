"""PeerAuthentication, AuthorizationPolicy, RequestAuthentication and HTTPLocalRateLimitPolicy:
semantic checks (building the typed values of model.py from a spec), and which of them apply to
one workload. Pure.

Selection follows Istio's: a policy in the mesh's root namespace applies mesh-wide, one without a
selector applies to its whole namespace, one with `selector.matchLabels` to the matching workloads
of its namespace. For PeerAuthentication the narrowest wins (workload > namespace > mesh > the
PERMISSIVE default); AuthorizationPolicies all apply together (see sidecar/security/authz.py), and
so do RequestAuthentications (their jwtRules add up, as in Istio). One HTTPLocalRateLimitPolicy
applies to a workload (Linkerd's rule: one per target): the narrowest, ties by name.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar, cast
from urllib.parse import urlsplit

# The typed values live with the rest of the world state (model.py); importers that predate the
# move (world, store, translate: issue 12 rewrites them) still find them here.
from controlplane.model import Action as Action
from controlplane.model import AuthorizationPolicy as AuthorizationPolicy
from controlplane.model import AuthorizationRule as AuthorizationRule
from controlplane.model import (
    Condition,
    HTTPLocalRateLimitPolicy,
    JwtRule,
    RateLimit,
    RateLimitOverride,
    RequestAuthentication,
    ResourceKey,
)
from controlplane.model import MtlsMode as MtlsMode
from controlplane.model import PeerAuthentication as PeerAuthentication

DEFAULT_MODE: MtlsMode = "PERMISSIVE"
ROOT_NAMESPACE = "lightmesh-system"
HTTP_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE"}
)


class SpecError(ValueError):
    """A semantic problem; the message is "field.path: text"."""


def _selector(spec: Mapping[str, Any]) -> tuple[tuple[str, str], ...] | None:
    raw = spec.get("selector")
    if raw is None:
        return None
    labels = raw.get("matchLabels") or {}
    if not labels:
        raise SpecError("spec.selector.matchLabels: give at least one label, or omit selector")
    return tuple(sorted(labels.items()))


def peer_authentication(key: ResourceKey, spec: Mapping[str, Any]) -> PeerAuthentication:
    """Build from a schema-valid spec."""
    mode = (spec.get("mtls") or {}).get("mode", DEFAULT_MODE)
    return PeerAuthentication(key=key, selector=_selector(spec), mode=cast(MtlsMode, mode))


def _pattern(value: str, path: str) -> str:
    inner = value.strip("*") if value != "*" else ""
    if "*" in inner or not value:
        raise SpecError(f"{path}: {value!r}: use '*' alone, or once at the start or the end")
    return value


def authorization_policy(key: ResourceKey, spec: Mapping[str, Any]) -> AuthorizationPolicy:
    """Build from a schema-valid spec; checks what the schema cannot."""
    rules = []
    for i, raw in enumerate(spec.get("rules", [])):
        path = f"spec.rules[{i}]"
        source: dict[str, list[str]] = {}
        for j, entry in enumerate(raw.get("from", [])):
            for field_name in ("principals", "namespaces"):
                for k, value in enumerate(entry.get("source", {}).get(field_name, [])):
                    where = f"{path}.from[{j}].source.{field_name}[{k}]"
                    if field_name == "principals" and value.startswith("spiffe://"):
                        raise SpecError(f"{where}: write principals without 'spiffe://'")
                    source.setdefault(field_name, []).append(_pattern(value, where))
            for field_name in ("requestPrincipals", "notRequestPrincipals"):
                for k, value in enumerate(entry.get("source", {}).get(field_name, [])):
                    where = f"{path}.from[{j}].source.{field_name}[{k}]"
                    source.setdefault(field_name, []).append(_pattern(value, where))
        target: dict[str, list[str]] = {}
        for j, entry in enumerate(raw.get("to", [])):
            operation = entry.get("operation", {})
            for k, method in enumerate(operation.get("methods", [])):
                if method not in HTTP_METHODS and method != "*":
                    raise SpecError(
                        f"{path}.to[{j}].operation.methods[{k}]: {method!r} is not an HTTP method"
                    )
                target.setdefault("methods", []).append(method)
            for k, value in enumerate(operation.get("paths", [])):
                where = f"{path}.to[{j}].operation.paths[{k}]"
                if not value.startswith(("/", "*")):
                    raise SpecError(f"{where}: {value!r} must start with '/' (or '*')")
                target.setdefault("paths", []).append(_pattern(value, where))
        rules.append(
            AuthorizationRule(
                principals=tuple(source.get("principals", ())),
                namespaces=tuple(source.get("namespaces", ())),
                methods=tuple(target.get("methods", ())),
                paths=tuple(target.get("paths", ())),
                request_principals=tuple(source.get("requestPrincipals", ())),
                not_request_principals=tuple(source.get("notRequestPrincipals", ())),
                conditions=tuple(
                    _condition(c, f"{path}.when[{j}]") for j, c in enumerate(raw.get("when", []))
                ),
            )
        )
    return AuthorizationPolicy(
        key=key,
        selector=_selector(spec),
        action=cast(Action, spec.get("action", "ALLOW")),
        rules=tuple(rules),
    )


# The `when` keys lightmesh evaluates (Istio has more: they are refused, not ignored, since an
# ignored condition would widen an ALLOW or narrow a DENY).
_CLAIM_KEY = re.compile(r"^request\.auth\.claims(\[[^\[\]]+\])+$")
AUTH_KEYS = ("request.auth.principal", "request.auth.audiences", "request.auth.presenter")


def _condition(raw: Mapping[str, Any], path: str) -> Condition:
    key = raw["key"]
    if key not in AUTH_KEYS and not _CLAIM_KEY.match(key):
        raise SpecError(
            f"{path}.key: {key!r} is not supported (supported: request.auth.claims[name], "
            f"nested request.auth.claims[a][b], {', '.join(AUTH_KEYS)})"
        )
    if not raw.get("values") and not raw.get("notValues"):
        raise SpecError(f"{path}: set values, notValues or both")
    return Condition(
        key=key,
        values=tuple(
            _pattern(v, f"{path}.values[{i}]") for i, v in enumerate(raw.get("values", []))
        ),
        not_values=tuple(
            _pattern(v, f"{path}.notValues[{i}]") for i, v in enumerate(raw.get("notValues", []))
        ),
    )


_HEADER_NAME = re.compile(r"^[a-z0-9!#$%&'*+.^_`|~-]+$")
# Headers a JWT rule may not write: the proxy's framing and routing depend on them.
_RESERVED_HEADERS = frozenset(
    {"host", "content-length", "transfer-encoding", "connection", "te", "upgrade"}
)
# Key types whose signatures a sidecar verifies (asymmetric only: a JWKS is public).
KEY_TYPES = ("RSA", "EC", "OKP")


def _header(value: str, path: str) -> str:
    name = value.lower()
    if not _HEADER_NAME.match(name):
        raise SpecError(f"{path}: {value!r} is not a valid header name")
    if name in _RESERVED_HEADERS or name.startswith(("x-lightmesh-", ":")):
        raise SpecError(f"{path}: {value!r} cannot be written by a JWT rule")
    return name


def check_jwks(text: str, path: str) -> None:
    """A JWKS document (JSON text) with at least one key of a type sidecars verify; raises
    SpecError naming `path` otherwise. Keys are parsed by PyJWT, imported only here."""
    try:
        document = json.loads(text)
    except ValueError as error:
        raise SpecError(f"{path}: not JSON: {error}") from None
    keys = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(keys, list) or not keys:
        raise SpecError(f'{path}: a JWKS is {{"keys": [...]}} with at least one key')
    from jwt import PyJWK, PyJWTError  # lazily: only resources with JWT rules need it

    for index, key in enumerate(keys):
        where = f"{path}.keys[{index}]"
        kty = key.get("kty") if isinstance(key, dict) else None
        if kty not in KEY_TYPES:
            raise SpecError(f"{where}.kty: {kty!r} is not one of {', '.join(KEY_TYPES)}")
        try:
            PyJWK(key)
        except (PyJWTError, ValueError, TypeError, KeyError) as error:
            raise SpecError(f"{where}: not a usable {kty} key: {error}") from None


def _jwt_rule(raw: Mapping[str, Any], path: str, warnings: list[str]) -> JwtRule:
    issuer = raw["issuer"]
    if not issuer:
        raise SpecError(f"{path}.issuer: must not be empty")
    jwks, uri = raw.get("jwks", ""), raw.get("jwksUri", "")
    if "jwks_uri" in raw:
        if uri:
            warnings.append(f"{path}.jwks_uri: ignored, {path}.jwksUri is set")
        else:
            warnings.append(f"{path}.jwks_uri: read as jwksUri (write that)")
            uri = raw["jwks_uri"]
    if jwks:
        check_jwks(jwks, f"{path}.jwks")
        if uri:
            warnings.append(f"{path}.jwksUri: ignored, {path}.jwks is set (as in Istio)")
            uri = ""
    elif uri:
        parts = urlsplit(uri)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise SpecError(f"{path}.jwksUri: {uri!r} is not an http(s) URL")
    else:
        raise SpecError(
            f"{path}: set jwks (the keys) or jwksUri (where to fetch them); OpenID discovery "
            "from the issuer is not supported"
        )
    headers = []
    for i, entry in enumerate(raw.get("fromHeaders", [])):
        headers.append(
            (_header(entry["name"], f"{path}.fromHeaders[{i}].name"), entry.get("prefix", ""))
        )
    for where in ("fromParams", "fromCookies"):
        for i, name in enumerate(raw.get(where, [])):
            if not name:
                raise SpecError(f"{path}.{where}[{i}]: must not be empty")
    payload = raw.get("outputPayloadToHeader", "")
    claims = []
    for i, entry in enumerate(raw.get("outputClaimToHeaders", [])):
        if not entry["claim"]:
            raise SpecError(f"{path}.outputClaimToHeaders[{i}].claim: must not be empty")
        claims.append(
            (_header(entry["header"], f"{path}.outputClaimToHeaders[{i}].header"), entry["claim"])
        )
    return JwtRule(
        issuer=issuer,
        audiences=tuple(raw.get("audiences", ())),
        jwks=jwks,
        jwks_uri=uri,
        from_headers=tuple(headers),
        from_params=tuple(raw.get("fromParams", ())),
        from_cookies=tuple(raw.get("fromCookies", ())),
        forward_original_token=bool(raw.get("forwardOriginalToken", False)),
        output_payload_to_header=(
            _header(payload, f"{path}.outputPayloadToHeader") if payload else ""
        ),
        output_claim_to_headers=tuple(claims),
    )


def request_authentication(
    key: ResourceKey, spec: Mapping[str, Any], warnings: list[str]
) -> RequestAuthentication:
    """Build from a schema-valid spec; checks what the schema cannot (JWKS parse, URLs, headers)."""
    rules = [
        _jwt_rule(r, f"spec.jwtRules[{i}]", warnings)
        for i, r in enumerate(spec.get("jwtRules", []))
    ]
    seen: dict[str, int] = {}
    for index, rule in enumerate(rules):
        if rule.issuer in seen:
            raise SpecError(
                f"spec.jwtRules[{index}].issuer: {rule.issuer!r} is also "
                f"spec.jwtRules[{seen[rule.issuer]}]'s issuer"
            )
        seen[rule.issuer] = index
    return RequestAuthentication(key=key, selector=_selector(spec), rules=tuple(rules))


_WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet")


def _rate(raw: Mapping[str, Any], path: str, total: RateLimit | None) -> RateLimit:
    rate = int(raw["requestsPerSecond"])
    if total is not None and rate > total.rate:
        raise SpecError(
            f"{path}.requestsPerSecond: {rate} is above total.requestsPerSecond {total.rate}"
        )
    return RateLimit(rate=rate, burst=int(raw.get("burst", rate)))


def http_local_rate_limit_policy(
    key: ResourceKey, spec: Mapping[str, Any]
) -> HTTPLocalRateLimitPolicy:
    """Build from a schema-valid spec; checks what the schema cannot."""
    ref = spec.get("targetRef")
    if (ref is None) == ("selector" not in spec):
        raise SpecError("spec: set exactly one of targetRef or selector")
    workload = ""
    if ref is not None:
        if ref["kind"] not in _WORKLOAD_KINDS or ref.get("group", "apps") not in ("apps", ""):
            raise SpecError(
                f"spec.targetRef.kind: {ref['kind']!r} is not supported (lightmesh has no "
                f"Server resource): use {', '.join(_WORKLOAD_KINDS)} (group apps) or selector"
            )
        workload = ref["name"]
    total = _rate(spec["total"], "spec.total", None) if "total" in spec else None
    identity = _rate(spec["identity"], "spec.identity", total) if "identity" in spec else None
    overrides = []
    for i, raw in enumerate(spec.get("overrides", [])):
        path = f"spec.overrides[{i}]"
        if not raw["clientRefs"]:
            raise SpecError(f"{path}.clientRefs: at least one client is required")
        clients = tuple(
            f"{ref.get('namespace') or key.namespace}/{ref['name']}" for ref in raw["clientRefs"]
        )
        overrides.append(RateLimitOverride(limit=_rate(raw, path, total), clients=clients))
    if total is None and identity is None and not overrides:
        raise SpecError("spec: set total, identity or overrides (nothing is limited)")
    return HTTPLocalRateLimitPolicy(
        key=key,
        selector=_selector(spec) if ref is None else None,
        workload=workload,
        total=total,
        identity=identity,
        overrides=tuple(overrides),
    )


def _selects(selector: tuple[tuple[str, str], ...] | None, labels: Mapping[str, str]) -> bool:
    return selector is None or all(labels.get(k) == v for k, v in selector)


def _scope(
    key: ResourceKey,
    selector: tuple[tuple[str, str], ...] | None,
    namespace: str,
    labels: Mapping[str, str],
    root_namespace: str,
) -> int:
    """0: does not apply; 1: mesh-wide; 2: namespace-wide; 3: this workload."""
    if key.namespace == namespace and selector is not None:
        return 3 if _selects(selector, labels) else 0
    if key.namespace == namespace:
        return 2
    if key.namespace == root_namespace and selector is None:
        return 1
    return 0


def mtls_mode(
    policies: Iterable[PeerAuthentication],
    *,
    namespace: str,
    labels: Mapping[str, str],
    root_namespace: str = ROOT_NAMESPACE,
) -> MtlsMode:
    """The narrowest PeerAuthentication's mode (ties: the oldest name wins, deterministically)."""
    best: tuple[int, str] | None = None
    mode = DEFAULT_MODE
    for policy in policies:
        scope = _scope(policy.key, policy.selector, namespace, labels, root_namespace)
        if scope == 0:
            continue
        rank = (-scope, policy.key.name)
        if best is None or rank < best:
            best, mode = rank, policy.mode
    return mode


_P = TypeVar("_P", AuthorizationPolicy, RequestAuthentication)


def authorization_policies(
    policies: Iterable[_P],
    *,
    namespace: str,
    labels: Mapping[str, str],
    root_namespace: str = ROOT_NAMESPACE,
) -> tuple[_P, ...]:
    """Every policy that applies to the workload, in a stable order (AuthorizationPolicies, or
    RequestAuthentications: both add up)."""
    applying = [p for p in policies if _scope(p.key, p.selector, namespace, labels, root_namespace)]
    return tuple(sorted(applying, key=lambda p: (p.key.namespace, p.key.name)))


def rate_limit_policy(
    policies: Iterable[HTTPLocalRateLimitPolicy],
    *,
    namespace: str,
    workload: str,
    labels: Mapping[str, str],
) -> HTTPLocalRateLimitPolicy | None:
    """The one policy limiting the workload: one naming it (targetRef) or selecting it by labels
    over a namespace-wide one; ties: the first name."""
    best: tuple[int, str] | None = None
    found = None
    for policy in policies:
        if policy.key.namespace != namespace:
            continue
        if policy.workload:
            scope = 3 if policy.workload == workload else 0
        else:
            scope = 3 if policy.selector is not None and _selects(policy.selector, labels) else 0
        if scope == 0:
            continue
        rank = (-scope, policy.key.name)
        if best is None or rank < best:
            best, found = rank, policy
    return found
