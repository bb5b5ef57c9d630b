"""Fixtures for tests against a real kube-apiserver + etcd (built by scripts/k8s/build.sh)."""

import re
import sys
import uuid
from collections.abc import Iterator

import pytest
import yaml

from tests.support.kube import REPO, KubeCluster, build_binaries


def pytest_collection_finish(session: pytest.Session) -> None:
    """Build the binaries before the first kube test, so a cold build is not charged to its timeout."""
    if not any(item.get_closest_marker("kube") for item in session.items):
        return
    capture = session.config.pluginmanager.getplugin("capturemanager")
    if capture is None:
        build_binaries(echo=sys.stderr)
        return
    with capture.global_and_fixture_disabled():
        build_binaries(echo=sys.stderr)


@pytest.fixture(scope="session")
def kube(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeCluster]:
    """One etcd + kube-apiserver for the session, admin kubeconfig, stopped at the end."""
    bin_dir = build_binaries()  # a no-op unless the collection hook did not run
    with KubeCluster.start(tmp_path_factory.mktemp("kube"), bin_dir) as cluster:
        print(f"kube-apiserver ready at {cluster.server} in {cluster.startup_seconds:.1f}s")
        yield cluster


@pytest.fixture
def namespace(kube: KubeCluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace named after the test; deletion is requested, not awaited.

    No namespace controller runs, so a deleted namespace stays Terminating: names never repeat.
    """
    stem = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    name = f"{stem or 'test'}-{uuid.uuid4().hex[:8]}"
    kube.kubectl("create", "namespace", name)
    yield name
    kube.kubectl("delete", "namespace", name, "--wait=false", check=False)


CRDS = (
    "virtualservices.lightmesh.io",
    "destinationrules.lightmesh.io",
    "peerauthentications.lightmesh.io",
    "authorizationpolicies.lightmesh.io",
    "sidecars.lightmesh.io",
    "gateways.lightmesh.io",
    "serviceentries.lightmesh.io",
    "requestauthentications.lightmesh.io",
    "httplocalratelimitpolicies.lightmesh.io",
)


@pytest.fixture(scope="session")
def crds(kube: KubeCluster) -> None:
    """The generated CRDs, applied with kubectl and Established."""
    kube.kubectl("apply", "-f", "crds/")
    kube.kubectl(
        "wait", "--for=condition=Established", "--timeout=30s", *(f"crd/{name}" for name in CRDS)
    )


ISTIO_CRDS = tuple(
    sorted(
        yaml.safe_load(p.read_text())["metadata"]["name"]
        for p in (REPO / "crds" / "istio").glob("*.yaml")
    )
)


@pytest.fixture(scope="session")
def istio_crds(kube: KubeCluster) -> None:
    """crds/istio/ (Istio's groups, for clusters without Istio), applied with kubectl, Established."""
    kube.kubectl("apply", "-f", "crds/istio/")
    kube.kubectl(
        "wait", "--for=condition=Established", "--timeout=30s", *(f"crd/{n}" for n in ISTIO_CRDS)
    )
