"""Transparent interception for real: iptables rules in a network namespace, a real sidecar.

Two namespaces joined by a veth pair stand for two pods. Pod A (10.77.0.1) has the init step's
rules (`lightmesh intercept install`) and its sidecar running as UID 1337, as the injected
container does; pod B (10.77.0.2) runs the control plane, the `catalog` app and catalog's sidecar.
The apps know nothing of the mesh: they connect() to plain addresses.
"""

import sys
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from lightmeshctl.demo.mesh import wait_for
from tests.support.netns import REPO, Namespace, NetnsPair

pytestmark = [pytest.mark.netns, pytest.mark.timeout(300)]

PROXY_UID = 1337
APP_PORT = 8080  # both apps
ADMIN_PORT, METRICS_PORT, DEBUG_PORT, CP_METRICS_PORT = 15000, 15020, 15014, 15016
LIGHTMESH = [sys.executable, "-m", "lightmeshctl.cli"]
ECHO = [sys.executable, str(REPO / "tests" / "netns" / "echo.py"), str(APP_PORT)]
# A raw TCP server in pod B at an address the mesh does not know (B's own address is catalog's
# endpoint, whose traffic is HTTP).
RAW_ADDRESS, RAW_PORT = "10.77.0.3", 7000
BANNER = [sys.executable, str(REPO / "tests" / "netns" / "banner.py"), RAW_ADDRESS, str(RAW_PORT)]


def sidecar(ns: Namespace, *, service: str, control_plane: str) -> list[str]:
    return [
        *LIGHTMESH, "sidecar",
        "--workload", service, "--service", service, "--labels", f"app={service}",
        "--control-plane", control_plane,
        "--bind", "0.0.0.0", "--advertise", ns.address,
        "--app-port", str(APP_PORT), "--metrics-port", str(METRICS_PORT),
    ]  # fmt: skip


def install(ns: Namespace) -> None:
    result = ns.run(*LIGHTMESH, "intercept", "install", "--proxy-uid", str(PROXY_UID))
    assert result.returncode == 0, result.stderr


def nat_rules(ns: Namespace) -> list[str]:
    dump = ns.run("iptables-save", "-t", "nat").stdout
    return [line for line in dump.splitlines() if line.startswith("-A")]


def requests_total(ns: Namespace, reporter: str) -> float:
    text = ns.http(f"http://127.0.0.1:{ADMIN_PORT}/metrics").body
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "lightmesh_requests_total" and sample.labels["reporter"] == reporter
    )


def tcp_counters(ns: Namespace, service: str) -> dict[str, float]:
    """lightmesh_tcp_* samples of one destination service, by name."""
    text = ns.http(f"http://127.0.0.1:{ADMIN_PORT}/metrics").body
    counters: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name = sample.name
            if sample.labels.get("destination_service") != service:
                continue
            if name.startswith("lightmesh_tcp_") and name.endswith("_total"):
                counters[name] = counters.get(name, 0.0) + sample.value
    return counters


@pytest.fixture(scope="module")
def pods(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NetnsPair]:
    """Pod A intercepted and meshed, pod B serving catalog, everything ready."""
    with NetnsPair(tmp_path_factory.mktemp("netns")) as pair:
        a, b = pair.a, pair.b
        try:
            config_dir = pair.work_dir / "config"
            config_dir.mkdir()
            pair.spawn(b, "controlplane", [*LIGHTMESH, "controlplane", "--config-dir", str(config_dir), "--host", "0.0.0.0", "--metrics-port", str(CP_METRICS_PORT)])  # fmt: skip
            pair.spawn(b, "catalog-app", ECHO)
            assert b.run("ip", "addr", "add", f"{RAW_ADDRESS}/32", "dev", "lo").returncode == 0
            pair.spawn(b, "raw-tcp-server", BANNER)
            pair.spawn(b, "catalog-sidecar", sidecar(b, service="catalog", control_plane="127.0.0.1:15010"))  # fmt: skip
            install(a)
            pair.spawn(a, "frontend-app", ECHO)
            pair.spawn(
                a,
                "frontend-sidecar",
                [
                    *sidecar(a, service="frontend", control_plane=f"{b.address}:15010"),
                    "--intercept",
                ],
                uid=PROXY_UID,
            )
            for ns in (a, b):
                wait_for(
                    lambda ns=ns: ns.http(f"http://127.0.0.1:{ADMIN_PORT}/ready").status == 200,
                    timeout=60,
                    interval=0.3,
                    what=f"the sidecar in {ns.name} /ready",
                )
            wait_for(
                lambda: a.http(f"http://{b.address}:{APP_PORT}/", host="catalog").status == 200,
                timeout=30,
                interval=0.3,
                what="catalog reachable from pod A through its sidecar",
            )
        except BaseException:
            print(pair.logs())
            raise
        yield pair


