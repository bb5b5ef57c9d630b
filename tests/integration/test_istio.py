"""Istio's own YAML as it is written: every Istio sample through `lightmesh analyze` (a real CLI
process), and Istio-group resources through the mesh (real control plane, sidecars and apps on
loopback): a route to a subset not defined yet answers 503 NC until its DestinationRule arrives,
`match.port`, and a VirtualService bound only to a Gateway leaving the sidecars alone."""

import http.client
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from lightmeshctl.demo.mesh import LocalMesh, Reply, wait_for
from tests.integration.test_traffic import FLAGS, get, start, version

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "tests" / "data" / "istio-samples"
SAMPLE_FILES = sorted(p.relative_to(SAMPLES).as_posix() for p in SAMPLES.rglob("*.yaml"))

# The deprecated fields of the legacy task pages: read with a warning naming the current form.
DEPRECATED = {
    "tasks/legacy/circuit-breaking-consecutiveErrors.yaml": (
        "spec.trafficPolicy.outlierDetection.consecutiveErrors: warning: deprecated; read as "
        "consecutiveGatewayErrors: 1"
    ),
    "tasks/legacy/mirroring-mirrorPercent.yaml": (
        "spec.http[0].mirrorPercent: warning: deprecated; read as mirrorPercentage: {value: 100}"
    ),
    "tasks/legacy/ratings-test-abort-percent.yaml": (
        "spec.http[0].fault.abort.percent: warning: deprecated; read as percentage: {value: 100}"
    ),
    "tasks/request-timeouts/2-ratings-delay-2s.yaml": (
        "spec.http[0].fault.delay.percent: warning: deprecated; read as percentage: {value: 100}"
    ),
}


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    """An empty config directory (not the demo's): each test writes its resources."""
    target = tmp_path / "config"
    target.mkdir()
    return target


def analyze(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lightmeshctl", "analyze", "-f", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=REPO,
    )


@pytest.mark.parametrize("sample", SAMPLE_FILES)
def test_every_istio_sample_passes_analyze_as_written(sample: str) -> None:
    result = analyze(SAMPLES / sample)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Error:" not in result.stdout
    last = result.stdout.strip().splitlines()[-1]
    assert last.endswith(", 0 problems in 1 files"), last
    if sample != "httpbin/httpbin.yaml":  # only Kubernetes objects: nothing for the mesh
        assert not last.startswith("0 resources"), last
    if sample in DEPRECATED:
        assert DEPRECATED[sample] in result.stdout, result.stdout


def test_analyze_still_refuses_what_istio_refuses(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        (SAMPLES / "bookinfo/networking/bookinfo-gateway.yaml")
        .read_text()
        .replace("  gateways:\n  - bookinfo-gateway\n", "")  # hosts "*" bound to the mesh
    )
    result = analyze(bad)
    assert result.returncode == 1
    assert "spec.hosts[0]: '*' is not allowed for a VirtualService bound to the mesh" in (
        result.stdout
    )


ROUTE_TO_V2 = """
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata:
  name: catalog
spec:
  hosts:
  - catalog
  http:
  - route:
    - destination:
        host: catalog
        subset: v2
"""

RULE = """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: catalog
spec:
  host: catalog
  trafficPolicy:
    tls:
      mode: ISTIO_MUTUAL
  subsets:
  - name: v1
    labels:
      version: v1
  - name: v2
    labels:
      version: v2
"""


def test_route_to_a_subset_not_defined_yet_answers_503_nc_until_its_rule_arrives(
    mesh: LocalMesh, config_dir: Path
) -> None:
    (config_dir / "vs.yaml").write_text(ROUTE_TO_V2)
    proxy = start(mesh)
    reply = wait_for(
        lambda: (r := get(proxy)).status == 503 and r, timeout=15, what="503 from the sidecar"
    )
    assert reply.headers.get(FLAGS) == "NC", reply.headers
    assert b"outbound|v2|catalog.default.svc.cluster.local" in reply.body
    problems = mesh.problems()
    assert any("subset 'v2'" in p["text"] and "warning" in p["text"] for p in problems), problems
    (config_dir / "dr.yaml").write_text(RULE)
    wait_for(lambda: get(proxy).status == 200, timeout=15, what="the subset to exist")
    assert Counter(version(get(proxy)) for _ in range(10)) == Counter({"v2": 10})
    assert not any("subset 'v2'" in p["text"] for p in mesh.problems())


PORT_ROUTES = """
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata:
  name: catalog
spec:
  hosts:
  - catalog
  gateways:
  - mesh
  http:
  - match:
    - port: 8080
    route:
    - destination:
        host: catalog
        subset: v2
  - route:
    - destination:
        host: catalog
        subset: v1
---
# Bound only to a Gateway: the sidecars never apply it (it sorts first, and would send all to v2).
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: a-edge
spec:
  hosts:
  - catalog
  gateways:
  - bookinfo-gateway
  http:
  - route:
    - destination:
        host: catalog
        subset: v2
"""


def get_port(proxy: str, port: int) -> Reply:
    """GET http://catalog:<port>/ through the client sidecar."""
    host, proxy_port = proxy.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(proxy_port), timeout=10)
    try:
        conn.request("GET", f"http://catalog:{port}/", headers={"Host": f"catalog:{port}"})
        response = conn.getresponse()
        return Reply(
            response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        )
    finally:
        conn.close()


def test_match_port_routes_by_the_port_the_request_was_sent_to(
    mesh: LocalMesh, config_dir: Path
) -> None:
    (config_dir / "dr.yaml").write_text(RULE)
    (config_dir / "vs.yaml").write_text(PORT_ROUTES)
    proxy = start(mesh)
    # Until the DestinationRule's subsets reach the sidecar, its routes may answer 503 NC.
    wait_for(
        lambda: (r := get_port(proxy, 8080)).status == 200 and r.json()["version"] == "v2",
        timeout=30,
        what="the port route",
    )
    assert Counter(version(get_port(proxy, 8080)) for _ in range(10)) == Counter({"v2": 10})
    assert Counter(version(get_port(proxy, 9090)) for _ in range(10)) == Counter({"v1": 10})
    # No port in the Host: HTTP's 80.
    assert Counter(version(get(proxy)) for _ in range(10)) == Counter({"v1": 10})
