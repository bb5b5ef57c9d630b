"""The inbound policy of one sidecar: PeerAuthentication mode, AuthorizationPolicies,
RequestAuthentications' JWT rules (with their keys inline: a jwksUri's as the control plane last
fetched them), the HTTPLocalRateLimitPolicy, trust roots, and the protocol its app speaks (from
the workload's Services' ports). Pure.

Only the policies that select the workload matter, so sidecars whose namespace and selected
policies are equal share one translated InboundPolicy (`InboundKey`): labels count only where a
selector looks at them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from controlplane.model import (
    HTTPLocalRateLimitPolicy,
    JwtRule,
    RateLimit,
    RateLimitOverride,
    RequestAuthentication,
    Resource,
    ResourceKey,
    VirtualService,
)
from controlplane.security import (
    ROOT_NAMESPACE,
    AuthorizationPolicy,
    PeerAuthentication,
    authorization_policies,
    mtls_mode,
    rate_limit_policy,
)
from controlplane.translate.routes import virtual_host
from controlplane.world import TRUST_DOMAIN, NodeInfo, World, jwks_key
from lightmesh.v1 import config_pb2 as pb

_MTLS = {"PERMISSIVE": pb.MTLS_PERMISSIVE, "STRICT": pb.MTLS_STRICT, "DISABLE": pb.MTLS_DISABLE}


@dataclass(frozen=True, slots=True)
class InboundKey:
    """What a sidecar's inbound policy depends on: its mode and the policies selecting it."""

    mode: str
    policies: tuple[ResourceKey, ...]
    authentications: tuple[ResourceKey, ...] = ()
    rate_limit: ResourceKey | None = None
    # VirtualServices of the namespace naming a route the rate limit has buckets for (a
    # sidecar's; a gateway knows its routes): their matches tell the sidecar a request's route.
    route_sources: tuple[ResourceKey, ...] = ()
    # The protocol the workload's Services declare its app speaks (World.app_protocol): a value,
    # so a Service change re-keys the sidecars it concerns (controlplane/push/pusher.py).
    app_protocol: str = ""

    def inputs(self, world: World) -> tuple[ResourceKey, ...]:
        """Every store key the translation reads besides the trust bundle: the policies, the
        fetched JWKS of their jwksUris, the trust domain (rate-limit overrides name principals)."""
        uris = sorted(
            uri
            for key in self.authentications
            if isinstance(ra := world.resources.get(key), RequestAuthentication)
            for uri in ra.jwks_uris()
        )
        extra = [TRUST_DOMAIN] if self.rate_limit is not None else []
        limit = [self.rate_limit] if self.rate_limit is not None else []
        return (
            *self.policies,
            *self.authentications,
            *limit,
            *self.route_sources,
            *(jwks_key(uri) for uri in uris),
            *extra,
        )


def _candidates(world: World, kind: str, namespace: str) -> list[Resource]:
    own = world.in_namespace(kind, namespace)
    return own if namespace == ROOT_NAMESPACE else own + world.in_namespace(kind, ROOT_NAMESPACE)


def inbound_key(world: World, node: NodeInfo) -> InboundKey:
    """The inputs of the node's inbound policy."""
    labels = dict(node.labels)
    peer = list(_candidates(world, "PeerAuthentication", node.namespace))
    mode = mtls_mode(
        (p for p in peer if isinstance(p, PeerAuthentication)),
        namespace=node.namespace,
        labels=labels,
    )
    authz = list(_candidates(world, "AuthorizationPolicy", node.namespace))
    selected = authorization_policies(
        (p for p in authz if isinstance(p, AuthorizationPolicy)),
        namespace=node.namespace,
        labels=labels,
    )
    authn = list(_candidates(world, "RequestAuthentication", node.namespace))
    authentications = authorization_policies(
        (p for p in authn if isinstance(p, RequestAuthentication)),
        namespace=node.namespace,
        labels=labels,
    )
    limits = world.in_namespace("HTTPLocalRateLimitPolicy", node.namespace)
    limit = rate_limit_policy(
        (p for p in limits if isinstance(p, HTTPLocalRateLimitPolicy)),
        namespace=node.namespace,
        workload=node.workload,
        labels=labels,
    )
    sources: tuple[ResourceKey, ...] = ()
    if limit is not None and limit.routes and not node.gateway:
        sources = tuple(
            sorted(vs.key for vs in naming_virtual_services(world, node.namespace, limit))
        )
    return InboundKey(
        mode=mode,
        policies=tuple(p.key for p in selected),
        authentications=tuple(p.key for p in authentications),
        rate_limit=limit.key if limit is not None else None,
        route_sources=sources,
        app_protocol="" if node.gateway else world.app_protocol(node.namespace, node.workload),
    )


def naming_virtual_services(
    world: World, namespace: str, policy: HTTPLocalRateLimitPolicy
) -> list[VirtualService]:
    """The VirtualServices of `namespace` applying to sidecars with a route the policy names."""
    names = policy.route_names()
    return [
        vs
        for vs in world.in_namespace("VirtualService", namespace)
        if isinstance(vs, VirtualService)
        and vs.for_mesh
        and any(route.name in names for route in vs.http)
    ]


