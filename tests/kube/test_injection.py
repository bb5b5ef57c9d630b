"""Sidecar injection through a real kube-apiserver: it calls the control plane's webhook over HTTPS.

The webhook registration is deploy/injector.yaml itself, with each `service` reference swapped
for a `url` on loopback (there is no cluster network here). The caBundle starts empty: the control
plane fills it, and the API server then trusts the certificate our CA issued.
"""

import base64
import json
import ssl
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from lightmeshctl.demo.mesh import LocalMesh, free_port, wait_for
from tests.support.kube import REPO, KubeCluster, KubectlError

pytestmark = pytest.mark.kube

CONFIGURATION = "lightmesh-sidecar-injector"


def pod(name: str, namespace: str, annotations: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"app": "catalog", "version": "v1"},
            "annotations": annotations or {},
        },
        "spec": {
            "containers": [
                {
                    "name": "app",
                    "image": "example.invalid/catalog:1",
                    "ports": [{"containerPort": 8080}],
                }
            ]
        },
    }


def create(kube: KubeCluster, obj: dict[str, Any]) -> dict[str, Any]:
    """kubectl create, then read back what the API server stored."""
    kube.kubectl("create", "-f", "-", input=json.dumps(obj))
    meta = obj["metadata"]
    stored: dict[str, Any] = kube.kubectl_json("get", "pod", meta["name"], "-n", meta["namespace"])
    return stored


def names(items: list[dict[str, Any]] | None) -> list[str]:
    return [item["name"] for item in items or []]


def label_for_injection(kube: KubeCluster, namespace: str) -> None:
    kube.kubectl("label", "namespace", namespace, "lightmesh-injection=enabled")


