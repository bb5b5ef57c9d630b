"""The mesh on a real single-node cluster: kubelet + containerd running our images, installed with
the README's commands (tests/cluster/mesh.py), then everything a user relies on, checked for real.

Tests run in file order and share one installed mesh; the ones that change it (STRICT mTLS, a
rolling update, deleting the control-plane leader) put it back the way they found it.
"""

from __future__ import annotations

import base64
import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.cluster.mesh import SHOP_DEPLOYMENTS, Mesh, Traffic, wait_until
from tests.support.cluster import REPO

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(900)]  # a hang guard; waits are bounded

SHOP_APPS = {"frontend", "catalog", "customer"}


def _shop_pods(mesh: Mesh) -> list[dict[str, Any]]:
    return [p for p in mesh.pods("shop") if p["metadata"]["labels"].get("app") in SHOP_APPS]


def test_shop_pods_run_the_injected_proxy_first_after_the_init_container(mesh: Mesh) -> None:
    pods = _shop_pods(mesh)
    assert len(pods) == len(SHOP_DEPLOYMENTS)
    for pod in pods:
        name = pod["metadata"]["name"]
        containers = [c["name"] for c in pod["spec"]["containers"]]
        assert containers == ["lightmesh-proxy", "app"], name
        assert pod["metadata"]["annotations"]["lightmesh.io/status"] == "injected"
        init = pod["status"]["initContainerStatuses"]
        assert [c["name"] for c in init] == ["lightmesh-init"], name
        assert init[0]["state"]["terminated"]["reason"] == "Completed", (name, init)
        assert init[0]["state"]["terminated"]["exitCode"] == 0
        statuses = {c["name"]: c for c in pod["status"]["containerStatuses"]}
        assert all(c["ready"] for c in statuses.values()), (name, statuses)  # READY 2/2
        assert all(c["restartCount"] == 0 for c in statuses.values()), (name, statuses)
        # The proxy's container started before the app's (postStart held the app back).
        proxy_started = statuses["lightmesh-proxy"]["state"]["running"]["startedAt"]
        app_started = statuses["app"]["state"]["running"]["startedAt"]
        assert proxy_started <= app_started, name
    listing = mesh.readme("kubectl -n shop get pods")
    assert listing.count(" 2/2 ") == len(SHOP_DEPLOYMENTS), listing