def test_apps_plain_connect_goes_through_the_sidecar(pods: NetnsPair) -> None:
    a, b = pods.a, pods.b
    before = requests_total(a, "source")
    reply = a.http(f"http://{b.address}:{APP_PORT}/items", host="catalog")
    assert reply.status == 200, reply.body
    echo = reply.json()
    # Catalog saw its own sidecar's connection (from 127.0.0.1), not pod A's: the request went
    # pod A's outbound listener → catalog's inbound listener → app.
    assert echo["peer"] == "127.0.0.1", echo
    assert echo["path"] == "/items"
    assert requests_total(a, "source") == before + 1


def test_a_host_naming_no_service_goes_where_the_app_dialled(pods: NetnsPair) -> None:
    """With --intercept the sidecar reads each connection's original destination: a Host it does
    not know is not answered 404 (no route) but passed through to the address the app dialled."""
    a, b = pods.a, pods.b
    reply = a.http(f"http://{b.address}:{APP_PORT}/direct", host="not-a-service.example")
    assert reply.status == 200, reply.body
    echo = reply.json()
    assert echo["path"] == "/direct"
    # PassthroughCluster: straight from pod A's sidecar to catalog's app, not via its sidecar.
    assert echo["peer"] == a.address, echo


RAW_CLIENT = f"""
import socket
with socket.create_connection(("{RAW_ADDRESS}", {RAW_PORT}), timeout=5) as conn:
    reader = conn.makefile("rb")
    banner = reader.readline()  # the server speaks first: nothing may wait for a request
    conn.sendall(b"ping\\n")
    echoed = reader.readline()
    conn.shutdown(socket.SHUT_WR)
    rest = reader.read()
print(repr((banner, echoed, rest)))
"""


def test_a_non_http_protocol_is_spliced_straight_to_where_the_app_was_going(
    pods: NetnsPair,
) -> None:
    """A server-first, non-HTTP protocol to an address outside the mesh: the outbound listener
    decides on accept that it is not HTTP and splices raw bytes (PassthroughCluster); the
    connection and its bytes show in the TCP metrics once it closes."""
    a = pods.a
    before = tcp_counters(a, "PassthroughCluster")
    result = a.run(sys.executable, "-c", RAW_CLIENT)
    assert result.returncode == 0, result.stderr + pods.logs()
    assert result.stdout.strip() == repr((b"HELLO raw-tcp\n", b"ping\n", b""))
    sent, received = len(b"ping\n"), len(b"HELLO raw-tcp\n") + len(b"ping\n")

    def counted() -> bool:
        now = tcp_counters(a, "PassthroughCluster")
        grown = {k: now.get(k, 0.0) - before.get(k, 0.0) for k in now}
        return grown == {
            "lightmesh_tcp_connections_opened_total": 1,
            "lightmesh_tcp_connections_closed_total": 1,
            "lightmesh_tcp_sent_bytes_total": sent,
            "lightmesh_tcp_received_bytes_total": received,
        }

    wait_for(counted, timeout=10, interval=0.2, what="the TCP connection in /metrics")


def test_inbound_reaches_the_app_only_through_the_inbound_listener(pods: NetnsPair) -> None:
    a, b = pods.a, pods.b
    before = requests_total(a, "destination")
    echo = b.http(f"http://{a.address}:{APP_PORT}/hello").json()
    assert echo["peer"] == "127.0.0.1", echo  # delivered by the sidecar
    assert echo["x-forwarded-for"] == b.address  # who really called
    assert requests_total(a, "destination") == before + 1


def test_admin_port_is_unreachable_from_another_pod_and_the_metrics_port_serves_only_metrics(
    pods: NetnsPair,
) -> None:
    """Admin on pod A's loopback only (not redirected either: refused); /metrics and /ready on
    the metrics port, reached directly, and nothing else there."""
    a, b = pods.a, pods.b
    for path, method in (("/config_dump", "GET"), ("/certs", "GET"), ("/quitquitquit", "POST")):
        with pytest.raises(OSError, match=r"[Rr]efused"):
            b.http(f"http://{a.address}:{ADMIN_PORT}{path}", method=method)
    assert a.http(f"http://127.0.0.1:{ADMIN_PORT}/config_dump").status == 200  # inside the pod
    assert b.http(f"http://{a.address}:{METRICS_PORT}/ready").status == 200
    assert b.http(f"http://{a.address}:{METRICS_PORT}/healthz").status == 200
    metrics = b.http(f"http://{a.address}:{METRICS_PORT}/metrics")
    assert metrics.status == 200 and "# TYPE lightmesh_requests_total counter" in metrics.body
    for path in ("/config_dump", "/certs", "/quitquitquit"):
        assert b.http(f"http://{a.address}:{METRICS_PORT}{path}").status == 404, path


def test_control_plane_debug_is_unreachable_from_another_pod_and_metrics_are_served(
    pods: NetnsPair,
) -> None:
    """As the sidecar's own connections do (its UID is not redirected), from pod A."""
    a, b = pods.a, pods.b
    with pytest.raises(OSError, match=r"[Rr]efused"):
        a.http(f"http://{b.address}:{DEBUG_PORT}/debug/proxies", uid=PROXY_UID)
    assert b.http(f"http://127.0.0.1:{DEBUG_PORT}/debug/proxies").status == 200  # in its pod
    public = f"http://{b.address}:{CP_METRICS_PORT}"
    assert a.http(f"{public}/ready", uid=PROXY_UID).status == 200
    assert a.http(f"{public}/metrics", uid=PROXY_UID).status == 200
    assert a.http(f"{public}/debug/proxies", uid=PROXY_UID).status == 404


