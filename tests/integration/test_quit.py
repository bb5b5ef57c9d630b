"""POST /quitquitquit: how a Job's app ends its sidecar so the pod can complete."""

import urllib.error
import urllib.request

import pytest

from lightmeshctl.demo.mesh import LocalMesh

pytestmark = pytest.mark.integration


def call(url: str, method: str) -> int:
    request = urllib.request.Request(url, method=method)  # noqa: S310 - an http URL we build
    try:
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310
            return int(response.status)
    except urllib.error.HTTPError as error:
        error.close()
        return error.code


def test_quitquitquit_drains_and_exits_the_sidecar_with_success(mesh: LocalMesh) -> None:
    mesh.start_control_plane()
    job = mesh.start_workload("report", service="report")
    mesh.wait_ready()
    assert call(f"{job.admin}/quitquitquit", "GET") == 405  # a stray GET never stops a proxy
    assert job.sidecar is not None and job.sidecar.alive()
    assert call(f"{job.admin}/quitquitquit", "POST") == 200
    assert job.sidecar.popen.wait(timeout=30) == 0