def test_clusterip_traffic_is_intercepted_by_iptables_in_the_pod_netns(mesh: Mesh) -> None:
    cluster = mesh.cluster
    frontend = next(p for p in _shop_pods(mesh) if p["metadata"]["labels"]["app"] == "frontend")
    name = frontend["metadata"]["name"]
    # The rules lightmesh-init installed, read from inside the pod's own network namespace.
    pid = cluster.container_pid("shop", name, "app")
    rules = subprocess.run(
        ["nsenter", f"--net=/proc/{pid}/ns/net", "iptables-save", "-t", "nat"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert "-A OUTPUT -p tcp -j LIGHTMESH_OUTBOUND" in rules, rules
    assert "-A PREROUTING -p tcp -j LIGHTMESH_INBOUND" in rules, rules
    assert "--to-ports 15001" in rules and "--to-ports 15006" in rules, rules
    # A plain call to the catalog Service (no proxy configured in the client; CoreDNS answers
    # its ClusterIP) from the app container lands on the frontend's sidecar; catalog's app sees
    # none of the mesh's headers, not even the one the frontend app tried to forge.
    script = (
        "import json, socket, urllib.request\n"
        "request = urllib.request.Request('http://catalog/',\n"
        "    headers={'x-lightmesh-peer': 'admin;kube-system;admin;v1'})\n"
        "with urllib.request.urlopen(request, timeout=10) as r:\n"
        "    print(json.dumps({'status': r.status, 'body': json.load(r),\n"
        "                      'resolved': socket.gethostbyname('catalog')}))\n"
    )
    out = mesh.kubectl("-n", "shop", "exec", name, "-c", "app", "--", "python", "-c", script)
    answer = json.loads(out.stdout)
    assert answer["resolved"] == mesh.cluster_ip("shop", "catalog"), answer
    assert answer["status"] == 200
    assert answer["body"]["service"] == "catalog"
    seen = answer["body"]["headers"]
    assert [name for name in seen if name.startswith("x-lightmesh-")] == [], answer
    # Through the node's own ClusterIP path (kube-proxy DNAT) into the frontend's inbound.
    status, body = mesh.get(f"http://{mesh.cluster_ip('shop', 'frontend')}/")
    assert status == 200 and body["upstream"]["service"] == "catalog", body


def test_weighted_and_header_routing_as_in_the_demo(mesh: Mesh) -> None:
    mesh.readme_background("kubectl -n shop port-forward deploy/frontend 8080:8080", 8080)
    out = mesh.readme("curl -s localhost:8080/ ; curl -s -H 'end-user: jason' localhost:8080/")
    first, jason = (json.loads(line) for line in out.replace("}{", "}\n{").splitlines())
    assert first["upstream"]["service"] == "catalog"
    assert jason["upstream"]["version"] == "v2", jason
    counts = {"v1": 0, "v2": 0}
    for _ in range(200):
        status, body = mesh.get("http://127.0.0.1:8080/")
        assert status == 200 and body["upstream_status"] == 200, body
        counts[body["upstream"]["version"]] += 1
    # 80/20 of 200: v2 between 15 and 70 (binomial; p < 1e-6 outside) and v1 the majority.
    assert 15 <= counts["v2"] <= 70 and counts["v1"] > counts["v2"], counts
    for _ in range(20):
        status, body = mesh.get("http://127.0.0.1:8080/", {"end-user": "jason"})
        assert status == 200 and body["upstream"]["version"] == "v2", body


def _controlplane_pods(mesh: Mesh) -> list[str]:
    pods = mesh.pods("lightmesh-system", "app=lightmesh-controlplane")
    return sorted(
        p["metadata"]["name"] for p in pods if p["metadata"].get("deletionTimestamp") is None
    )


REPLICAS = (
    "replicas=($(kubectl -n lightmesh-system get pods -l app=lightmesh-controlplane -o name))"
)
PROXY_STATUS_PORT_FORWARDS = (
    ("kubectl -n lightmesh-system port-forward ${replicas[0]} 15014:15014", 15014),
    ("kubectl -n lightmesh-system port-forward ${replicas[1]} 15015:15014", 15015),
)
PROXY_STATUS = (
    "lightmesh proxy-status --control-plane http://127.0.0.1:15014 "
    "--control-plane http://127.0.0.1:15015"
)


PROXY_CONFIG_PORT_FORWARD = ("kubectl -n shop port-forward deploy/frontend 15000:15000", 15000)
PROXY_CONFIG = "lightmesh proxy-config certs --admin http://127.0.0.1:15000"


def test_admin_and_debug_ports_are_off_the_pod_network_and_reached_by_port_forward(
    mesh: Mesh,
) -> None:
    """From the node: a sidecar's admin port and the control plane's debug port refuse; their
    metrics ports serve /metrics and /ready and nothing else. `proxy-config` reaches the
    admin port through `kubectl port-forward`, as the README says."""
    pod = next(p for p in _shop_pods(mesh) if p["metadata"]["labels"]["app"] == "frontend")
    ip = pod["status"]["podIP"]
    with pytest.raises(OSError, match=r"[Rr]efused"):
        mesh.cluster.http(f"http://{ip}:15000/config_dump")
    assert mesh.cluster.http(f"http://{ip}:15020/ready")[0] == 200
    assert mesh.cluster.http(f"http://{ip}:15020/config_dump")[0] == 404
    for replica in mesh.pods("lightmesh-system", "app=lightmesh-controlplane"):
        address = replica["status"]["podIP"]
        with pytest.raises(OSError, match=r"[Rr]efused"):
            mesh.cluster.http(f"http://{address}:15014/debug/proxies")
        assert mesh.cluster.http(f"http://{address}:15016/metrics")[0] == 200
        assert mesh.cluster.http(f"http://{address}:15016/debug/proxies")[0] == 404
    mesh.readme_background(*PROXY_CONFIG_PORT_FORWARD)
    try:
        out = mesh.readme(PROXY_CONFIG)
    finally:
        mesh.stop_background()
    assert "identity:   spiffe://cluster.local/ns/shop/" in out, out


def test_proxy_status_through_port_forwards_shows_every_proxy_synced(mesh: Mesh) -> None:
    proxies = len(SHOP_DEPLOYMENTS) + 1  # and the ingress gateway of deploy/gateway.yaml

    def all_synced() -> str | None:
        out = _proxy_status_once(mesh)
        lines = out.splitlines()
        columns = len(lines[0].split()) - 1 if lines else 0
        return (
            out
            if len(lines) == 1 + proxies and out.count("SYNCED (") == columns * proxies
            else None
        )

    out = wait_until(
        all_synced, "proxy-status: the 4 sidecars and the gateway SYNCED for every type", 60
    )
    header, *rows = out.splitlines()
    assert header.split()[1:] == ["CLUSTERS", "ENDPOINTS", "ROUTES", "GATEWAY"], out
    sidecars = [row for row in rows if not row.startswith("lightmesh-ingressgateway-")]
    assert len(sidecars) == len(SHOP_DEPLOYMENTS), out
    assert {row.split("-")[0] for row in sidecars} == SHOP_APPS, out


def _proxy_status_once(mesh: Mesh) -> str:
    for command, port in PROXY_STATUS_PORT_FORWARDS:
        mesh.readme_background(command, port, prelude=REPLICAS)
    try:
        return mesh.readme(PROXY_STATUS)
    finally:
        mesh.stop_background()


def test_prometheus_scrapes_the_sidecars_through_kubernetes_sd(mesh: Mesh, tmp_path: Path) -> None:
    cluster = mesh.cluster
    config = yaml.safe_load((REPO / "deploy" / "prometheus" / "prometheus.yml").read_text())
    job = config["scrape_configs"][0]
    assert job["kubernetes_sd_configs"] == [{"role": "pod"}] and "file_sd_configs" not in job
    # Prometheus runs on the node, not in a pod: it reaches the API server through a kubeconfig
    # instead of the in-cluster service account. Scrape faster than the shipped 15s. Nothing
    # else changes: the relabel rules are the file's own.
    job["kubernetes_sd_configs"][0]["kubeconfig_file"] = str(cluster.kubeconfig)
    config["global"]["scrape_interval"] = "2s"
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    log = cluster.logs / "prometheus.log"
    # Built from its Go module by scripts/k8s/build.sh --cluster: Debian's prometheus 2.42 has no
    # Kubernetes discovery ("field kubernetes_sd_configs not found in type config.ScrapeConfig").
    prometheus = cluster.popen(
        str(cluster.bin_dir / "prometheus"), f"--config.file={path}", f"--storage.tsdb.path={tmp_path / 'data'}",
        "--web.listen-address=127.0.0.1:9090", log=log,
    )  # fmt: skip
    try:
        for _ in range(20):  # traffic for the request counters
            mesh.get(f"http://{mesh.cluster_ip('shop', 'frontend')}/")

        def query(promql: str) -> list[dict[str, Any]]:
            import urllib.parse

            status, body = mesh.get(
                f"http://127.0.0.1:9090/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
            )
            assert status == 200 and body["status"] == "success", body
            result: list[dict[str, Any]] = body["data"]["result"]
            return result

        def scraped() -> list[dict[str, Any]]:
            up = query('up{job="lightmesh-pods", namespace="shop"} == 1')
            return up if {s["metric"]["app"] for s in up} == SHOP_APPS and len(up) == 4 else []

        up = wait_until(scraped, "Prometheus scraping the 4 shop sidecars (up == 1)", 120)
        # One target per pod, at the port its injected annotation names.
        annotated = {
            f"{p['status']['podIP']}:{p['metadata']['annotations']['prometheus.io/port']}"
            for p in _shop_pods(mesh)
        }
        assert {s["metric"]["instance"] for s in up} == annotated, up
        requests = wait_until(
            lambda: query('sum by (app) (lightmesh_requests_total{namespace="shop"})'),
            "lightmesh_requests_total of the shop in Prometheus",
            60,
        )
        assert {s["metric"]["app"] for s in requests} >= {"frontend", "catalog", "customer"}

        # Both replicas, not the first one found: Prometheus scrapes targets on their own
        # schedules, so one replica can be up a scrape interval before the other (CI saw 1 of 2).
        def control_plane_scraped() -> list[dict[str, Any]]:
            up = query('up{job="lightmesh-pods", namespace="lightmesh-system"} == 1')
            return up if len(up) == 2 else []

        wait_until(control_plane_scraped, "both control-plane replicas scraped (up == 1)", 60)
        # Every sidecar's workload certificate was signed after a TokenReview of its token.
        signed = query("sum(lightmesh_controlplane_certificates_signed_total)")
        assert float(signed[0]["value"][1]) >= len(SHOP_DEPLOYMENTS), signed
    finally:
        prometheus.terminate()
        prometheus.wait(30)


STRICT = REPO / "examples" / "security" / "strict-namespace.yaml"


def _sidecar_python(mesh: Mesh, pod: str, script: str) -> str:
    out = mesh.kubectl(
        "-n", "shop", "exec", pod, "-c", "lightmesh-proxy", "--", "python", "-c", script
    )
    return out.stdout


def test_strict_mtls_between_pods_with_certificates_from_projected_tokens(mesh: Mesh) -> None:
    pods = {p["metadata"]["labels"]["app"]: p for p in _shop_pods(mesh)}
    catalog = next(p for p in _shop_pods(mesh) if p["metadata"]["labels"]["app"] == "catalog")
    # The proxy's credential is a projected ServiceAccount token for our audience only.
    token = _sidecar_python(
        mesh, catalog["metadata"]["name"],
        "print(open('/var/run/secrets/lightmesh/tokens/lightmesh-token').read())",
    ).strip()  # fmt: skip
    claims = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
    assert claims["aud"] == ["lightmesh"], claims
    assert claims["sub"] == "system:serviceaccount:shop:default", claims
    # ... with which the control plane (TokenReview) signed the workload certificate it serves.
    certs = json.loads(_sidecar_python(
        mesh, catalog["metadata"]["name"],
        "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:15000/certs').read().decode())",
    ))  # fmt: skip
    assert certs["certificate"]["identity"] == "spiffe://cluster.local/ns/shop/sa/default", certs
    catalog_ip = catalog["status"]["podIP"]
    mesh.kubectl("apply", "-f", str(STRICT))
    try:
        # Plaintext from outside the mesh (the node) to a pod's inbound is refused ...
        def refused() -> bool:
            try:
                mesh.get(f"http://{catalog_ip}:8080/")
            except OSError:
                return True
            return False

        wait_until(refused, "STRICT: plaintext to catalog refused", 60)
        # ... while pod-to-pod traffic through the sidecars still flows, over mutual TLS.
        peer = _sidecar_python(
            mesh, pods["frontend"]["metadata"]["name"],
            "import json, urllib.request\n"
            "r = urllib.request.urlopen('http://127.0.0.1:8080/', timeout=10)\n"
            "print(json.load(r)['upstream']['headers'].get('x-forwarded-client-cert', ''))",
        )  # fmt: skip
        assert "URI=spiffe://cluster.local/ns/shop/sa/default" in peer, peer
        after = json.loads(_sidecar_python(
            mesh, catalog["metadata"]["name"],
            "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:15000/certs').read().decode())",
        ))  # fmt: skip
        assert after["mtls"]["refused_plaintext"] >= 1, after
    finally:
        mesh.kubectl("delete", "-f", str(STRICT))
    wait_until(lambda: mesh.get(f"http://{catalog_ip}:8080/")[0] == 200, "PERMISSIVE again", 60)


GATEWAY_EXAMPLE = REPO / "examples" / "gateway" / "shop-gateway.yaml"
GATEWAY_IDENTITY = "spiffe://cluster.local/ns/lightmesh-gateway/sa/lightmesh-ingressgateway"


def _certificate_for(host: str, directory: Path) -> tuple[Path, Path, Path]:
    """(ca.crt, tls.crt, tls.key): a throwaway CA and a server certificate for `host`, made with
    openssl as a user would before `kubectl create secret tls`."""

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)

    (directory / "san.ext").write_text(f"subjectAltName=DNS:{host}\n")
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=shop test CA",
            "-keyout", "ca.key", "-out", "ca.crt")  # fmt: skip
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={host}", "-keyout", "tls.key",
            "-out", "tls.csr")  # fmt: skip
    openssl("x509", "-req", "-in", "tls.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", "1", "-extfile", "san.ext", "-out", "tls.crt")  # fmt: skip
    return directory / "ca.crt", directory / "tls.crt", directory / "tls.key"