@pytest.fixture(scope="module")
def injector(
    kube: KubeCluster, crds: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[int]:
    """The control plane serving the webhook on 127.0.0.1, registered from deploy/injector.yaml."""
    work = tmp_path_factory.mktemp("injector")
    port = free_port()
    registration = yaml.safe_load((REPO / "deploy" / "injector.yaml").read_text())
    for webhook in registration["webhooks"]:
        path = webhook["clientConfig"]["service"]["path"]
        webhook["clientConfig"] = {"url": f"https://127.0.0.1:{port}{path}"}
    kube.kubectl("apply", "-f", "-", input=json.dumps(registration))
    (work / "files").mkdir()
    with LocalMesh(config_dir=work / "files", work_dir=work / "mesh") as mesh:
        try:
            mesh.start_control_plane(
                extra_args=(
                    "--kubeconfig", str(kube.kubeconfig),
                    "--webhook-port", str(port),
                    "--webhook-ip", "127.0.0.1",
                    "--webhook-configuration", CONFIGURATION,
                )
            )  # fmt: skip
            wait_for(lambda: all(ca_bundles(kube)), timeout=30, what="the caBundle filled")
            yield port
        finally:
            kube.kubectl("delete", "mutatingwebhookconfiguration", CONFIGURATION, check=False)
            if mesh.control_plane is not None:
                print(mesh.control_plane.tail(40))


def ca_bundles(kube: KubeCluster) -> list[str]:
    registration = kube.kubectl_json("get", "mutatingwebhookconfiguration", CONFIGURATION)
    return [w["clientConfig"].get("caBundle", "") for w in registration["webhooks"]]


@pytest.fixture
def other_namespace(kube: KubeCluster) -> Iterator[str]:
    name = f"other-{uuid.uuid4().hex[:8]}"
    kube.kubectl("create", "namespace", name)
    yield name
    kube.kubectl("delete", "namespace", name, "--wait=false", check=False)


def test_pod_in_labelled_namespace_is_stored_with_the_sidecar(
    kube: KubeCluster, injector: int, namespace: str
) -> None:
    label_for_injection(kube, namespace)
    stored = create(kube, pod("catalog-1", namespace))
    spec = stored["spec"]
    assert names(spec["containers"]) == ["lightmesh-proxy", "app"]
    assert names(spec["initContainers"]) == ["lightmesh-init"]
    init = spec["initContainers"][0]
    assert init["args"][:2] == ["intercept", "install"]
    assert init["securityContext"]["capabilities"] == {
        "add": ["NET_ADMIN", "NET_RAW"],
        "drop": ["ALL"],
    }
    proxy = spec["containers"][0]
    assert proxy["securityContext"]["runAsUser"] == 1337
    assert proxy["readinessProbe"]["httpGet"] == {"path": "/ready", "port": 15020, "scheme": "HTTP"}
    env = {e["name"]: e for e in proxy["env"]}
    assert env["LIGHTMESH_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    assert env["LIGHTMESH_APP_PORT"]["value"] == "8080"
    token = next(v for v in spec["volumes"] if v["name"] == "lightmesh-token")
    assert token["projected"]["sources"][0]["serviceAccountToken"]["audience"] == "lightmesh"
    annotations = stored["metadata"]["annotations"]
    assert annotations["lightmesh.io/status"] == "injected"
    assert annotations["prometheus.io/port"] == "15020"
    # The root the proxy verifies the control plane with: the one the API server trusts us by.
    root = annotations["lightmesh.io/ca-root"].encode()
    assert root == base64.b64decode(ca_bundles(kube)[0])


def test_pods_created_from_a_deployment_template_are_injected(
    kube: KubeCluster, injector: int, namespace: str
) -> None:
    """No controller manager runs here, so the test creates the Deployment's pod the way its
    ReplicaSet controller would: from the stored template, with a generated name."""
    label_for_injection(kube, namespace)
    template = pod("unused", namespace)
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "catalog", "namespace": namespace},
        "spec": {
            "selector": {"matchLabels": template["metadata"]["labels"]},
            "template": {
                "metadata": {"labels": template["metadata"]["labels"]},
                "spec": template["spec"],
            },
        },
    }
    kube.kubectl("apply", "-f", "-", input=json.dumps(deployment))
    stored = kube.kubectl_json("get", "deployment", "catalog", "-n", namespace)["spec"]["template"]
    # kubectl apply stored the template untouched: only pods are injected.
    assert names(stored["spec"]["containers"]) == ["app"]
    replica = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {**stored["metadata"], "generateName": "catalog-", "namespace": namespace},
        "spec": stored["spec"],
    }
    created = kube.kubectl_json("create", "-f", "-", input=json.dumps(replica))
    assert created["metadata"]["name"].startswith("catalog-")
    assert names(created["spec"]["containers"]) == ["lightmesh-proxy", "app"]
    workload = next(
        e for e in created["spec"]["containers"][0]["env"] if e["name"] == "LIGHTMESH_WORKLOAD"
    )
    assert workload["value"] == "catalog"


def test_opt_out_pod_in_labelled_namespace_is_untouched(
    kube: KubeCluster, injector: int, namespace: str
) -> None:
    label_for_injection(kube, namespace)
    stored = create(kube, pod("catalog-1", namespace, {"lightmesh.io/inject": "false"}))
    assert names(stored["spec"]["containers"]) == ["app"]
    assert "initContainers" not in stored["spec"]


def test_unlabelled_namespace_is_untouched_unless_the_pod_opts_in(
    kube: KubeCluster, injector: int, namespace: str
) -> None:
    plain = create(kube, pod("plain", namespace))
    assert names(plain["spec"]["containers"]) == ["app"]
    opted_in = create(kube, pod("opted-in", namespace, {"lightmesh.io/inject": "true"}))
    assert names(opted_in["spec"]["containers"]) == ["lightmesh-proxy", "app"]


def lightmesh_inject(manifest: dict[str, Any]) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, "-m", "lightmeshctl.cli", "inject", "-f", "-"],
        input=json.dumps(manifest), capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    injected: dict[str, Any] = yaml.safe_load(result.stdout)
    return injected


