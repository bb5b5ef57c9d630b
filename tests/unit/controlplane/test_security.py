"""PeerAuthentication/AuthorizationPolicy building and per-workload selection."""

import pytest

from controlplane.model import ResourceKey
from controlplane.security import (
    SpecError,
    authorization_policies,
    authorization_policy,
    mtls_mode,
    peer_authentication,
)


def pa(namespace: str, name: str, mode: str, labels: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    spec: dict[str, object] = {"mtls": {"mode": mode}}
    if labels is not None:
        spec["selector"] = {"matchLabels": labels}
    return peer_authentication(ResourceKey("PeerAuthentication", namespace, name), spec)


def test_narrowest_peer_authentication_wins() -> None:
    mesh = pa("lightmesh-system", "default", "STRICT")
    shop = pa("shop", "default", "PERMISSIVE")
    legacy = pa("shop", "legacy", "DISABLE", {"app": "legacy"})
    every = [mesh, shop, legacy]
    assert mtls_mode(every, namespace="shop", labels={"app": "legacy"}) == "DISABLE"
    assert mtls_mode(every, namespace="shop", labels={"app": "catalog"}) == "PERMISSIVE"
    assert mtls_mode(every, namespace="lab", labels={}) == "STRICT"
    assert mtls_mode([], namespace="lab", labels={}) == "PERMISSIVE"
    # A selector in another namespace never applies.
    assert mtls_mode([legacy], namespace="lab", labels={"app": "legacy"}) == "PERMISSIVE"


def test_authorization_policies_for_a_workload() -> None:
    def ap(namespace: str, name: str, labels: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
        spec: dict[str, object] = {"action": "DENY", "rules": [{}]}
        if labels is not None:
            spec["selector"] = {"matchLabels": labels}
        return authorization_policy(ResourceKey("AuthorizationPolicy", namespace, name), spec)

    chosen = authorization_policies(
        [
            ap("shop", "b-ns"),
            ap("shop", "a-catalog", {"app": "catalog"}),
            ap("shop", "other", {"app": "frontend"}),
            ap("lab", "elsewhere"),
            ap("lightmesh-system", "mesh"),
        ],
        namespace="shop",
        labels={"app": "catalog", "version": "v1"},
    )
    assert [p.key.name for p in chosen] == ["mesh", "a-catalog", "b-ns"]


def test_rules_are_flattened_and_checked() -> None:
    policy = authorization_policy(
        ResourceKey("AuthorizationPolicy", "shop", "admin"),
        {
            "action": "ALLOW",
            "rules": [
                {
                    "from": [{"source": {"principals": ["cluster.local/ns/shop/sa/frontend"]}}],
                    "to": [{"operation": {"methods": ["GET"], "paths": ["/admin/*"]}}],
                }
            ],
        },
    )
    (rule,) = policy.rules
    assert rule.principals == ("cluster.local/ns/shop/sa/frontend",)
    assert rule.methods == ("GET",) and rule.paths == ("/admin/*",)

    key = ResourceKey("AuthorizationPolicy", "shop", "bad")
    with pytest.raises(SpecError, match=r"spec.rules\[0\].to\[0\].operation.methods\[0\]"):
        authorization_policy(key, {"rules": [{"to": [{"operation": {"methods": ["FETCH"]}}]}]})
    with pytest.raises(SpecError, match="without 'spiffe://'"):
        authorization_policy(
            key, {"rules": [{"from": [{"source": {"principals": ["spiffe://td/ns/a/sa/b"]}}]}]}
        )
    with pytest.raises(SpecError, match="once at the start or the end"):
        authorization_policy(key, {"rules": [{"to": [{"operation": {"paths": ["/a/*/b"]}}]}]})
    with pytest.raises(SpecError, match="matchLabels"):
        authorization_policy(key, {"selector": {"matchLabels": {}}})