def test_the_shop_through_the_ingress_gateway_over_https_to_strict_workloads(
    mesh: Mesh, tmp_path: Path
) -> None:
    """examples/gateway/shop-gateway.yaml as its header says, on the gateway deploy/ installed:
    HTTPS with a certificate from a kubernetes.io/tls Secret, httpsRedirect, routing by the
    VirtualService bound to the Gateway, and mutual TLS with the gateway's own identity to a
    STRICT namespace."""
    ca, crt, key = _certificate_for("shop.example.com", tmp_path)
    mesh.kubectl(
        "-n", "lightmesh-gateway", "create", "secret", "tls", "shop-example-com",
        f"--cert={crt}", f"--key={key}",
    )  # fmt: skip
    # The example is in Istio's apiVersions (for crds/istio/ + --istio-api); this cluster has
    # lightmesh's CRDs only, so it goes in as the example's header says: apiVersion changed.
    example = GATEWAY_EXAMPLE.read_text().replace("networking.istio.io/v1", "lightmesh.io/v1alpha1")
    mesh.cluster.kubectl("apply", "-f", "-", input=example)
    mesh.kubectl("apply", "-f", str(STRICT))
    ip = mesh.cluster_ip("lightmesh-gateway", "lightmesh-ingressgateway")

    def curl(url: str, *extra: str) -> tuple[str, str]:
        """(status and redirect target, body) of curl inside the cluster's network."""
        port = 443 if url.startswith("https") else 80
        result = mesh.cluster.run(
            "curl", "-sS", "--max-time", "10", "--resolve", f"shop.example.com:{port}:{ip}",
            "--cacert", str(ca), "-w", "\n%{http_code} %{redirect_url}", *extra, url,
        )  # fmt: skip
        body, _, status = result.stdout.rpartition("\n")
        return status.strip(), body

    try:
        status, body = wait_until(
            lambda: (r := curl("https://shop.example.com/"))[0] == "200" and r,
            "https://shop.example.com/ through the gateway answering 200",
            120,
        )
        page = json.loads(body)
        assert page["service"] == "frontend", page
        # The frontend's sidecar accepted the gateway under STRICT, by the gateway's identity.
        assert f"URI={GATEWAY_IDENTITY}" in page["headers"].get("x-forwarded-client-cert", ""), page
        assert page["upstream"]["service"] == "catalog", page  # the mesh behind it still routes
        status, body = curl("https://shop.example.com/catalog")
        assert status.startswith("200") and json.loads(body)["service"] == "catalog", (status, body)
        status, body = curl("http://shop.example.com/")
        assert status == "301 https://shop.example.com/", (status, body)
    finally:
        mesh.kubectl("delete", "-f", str(STRICT))
        mesh.cluster.kubectl("delete", "-f", "-", input=example)
        mesh.kubectl("-n", "lightmesh-gateway", "delete", "secret", "shop-example-com")
    frontend_ip = mesh.cluster_ip("shop", "frontend")
    wait_until(
        lambda: mesh.get(f"http://{frontend_ip}/")[0] == 200, "the shop after the gateway", 60
    )


