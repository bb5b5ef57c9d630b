"""Traffic management end to end: examples/traffic/ applied to a real control plane, requests
through a real client sidecar to real catalog apps behind their own sidecars, on loopback."""

import http.client
import shutil
import threading
from collections import Counter
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from lightmeshctl.demo.mesh import LocalMesh, Reply, http_get, wait_for

pytestmark = pytest.mark.integration

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "traffic"
FLAGS = "x-lightmesh-response-flags"
CATALOG_CLUSTER = "outbound||catalog.default.svc.cluster.local"
SHADOW_CLUSTER = "outbound||catalog-shadow.default.svc.cluster.local"


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    """An empty config directory (overrides the demo copy): each test adds its examples."""
    target = tmp_path / "config"
    target.mkdir()
    return target


def start(
    mesh: LocalMesh,
    *examples: str,
    v1_args: tuple[str, ...] = (),
    v2_args: tuple[str, ...] | None = (),
    shadow: bool = False,
) -> str:
    """Apply `examples`, start client + catalog v1 (+ v2 unless None) (+ a catalog-shadow service
    if `shadow`); return the client's proxy."""
    for name in examples:
        shutil.copy(EXAMPLES / name, mesh.config_dir / name)
    mesh.start_control_plane()
    client = mesh.start_workload("client", service="client")
    mesh.start_workload("catalog-v1", service="catalog", version="v1", app_args=v1_args)
    if v2_args is not None:
        mesh.start_workload("catalog-v2", service="catalog", version="v2", app_args=v2_args)
    if shadow:
        mesh.start_workload("catalog-shadow", service="catalog-shadow")
    mesh.wait_ready()
    expected = 1 if v2_args is None else 2
    # Wait until the client's sidecar knows every catalog endpoint, without sending traffic.
    wait_for(
        lambda: _endpoint_count(client.admin) == expected,
        timeout=20,
        what=f"client sidecar to learn {expected} catalog endpoints",
    )
    if shadow:
        wait_for(
            lambda: _endpoint_count(client.admin, SHADOW_CLUSTER) == 1,
            timeout=20,
            what="client sidecar to learn the catalog-shadow endpoint",
        )
    return client.outbound


def _endpoint_count(admin: str, cluster: str = CATALOG_CLUSTER) -> int:
    dump = http_get(f"{admin}/config_dump").json()
    for assignment in dump["config"].get("ENDPOINTS", []):
        if assignment["clusterName"] == cluster:
            return len(assignment.get("endpoints", []))
    return 0


def get(proxy: str, path: str = "/", **headers: str) -> Reply:
    """GET http://catalog<path> through the client sidecar (no redirect following); keyword
    `end_user="x"` sends the header `end-user: x`."""
    return send(proxy, "GET", path, **headers)


def send(
    proxy: str, method: str, path: str = "/", body: bytes | None = None, **headers: str
) -> Reply:
    """`method` http://catalog<path> through the client sidecar, with `body` if given."""
    host, port = proxy.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    sent = {"Host": "catalog", **{k.replace("_", "-"): v for k, v in headers.items()}}
    try:
        conn.request(method, f"http://catalog{path}", body=body, headers=sent)
        response = conn.getresponse()
        return Reply(
            response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        )
    finally:
        conn.close()


def metric(admin: str, name: str, **labels: str) -> float:
    """Sum of the samples of `name` on a sidecar's /metrics whose labels include `labels`."""
    text = http_get(f"{admin}/metrics").body.decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    )


def served(mesh: LocalMesh, workload: str) -> int:
    """Requests the workload's app was sent, as its own (inbound) sidecar counted them."""
    admin = mesh.workloads[workload].admin
    return int(metric(admin, "lightmesh_requests_total", reporter="destination"))


def version(reply: Reply) -> str:
    assert reply.status == 200, (reply.status, reply.body)
    return str(reply.json()["version"])


