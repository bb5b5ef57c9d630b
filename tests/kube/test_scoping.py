"""`lightmesh analyze --cluster` and a control plane watching only some namespaces, against the
real kube-apiserver."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from lightmeshctl.demo.mesh import LocalMesh, http_get, wait_for
from tests.kube.test_kube_source import BAD_REGEX, rule, vs
from tests.support.kube import KubeCluster

pytestmark = pytest.mark.kube


def unknown_subset(namespace: str) -> str:
    """The shop's DestinationRule (v1, v2) and a VirtualService routing to a subset v3."""
    route = "        - destination: {host: catalog, subset: v3}"
    return rule(namespace) + "---\n" + vs(namespace, route)


@pytest.fixture
def second_namespace(kube: KubeCluster, namespace: str) -> Iterator[str]:
    name = f"{namespace[:50]}-b"
    kube.kubectl("create", "namespace", name)
    yield name
    kube.kubectl("delete", "namespace", name, "--wait=false", check=False)


def analyze(kube: KubeCluster, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lightmeshctl.cli", "analyze", "--cluster",
         "--kubeconfig", str(kube.kubeconfig), *args],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_analyze_cluster_reports_what_the_control_plane_would_reject(
    kube: KubeCluster, crds: None, namespace: str, second_namespace: str
) -> None:
    kube.kubectl(
        "apply", "-f", "-", input=rule(namespace) + "---\n" + BAD_REGEX.format(namespace=namespace)
    )
    found = analyze(kube, "-n", namespace)
    assert found.returncode == 1, found.stdout + found.stderr
    assert (
        f"Error: kubernetes: VirtualService {namespace}/catalog: spec.http[0].match[0].uri.regex: "
        in found.stdout
    )
    assert "1 resources accepted, 1 problems in 2 resources" in found.stdout
    # A subset not defined (yet) is a warning, as in Istio: accepted, exit 0.
    kube.kubectl("apply", "-f", "-", input=unknown_subset(namespace))
    warned = analyze(kube, "-n", namespace)
    assert warned.returncode == 0, warned.stdout + warned.stderr
    assert (
        f"VirtualService {namespace}/catalog: spec.http[0].route[0].destination.subset: "
        "warning: subset 'v3' of catalog." in warned.stdout
    )
    assert "2 resources accepted, 0 problems in 2 resources" in warned.stdout
    clean = analyze(kube, "-n", second_namespace)
    assert clean.returncode == 0, clean.stdout + clean.stderr


def test_control_plane_watches_only_the_namespaces_it_is_given(
    kube: KubeCluster, crds: None, namespace: str, second_namespace: str, tmp_path: Path
) -> None:
    for ns in (namespace, second_namespace):
        kube.kubectl("apply", "-f", "-", input=unknown_subset(ns))
    empty = tmp_path / "files"
    empty.mkdir()
    with LocalMesh(config_dir=empty, work_dir=tmp_path / "mesh") as mesh:
        mesh.start_control_plane(
            extra_args=(
                "--kubeconfig", str(kube.kubeconfig),
                "--watch-namespace", namespace,
                "--lease-namespace", namespace,
            )
        )  # fmt: skip

        def problem_resources() -> set[str]:
            problems = http_get(f"{mesh.debug_url}/debug/problems").json()["problems"]
            return {p["resource"] for p in problems}

        wait_for(
            lambda: f"VirtualService {namespace}/catalog" in problem_resources(),
            timeout=10,
            what="the watched namespace's problem",
        )
        # Resources of the unwatched namespace never reach the control plane, so neither does
        # their status: it stays unwritten.
        assert not any(second_namespace in r for r in problem_resources())
        status = kube.kubectl_json("get", "virtualservice", "catalog", "-n", second_namespace)
        assert "status" not in status or not status["status"]
        wait_for(
            lambda: (
                "status" in kube.kubectl_json("get", "virtualservice", "catalog", "-n", namespace)
            ),
            timeout=15,
            what="status written in the watched namespace",
        )