def _apply(mesh: Mesh, manifest: dict[str, Any]) -> None:
    mesh.cluster.kubectl("apply", "-f", "-", input=json.dumps(manifest))


APP_IMAGE = "lightmesh-controlplane:0.1.0"


def _app(script: str) -> dict[str, Any]:
    """An app container that runs a Python script as a non-root user."""
    return {
        "name": "app",
        "image": APP_IMAGE,
        "command": ["python", "-c", script],
        "securityContext": {"runAsNonRoot": True, "runAsUser": 1000},
    }


def test_an_app_that_starts_at_once_is_held_until_its_proxy_is_ready(mesh: Mesh) -> None:
    # The app's very first action needs the mesh: it exits non-zero unless its proxy already
    # answers /ready and routes to catalog. restartPolicy Never: one chance, no retry loop.
    script = (
        "import json, sys, urllib.request\n"
        "ready = urllib.request.urlopen('http://127.0.0.1:15000/ready', timeout=2).status\n"
        "body = json.load(urllib.request.urlopen('http://catalog/', timeout=10))\n"
        "print('first-call', ready, body['service'], flush=True)\n"
        "import time; time.sleep(3600)\n"
    )
    pod = {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "eager", "namespace": "shop", "labels": {"app": "eager"}},
        "spec": {
            "restartPolicy": "Never",
            "containers": [_app(script)],
        },
    }  # fmt: skip
    _apply(mesh, pod)
    try:
        mesh.kubectl("-n", "shop", "wait", "--for=condition=Ready", "pod/eager", "--timeout=180s")
        logs = wait_until(
            lambda: (
                (out := mesh.kubectl("-n", "shop", "logs", "eager", "-c", "app").stdout)
                and "first-call" in out
                and out
            ),
            "the eager app's first call",
            60,
        )
        assert "first-call 200 catalog" in logs, logs
        status = mesh.cluster.kubectl_json("-n", "shop", "get", "pod", "eager")["status"]
        assert all(c["restartCount"] == 0 for c in status["containerStatuses"]), status
    finally:
        mesh.kubectl("-n", "shop", "delete", "pod", "eager", "--wait=false", check=False)