def test_inject_output_equals_the_webhook_result(
    kube: KubeCluster, injector: int, namespace: str, other_namespace: str
) -> None:
    """The same pod, injected by the webhook in one namespace and by `lightmesh inject` in
    another: the API server stores the same thing (both defaulted by it alike)."""
    for ns in (namespace, other_namespace):
        label_for_injection(kube, ns)
    by_webhook = create(kube, pod("catalog-1", namespace))
    by_cli = create(kube, lightmesh_inject(pod("catalog-1", other_namespace)))
    assert by_webhook["spec"] == by_cli["spec"]
    assert by_webhook["metadata"]["annotations"] == by_cli["metadata"]["annotations"]
    assert by_webhook["metadata"]["labels"] == by_cli["metadata"]["labels"]


def test_already_injected_pod_is_not_injected_twice(
    kube: KubeCluster, injector: int, namespace: str
) -> None:
    label_for_injection(kube, namespace)
    stored = create(kube, lightmesh_inject(pod("catalog-1", namespace)))
    assert names(stored["spec"]["containers"]) == ["lightmesh-proxy", "app"]
    assert names(stored["spec"]["initContainers"]) == ["lightmesh-init"]
    assert names(stored["spec"]["volumes"]).count("lightmesh-token") == 1


def test_malformed_annotation_is_denied_naming_it(
    kube: KubeCluster, injector: int, namespace: str
) -> None:
    label_for_injection(kube, namespace)
    bad = pod("catalog-1", namespace, {"lightmesh.io/exclude-outbound-ports": "5432,http"})
    with pytest.raises(KubectlError) as failure:
        create(kube, bad)
    message = failure.value.result.stderr
    assert "lightmesh.io/exclude-outbound-ports" in message, message
    assert "'http' is not a port number" in message, message


def test_webhook_certificate_is_trusted_through_the_filled_ca_bundle(
    kube: KubeCluster, injector: int, tmp_path: Path
) -> None:
    """Our own HTTPS client, trusting only the caBundle the control plane wrote, reaches the
    webhook; a malformed AdmissionReview gets a denial that says why."""
    bundle = tmp_path / "ca.pem"
    bundle.write_bytes(base64.b64decode(ca_bundles(kube)[0]))
    context = ssl.create_default_context(cafile=str(bundle))

    def post(body: bytes) -> dict[str, Any]:
        request = urllib.request.Request(
            f"https://127.0.0.1:{injector}/inject",
            data=body,
            headers={"content-type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10, context=context) as response:  # noqa: S310
            assert response.status == 200
            answer: dict[str, Any] = json.load(response)
            return answer

    not_json = post(b"{not json")["response"]
    assert not_json["allowed"] is False
    assert "not JSON" in not_json["status"]["message"]
    review = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {}}
    no_uid = post(json.dumps(review).encode())["response"]
    assert no_uid["allowed"] is False
    assert "request.uid is missing" in no_uid["status"]["message"]


def test_shop_example_and_its_injected_form_are_accepted_by_the_api_server(
    kube: KubeCluster, injector: int
) -> None:
    """The README's walk-through: the shop manifest applies, its routing too, and the pod
    templates `lightmesh inject` writes pass the API server's validation."""
    kube.kubectl("apply", "-f", "examples/kubernetes/shop.yaml")
    kube.kubectl("apply", "-n", "shop", "-f", "examples/demo/")
    injected = subprocess.run(
        [sys.executable, "-m", "lightmeshctl.cli", "inject", "-f", "examples/kubernetes/shop.yaml"],
        capture_output=True, text=True, timeout=60, check=True, cwd=REPO,
    ).stdout  # fmt: skip
    result = kube.kubectl("apply", "--dry-run=server", "-f", "-", input=injected)
    assert "deployment.apps/catalog-v2 configured (server dry run)" in result.stdout, result.stdout