def test_90_10_split_lands_within_statistical_bounds(mesh: LocalMesh) -> None:
    proxy = start(mesh, "subsets.yaml", "split-90-10.yaml")
    wait_for(lambda: "v2" in {version(get(proxy)) for _ in range(20)}, timeout=15, what="split")
    counts = Counter(version(get(proxy)) for _ in range(2000))
    # Binomial(2000, 0.1) has sd 13.4: 200 ± 60 is 4.5 sd (smooth WRR in fact gives 200 exactly).
    assert counts["v1"] + counts["v2"] == 2000
    assert 140 <= counts["v2"] <= 260, counts


def test_header_and_query_matches_select_v2_and_missing_header_redirects(mesh: LocalMesh) -> None:
    proxy = start(mesh, "subsets.yaml", "header-match.yaml")
    wait_for(lambda: get(proxy).status == 200, timeout=15, what="routes")
    assert {version(get(proxy, end_user="tester")) for _ in range(10)} == {"v2"}
    assert {version(get(proxy, "/?canary=1")) for _ in range(10)} == {"v2"}
    assert {version(get(proxy, end_user="someone")) for _ in range(10)} == {"v1"}
    assert version(get(proxy, "/account", authorization="Bearer t")) == "v1"
    anonymous = get(proxy, "/account")
    assert anonymous.status == 302
    assert b"redirecting to http://catalog/login" in anonymous.body


def test_redirect_answers_from_the_sidecar(mesh: LocalMesh) -> None:
    proxy = start(mesh, "redirect.yaml", v2_args=None)
    reply = wait_for(
        lambda: (r := get(proxy, "/old/x?id=1")).status == 301 and r,
        timeout=15,
        what="the redirect route",
    )
    assert b"redirecting to http://catalog/new/items?id=1" in reply.body
    assert version(get(proxy, "/other")) == "v1"
    assert reply.headers["location"] == "http://catalog/new/items?id=1"


def test_rewrite_changes_path_and_authority_seen_by_the_app(mesh: LocalMesh) -> None:
    proxy = start(mesh, "rewrite.yaml", v2_args=None)
    body = wait_for(
        lambda: (
            (r := get(proxy, "/api/v1/items?id=2")).status == 200
            and r.json()["path"] == "/items?id=2"
            and r.json()
        ),
        timeout=15,
        what="the rewrite route",
    )
    assert body["headers"]["host"] == "catalog.internal"
    assert get(proxy, "/api/v2/items").json()["path"] == "/api/v2/items"


def test_request_header_edits_are_visible_to_the_app(mesh: LocalMesh) -> None:
    proxy = start(mesh, "headers.yaml", v2_args=None)
    headers = wait_for(
        lambda: (
            (
                h := get(proxy, x_debug="1", x_mesh_env="prod", x_mesh_tag="app").json()["headers"]
            ).get("x-mesh-env")
            == "staging"
            and h
        ),
        timeout=15,
        what="the header edits",
    )
    assert "x-debug" not in headers
    assert headers["x-mesh-tag"] == "app, from-mesh"  # "add" appends a second value


def test_fault_abort_hits_its_percentage(mesh: LocalMesh) -> None:
    proxy = start(mesh, "fault-abort.yaml", v2_args=None)
    wait_for(lambda: get(proxy).headers.get(FLAGS) == "FI", timeout=15, what="the fault")
    replies = [get(proxy) for _ in range(600)]
    aborted = [r for r in replies if r.status == 503]
    assert all(r.headers.get(FLAGS) == "FI" for r in aborted)
    assert all(r.status == 200 for r in replies if r.status != 503)
    # Binomial(600, 0.3): mean 180, sd 11.2; ± 5 sd.
    assert 124 <= len(aborted) <= 236, len(aborted)


def test_consecutive_5xx_eject_an_endpoint_that_returns_after_base_ejection_time(
    mesh: LocalMesh,
) -> None:
    # catalog-v1 answers 503 to its first 5 requests, then recovers; round robin alternates.
    proxy = start(mesh, "outlier-detection.yaml", v1_args=("--fail-first", "5"))
    failures = 0
    for _ in range(40):
        reply = get(proxy)
        if reply.status == 503:
            assert reply.json()["version"] == "v1"
            failures += 1
            if failures == 5:
                break
    assert failures == 5
    # Ejected for baseEjectionTime (8s): only v2 answers meanwhile.
    assert {version(get(proxy)) for _ in range(10)} == {"v2"}
    # Then v1 (healthy now) is back in the rotation.
    wait_for(lambda: version(get(proxy)) == "v1", timeout=30, interval=0.2, what="v1 back")


