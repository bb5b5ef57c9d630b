"""The Kubernetes index: objects → resources (with last-known-good) and services."""

from typing import Any

from controlplane.model import DestinationRule, ResourceKey
from controlplane.sources.kube_index import KubeIndex, collection_path, istio_kind, watched_kinds


def vs(weight_v1: int) -> dict[str, Any]:
    return {
        "metadata": {"name": "catalog", "namespace": "shop", "resourceVersion": str(weight_v1)},
        "spec": {"hosts": ["catalog"], "http": [{"route": [
            {"destination": {"host": "catalog", "subset": "v1"}, "weight": weight_v1},
            {"destination": {"host": "catalog", "subset": "v2"}, "weight": 40},
        ]}]},
    }  # fmt: skip


def endpoint_slice(name: str, address: str, pod: str, *, ready: bool | None) -> dict[str, Any]:
    conditions = {} if ready is None else {"ready": ready}
    return {
        "metadata": {"name": name, "namespace": "shop", "labels": {"kubernetes.io/service-name": "catalog"}},
        "ports": [{"port": 8080}],
        "endpoints": [{"addresses": [address], "conditions": conditions,
                       "targetRef": {"kind": "Pod", "name": pod}}],
    }  # fmt: skip


RULE = {
    "metadata": {"name": "catalog", "namespace": "shop"},
    "spec": {"host": "catalog", "subsets": [{"name": "v1"}, {"name": "v2"}]},
}
RULE_KEY = ResourceKey("DestinationRule", "shop", "catalog")


def test_invalid_update_keeps_last_good_and_delete_removes_it() -> None:
    index = KubeIndex()
    index.replace("DestinationRule", [RULE])
    index.replace("VirtualService", [vs(60)])
    resources, problems = index.resources()
    key = ResourceKey("VirtualService", "shop", "catalog")
    good = resources[key]
    assert problems == ()
    index.apply("VirtualService", vs(70))
    resources, problems = index.resources()
    assert resources[key] is good
    assert [str(p) for p in problems] == [
        "kubernetes: VirtualService shop/catalog: spec.http[0].route: weights sum to 110, must be 100",
        "kubernetes: VirtualService shop/catalog: rejected; the last accepted version keeps serving",
    ]
    index.delete("VirtualService", vs(70))
    assert list(index.resources()[0]) == [RULE_KEY]


def test_services_take_ready_endpoints_with_their_pod_labels() -> None:
    index = KubeIndex()
    index.replace("Service", [{"metadata": {"name": "catalog", "namespace": "shop"}}])
    index.replace(
        "Pod", [{"metadata": {"name": "c1", "namespace": "shop", "labels": {"version": "v1"}}}]
    )
    index.replace("EndpointSlice", [
        endpoint_slice("a", "10.0.0.1", "c1", ready=None),
        endpoint_slice("b", "10.0.0.2", "c2", ready=False),
    ])  # fmt: skip
    service = index.services()["catalog.shop.svc.cluster.local"]
    assert [(e.address, e.port, e.workload, e.labels) for e in service.endpoints] == [
        ("10.0.0.1", 8080, "c1", (("version", "v1"),))
    ]


def test_relist_drops_resources_that_disappeared() -> None:
    index = KubeIndex()
    index.replace("DestinationRule", [RULE])
    index.replace("VirtualService", [vs(60)])
    index.resources()
    index.replace("VirtualService", [])
    assert list(index.resources()[0]) == [RULE_KEY]


def test_route_to_undefined_subset_is_accepted_with_a_warning_in_its_status() -> None:
    index = KubeIndex()
    index.replace("VirtualService", [vs(60)])
    resources, problems = index.resources()
    assert list(resources) == [ResourceKey("VirtualService", "shop", "catalog")]
    assert "spec.http[0].route[0].destination.subset: warning: subset 'v1'" in str(problems[0])
    (update,) = index.status_updates()
    assert update.accepted
    assert update.message.startswith(
        "accepted with warnings: spec.http[0].route[0].destination.subset: subset 'v1' of"
    )


def test_services_carry_their_cluster_ips_except_headless() -> None:
    index = KubeIndex()
    index.replace("Service", [
        {"metadata": {"name": "catalog", "namespace": "shop"},
         "spec": {"clusterIP": "10.0.0.12", "clusterIPs": ["10.0.0.12", "fd00::12"]}},
        {"metadata": {"name": "db", "namespace": "shop"}, "spec": {"clusterIP": "None"}},
        {"metadata": {"name": "old", "namespace": "shop"}, "spec": {"clusterIP": "10.0.0.9"}},
    ])  # fmt: skip
    services = index.services()
    assert services["catalog.shop.svc.cluster.local"].addresses == ("10.0.0.12", "fd00::12")
    assert services["db.shop.svc.cluster.local"].addresses == ()
    assert services["old.shop.svc.cluster.local"].addresses == ("10.0.0.9",)


def test_only_endpoints_of_injected_pods_count_as_sidecars() -> None:
    index = KubeIndex()
    index.replace("Service", [{"metadata": {"name": "catalog", "namespace": "shop"}}])
    injected = {"lightmesh.io/status": "injected"}
    index.replace("Pod", [
        {"metadata": {"name": "c1", "namespace": "shop", "annotations": injected}},
        {"metadata": {"name": "c2", "namespace": "shop"}},
    ])  # fmt: skip
    index.replace("EndpointSlice", [
        endpoint_slice("a", "10.0.0.1", "c1", ready=True),
        endpoint_slice("b", "10.0.0.2", "c2", ready=True),
    ])  # fmt: skip
    service = index.services()["catalog.shop.svc.cluster.local"]
    assert [(e.address, e.sidecar) for e in service.endpoints] == [
        ("10.0.0.1", True),
        ("10.0.0.2", False),
    ]