def destination_callers(ns: Namespace) -> set[str]:
    text = ns.http(f"http://127.0.0.1:{ADMIN_PORT}/metrics").body
    return {
        sample.labels["source_workload"]
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "lightmesh_requests_total" and sample.labels["reporter"] == "destination"
    }


def test_apps_never_see_mesh_headers_and_a_forged_peer_changes_no_telemetry(
    pods: NetnsPair,
) -> None:
    """Plaintext here (no certificates): a caller's announcement is not believed, whoever sent
    it; from pod B's root (outside the mesh) straight to pod A's app port, and from pod A's
    app through both sidecars."""
    a, b = pods.a, pods.b
    forged = {"x-lightmesh-peer": "admin;kube-system;admin;v1", "x-lightmesh-unprocessed": "1"}
    outside = b.http(f"http://{a.address}:{APP_PORT}/", headers=forged)
    assert outside.status == 200
    assert [n for n in outside.json()["header_names"] if n.startswith("x-lightmesh-")] == []
    assert [n for n in outside.headers if n.startswith("x-lightmesh-")] == []
    meshed = a.http(f"http://{b.address}:{APP_PORT}/", host="catalog", headers=forged)
    assert meshed.status == 200
    assert [n for n in meshed.json()["header_names"] if n.startswith("x-lightmesh-")] == []
    assert "admin" not in destination_callers(a) | destination_callers(b)


def test_the_sidecar_itself_is_not_redirected(pods: NetnsPair) -> None:
    """The sidecar's UID is excluded: its upstream calls reach the network, no loop."""
    a, b = pods.a, pods.b
    echo = a.http(f"http://{b.address}:{APP_PORT}/", uid=PROXY_UID).json()
    assert echo["peer"] == a.address  # straight to catalog's app


def test_original_destination_is_recovered_from_a_redirected_connection(pods: NetnsPair) -> None:
    """SO_ORIGINAL_DST on a connection the OUTPUT rules redirected, with a listener on a spare
    port (the sidecar holds 15001) and the redirect port set to it."""
    a, b = pods.a, pods.b
    script = f"""
import socket
from sidecar.listeners.original_dst import original_destination
server = socket.create_server(("0.0.0.0", 15101))
client = socket.create_connection(("{b.address}", 4321), timeout=5)
redirected, _ = server.accept()
local = socket.create_connection(("127.0.0.1", 15101), timeout=5)
direct, _ = server.accept()
print(original_destination(redirected))
print(original_destination(direct))
server.close()

# What the proxy listener holds: the socket of an accepted asyncio stream, on both loops.
import asyncio, uvloop
async def accepted() -> None:
    got = asyncio.get_running_loop().create_future()
    def on_connect(reader, writer) -> None:
        got.set_result(original_destination(writer.get_extra_info("socket")))
        writer.close()
    listener = await asyncio.start_server(on_connect, "0.0.0.0", 15101)
    _, writer = await asyncio.open_connection("{b.address}", 4321)
    print(await asyncio.wait_for(got, 5))
    writer.close()
    listener.close()
asyncio.run(accepted())
uvloop.run(accepted())
"""
    rule = ["-p", "tcp", "--dport", "4321", "-j", "REDIRECT", "--to-ports", "15101"]
    # After the sidecar-UID and loopback exclusions, like the catch-all redirect it stands for.
    assert a.run("iptables", "-t", "nat", "-I", "LIGHTMESH_OUTBOUND", "3", *rule).returncode == 0
    try:
        result = a.run(sys.executable, "-c", script)
    finally:
        a.run("iptables", "-t", "nat", "-D", "LIGHTMESH_OUTBOUND", *rule)
    assert result.returncode == 0, result.stderr
    dialled = f"('{b.address}', 4321)"
    assert result.stdout.splitlines() == [dialled, "None", dialled, dialled]


def test_cleanup_removes_the_rules_and_install_is_repeatable(pods: NetnsPair) -> None:
    a, b = pods.a, pods.b
    installed = nat_rules(a)
    assert sum("LIGHTMESH" in rule for rule in installed) == 10
    result = a.run(*LIGHTMESH, "intercept", "cleanup")
    assert result.returncode == 0, result.stderr
    assert not any("LIGHTMESH" in rule for rule in nat_rules(a))
    # Without rules, both directions bypass the sidecar.
    assert a.http(f"http://{b.address}:{APP_PORT}/", host="catalog").json()["peer"] == a.address
    assert b.http(f"http://{a.address}:{APP_PORT}/").json()["peer"] == b.address
    # Installing twice leaves exactly one set of rules, and traffic is captured again.
    install(a)
    install(a)
    assert nat_rules(a) == installed
    assert a.http(f"http://{b.address}:{APP_PORT}/", host="catalog").json()["peer"] == "127.0.0.1"
