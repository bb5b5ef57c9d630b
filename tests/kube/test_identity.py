"""Cluster-mode identity against the real kube-apiserver: the CA lives in a Secret shared by
replicas, and a sidecar's certificate names the service account its projected token belongs to,
whatever the sidecar claims."""

from __future__ import annotations

import base64
import threading
from pathlib import Path

import pytest

from controlplane.ca import CertificateAuthority, SecretCAStore
from lightmeshctl.demo.mesh import LocalMesh, http_get, wait_for
from tests.support.kube import KubeCluster

pytestmark = pytest.mark.kube


def token(kube: KubeCluster, namespace: str, account: str, audience: str, path: Path) -> Path:
    kube.kubectl("create", "serviceaccount", account, "-n", namespace)
    minted = kube.kubectl(
        "create", "token", account, "-n", namespace, f"--audience={audience}", "--duration=1h"
    ).stdout.strip()
    path.write_text(minted + "\n")
    return path


def test_replicas_racing_at_start_share_one_ca_secret(kube: KubeCluster, namespace: str) -> None:
    roots: list[bytes] = []
    barrier = threading.Barrier(3)

    def replica() -> None:
        store = SecretCAStore(kube.api_client(), namespace=namespace)
        barrier.wait()
        roots.append(CertificateAuthority.load_or_create(store, trust_domain="td").root_pem)

    threads = [threading.Thread(target=replica) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(roots) == 3 and len(set(roots)) == 1
    secret = kube.kubectl_json("get", "secret", "lightmesh-ca", "-n", namespace)
    assert base64.b64decode(secret["data"]["ca.crt"]) == roots[0]


def test_certificate_identity_comes_from_the_token_review(
    kube: KubeCluster, namespace: str, tmp_path: Path
) -> None:
    good = token(kube, namespace, "catalog", "lightmesh", tmp_path / "good-token")
    other_audience = token(kube, namespace, "intruder", "someone-else", tmp_path / "bad-token")
    empty = tmp_path / "files"
    empty.mkdir()
    with LocalMesh(config_dir=empty, work_dir=tmp_path / "mesh") as mesh:
        mesh.start_control_plane(
            extra_args=("--kubeconfig", str(kube.kubeconfig), "--ca-namespace", namespace)
        )
        # Both sidecars *claim* to be kube-system's admin; only the token decides.
        claims = ("--service-account", "admin")
        mesh.start_workload(
            "catalog",
            service="catalog",
            namespace="kube-system",
            sidecar_args=(*claims, "--token-file", str(good)),
        )
        mesh.start_workload(
            "intruder",
            service="intruder",
            namespace="kube-system",
            sidecar_args=(*claims, "--token-file", str(other_audience)),
        )
        catalog, intruder = mesh.workloads["catalog"], mesh.workloads["intruder"]

        def certs(admin: str) -> dict[str, object]:
            data: dict[str, object] = http_get(f"{admin}/certs").json()
            return data

        wait_for(
            lambda: certs(catalog.admin).get("certificate") is not None,
            timeout=30,
            what="catalog's certificate",
        )
        identity = certs(catalog.admin)["certificate"]
        assert isinstance(identity, dict)
        assert identity["identity"] == f"spiffe://cluster.local/ns/{namespace}/sa/catalog"

        wait_for(
            lambda: int(certs(intruder.admin)["failed_requests"]) >= 1,  # type: ignore[call-overload]
            timeout=30,
            what="the intruder's refusal",
        )
        assert certs(intruder.admin)["certificate"] is None
        assert mesh.control_plane is not None
        assert "token review" in mesh.control_plane.log.read_text()
        # The root the control plane published is the one in the Secret.
        secret = kube.kubectl_json("get", "secret", "lightmesh-ca", "-n", namespace)
        assert (
            base64.b64decode(secret["data"]["ca.crt"]) == (mesh.state_dir / "root.pem").read_bytes()
        )
