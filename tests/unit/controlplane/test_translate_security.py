"""Translation of PeerAuthentication, AuthorizationPolicy and DestinationRule tls into a sidecar's
InboundPolicy and its clusters' mTLS origination; and their validation as documents."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from controlplane.model import (
    DestinationRule,
    ResourceKey,
    Service,
    ServiceEndpoint,
    Subset,
    TrafficPolicy,
)
from controlplane.security import authorization_policy, peer_authentication
from controlplane.translate import translate
from controlplane.validate import parse_document
from controlplane.world import NodeInfo, World
from lightmesh import types
from lightmesh.v1 import config_pb2 as pb

CATALOG = "catalog.shop.svc.cluster.local"
NODE = NodeInfo(
    id="catalog-1.shop", workload="catalog", namespace="shop", labels=(("app", "catalog"),)
)


def service(*, sidecar: bool = True) -> Service:
    return Service(
        name="catalog",
        namespace="shop",
        endpoints=(ServiceEndpoint(address="10.0.0.1", port=80, workload="c", sidecar=sidecar),),
    )


def pa(namespace: str, name: str, mode: str, selector: dict[str, str] | None = None) -> object:
    spec: dict[str, object] = {"mtls": {"mode": mode}}
    if selector:
        spec["selector"] = {"matchLabels": selector}
    return peer_authentication(ResourceKey("PeerAuthentication", namespace, name), spec)


def inbound(world: World, node: NodeInfo = NODE) -> pb.InboundPolicy:
    (policy,) = translate(world, node)[types.INBOUND]
    assert isinstance(policy, pb.InboundPolicy)
    return policy


def tls_of(world: World) -> dict[str, int]:
    return {c.name: c.tls for c in translate(world, NODE)[types.CLUSTER]}  # type: ignore[attr-defined]


def test_inbound_policy_is_pushed_last_and_defaults_to_permissive_with_the_bundle() -> None:
    # Last but for the gateways' listeners, which rely on it (the trust bundle) too.
    assert types.PUSH_ORDER[-2:] == (types.INBOUND, types.GATEWAY)
    policy = inbound(World(trust_bundle="PEM"))
    assert policy.mtls_mode == pb.MTLS_PERMISSIVE
    assert policy.trust_bundle == "PEM"
    assert list(policy.policies) == []


def test_the_narrowest_peer_authentication_sets_the_mode() -> None:
    mesh_wide = pa("lightmesh-system", "default", "STRICT")
    namespace = pa("shop", "ns", "PERMISSIVE")
    workload = pa("shop", "catalog", "DISABLE", {"app": "catalog"})
    other = pa("shop", "other", "STRICT", {"app": "other"})
    assert inbound(World(peer_authentications=(mesh_wide,))).mtls_mode == pb.MTLS_STRICT  # type: ignore[arg-type]
    both = World(peer_authentications=(mesh_wide, namespace, other))  # type: ignore[arg-type]
    assert inbound(both).mtls_mode == pb.MTLS_PERMISSIVE
    narrow = World(peer_authentications=(mesh_wide, namespace, workload))  # type: ignore[arg-type]
    assert inbound(narrow).mtls_mode == pb.MTLS_DISABLE


def test_authorization_policies_selecting_the_workload_are_sent_with_their_rules() -> None:
    deny = authorization_policy(
        ResourceKey("AuthorizationPolicy", "shop", "deny-admin"),
        {"action": "DENY", "rules": [{"to": [{"operation": {"paths": ["/admin*"]}}]}]},
    )
    allow = authorization_policy(
        ResourceKey("AuthorizationPolicy", "shop", "allow-frontend"),
        {
            "selector": {"matchLabels": {"app": "catalog"}},
            "rules": [
                {
                    "from": [{"source": {"principals": ["cluster.local/ns/shop/sa/frontend"]}}],
                    "to": [{"operation": {"methods": ["GET"]}}],
                }
            ],
        },
    )
    elsewhere = authorization_policy(
        ResourceKey("AuthorizationPolicy", "other", "x"), {"action": "DENY", "rules": [{}]}
    )
    policy = inbound(World(authorization_policies=(deny, allow, elsewhere)))
    assert [(p.name, p.action) for p in policy.policies] == [
        ("shop/allow-frontend", pb.AUTHZ_ALLOW),
        ("shop/deny-admin", pb.AUTHZ_DENY),
    ]
    rule = policy.policies[0].rules[0]
    assert list(rule.principals) == ["cluster.local/ns/shop/sa/frontend"]
    assert list(rule.methods) == ["GET"]
    assert list(policy.policies[1].rules[0].paths) == ["/admin*"]


def test_clusters_originate_mtls_to_sidecars_unless_disabled() -> None:
    meshed = World(services={CATALOG: service()})
    assert tls_of(meshed) == {f"outbound||{CATALOG}": pb.MESH_MUTUAL}
    bare = World(services={CATALOG: service(sidecar=False)})
    assert tls_of(bare) == {f"outbound||{CATALOG}": pb.TLS_DISABLE}
    rule = DestinationRule(
        key=ResourceKey("DestinationRule", "shop", "catalog"),
        host=CATALOG,
        policy=TrafficPolicy(tls_mode="DISABLE"),
        subsets=(
            Subset(name="v1", policy=TrafficPolicy(tls_mode="MESH_MUTUAL")),
            Subset(name="v2"),
        ),
    )
    ruled = World(services={CATALOG: service()}, destination_rules=(rule,))
    assert tls_of(ruled) == {
        f"outbound||{CATALOG}": pb.TLS_DISABLE,
        f"outbound|v1|{CATALOG}": pb.MESH_MUTUAL,
        f"outbound|v2|{CATALOG}": pb.TLS_DISABLE,
    }


def doc(text: str) -> object:
    return yaml.safe_load(text)


def test_documents_validate_with_field_paths() -> None:
    good = parse_document(
        doc("""
