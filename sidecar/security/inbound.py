"""The inbound policy a sidecar enforces: mTLS mode, AuthorizationPolicies, JWT rules, the local
rate limit, trust roots. Pure.

Decoded from the control plane's `InboundPolicy` resource; a value this sidecar version does not
know (a newer mode or action) raises `ConfigError`, so the resource is NACKed and the previous
policy keeps serving rather than being half-applied; so does a JWKS that does not parse.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from lightmesh.v1 import config_pb2 as pb
from sidecar.contract import RequestHead
from sidecar.errors import ConfigError
from sidecar.security.authn import Authenticator, JwtRule
from sidecar.security.authz import Condition, Policy, Rule
from sidecar.security.ratelimit import Bucket, RateLimitConfig

MtlsMode = Literal["STRICT", "PERMISSIVE", "DISABLE"]

_MODES: dict[int, MtlsMode] = {
    pb.MTLS_PERMISSIVE: "PERMISSIVE",
    pb.MTLS_STRICT: "STRICT",
    pb.MTLS_DISABLE: "DISABLE",
}


@dataclass(frozen=True, slots=True)
class InboundPolicy:
    """What the inbound listener enforces; the default (no policy pushed yet) is PERMISSIVE."""

    mode: MtlsMode = "PERMISSIVE"
    policies: tuple[Policy, ...] = ()
    trust_bundle: str = ""
    # The RequestAuthentications' JWT rules, compiled; None: no JWT is looked at.
    authenticator: Authenticator | None = None
    rate_limit: RateLimitConfig | None = None
    # The name of the route a request takes ("": none), by the routes of the VirtualServices
    # naming the rate limit's routes (a sidecar's inbound has no routes of its own; compiled by
    # the config layer, sidecar/config/apply.py). None: not needed (no route limits, or a
    # gateway, which routes anyway).
    route_of: Callable[[RequestHead], str] | None = None
    # The protocol the app speaks, as the control plane has it from the workload's Services'
    # ports ("grpc", "http2", "http"; "": undeclared). The --app-protocol flag overrides it.
    app_protocol: str = ""


_APP_PROTOCOLS = frozenset({"", "grpc", "http2", "http"})


def decode(message: pb.InboundPolicy) -> InboundPolicy:
    """The policy of one pushed resource; raises ConfigError for values we do not know."""
    mode = _MODES.get(message.mtls_mode)
    if mode is None:
        raise ConfigError(f"inbound policy: mTLS mode {message.mtls_mode} is not supported")
    policies = []
    for policy in message.policies:
        if policy.action not in (pb.AUTHZ_ALLOW, pb.AUTHZ_DENY):
            raise ConfigError(
                f"authorization policy {policy.name}: action {policy.action} is not supported"
            )
        policies.append(
            Policy(
                name=policy.name,
                action="DENY" if policy.action == pb.AUTHZ_DENY else "ALLOW",
                rules=tuple(
                    Rule(
                        principals=tuple(r.principals),
                        namespaces=tuple(r.namespaces),
                        methods=tuple(r.methods),
                        paths=tuple(r.paths),
                        request_principals=tuple(r.request_principals),
                        not_request_principals=tuple(r.not_request_principals),
                        conditions=tuple(
                            Condition(
                                key=c.key, values=tuple(c.values), not_values=tuple(c.not_values)
                            )
                            for c in r.when
                        ),
                    )
                    for r in policy.rules
                ),
            )
        )
    rules = [
        JwtRule(
            issuer=r.issuer,
            jwks=r.jwks,
            audiences=tuple(r.audiences),
            from_headers=tuple((h.name.lower(), h.prefix) for h in r.from_headers),
            from_params=tuple(r.from_params),
            from_cookies=tuple(r.from_cookies),
            forward_original_token=r.forward_original_token,
            output_payload_to_header=r.output_payload_to_header.lower(),
            output_claim_to_headers=tuple(
                (c.header.lower(), c.claim) for c in r.output_claim_to_headers
            ),
            policy=r.policy,
        )
        for r in message.jwt_rules
    ]
    limit = message.rate_limit if message.HasField("rate_limit") else None
    if message.app_protocol not in _APP_PROTOCOLS:
        raise ConfigError(
            f"inbound policy: app_protocol {message.app_protocol!r} is not one of grpc, http2, http"
        )
    return InboundPolicy(
        mode=mode,
        policies=tuple(policies),
        trust_bundle=message.trust_bundle,
        authenticator=Authenticator(rules) if rules else None,
        rate_limit=_rate_limit(limit) if limit is not None else None,
        app_protocol=message.app_protocol,
    )


def _bucket(message: pb.RateLimitBucket) -> Bucket:
    rate = message.requests_per_second
    if rate == 0:
        raise ConfigError("rate limit: requests_per_second must be at least 1")
    return Bucket(rate=float(rate), burst=message.burst or rate)


def _rate_limit(message: pb.LocalRateLimit | pb.RouteRateLimit) -> RateLimitConfig:
    routes = message.routes if isinstance(message, pb.LocalRateLimit) else ()
    return RateLimitConfig(
        name=message.name if isinstance(message, pb.LocalRateLimit) else message.route,
        total=_bucket(message.total) if message.HasField("total") else None,
        identity=_bucket(message.identity) if message.HasField("identity") else None,
        overrides=tuple(
            (principal, _bucket(o.limit)) for o in message.overrides for principal in o.principals
        ),
        routes=tuple((r.route, _rate_limit(r)) for r in routes),
    )
