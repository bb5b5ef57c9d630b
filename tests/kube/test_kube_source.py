"""The control plane watching a real kube-apiserver: kubectl apply → sidecars route accordingly.

"Pods" are Pod objects plus real local processes (demo apps) listening on this machine's primary
address (the API server rejects loopback endpoint addresses); their EndpointSlices point at them.
"""

import json
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lightmeshctl.demo.mesh import LocalMesh, free_port, http_get, wait_for
from tests.support.kube import KubeCluster, advertise_address

pytestmark = pytest.mark.kube


def vs(namespace: str, routes: str) -> str:
    return f"""
apiVersion: lightmesh.io/v1alpha1
kind: VirtualService
metadata: {{name: catalog, namespace: {namespace}}}
spec:
  hosts: [catalog]
  http:
    - route:
{routes}
"""


ALL_V2 = "        - destination: {host: catalog, subset: v2}"
ALL_V1 = "        - destination: {host: catalog, subset: v1}"
BAD_WEIGHTS = """        - destination: {host: catalog, subset: v1}
          weight: 60
        - destination: {host: catalog, subset: v2}
          weight: 60"""


BAD_REGEX = """
apiVersion: lightmesh.io/v1alpha1
kind: VirtualService
metadata: {{name: catalog, namespace: {namespace}}}
spec:
  hosts: [catalog]
  http:
    - match: [{{uri: {{regex: '/items/(['}}}}]
      route: [{{destination: {{host: catalog, subset: v2}}}}]
    - route: [{{destination: {{host: catalog, subset: v1}}}}]
"""


def rule(namespace: str) -> str:
    return f"""
apiVersion: lightmesh.io/v1alpha1
kind: DestinationRule
metadata: {{name: catalog, namespace: {namespace}}}
spec:
  host: catalog
  subsets:
    - {{name: v1, labels: {{version: v1}}}}
    - {{name: v2, labels: {{version: v2}}}}
"""


def pod_and_slice(namespace: str, version: str, address: str, port: int, *, ready: bool) -> str:
    return f"""
apiVersion: v1
kind: Pod
metadata: {{name: catalog-{version}, namespace: {namespace}, labels: {{app: catalog, version: {version}}}}}
spec:
  containers: [{{name: app, image: example.invalid/catalog:{version}}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: catalog-{version}
  namespace: {namespace}
  labels: {{kubernetes.io/service-name: catalog}}
addressType: IPv4
ports: [{{name: http, port: {port}, protocol: TCP}}]
endpoints:
  - addresses: ["{address}"]
    conditions: {{ready: {json.dumps(ready)}}}
    targetRef: {{kind: Pod, name: catalog-{version}, namespace: {namespace}}}
"""


@pytest.fixture
def shop(kube: KubeCluster, crds: None, namespace: str, tmp_path: Path) -> Iterator[LocalMesh]:
    """Control plane watching the API server; catalog v1/v2 apps; a frontend app with a sidecar."""
    yield from _shop(kube, namespace, tmp_path, ())


def _shop(
    kube: KubeCluster, namespace: str, tmp_path: Path, extra_args: tuple[str, ...]
) -> Iterator[LocalMesh]:
    address = advertise_address()
    assert address, "no non-loopback address on this machine for endpoint addresses"
    empty = tmp_path / "files"
    empty.mkdir()
    with LocalMesh(config_dir=empty, work_dir=tmp_path / "mesh") as mesh:
        ports = {}
        for version in ("v1", "v2"):
            ports[version] = free_port()
            mesh.spawn(
                f"catalog-{version}",
                ["-m", "lightmeshctl.demo.app", "--name", "catalog", "--version", version,
                 "--workload", f"catalog-{version}", "--host", address, "--port", str(ports[version])],
            )  # fmt: skip
        service = f"""
apiVersion: v1
kind: Service
metadata: {{name: catalog, namespace: {namespace}}}
spec:
  ports: [{{name: http, port: 80, targetPort: 8080}}]
"""
        docs = [service, rule(namespace)] + [
            pod_and_slice(namespace, v, address, ports[v], ready=True) for v in ("v1", "v2")
        ]
        kube.kubectl("apply", "-f", "-", input="\n---\n".join(docs))
        mesh.start_control_plane(extra_args=("--kubeconfig", str(kube.kubeconfig), *extra_args))
        mesh.start_workload("frontend", service="frontend", call="catalog", namespace=namespace)
        mesh.wait_ready()
        mesh.shop_address = address  # type: ignore[attr-defined]
        mesh.shop_ports = ports  # type: ignore[attr-defined]
        yield mesh