def test_a_job_completes_after_its_app_calls_quitquitquit(mesh: Mesh) -> None:
    script = (
        "import json, urllib.request\n"
        "body = json.load(urllib.request.urlopen('http://catalog/', timeout=10))\n"
        "print('called', body['service'], flush=True)\n"
        "urllib.request.urlopen(urllib.request.Request("
        "'http://127.0.0.1:15000/quitquitquit', method='POST'), timeout=5)\n"
    )
    job = {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": "report", "namespace": "shop"},
        "spec": {
            "backoffLimit": 0,
            "activeDeadlineSeconds": 240,
            "template": {
                "metadata": {"labels": {"app": "report"}},
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [_app(script)],
                },
            },
        },
    }  # fmt: skip
    _apply(mesh, job)
    try:
        mesh.kubectl(
            "-n", "shop", "wait", "--for=condition=Complete", "job/report", "--timeout=240s"
        )
        pod = mesh.pods("shop", "app=report")[0]
        statuses = {c["name"]: c["state"]["terminated"] for c in pod["status"]["containerStatuses"]}
        assert statuses["lightmesh-proxy"]["exitCode"] == 0, statuses
        assert statuses["app"]["exitCode"] == 0, statuses
        logs = mesh.kubectl("-n", "shop", "logs", pod["metadata"]["name"], "-c", "app").stdout
        assert "called catalog" in logs, logs
    finally:
        mesh.kubectl("-n", "shop", "delete", "job", "report", "--wait=false", check=False)