def test_security_policies_are_watched_and_validated() -> None:
    index = KubeIndex()
    index.replace("PeerAuthentication", [
        {"metadata": {"name": "strict", "namespace": "shop"}, "spec": {"mtls": {"mode": "STRICT"}}},
    ])  # fmt: skip
    index.replace("AuthorizationPolicy", [
        {"metadata": {"name": "bad", "namespace": "shop"},
         "spec": {"rules": [{"to": [{"operation": {"methods": ["FETCH"]}}]}]}},
    ])  # fmt: skip
    resources, problems = index.resources()
    assert list(resources) == [ResourceKey("PeerAuthentication", "shop", "strict")]
    assert "spec.rules[0].to[0].operation.methods[0]: 'FETCH' is not an HTTP method" in str(
        problems[0]
    )


def test_endpoints_carry_their_pods_service_account() -> None:
    index = KubeIndex()
    index.replace("Service", [{"metadata": {"name": "catalog", "namespace": "shop"}}])
    index.replace("Pod", [
        {"metadata": {"name": "c1", "namespace": "shop"}, "spec": {"serviceAccountName": "catalog"}},
        {"metadata": {"name": "c2", "namespace": "shop"}, "spec": {}},
    ])  # fmt: skip
    index.replace("EndpointSlice", [
        endpoint_slice("a", "10.0.0.1", "c1", ready=True),
        endpoint_slice("b", "10.0.0.2", "c2", ready=True),
        endpoint_slice("c", "10.0.0.3", "c3", ready=True),  # its Pod is not indexed yet
    ])  # fmt: skip
    service = index.services()["catalog.shop.svc.cluster.local"]
    assert [(e.address, e.service_account) for e in service.endpoints] == [
        ("10.0.0.1", "catalog"),
        ("10.0.0.2", "default"),  # what Kubernetes runs a pod without one as
        ("10.0.0.3", ""),
    ]


def test_istio_group_objects_are_mesh_resources_and_ours_win_a_name_clash() -> None:
    index = KubeIndex()
    index.replace("DestinationRule", [])
    index.replace(istio_kind("DestinationRule"), [RULE])
    index.replace(istio_kind("VirtualService"), [vs(60)])
    resources, problems = index.resources()
    assert set(resources) == {RULE_KEY, ResourceKey("VirtualService", "shop", "catalog")}
    assert problems == ()
    updates = {u.kind: u for u in index.status_updates()}
    assert updates["VirtualService"].api_version == "networking.istio.io/v1"
    assert updates["VirtualService"].accepted
    # A lightmesh.io object of the same namespace and name is the one served.
    ours = {**RULE, "spec": {"host": "catalog", "subsets": [{"name": "v1"}, {"name": "v2"},
                                                           {"name": "v3"}]}}  # fmt: skip
    index.apply("DestinationRule", ours)
    rule = index.resources()[0][RULE_KEY]
    assert isinstance(rule, DestinationRule) and len(rule.subsets) == 3
    (update,) = index.status_updates([RULE_KEY])
    assert update.api_version == "lightmesh.io/v1alpha1"
    index.delete("DestinationRule", ours)  # Istio's serves again
    rule = index.resources()[0][RULE_KEY]
    assert isinstance(rule, DestinationRule) and len(rule.subsets) == 2


def test_istio_groups_are_watched_only_when_asked() -> None:
    assert istio_kind("Gateway") not in watched_kinds(istio=False)
    assert "Gateway" in watched_kinds(istio=False)
    assert istio_kind("AuthorizationPolicy") in watched_kinds(istio=True)
    assert collection_path(istio_kind("AuthorizationPolicy"), "shop") == (
        "/apis/security.istio.io/v1/namespaces/shop/authorizationpolicies"
    )


def test_tls_secrets_keep_only_their_tls_keys_and_are_not_watched_cluster_wide() -> None:
    import base64

    def b64(text: str) -> str:
        return base64.b64encode(text.encode()).decode()

    index = KubeIndex()
    cert = {
        "metadata": {"name": "shop-cert", "namespace": "istio-system"},
        "type": "kubernetes.io/tls",
        "data": {"tls.crt": b64("CERT"), "tls.key": b64("KEY"), "other": b64("never kept")},
    }
    opaque = {
        "metadata": {"name": "db-password", "namespace": "istio-system"},
        "data": {"p": "eA=="},
    }
    delta = index.replace("Secret", [cert, opaque], namespace="istio-system")
    key = ResourceKey("Secret", "istio-system", "shop-cert")
    secret = delta.secrets[key]
    assert secret is not None and (secret.cert_chain, secret.private_key, secret.ca) == (
        "CERT",
        "KEY",
        "",
    )
    assert "KEY" not in repr(secret)
    assert delta.secrets[ResourceKey("Secret", "istio-system", "db-password")] is None
    assert list(index.secrets()) == [key]
    assert index.delete("Secret", cert).secrets == {key: None}
    assert "Secret" not in watched_kinds(istio=True)