def versions(mesh: LocalMesh, n: int = 6) -> Counter[str]:
    seen: Counter[str] = Counter()
    for _ in range(n):
        reply = http_get(f"{mesh.workloads['frontend'].inbound}/")
        body = reply.json()
        upstream = body.get("upstream", {})
        seen[str(upstream.get("version", f"{reply.status}:{upstream.get('error')}"))] += 1
    return seen


def accepted_condition(kube: KubeCluster, namespace: str, *, status: str) -> dict[str, Any] | None:
    obj = kube.kubectl_json("get", "virtualservice", "catalog", "-n", namespace)
    for condition in obj.get("status", {}).get("conditions", []):
        if condition["type"] == "Accepted" and condition["status"] == status:
            assert obj["status"]["observedGeneration"] == obj["metadata"]["generation"]
            return condition  # type: ignore[no-any-return]
    return None


def routed_to(mesh: LocalMesh, version: str, *, timeout: float = 30) -> float:
    """Seconds until every request lands on `version`."""
    started = time.monotonic()
    wait_for(lambda: versions(mesh) == Counter({version: 6}), timeout=timeout, interval=0.02,
             what=f"all traffic on catalog {version}")  # fmt: skip
    return time.monotonic() - started


def test_kubectl_apply_routes_traffic_and_invalid_changes_keep_the_last_good(
    kube: KubeCluster, namespace: str, shop: LocalMesh
) -> None:
    # No VirtualService yet: the service's ready endpoints share the traffic.
    wait_for(lambda: set(versions(shop, 8)) == {"v1", "v2"}, timeout=30, what="both endpoints")

    kube.kubectl("apply", "-f", "-", input=vs(namespace, ALL_V2))
    wait_for(
        lambda: accepted_condition(kube, namespace, status="True"),
        timeout=30,
        what="Accepted=True written by the leader",
    )
    for version, routes in (("v2", ALL_V2), ("v1", ALL_V1)):
        started = time.monotonic()
        kube.kubectl("apply", "-f", "-", input=vs(namespace, routes))
        routed_to(shop, version)
        # Reported (never asserted: shared machines are noisy); see the closing notes.
        print(f"kubectl apply → all traffic on {version}: {time.monotonic() - started:.3f}s")

    # Weights not summing to 100: the API server's CEL rule refuses it at apply time.
    refused = kube.kubectl("apply", "-f", "-", input=vs(namespace, BAD_WEIGHTS), check=False)
    assert refused.returncode != 0
    assert "spec.http[0].route: Invalid value" in refused.stderr
    assert "weights must sum to 100" in refused.stderr

    # Valid for the API server's schema, invalid for lightmesh: stored, reported, never pushed.
    kube.kubectl("apply", "-f", "-", input=BAD_REGEX.format(namespace=namespace))
    problem = wait_for(
        lambda: next((p for p in shop.problems() if "does not compile" in p["text"]), None),
        timeout=30,
        what="the regex problem to be reported",
    )
    assert problem["text"].startswith(
        f"kubernetes: VirtualService {namespace}/catalog: spec.http[0].match[0].uri.regex: "
        "'/items/([' does not compile"
    )
    assert versions(shop, 10) == Counter({"v1": 10})
    condition = wait_for(
        lambda: accepted_condition(kube, namespace, status="False"),
        timeout=30,
        what="Accepted=False on the VirtualService",
    )
    assert condition["reason"] == "Invalid"
    assert condition["message"].startswith("spec.http[0].match[0].uri.regex: '/items/(['")
    table = kube.kubectl("get", "vs", "-n", namespace).stdout.split()
    assert table[:5] == ["NAME", "HOSTS", "ACCEPTED", "AGE", "catalog"] and "False" in table

    # A route to a subset no DestinationRule defines (yet): as Istio, accepted with a warning in
    # its status, and its requests answer 503 with flag NC until the subset exists.
    kube.kubectl("apply", "-f", "-", input=vs(namespace, ALL_V2.replace("v2", "v9")))
    condition = wait_for(
        lambda: accepted_condition(kube, namespace, status="True"),
        timeout=30,
        what="Accepted=True with a warning naming the unknown subset",
    )
    assert "subset 'v9'" in condition["message"], condition
    assert condition["message"].startswith("accepted with warnings: "), condition
    # The frontend app answers 502 when its call fails; the body is its sidecar's 503 NC reply.
    missing = f"502:cluster 'outbound|v9|catalog.{namespace}.svc.cluster.local' not found"
    wait_for(lambda: versions(shop, 4) == Counter({missing: 4}), timeout=30, what="503 NC")

    kube.kubectl("delete", "virtualservice", "catalog", "-n", namespace)
    wait_for(lambda: set(versions(shop, 8)) == {"v1", "v2"}, timeout=30, what="default route")


