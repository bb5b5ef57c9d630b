"""PeerAuthentication and AuthorizationPolicy: semantic checks (building the typed values of
model.py from a spec), and which of them apply to one workload. Pure.

Selection follows Istio's: a policy in the mesh's root namespace applies mesh-wide, one without a
selector applies to its whole namespace, one with `selector.matchLabels` to the matching workloads
of its namespace. For PeerAuthentication the narrowest wins (workload > namespace > mesh > the
PERMISSIVE default); AuthorizationPolicies all apply together (see sidecar/security/authz.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, cast

# The typed values live with the rest of the world state (model.py); importers that predate the
# move (world, store, translate: issue 12 rewrites them) still find them here.
from controlplane.model import Action as Action
from controlplane.model import AuthorizationPolicy as AuthorizationPolicy
from controlplane.model import AuthorizationRule as AuthorizationRule
from controlplane.model import MtlsMode as MtlsMode
from controlplane.model import PeerAuthentication as PeerAuthentication
from controlplane.model import ResourceKey

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
            )
        )
    return AuthorizationPolicy(
        key=key,
        selector=_selector(spec),
        action=cast(Action, spec.get("action", "ALLOW")),
        rules=tuple(rules),
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


def authorization_policies(
    policies: Iterable[AuthorizationPolicy],
    *,
    namespace: str,
    labels: Mapping[str, str],
    root_namespace: str = ROOT_NAMESPACE,
) -> tuple[AuthorizationPolicy, ...]:
    """Every policy that applies to the workload, in a stable order."""
    applying = [p for p in policies if _scope(p.key, p.selector, namespace, labels, root_namespace)]
    return tuple(sorted(applying, key=lambda p: (p.key.namespace, p.key.name)))
