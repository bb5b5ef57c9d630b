"""Istio's own YAML on a real kube-apiserver without Istio: the optional CRDs of crds/istio/,
every Istio sample applied with kubectl as it is written, and the control plane (--istio-api)
routing by Istio-group resources applied in any order."""

import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from lightmeshctl.demo.mesh import LocalMesh, wait_for
from tests.kube.conftest import ISTIO_CRDS
from tests.kube.test_kube_source import _shop, routed_to, versions
from tests.support.kube import REPO, KubeCluster

pytestmark = pytest.mark.kube

SAMPLES = REPO / "tests" / "data" / "istio-samples"


def test_istio_crds_serve_every_group_and_version(kube: KubeCluster, istio_crds: None) -> None:
    assert len(ISTIO_CRDS) == 8
    for group, names in (
        ("networking.istio.io", ["destinationrules", "gateways", "serviceentries", "sidecars",
                                 "virtualservices"]),
        ("security.istio.io", ["authorizationpolicies", "peerauthentications",
                               "requestauthentications"]),
    ):  # fmt: skip
        listed = kube.kubectl("api-resources", f"--api-group={group}", "-o", "name").stdout
        assert sorted(listed.split()) == [f"{n}.{group}" for n in names]
    # Our schema: a field lightmesh does not implement is refused at apply time, not stored.
    refused = kube.kubectl(
        "apply", "-f", "-", check=False,
        input="apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: cors}\n"
        "spec: {hosts: [a], http: [{corsPolicy: {}, route: [{destination: {host: a}}]}]}\n",
    )  # fmt: skip
    assert refused.returncode != 0 and 'unknown field "spec.http[0].corsPolicy"' in refused.stderr
    versions = kube.kubectl("api-versions").stdout.split()
    for expected in ("networking.istio.io/v1alpha3", "networking.istio.io/v1beta1",
                     "networking.istio.io/v1", "security.istio.io/v1beta1", "security.istio.io/v1"):  # fmt: skip
        assert expected in versions


SAMPLE_FILES = sorted(p.relative_to(SAMPLES).as_posix() for p in SAMPLES.rglob("*.yaml"))


@pytest.mark.parametrize("sample", SAMPLE_FILES)
def test_every_istio_sample_applies_as_written(
    kube: KubeCluster, istio_crds: None, namespace: str, sample: str
) -> None:
    path = SAMPLES / sample
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    fixed = {d["metadata"].get("namespace") for d in docs} - {None}
    for other in fixed:  # certmanager-gateway.yaml names istio-system
        kube.kubectl("create", "namespace", other, check=False)
    # As a user would: `-n` unless the file names its namespace (kubectl refuses both).
    scope = () if fixed else ("-n", namespace)
    kube.kubectl("apply", *scope, "-f", str(path))
    # `get -f` reads each object back in the apiVersion the file gives.
    stored: Any = kube.kubectl_json("get", *scope, "-f", str(path))
    items = stored.get("items", [stored])
    assert [(i["apiVersion"], i["kind"], i["metadata"]["name"]) for i in items] == [
        (d["apiVersion"], d["kind"], d["metadata"]["name"]) for d in docs
    ]
    for doc, item in zip(docs, items, strict=True):
        if doc["apiVersion"].partition("/")[0].endswith("istio.io"):
            assert item["spec"] == doc["spec"]  # nothing pruned or defaulted


def istio_vs(namespace: str, subset: str) -> str:
    return f"""
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata: {{name: catalog, namespace: {namespace}}}
spec:
  hosts: [catalog]
  http:
  - route:
    - destination: {{host: catalog, subset: {subset}}}
"""


def istio_rule(namespace: str) -> str:
    return f"""
apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata: {{name: catalog, namespace: {namespace}}}
spec:
  host: catalog
  trafficPolicy: {{tls: {{mode: ISTIO_MUTUAL}}}}
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v3, labels: {{version: v2}}}}
"""


@pytest.fixture
def istio_shop(
    kube: KubeCluster, crds: None, istio_crds: None, namespace: str, tmp_path: Path
) -> Iterator[LocalMesh]:
    """The kube shop (catalog v1/v2 and its lightmesh.io DestinationRule), control plane with
    --istio-api."""
    yield from _shop(kube, namespace, tmp_path, ("--istio-api",))


def istio_accepted(kube: KubeCluster, namespace: str) -> dict[str, Any] | None:
    obj = kube.kubectl_json(
        "get", "virtualservices.networking.istio.io", "catalog", "-n", namespace
    )
    for condition in obj.get("status", {}).get("conditions", []):
        if condition["type"] == "Accepted":
            return condition  # type: ignore[no-any-return]
    return None


def test_istio_group_resources_route_in_any_apply_order(
    kube: KubeCluster, namespace: str, istio_shop: LocalMesh
) -> None:
    # Only Istio-group resources from here on: the shop's lightmesh.io DestinationRule goes.
    kube.kubectl("delete", "destinationrules.lightmesh.io", "catalog", "-n", namespace)
    # The VirtualService first, naming a subset no DestinationRule defines yet: accepted with a
    # warning (status on the Istio object) and 503 NC ...
    kube.kubectl("apply", "-f", "-", input=istio_vs(namespace, "v3"))
    missing = f"502:cluster 'outbound|v3|catalog.{namespace}.svc.cluster.local' not found"
    # (The frontend app answers 502 when its upstream call, answered 503 NC by its sidecar, fails;
    # the body is the sidecar's NC reply.)
    wait_for(lambda: versions(istio_shop, 4) == Counter({missing: 4}), timeout=30, what="503 NC")
    condition = wait_for(lambda: istio_accepted(kube, namespace), timeout=30, what="status")
    assert condition["status"] == "True" and "subset 'v3'" in condition["message"], condition
    # ... until the DestinationRule (another Istio version, ISTIO_MUTUAL) arrives.
    found = subprocess.run(
        [sys.executable, "-m", "lightmeshctl.cli", "analyze", "--cluster",
         "--kubeconfig", str(kube.kubeconfig), "-n", namespace],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert found.returncode == 0, found.stdout + found.stderr
    assert "warning: subset 'v3' of catalog." in found.stdout
    kube.kubectl("apply", "-f", "-", input=istio_rule(namespace))
    routed_to(istio_shop, "v2")
    wait_for(
        lambda: (istio_accepted(kube, namespace) or {}).get("message") == "accepted",
        timeout=30,
        what="the warning cleared from the status",
    )
    kube.kubectl("apply", "-f", "-", input=istio_vs(namespace, "v1"))
    routed_to(istio_shop, "v1")