def test_a_rolling_update_of_catalog_under_traffic_fails_no_request(mesh: Mesh) -> None:
    url = f"http://{mesh.cluster_ip('shop', 'frontend')}/"
    before = {p["metadata"]["name"] for p in mesh.pods("shop", "app=catalog")}
    with Traffic(mesh.cluster, url) as traffic:
        time.sleep(2)
        for deployment in ("catalog-v1", "catalog-v2"):
            mesh.kubectl("-n", "shop", "rollout", "restart", f"deploy/{deployment}")
            mesh.kubectl(
                "-n", "shop", "rollout", "status", f"deploy/{deployment}", "--timeout=180s"
            )
        # Until the old pods are gone (terminating endpoints drained), not just replaced.
        wait_until(
            lambda: not before & {p["metadata"]["name"] for p in mesh.pods("shop", "app=catalog")},
            "the old catalog pods gone",
            120,
        )
        time.sleep(3)
    outcome = traffic.outcome
    assert outcome.ok > 50, outcome
    assert not outcome.failures, (
        f"{len(outcome.failures)} failed of {outcome.ok + len(outcome.failures)}: {outcome.failures[:10]}"
    )
    assert {"catalog-v1", "catalog-v2"} <= set(outcome.served_by), outcome.served_by


def _lease_holder(mesh: Mesh) -> str:
    lease = mesh.cluster.kubectl_json(
        "-n", "lightmesh-system", "get", "lease", "lightmesh-controlplane"
    )
    return str(lease["spec"].get("holderIdentity", ""))


