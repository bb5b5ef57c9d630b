"""The CRDs and demo resources against a real kube-apiserver, driven the way users drive it."""

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from lightmeshctl.demo.mesh import LocalMesh, wait_for
from tests.kube.conftest import CRDS
from tests.kube.test_kube_source import _shop, versions
from tests.support.kube import REPO, KubeCluster

pytestmark = pytest.mark.kube

GROUP = "lightmesh.io"
VERSION = "v1alpha1"
DEMO = REPO / "examples" / "demo"


def virtual_service(name: str, spec: dict[str, Any]) -> str:
    return json.dumps(
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "VirtualService",
            "metadata": {"name": name},
            "spec": spec,
        }
    )


VALID_SPEC: dict[str, Any] = {
    "hosts": ["catalog"],
    "http": [{"route": [{"destination": {"host": "catalog"}}]}],
}


def test_clients_see_the_release_version(kube: KubeCluster) -> None:
    versions = kube.kubectl_json("version")
    server, client = versions["serverVersion"], versions["clientVersion"]
    assert server["gitVersion"].startswith("v1."), server
    assert server["gitVersion"] == client["gitVersion"]
    assert server["minor"] == server["gitVersion"].split(".")[1]


def test_crds_are_established(kube: KubeCluster, crds: None) -> None:
    for name in CRDS:
        crd = kube.kubectl_json("get", "crd", name)
        conditions = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
        assert conditions.get("Established") == "True", conditions
        assert conditions.get("NamesAccepted") == "True", conditions
    resources = kube.kubectl("api-resources", f"--api-group={GROUP}", "-o", "name").stdout.split()
    assert sorted(resources) == sorted(CRDS)


def assert_demo_listed(kube: KubeCluster, namespace: str) -> None:
    """The demo's VirtualService and DestinationRule, by plural, short name and category."""
    expected = ["destinationrule.lightmesh.io/catalog", "virtualservice.lightmesh.io/catalog"]
    for kinds in ("virtualservices,destinationrules", "vs,dr", "lightmesh"):
        listed = kube.kubectl("get", kinds, "-n", namespace, "-o", "name")
        assert sorted(listed.stdout.split()) == expected, kinds
    stored = kube.kubectl_json("get", "vs", "catalog", "-n", namespace)
    with (DEMO / "catalog-virtualservice.yaml").open() as source:
        assert stored["spec"] == yaml.safe_load(source)["spec"]


def test_demo_applies_as_written(kube: KubeCluster, crds: None) -> None:
    applied = kube.kubectl("apply", "-f", "examples/demo/")
    assert re.search(r"virtualservice.lightmesh.io/catalog (created|unchanged)", applied.stdout)
    assert re.search(r"destinationrule.lightmesh.io/catalog (created|unchanged)", applied.stdout)
    assert_demo_listed(kube, "default")


def test_demo_applies_into_a_namespace(kube: KubeCluster, crds: None, namespace: str) -> None:
    applied = kube.kubectl("apply", "-n", namespace, "-f", "examples/demo/")
    assert "virtualservice.lightmesh.io/catalog created" in applied.stdout
    assert "destinationrule.lightmesh.io/catalog created" in applied.stdout
    assert_demo_listed(kube, namespace)


def test_unknown_field_is_rejected(kube: KubeCluster, crds: None, namespace: str) -> None:
    spec = {**VALID_SPEC, "retriez": 3}
    result = kube.kubectl(
        "apply", "-n", namespace, "-f", "-", input=virtual_service("typo", spec), check=False
    )
    assert result.returncode != 0, result.stdout
    assert 'unknown field "spec.retriez"' in result.stderr, result.stderr
    missing = kube.kubectl("get", "vs", "typo", "-n", namespace, check=False)
    assert missing.returncode != 0


def test_wrong_type_is_rejected(kube: KubeCluster, crds: None, namespace: str) -> None:
    spec = {**VALID_SPEC, "hosts": "catalog"}
    result = kube.kubectl(
        "apply", "-n", namespace, "-f", "-", input=virtual_service("scalar", spec), check=False
    )
    assert result.returncode != 0, result.stdout
    assert "spec.hosts" in result.stderr, result.stderr
    assert "must be of type array" in result.stderr, result.stderr


def test_python_client_lists_custom_objects(kube: KubeCluster, crds: None, namespace: str) -> None:
    from kubernetes import client

    kube.kubectl("apply", "-n", namespace, "-f", "-", input=virtual_service("one", VALID_SPEC))
    kube.kubectl("apply", "-n", namespace, "-f", "-", input=virtual_service("two", VALID_SPEC))

    api = client.CustomObjectsApi(kube.api_client())
    listed: dict[str, Any] = api.list_namespaced_custom_object(  # type: ignore[assignment]
        GROUP, VERSION, namespace, "virtualservices"
    )
    assert listed["kind"] == "VirtualServiceList"
    assert sorted(item["metadata"]["name"] for item in listed["items"]) == ["one", "two"]
    assert all(item["spec"] == VALID_SPEC for item in listed["items"])


def test_service_account_token_passes_token_review(kube: KubeCluster, namespace: str) -> None:
    kube.kubectl("create", "serviceaccount", "mesh-agent", "-n", namespace)
    token = kube.kubectl("create", "token", "mesh-agent", "-n", namespace).stdout.strip()
    assert token.count(".") == 2, "expected a JWT"

    review = {
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenReview",
        "spec": {"token": token},
    }
    result = kube.kubectl_json("create", "-f", "-", input=json.dumps(review))
    status = result["status"]
    assert status.get("authenticated") is True, status
    assert status["user"]["username"] == f"system:serviceaccount:{namespace}:mesh-agent"
    assert f"system:serviceaccounts:{namespace}" in status["user"]["groups"]

    forged = {**review, "spec": {"token": token[:-4] + "AAAA"}}
    rejected = kube.kubectl_json("create", "-f", "-", input=json.dumps(forged))["status"]
    assert not rejected.get("authenticated"), rejected


def test_admin_kubeconfig_is_a_cluster_admin(kube: KubeCluster) -> None:
    assert kube.kubectl("auth", "can-i", "*", "*").stdout.strip() == "yes"
    whoami = kube.kubectl_json("auth", "whoami")
    assert whoami["status"]["userInfo"]["username"] == "admin"
    assert "system:masters" in whoami["status"]["userInfo"]["groups"]


@pytest.fixture
def shop_with_istio_api(
    kube: KubeCluster, crds: None, namespace: str, tmp_path: Path
) -> Iterator[LocalMesh]:
    """The kube shop, control plane with --istio-api (whether or not crds/istio/ is applied)."""
    yield from _shop(kube, namespace, tmp_path, ("--istio-api",))


def test_istio_api_without_its_crds_still_serves(
    kube: KubeCluster, shop_with_istio_api: LocalMesh
) -> None:
    """A missing collection (404) counts as empty: the first config does not wait for it. Runs
    before tests/kube/test_istio.py installs crds/istio/ (files run in name order)."""
    if "istio.io" in kube.kubectl("get", "crd", "-o", "name").stdout:
        pytest.skip("crds/istio/ is already installed in this API server")
    wait_for(lambda: set(versions(shop_with_istio_api, 8)) == {"v1", "v2"}, timeout=30,
             what="the shop served")  # fmt: skip
    control_plane = next(p for p in shop_with_istio_api._processes if p.name == "controlplane")
    assert '"event": "watch_missing"' in control_plane.log.read_text()