def test_endpoint_slices_decide_where_traffic_goes(
    kube: KubeCluster, namespace: str, shop: LocalMesh
) -> None:
    address: str = shop.shop_address  # type: ignore[attr-defined]
    ports: dict[str, int] = shop.shop_ports  # type: ignore[attr-defined]
    wait_for(lambda: set(versions(shop, 8)) == {"v1", "v2"}, timeout=30, what="both endpoints")
    # v2 terminating (ready: false): it stops receiving new requests.
    kube.kubectl(
        "apply", "-f", "-", input=pod_and_slice(namespace, "v2", address, ports["v2"], ready=False)
    )
    routed_to(shop, "v1")
    kube.kubectl(
        "apply", "-f", "-", input=pod_and_slice(namespace, "v2", address, ports["v2"], ready=True)
    )
    wait_for(lambda: set(versions(shop, 8)) == {"v1", "v2"}, timeout=30, what="v2 back")
    kube.kubectl("delete", "endpointslice", "catalog-v1", "-n", namespace)
    routed_to(shop, "v2")


def test_only_the_lease_holder_writes_status_and_leadership_moves_on(
    kube: KubeCluster, crds: None, namespace: str, tmp_path: Path
) -> None:
    lease_ns = namespace  # a private Lease per test
    with LocalMesh(config_dir=tmp_path, work_dir=tmp_path / "mesh") as mesh:
        replicas = [
            mesh.spawn(
                f"controlplane-{i}",
                [
                    "-m",
                    "lightmeshctl.cli",
                    "controlplane",
                    "--kubeconfig",
                    str(kube.kubeconfig),
                    "--port",
                    str(free_port()),
                    "--debug-port",
                    str(free_port()),
                    "--lease-namespace",
                    lease_ns,
                ],
            )
            for i in range(2)
        ]

        def leaders() -> list[int]:
            return [i for i, r in enumerate(replicas) if r.alive() and _leads(r.log)]

        first = wait_for(leaders, timeout=30, what="a leader")
        assert len(first) == 1
        holder = kube.kubectl_json("get", "lease", "lightmesh-controlplane", "-n", lease_ns)
        assert holder["spec"]["holderIdentity"]
        kube.kubectl("apply", "-f", "-", input=rule(namespace) + "\n---\n" + vs(namespace, ALL_V2))
        wait_for(
            lambda: accepted_condition(kube, namespace, status="True"), timeout=30, what="status"
        )
        follower = 1 - first[0]
        assert not _leads(replicas[follower].log)

        replicas[first[0]].stop(kill=True)
        wait_for(lambda: _leads(replicas[follower].log), timeout=40, what="the follower to lead")
        # The new leader writes status for changes made after the handover.
        kube.kubectl("apply", "-f", "-", input=BAD_REGEX.format(namespace=namespace))
        wait_for(
            lambda: accepted_condition(kube, namespace, status="False"), timeout=30, what="status"
        )