apiVersion: lightmesh.io/v1alpha1
kind: PeerAuthentication
metadata: {name: strict, namespace: shop}
spec: {mtls: {mode: STRICT}}
"""),
        origin="f.yaml",
    )
    assert good.problems == () and good.resource is not None
    bad_mode = parse_document(
        doc("""
apiVersion: lightmesh.io/v1alpha1
kind: PeerAuthentication
metadata: {name: strict, namespace: shop}
spec: {mtls: {mode: SOMETIMES}}
"""),
        origin="f.yaml",
    )
    assert bad_mode.resource is None
    assert "spec.mtls.mode" in str(bad_mode.problems[0])
    bad_principal = parse_document(
        doc("""
apiVersion: lightmesh.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: ap, namespace: shop}
spec:
  rules:
  - from: [{source: {principals: ["spiffe://cluster.local/ns/shop/sa/x"]}}]
"""),
        origin="f.yaml",
    )
    (problem,) = bad_principal.problems
    assert problem.path == "spec.rules[0].from[0].source.principals[0]"
    assert "without 'spiffe://'" in problem.message
    assert str(problem).startswith("f.yaml: AuthorizationPolicy shop/ap: ")
    bad_tls = parse_document(
        doc("""
apiVersion: lightmesh.io/v1alpha1
kind: DestinationRule
metadata: {name: dr, namespace: shop}
spec: {host: catalog, trafficPolicy: {tls: {mode: SIMPLE}}}
"""),
        origin="f.yaml",
    )
    assert "spec.trafficPolicy.tls.mode" in str(bad_tls.problems[0])


EXAMPLES = Path(__file__).resolve().parents[3] / "examples" / "security"


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_security_example_validates(path: Path) -> None:
    for document in yaml.safe_load_all(path.read_text()):
        parsed = parse_document(document, origin=path.name)
        assert parsed.problems == (), [str(p) for p in parsed.problems]


def test_clusters_name_the_spiffe_ids_their_endpoints_run_as() -> None:
    def endpoint(address: str, version: str, account: str) -> ServiceEndpoint:
        return ServiceEndpoint(
            address=address, port=80, workload=address, labels=(("version", version),),
            service_account=account,
        )  # fmt: skip

    catalog = Service(
        name="catalog",
        namespace="shop",
        endpoints=(
            endpoint("10.0.0.1", "v1", "catalog"),
            endpoint("10.0.0.2", "v2", "catalog-v2"),
            endpoint("10.0.0.3", "v2", ""),  # account unknown (its Pod is not indexed yet)
        ),
    )
    rule = DestinationRule(
        key=ResourceKey("DestinationRule", "shop", "catalog"),
        host=CATALOG,
        subsets=(Subset(name="v2", labels=(("version", "v2"),)),),
    )
    world = World(
        services={CATALOG: catalog}, destination_rules=(rule,), trust_domain="corp.example"
    )
    ids = {c.name: list(c.tls_identities) for c in translate(world, NODE)[types.CLUSTER]}  # type: ignore[attr-defined]
    assert ids == {
        f"outbound||{CATALOG}": [
            "spiffe://corp.example/ns/shop/sa/catalog",
            "spiffe://corp.example/ns/shop/sa/catalog-v2",
        ],
        f"outbound|v2|{CATALOG}": ["spiffe://corp.example/ns/shop/sa/catalog-v2"],
    }
    # No mutual TLS, no secure naming to check.
    plain = World(
        services={CATALOG: catalog},
        destination_rules=(
            DestinationRule(key=rule.key, host=CATALOG, policy=TrafficPolicy(tls_mode="DISABLE")),
        ),
    )
    assert [list(c.tls_identities) for c in translate(plain, NODE)[types.CLUSTER]] == [[]]  # type: ignore[attr-defined]
