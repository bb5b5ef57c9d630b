"""The inbound policy of one sidecar: PeerAuthentication mode, AuthorizationPolicies, trust
roots. Pure.

Only the policies that select the workload matter, so sidecars whose namespace and selected
policies are equal share one translated InboundPolicy (`InboundKey`): labels count only where a
selector looks at them.
"""

from __future__ import annotations

from dataclasses import dataclass

from controlplane.model import Resource, ResourceKey
from controlplane.security import (
    ROOT_NAMESPACE,
    AuthorizationPolicy,
    PeerAuthentication,
    authorization_policies,
    mtls_mode,
)
from controlplane.world import NodeInfo, World
from lightmesh.v1 import config_pb2 as pb

_MTLS = {"PERMISSIVE": pb.MTLS_PERMISSIVE, "STRICT": pb.MTLS_STRICT, "DISABLE": pb.MTLS_DISABLE}


@dataclass(frozen=True, slots=True)
class InboundKey:
    """What a sidecar's inbound policy depends on: its mode and the policies selecting it."""

    mode: str
    policies: tuple[ResourceKey, ...]


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
    return InboundKey(mode=mode, policies=tuple(p.key for p in selected))


def inbound_from_key(world: World, key: InboundKey) -> pb.InboundPolicy:
    """The InboundPolicy for those inputs (with the current trust bundle)."""
    policies = [world.resources[k] for k in key.policies if k in world.resources]
    return pb.InboundPolicy(
        mtls_mode=_MTLS[key.mode],
        policies=[_authorization_policy(p) for p in policies if isinstance(p, AuthorizationPolicy)],
        trust_bundle=world.trust_bundle,
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
            )
            for r in policy.rules
        ],
    )
