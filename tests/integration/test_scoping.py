"""Scoped, incremental delivery through real processes: each sidecar receives only what it can use,
and one endpoint change reaches exactly the sidecars that use that cluster, with nothing else."""

from collections.abc import Iterator
from pathlib import Path

import pytest

from lightmeshctl.demo.mesh import LocalMesh, http_get, wait_for

pytestmark = pytest.mark.integration

SIDECARS = """\
apiVersion: lightmesh.io/v1alpha1
kind: Sidecar
metadata: {name: default, namespace: alpha}
spec:
  egress:
    - hosts: ["./*"]
---
apiVersion: lightmesh.io/v1alpha1
kind: Sidecar
metadata: {name: default, namespace: beta}
spec:
  egress:
    - hosts: ["./*", "shared/*"]
"""

PRIVATE_ROUTE = """\
apiVersion: lightmesh.io/v1alpha1
kind: VirtualService
metadata: {name: common, namespace: shared}
spec:
  hosts: [common]
  exportTo: ["."]
  http:
    - name: private
      route:
        - destination: {host: common}
"""


@pytest.fixture
def mesh(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[LocalMesh]:
    config = tmp_path / "config"
    config.mkdir()
    (config / "sidecars.yaml").write_text(SIDECARS)
    (config / "private-route.yaml").write_text(PRIVATE_ROUTE)
    with LocalMesh(config_dir=config, work_dir=tmp_path / "mesh") as local:
        yield local
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            for process in local._processes:
                print(f"--- {process.name} ---\n{process.tail(30)}")


def dump(mesh: LocalMesh, workload: str) -> dict[str, object]:
    reply = http_get(f"{mesh.workloads[workload].admin}/config_dump")
    return reply.json()  # type: ignore[no-any-return]


def routed(mesh: LocalMesh, workload: str) -> list[str]:
    versions = dump(mesh, workload)["versions"]
    return sorted(versions["ROUTES"]["resources"])  # type: ignore[index]


def fqdn(service: str, namespace: str) -> str:
    return f"{service}.{namespace}.svc.cluster.local"


def start(mesh: LocalMesh) -> None:
    mesh.start_control_plane()
    mesh.start_workload("a-api", service="api", namespace="alpha")
    mesh.start_workload("a-web", service="web", namespace="alpha", call="api")
    mesh.start_workload("b-api", service="api", namespace="beta")
    mesh.start_workload("b-web", service="web", namespace="beta", call="common.shared")
    mesh.start_workload("common", service="common", namespace="shared")
    mesh.start_workload("outsider", service="outsider", namespace="default")
    mesh.wait_ready()
    everything = 6

    def settled() -> bool:
        return len(routed(mesh, "outsider")) == everything and len(routed(mesh, "b-web")) == 3

    wait_for(settled, timeout=20, what="every registration to reach every sidecar in scope")


def test_sidecars_receive_only_their_scope(mesh: LocalMesh) -> None:
    start(mesh)
    assert routed(mesh, "a-web") == [fqdn("api", "alpha"), fqdn("web", "alpha")]
    assert routed(mesh, "b-web") == sorted(
        [fqdn("api", "beta"), fqdn("web", "beta"), fqdn("common", "shared")]
    )
    assert len(routed(mesh, "outsider")) == 6  # no Sidecar in its namespace: everything
    clusters = dump(mesh, "a-web")["versions"]["CLUSTERS"]["resources"]  # type: ignore[index]
    assert sorted(clusters) == [
        f"outbound||{fqdn('api', 'alpha')}",
        f"outbound||{fqdn('web', 'alpha')}",
    ]
    # The VirtualService exported to its own namespace only: beta's sidecars route common by
    # the default route, shared's own sidecar by the VirtualService's.
    config = dump(mesh, "b-web")["config"]["ROUTES"]  # type: ignore[index]
    common = next(v for v in config if v["name"] == fqdn("common", "shared"))
    assert [r["name"] for r in common["routes"]] == ["default"]
    own = next(
        v for v in dump(mesh, "common")["config"]["ROUTES"] if v["name"] == fqdn("common", "shared")
    )  # type: ignore[index]
    assert [r["name"] for r in own["routes"]] == ["private"]
    # Through the sidecars: in scope answers, out of scope is not routed (404 NR).
    assert http_get(f"{mesh.workloads['a-web'].inbound}/").status == 200
    assert http_get(f"{mesh.workloads['b-web'].inbound}/").status == 200
    stray = http_get(f"http://{fqdn('common', 'shared')}/", proxy=mesh.workloads["a-web"].outbound)
    assert stray.status == 404 and stray.headers.get("x-lightmesh-response-flags") == "NR"
    # The control plane says the same: a-web's view, per type synced with its own versions.
    row = next(p for p in mesh.proxies() if p["workload"] == "a-web")
    assert row["scope"]["sidecar"] == "Sidecar alpha/default"
    assert row["types"]["ROUTES"]["resources"] == 2
    assert {t["state"] for t in row["types"].values()} == {"SYNCED"}


def test_one_endpoint_change_reaches_only_the_sidecars_using_that_cluster(mesh: LocalMesh) -> None:
    start(mesh)
    before = {name: dump(mesh, name)["versions"] for name in mesh.workloads}
    mesh.start_workload("a-api-2", service="api", namespace="alpha")  # a second api endpoint

    def alpha_updated() -> bool:
        endpoints = dump(mesh, "a-web")["config"]["ENDPOINTS"]  # type: ignore[index]
        api = next(e for e in endpoints if e["clusterName"] == f"outbound||{fqdn('api', 'alpha')}")
        return len(api["endpoints"]) == 2

    wait_for(alpha_updated, timeout=20, what="the new api endpoint to reach a-web")
    wait_for(lambda: len(routed(mesh, "outsider")) == 6, timeout=5, what="outsider")
    wait_for(
        lambda: dump(mesh, "outsider")["versions"]["ENDPOINTS"] != before["outsider"]["ENDPOINTS"],  # type: ignore[index]
        timeout=20,
        what="the new endpoint to reach the unscoped sidecar",
    )
    after = {name: dump(mesh, name)["versions"] for name in before}
    for name in ("a-web", "a-api", "common", "outsider"):  # they see alpha's api cluster
        assert after[name]["ENDPOINTS"]["applied_at"] > before[name]["ENDPOINTS"]["applied_at"]  # type: ignore[index]
        for other in ("CLUSTERS", "ROUTES", "INBOUND"):  # an endpoint change sends nothing else
            assert after[name][other] == before[name][other], (name, other)  # type: ignore[index]
    for name in ("b-api", "b-web"):  # they do not: not a byte
        assert after[name] == before[name], name
