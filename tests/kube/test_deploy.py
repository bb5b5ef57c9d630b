"""deploy/ applies to a real API server and grants the control plane exactly what it needs."""

import pytest

from tests.support.kube import KubeCluster

pytestmark = pytest.mark.kube

SA = "system:serviceaccount:lightmesh-system:lightmesh-controlplane"


@pytest.mark.parametrize(
    ("args", "allowed"),
    [
        (("list", "services", "--all-namespaces"), True),
        (("watch", "endpointslices.discovery.k8s.io", "--all-namespaces"), True),
        (("list", "pods", "-n", "shop"), True),
        (("watch", "virtualservices.lightmesh.io", "--all-namespaces"), True),
        (("patch", "virtualservices.lightmesh.io", "--subresource=status", "-n", "shop"), True),
        (("watch", "serviceentries.lightmesh.io", "--all-namespaces"), True),
        (("watch", "gateways.networking.istio.io", "--all-namespaces"), True),
        (("list", "authorizationpolicies.security.istio.io", "--all-namespaces"), True),
        (
            ("patch", "virtualservices.networking.istio.io", "--subresource=status", "-n", "shop"),
            True,
        ),
        (("update", "virtualservices.networking.istio.io", "-n", "shop"), False),
        (("delete", "peerauthentications.security.istio.io", "-n", "shop"), False),
        (("update", "leases.coordination.k8s.io", "-n", "lightmesh-system"), True),
        (("create", "secrets", "-n", "lightmesh-system"), True),
        (("create", "tokenreviews.authentication.k8s.io"), True),
        (("get", "secrets", "-n", "default"), False),
        # The gateway's namespace (deploy/gateway.yaml): its TLS Secrets, read-only.
        (("watch", "secrets", "-n", "lightmesh-gateway"), True),
        (("update", "secrets", "-n", "lightmesh-gateway"), False),
        (("update", "configmaps/lightmesh-ca-root", "-n", "lightmesh-gateway"), True),
        (("update", "configmaps/other", "-n", "lightmesh-gateway"), False),
        (("create", "pods", "-n", "shop"), False),
        (("update", "virtualservices.lightmesh.io", "-n", "shop"), False),
        (("update", "leases.coordination.k8s.io", "-n", "default"), False),
        (("patch", "mutatingwebhookconfigurations/lightmesh-sidecar-injector"), True),
        (("patch", "mutatingwebhookconfigurations/someone-elses"), False),
        (("delete", "mutatingwebhookconfigurations/lightmesh-sidecar-injector"), False),
    ],
)
def test_rbac_is_least_privilege(
    kube: KubeCluster,
    crds: None,
    istio_crds: None,
    deployed: None,
    args: tuple[str, ...],
    allowed: bool,
) -> None:
    result = kube.kubectl("auth", "can-i", *args, f"--as={SA}", check=False)
    assert result.stdout.strip() == ("yes" if allowed else "no"), result.stdout + result.stderr


@pytest.fixture(scope="module")
def deployed(kube: KubeCluster, crds: None) -> None:
    kube.kubectl("apply", "-f", "deploy/")


def test_injector_is_registered_for_pods_outside_the_system_namespaces(
    kube: KubeCluster, deployed: None
) -> None:
    registration = kube.kubectl_json(
        "get", "mutatingwebhookconfiguration", "lightmesh-sidecar-injector"
    )
    policies = {w["name"]: w["failurePolicy"] for w in registration["webhooks"]}
    assert policies == {"namespace.lightmesh.io": "Fail", "object.lightmesh.io": "Ignore"}
    for webhook in registration["webhooks"]:
        assert webhook["clientConfig"]["service"]["name"] == "lightmesh-controlplane"
        excluded = next(
            e for e in webhook["namespaceSelector"]["matchExpressions"]
            if e["key"] == "kubernetes.io/metadata.name"
        )  # fmt: skip
        assert excluded == {
            "key": "kubernetes.io/metadata.name",
            "operator": "NotIn",
            "values": ["kube-system", "lightmesh-system"],
        }


def test_deployment_is_stored_with_two_replicas(kube: KubeCluster, deployed: None) -> None:
    deployment = kube.kubectl_json(
        "get", "deployment", "lightmesh-controlplane", "-n", "lightmesh-system"
    )
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == "lightmesh-controlplane"