def test_requests_over_the_pending_cap_get_an_immediate_503_uo(mesh: LocalMesh) -> None:
    # One catalog instance that takes 2s per request; the cap is 1 connection + 1 pending.
    proxy = start(mesh, "circuit-breaker.yaml", v1_args=("--delay", "2"), v2_args=None)
    replies: list[Reply] = []
    lock = threading.Lock()

    def one() -> None:
        reply = get(proxy)
        with lock:
            replies.append(reply)

    threads = [threading.Thread(target=one) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(replies) == 8
    overflow = [r for r in replies if r.status == 503]
    assert overflow, [r.status for r in replies]
    assert all(r.headers.get(FLAGS) == "UO" for r in overflow)
    assert b"upstream overflow" in overflow[0].body
    # The first two were admitted (how many more finish after them depends on thread timing).
    assert sum(r.status == 200 for r in replies) >= 1


def test_consistent_hash_keeps_a_user_on_one_endpoint(mesh: LocalMesh) -> None:
    proxy = start(mesh, "consistent-hash.yaml")
    wait_for(lambda: get(proxy).status == 200, timeout=15, what="catalog")
    seen = {
        user: {get(proxy, x_user=user).json()["workload"] for _ in range(4)}
        for user in (f"user-{i}" for i in range(20))
    }
    assert all(len(workloads) == 1 for workloads in seen.values()), seen
    # Twenty users all on one of two endpoints would happen with probability 2 x 2^-20.
    assert len({w for ws in seen.values() for w in ws}) == 2


def test_flaky_upstream_succeeds_with_three_attempts_and_a_post_is_not_retried(
    mesh: LocalMesh,
) -> None:
    # One catalog instance answering 503 to its first 3 requests; retries: attempts 3 on 5xx.
    proxy = start(mesh, "retries.yaml", v1_args=("--fail-first", "3"), v2_args=None)
    wait_for(
        lambda: _route_has_retries(mesh.workloads["client"].admin),
        timeout=15,
        what="the retry route",
    )
    posted = send(proxy, "POST", "/orders", body=b'{"item": 1}')
    assert posted.status == 503  # the app failed it; a POST that reached it is not re-sent
    assert posted.json()["failed"] == 1
    wait_for(lambda: served(mesh, "catalog-v1") == 1, timeout=10, what="the POST counted")
    # GET: failed twice more (2nd and 3rd request), then the third attempt succeeds.
    reply = get(proxy, "/items")
    assert reply.status == 200
    wait_for(lambda: served(mesh, "catalog-v1") == 4, timeout=10, what="4 requests at the app")
    client = mesh.workloads["client"].admin
    assert metric(client, "lightmesh_upstream_retries_total", outcome="retried") == 2
    assert metric(client, "lightmesh_requests_total", reporter="source", response_code="200") == 1


def _route_has_retries(admin: str) -> bool:
    return "retries" in http_get(f"{admin}/config_dump").body.decode()


def test_retries_go_to_a_different_endpoint(mesh: LocalMesh) -> None:
    # catalog-v1 always fails; round robin alternates; each request landing on v1 is retried.
    proxy = start(mesh, "subsets.yaml", "retries.yaml", v1_args=("--fail-first", "100000"))
    wait_for(lambda: get(proxy).status == 200, timeout=15, what="catalog")
    replies = [get(proxy) for _ in range(20)]
    assert [r.status for r in replies] == [200] * 20
    assert {version(r) for r in replies} == {"v2"}
    assert served(mesh, "catalog-v1") >= 5  # round robin sent it first tries, all retried


def test_hanging_upstream_hits_per_try_timeout_then_the_overall_timeout(mesh: LocalMesh) -> None:
    # The app answers after 3s, longer than the route's whole timeout (1.5s): every try hangs.
    proxy = start(mesh, "retries-timeout.yaml", v1_args=("--delay", "3"), v2_args=None)
    wait_for(
        lambda: _route_has_retries(mesh.workloads["client"].admin),
        timeout=15,
        what="the retry route",
    )
    reply = get(proxy)
    assert reply.status == 504
    assert reply.headers[FLAGS] == "UT"
    # Several tries reached the app (each abandoned at perTryTimeout), fewer than 11 in all.
    # catalog's sidecar counts each when the app's late answer finds its caller gone.
    wait_for(lambda: served(mesh, "catalog-v1") >= 2, timeout=15, what="the tries counted")
    assert served(mesh, "catalog-v1") <= 11
    client = mesh.workloads["client"].admin
    assert metric(client, "lightmesh_requests_total", response_code="504", response_flags="UT") == 1


def test_fault_delay_applies_at_its_percentage(mesh: LocalMesh) -> None:
    proxy = start(mesh, "fault-delay.yaml", v2_args=None)
    client = mesh.workloads["client"].admin
    wait_for(
        lambda: (
            get(proxy).status == 200
            and metric(client, "lightmesh_requests_total", response_flags="DI") > 0
        ),
        timeout=15,
        what="the delay fault",
    )
    before = metric(client, "lightmesh_requests_total", response_flags="DI")
    replies = [get(proxy) for _ in range(200)]
    assert all(r.status == 200 for r in replies)
    delayed = metric(client, "lightmesh_requests_total", response_flags="DI") - before
    # Binomial(200, 0.5): mean 100, sd 7.1; ± 5 sd.
    assert 65 <= delayed <= 135, delayed


def test_mirrored_traffic_arrives_and_a_dead_mirror_does_not_fail_the_original(
    mesh: LocalMesh,
) -> None:
    proxy = start(mesh, "mirror.yaml", v2_args=None, shadow=True)
    wait_for(lambda: get(proxy).status == 200, timeout=15, what="catalog")
    replies = [get(proxy) for _ in range(60)]
    assert all(version(r) == "v1" for r in replies)  # answered by catalog, never the shadow
    # 25% of 60: P(no copy at all) = 0.75^60 ≈ 3e-8.
    wait_for(lambda: served(mesh, "catalog-shadow") >= 1, timeout=10, what="mirrored copies")
    client = mesh.workloads["client"].admin
    assert metric(client, "lightmesh_mirror_requests_total", outcome="sent") >= 1
    shadow = mesh.workloads["catalog-shadow"]
    assert shadow.app is not None and shadow.sidecar is not None
    shadow.app.stop()
    shadow.sidecar.stop()
    replies = [get(proxy) for _ in range(40)]
    assert [r.status for r in replies] == [200] * 40


def test_response_header_edits_reach_the_client(mesh: LocalMesh) -> None:
    proxy = start(mesh, "headers.yaml", v2_args=None)
    reply = wait_for(
        lambda: (r := get(proxy)).headers.get("cache-control") == "no-store" and r,
        timeout=15,
        what="the response header edits",
    )
    assert reply.status == 200
    assert "server" not in reply.headers  # aiohttp's Server header was removed


def test_max_requests_per_connection_closes_the_upstream_connection(mesh: LocalMesh) -> None:
    proxy = start(mesh, "max-requests-per-connection.yaml", v2_args=None)
    client = mesh.workloads["client"].admin
    cluster = {"destination_service": "catalog.default.svc.cluster.local"}

    def opened() -> float:
        return metric(client, "lightmesh_upstream_connections_opened_total", **cluster)

    def limited() -> bool:
        return "maxRequestsPerConnection" in http_get(f"{client}/config_dump").body.decode()

    wait_for(limited, timeout=15, what="the connection pool limit")
    before = opened()
    for _ in range(6):
        assert get(proxy).status == 200
    # Sequential requests, 2 per connection: exactly 3 new connections.
    assert opened() - before == 3