def inbound_from_key(world: World, key: InboundKey) -> pb.InboundPolicy:
    """The InboundPolicy for those inputs (with the current trust bundle)."""
    policies = [world.resources[k] for k in key.policies if k in world.resources]
    rules = [
        _jwt_rule(world, ra, rule)
        for k in key.authentications
        if isinstance(ra := world.resources.get(k), RequestAuthentication)
        for rule in ra.rules
    ]
    limit = world.resources.get(key.rate_limit) if key.rate_limit is not None else None
    return pb.InboundPolicy(
        mtls_mode=_MTLS[key.mode],
        policies=[_authorization_policy(p) for p in policies if isinstance(p, AuthorizationPolicy)],
        trust_bundle=world.trust_bundle,
        jwt_rules=rules,
        rate_limit=(
            _rate_limit(world, limit, key.route_sources)
            if isinstance(limit, HTTPLocalRateLimitPolicy)
            else None
        ),
        app_protocol=key.app_protocol,
    )


def _jwt_rule(world: World, ra: RequestAuthentication, rule: JwtRule) -> pb.JwtRule:
    return pb.JwtRule(
        issuer=rule.issuer,
        audiences=list(rule.audiences),
        # A jwksUri not fetched yet (or never): no keys, so the sidecar refuses its tokens.
        jwks=rule.jwks or world.jwks.get(rule.jwks_uri, ""),
        from_headers=[pb.JwtHeader(name=n, prefix=p) for n, p in rule.from_headers],
        from_params=list(rule.from_params),
        from_cookies=list(rule.from_cookies),
        forward_original_token=rule.forward_original_token,
        output_payload_to_header=rule.output_payload_to_header,
        output_claim_to_headers=[
            pb.ClaimToHeader(header=h, claim=c) for h, c in rule.output_claim_to_headers
        ],
        policy=f"{ra.key.namespace}/{ra.key.name}",
    )


def _bucket(limit: RateLimit | None) -> pb.RateLimitBucket | None:
    if limit is None:
        return None
    return pb.RateLimitBucket(requests_per_second=limit.rate, burst=limit.burst)


def _overrides(world: World, overrides: Iterable[RateLimitOverride]) -> list[pb.RateLimitOverride]:
    return [
        pb.RateLimitOverride(
            limit=_bucket(o.limit),
            principals=[
                f"{world.trust_domain}/ns/{ns}/sa/{sa}"
                for ns, _, sa in (c.partition("/") for c in o.clients)
            ],
        )
        for o in overrides
    ]


def _rate_limit(
    world: World, policy: HTTPLocalRateLimitPolicy, route_sources: tuple[ResourceKey, ...]
) -> pb.LocalRateLimit:
    return pb.LocalRateLimit(
        name=f"{policy.key.namespace}/{policy.key.name}",
        total=_bucket(policy.total),
        identity=_bucket(policy.identity),
        overrides=_overrides(world, policy.overrides),
        routes=[
            pb.RouteRateLimit(
                route=r.route,
                total=_bucket(r.total),
                identity=_bucket(r.identity),
                overrides=_overrides(world, r.overrides),
            )
            for r in policy.routes
        ],
        inbound_hosts=[
            _matches_only(virtual_host(host, vs, None, namespace=vs.key.namespace))
            for key in route_sources
            if isinstance(vs := world.resources.get(key), VirtualService)
            for host in vs.hosts
        ],
    )


def _matches_only(vhost: pb.VirtualHost) -> pb.VirtualHost:
    """The names and matches of a VirtualHost's routes: all a sidecar's inbound needs to know
    which route a request took (the caller's sidecar did the routing)."""
    return pb.VirtualHost(
        name=vhost.name,
        domains=vhost.domains,
        routes=[pb.Route(name=r.name, matches=r.matches) for r in vhost.routes],
        origin=vhost.origin,
    )


def inbound_policy(world: World, node: NodeInfo) -> pb.InboundPolicy:
    """How the node's inbound listener admits callers: the narrowest PeerAuthentication's mode and
    every AuthorizationPolicy selecting the workload (by its namespace and labels)."""
    return inbound_from_key(world, inbound_key(world, node))


def _authorization_policy(policy: AuthorizationPolicy) -> pb.AuthorizationPolicy:
    return pb.AuthorizationPolicy(
        name=f"{policy.key.namespace}/{policy.key.name}",
        action=pb.AUTHZ_DENY if policy.action == "DENY" else pb.AUTHZ_ALLOW,
        rules=[
            pb.AuthorizationRule(
                principals=list(r.principals),
                namespaces=list(r.namespaces),
                methods=list(r.methods),
                paths=list(r.paths),
                request_principals=list(r.request_principals),
                not_request_principals=list(r.not_request_principals),
                when=[
                    pb.AuthorizationCondition(
                        key=c.key, values=list(c.values), not_values=list(c.not_values)
                    )
                    for c in r.conditions
                ],
            )
            for r in policy.rules
        ],
    )
