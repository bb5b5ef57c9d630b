"""Default resilience through real processes: a real control plane, a client sidecar, two catalog
apps behind their own sidecars (each app records the id of every request it receives), no
DestinationRule or VirtualService. An app is SIGKILLed mid-traffic:
- a POST that app never saw is sent to the other instance (the server sidecar marks it, the
  client sidecar retries it);
- a POST that app saw before dying is never sent again.
"""

import http.client
import threading
from pathlib import Path

import pytest

from lightmeshctl.demo.mesh import LocalMesh, Workload, http_get, wait_for

pytestmark = pytest.mark.integration

CATALOG_CLUSTER = "outbound||catalog.default.svc.cluster.local"


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    """No resources at all: the defaults."""
    target = tmp_path / "config"
    target.mkdir()
    return target


def endpoints(admin: str) -> int:
    for assignment in http_get(f"{admin}/config_dump").json()["config"].get("ENDPOINTS", []):
        if assignment["clusterName"] == CATALOG_CLUSTER:
            return len(assignment.get("endpoints", []))
    return 0


def start(mesh: LocalMesh) -> tuple[Workload, list[Workload]]:
    mesh.start_control_plane()
    client = mesh.start_workload("client", service="client")
    catalogs = [
        mesh.start_workload(
            f"catalog-{n}",
            service="catalog",
            app_args=("--record", str(mesh.work_dir / f"catalog-{n}.requests")),
        )
        for n in (1, 2)
    ]
    mesh.wait_ready()
    wait_for(lambda: endpoints(client.admin) == 2, timeout=20, what="client knows both catalogs")
    return client, catalogs


def post(client: Workload, request_id: str, path: str = "/") -> tuple[int, dict[str, str]]:
    connection = http.client.HTTPConnection("127.0.0.1", client.outbound_port, timeout=15)
    try:
        connection.request(
            "POST",
            f"http://catalog{path}",
            body=b"order=1",
            headers={"Host": "catalog", "x-request-id": request_id},
        )
        response = connection.getresponse()
        response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}
    finally:
        connection.close()


def received(mesh: LocalMesh, request_id: str) -> list[str]:
    """The catalogs that received `request_id` (one entry per time received)."""
    found = []
    for n in (1, 2):
        path = mesh.work_dir / f"catalog-{n}.requests"
        if path.exists():
            found += [
                f"catalog-{n}"
                for line in path.read_text().splitlines()
                if line == f"POST {request_id}"
            ]
    return found


def test_a_post_the_dead_app_never_saw_goes_to_the_other_instance(mesh: LocalMesh) -> None:
    client, (first, _) = start(mesh)
    assert first.app is not None
    first.app.stop(kill=True)
    statuses = []
    for n in range(20):
        status, headers = post(client, f"never-seen-{n}")
        statuses.append(status)
        assert "x-lightmesh-unprocessed" not in headers  # the mark never reaches an app
    assert statuses == [200] * 20
    for n in range(20):
        assert received(mesh, f"never-seen-{n}") == ["catalog-2"]
    # The dead app's sidecar reports it: not ready, so a cluster would drop the pod.
    assert http_get(f"{first.admin}/ready").status == 503


def test_a_post_the_app_saw_is_never_sent_again(mesh: LocalMesh) -> None:
    client, catalogs = start(mesh)
    outcome: dict[str, int] = {}

    def call() -> None:
        outcome["status"] = post(client, "seen-once", path="/?delay=30")[0]

    caller = threading.Thread(target=call)
    caller.start()
    # Wait until an app has the request (it answers only after 30 s), then kill that app.
    holder = wait_for(lambda: received(mesh, "seen-once"), timeout=15, what="an app got the POST")
    victim = next(w for w in catalogs if w.name == holder[0])
    assert victim.app is not None
    victim.app.stop(kill=True)
    caller.join(timeout=20)
    assert not caller.is_alive()
    assert outcome["status"] == 503  # the client is told; nothing is re-sent
    assert received(mesh, "seen-once") == holder  # received exactly once, by the dead app