def _leads(log: Path) -> bool:
    events = [
        json.loads(line).get("event")
        for line in log.read_text().splitlines()
        if line.startswith("{")
    ]
    leader_events = [e for e in events if e in ("leader", "follower")]
    return bool(leader_events) and leader_events[-1] == "leader"


def test_changes_made_after_an_api_server_restart_arrive(
    kube: KubeCluster, namespace: str, shop: LocalMesh
) -> None:
    kube.kubectl("apply", "-f", "-", input=vs(namespace, ALL_V1))
    routed_to(shop, "v1")
    kube.restart_apiserver()  # every watch of the control plane breaks
    kube.kubectl("apply", "-f", "-", input=vs(namespace, ALL_V2))
    routed_to(shop, "v2", timeout=30)
    kube.kubectl("delete", "endpointslice", "catalog-v2", "-n", namespace)
    gone = f"502:no healthy upstream in outbound|v2|catalog.{namespace}.svc.cluster.local"
    wait_for(lambda: versions(shop, 2) == Counter({gone: 2}), timeout=30, what="v2's endpoint gone")


def routed_hosts(mesh: LocalMesh) -> list[str]:
    dump = http_get(f"{mesh.workloads['frontend'].admin}/config_dump").json()
    return sorted(dump["versions"]["ROUTES"]["resources"])


def sidecar_accepted(kube: KubeCluster, namespace: str) -> dict[str, Any] | None:
    obj = kube.kubectl_json("get", "sidecars.lightmesh.io", "narrow", "-n", namespace)
    for condition in obj.get("status", {}).get("conditions", []):
        if condition["type"] == "Accepted":
            return condition  # type: ignore[no-any-return]
    return None


def test_export_to_and_sidecar_narrow_what_a_sidecar_receives(
    shop: LocalMesh, kube: KubeCluster, namespace: str
) -> None:
    """Istio's visibility from the cluster: a Service's exportTo annotation, then a Sidecar
    resource (validated and given a status like the other kinds)."""
    catalog = f"catalog.{namespace}.svc.cluster.local"
    wait_for(lambda: catalog in routed_hosts(shop), timeout=20, what="catalog routed")
    annotation = "networking.istio.io/exportTo"
    kube.kubectl("annotate", "service", "catalog", "-n", namespace, f"{annotation}=elsewhere")
    wait_for(lambda: catalog not in routed_hosts(shop), timeout=20, what="catalog hidden")
    kube.kubectl(
        "annotate", "--overwrite", "service", "catalog", "-n", namespace, f"{annotation}=."
    )
    wait_for(lambda: catalog in routed_hosts(shop), timeout=20, what="catalog back")
    bad = f"""
apiVersion: lightmesh.io/v1alpha1
kind: Sidecar
metadata: {{name: narrow, namespace: {namespace}}}
spec:
  egress: [{{hosts: [catalog]}}]
"""
    kube.kubectl("apply", "-f", "-", input=bad)
    condition = wait_for(
        lambda: (c := sidecar_accepted(kube, namespace)) and c["status"] == "False" and c,
        timeout=30,
        what="the invalid Sidecar's Accepted=False condition",
    )
    assert "spec.egress[0].hosts[0]" in condition["message"], condition
    assert catalog in routed_hosts(shop)  # an invalid Sidecar narrows nothing
    kube.kubectl("apply", "-f", "-", input=bad.replace("[catalog]", "[elsewhere/*]"))
    wait_for(lambda: catalog not in routed_hosts(shop), timeout=20, what="the Sidecar to narrow")
    wait_for(
        lambda: (c := sidecar_accepted(kube, namespace)) and c["status"] == "True",
        timeout=30,
        what="the Sidecar accepted",
    )
