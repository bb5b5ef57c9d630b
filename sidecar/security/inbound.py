"""The inbound policy a sidecar enforces: mTLS mode, AuthorizationPolicies, trust roots. Pure.

Decoded from the control plane's `InboundPolicy` resource; a value this sidecar version does not
know (a newer mode or action) raises `ConfigError`, so the resource is NACKed and the previous
policy keeps serving rather than being half-applied.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from lightmesh.v1 import config_pb2 as pb
from sidecar.errors import ConfigError
from sidecar.security.authz import Policy, Rule

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
                    )
                    for r in policy.rules
                ),
            )
        )
    return InboundPolicy(mode=mode, policies=tuple(policies), trust_bundle=message.trust_bundle)