def test_deleting_the_control_plane_leader_under_traffic_fails_no_request(mesh: Mesh) -> None:
    holder = wait_until(lambda: _lease_holder(mesh), "a control-plane leader", 60)
    leader = next(p for p in _controlplane_pods(mesh) if holder.startswith(f"{p}-"))
    url = f"http://{mesh.cluster_ip('shop', 'frontend')}/"
    with Traffic(mesh.cluster, url) as traffic:
        time.sleep(2)
        mesh.kubectl(
            "-n", "lightmesh-system", "delete", "pod", leader, "--wait=true", "--timeout=120s"
        )
        new_holder = wait_until(
            lambda: (h := _lease_holder(mesh)) and not h.startswith(f"{leader}-") and h,
            "the Lease taken over by the other replica",
            90,
        )
        mesh.kubectl(
            "-n", "lightmesh-system", "rollout", "status", "deploy/lightmesh-controlplane", "--timeout=180s"
        )  # fmt: skip
        time.sleep(3)
    outcome = traffic.outcome
    assert outcome.ok > 50, outcome
    assert not outcome.failures, f"{len(outcome.failures)} failed: {outcome.failures[:10]}"
    # Status is now written by the new leader: a changed resource gets its Accepted condition
    # for the new generation.
    patch = {"spec": {"http": [
        {"name": "jason-tries-v2", "match": [{"headers": {"end-user": {"exact": "jason"}}}],
         "route": [{"destination": {"host": "catalog", "subset": "v2"}}]},
        {"name": "canary", "route": [
            {"destination": {"host": "catalog", "subset": "v1"}, "weight": 80},
            {"destination": {"host": "catalog", "subset": "v2"}, "weight": 20}],
         "timeout": "6s"},
    ]}}  # fmt: skip
    mesh.kubectl(
        "-n", "shop", "patch", "virtualservice", "catalog", "--type=merge", "-p", json.dumps(patch)
    )
    generation = mesh.cluster.kubectl_json("-n", "shop", "get", "virtualservice", "catalog")[
        "metadata"
    ]["generation"]

    def accepted() -> bool:
        status = mesh.cluster.kubectl_json("-n", "shop", "get", "virtualservice", "catalog").get(
            "status", {}
        )
        return any(
            c["type"] == "Accepted"
            and c["status"] == "True"
            and c.get("observedGeneration") == generation
            for c in status.get("conditions", [])
        )

    wait_until(accepted, f"status Accepted for generation {generation} written by {new_holder}", 60)
