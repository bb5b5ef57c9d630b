"""The mesh installed into the real cluster exactly as the README's cluster section says.

Every user-facing command the tier runs goes through ``Mesh.readme()``, which fails unless that
command appears verbatim in README.md's "Running in a Kubernetes cluster" section and then runs it
with bash inside the cluster's network namespace (``kubectl`` and ``lightmesh`` on PATH,
``KUBECONFIG`` set), so the README cannot drift from what is tested.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.cluster import REPO, NodeCluster, enter_netns

README = REPO / "README.md"
VENV_BIN = Path(os.environ.get("VIRTUAL_ENV", REPO / ".venv")) / "bin"
WAIT_TIMEOUT = 240.0  # any one wait for the cluster: pods, rollouts, DNS, scrapes


def readme_commands() -> list[str]:
    """The command lines of the bash blocks in README's cluster section, comments stripped."""
    text = README.read_text()
    section = text.split("## Running in a Kubernetes cluster", 1)[1].split("\n## ", 1)[0]
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", section, flags=re.S):
        joined = re.sub(r"\\\n\s*", " ", block)  # continuation lines
        for line in joined.splitlines():
            command = re.sub(r"\s+#\s.*$", "", line).strip()
            if command:
                commands.append(" ".join(command.split()))
    return commands


def wait_until(check: Callable[[], Any], what: str, timeout: float = WAIT_TIMEOUT) -> Any:
    """Poll ``check`` until it returns something truthy; fail naming ``what`` (and the last error)."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            value = check()
            if value:
                return value
            last = value
        except (OSError, AssertionError, subprocess.SubprocessError, ValueError, KeyError) as error:
            last = error
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f}s (last: {last!r})")
        time.sleep(1.0)  # bounded by the deadline


@dataclass
class Mesh:
    """The installed mesh: README commands, port-forwards, traffic through ClusterIP Services."""

    cluster: NodeCluster
    timings: dict[str, float] = field(default_factory=dict)
    _background: list[subprocess.Popen[bytes]] = field(default_factory=list)

    # -- the README's commands

    def readme(self, command: str, *, timeout: float = WAIT_TIMEOUT) -> str:
        """Run one README command (it must be in the README, verbatim); its stdout."""
        assert " ".join(command.split()) in readme_commands(), (
            f"README.md's cluster section does not show the command the test runs: {command}"
        )
        result = self.cluster.run("bash", "-c", command, timeout=timeout, env_path=self.path)
        assert result.returncode == 0, (
            f"{command} exited {result.returncode}\n{result.stderr}\n{result.stdout}"
        )
        return result.stdout

    def readme_background(self, command: str, port: int, *, prelude: str = "") -> None:
        """Start a README command that runs in the background (``... &``), after the README's
        ``prelude`` line (a variable it uses) if any, and wait until ``port`` accepts."""
        commands = readme_commands()
        assert f"{' '.join(command.split())} &" in commands, (
            f"README.md's cluster section does not show: {command} &"
        )
        assert not prelude or " ".join(prelude.split()) in commands, (
            f"README.md's cluster section does not show: {prelude}"
        )
        log = self.cluster.logs / f"background-{len(self._background)}.log"
        script = f"{prelude}\nexec {command}" if prelude else f"exec {command}"
        popen = self.cluster.popen("bash", "-c", script, log=log, env_path=self.path)
        self._background.append(popen)
        wait_until(lambda: self.cluster.call(_connects, port), f"{command}: port {port} open", 60)

    @property
    def path(self) -> str:
        """PATH with the built kubectl and the virtualenv's lightmesh first."""
        return f"{self.cluster.bin_dir}:{VENV_BIN}:{os.environ.get('PATH', '')}"

    def stop_background(self) -> None:
        """Stop the port-forwards this mesh started."""
        for popen in self._background:
            popen.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                popen.wait(10)
        self._background.clear()

    # -- cluster state

    def kubectl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """kubectl as the admin (test bookkeeping, not a README step)."""
        return self.cluster.kubectl(*args, check=check)

    def pods(self, namespace: str, selector: str = "") -> list[dict[str, Any]]:
        """The pods of a namespace (optionally by label selector), as JSON."""
        args = ["-n", namespace, "get", "pods", *(["-l", selector] if selector else [])]
        pods: list[dict[str, Any]] = self.cluster.kubectl_json(*args)["items"]
        return pods

    def cluster_ip(self, namespace: str, service: str) -> str:
        """A Service's ClusterIP."""
        return str(
            self.cluster.kubectl_json("-n", namespace, "get", "service", service)["spec"][
                "clusterIP"
            ]
        )

    def get(self, url: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
        """GET from the node (inside the cluster's network namespace): (status, JSON body)."""
        status, _, body = self.cluster.http(url, headers=headers)
        try:
            return status, json.loads(body)
        except ValueError:
            return status, body


def _connects(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


SHOP_DEPLOYMENTS = ("frontend", "catalog-v1", "catalog-v2", "customer")


@contextlib.contextmanager
def install_mesh(cluster: NodeCluster) -> Iterator[Mesh]:
    """The README's install path, timed: CRDs, control plane, injector, the shop and its routing."""
    mesh = Mesh(cluster)
    started = time.monotonic()
    mesh.readme("kubectl apply -f crds/")
    mesh.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd", "--all")
    mesh.readme("kubectl apply -f deploy/")
    mesh.readme("kubectl -n lightmesh-system rollout status deploy/lightmesh-controlplane")
    ca_bytes = mesh.readme(
        "kubectl get mutatingwebhookconfiguration lightmesh-sidecar-injector "
        "-o jsonpath='{.webhooks[*].clientConfig.caBundle}' | wc -c"
    )
    assert int(ca_bytes) > 100, f"caBundle not filled by the control plane: {ca_bytes!r} bytes"
    mesh.timings["control_plane_ready"] = time.monotonic() - started
    started = time.monotonic()
    mesh.readme("kubectl apply -f examples/kubernetes/shop.yaml")
    mesh.readme("kubectl apply -n shop -f examples/demo/")
    mesh.readme("kubectl -n shop wait --for=condition=Available deploy --all --timeout=180s")
    # Ready pods are not yet reachable through their ClusterIP: kube-proxy programs a Service's
    # endpoints after it sees the EndpointSlice (until then the ClusterIP refuses connections).
    frontend = mesh.cluster_ip("shop", "frontend")
    wait_until(lambda: mesh.get(f"http://{frontend}/")[0] == 200, "frontend's ClusterIP answers")
    mesh.timings["shop_ready"] = time.monotonic() - started
    try:
        yield mesh
    finally:
        mesh.stop_background()


@dataclass
class Outcome:
    """What a traffic loop saw."""

    ok: int = 0
    failures: list[str] = field(default_factory=list)
    served_by: dict[str, int] = field(default_factory=dict)


class Traffic:
    """Requests in a loop from threads inside the cluster's namespace, bounded in count and time.

    A request succeeds when the frontend answers 200 and its own call to catalog (and catalog's
    to customer) answered 200, so a failure anywhere on the mesh path counts.
    """

    def __init__(
        self, cluster: NodeCluster, url: str, *, workers: int = 2, limit: int = 20000,
        seconds: float = 300.0,
    ) -> None:  # fmt: skip
        self._url = url
        self._workers = workers
        self._limit = limit
        self._seconds = seconds
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._netns = cluster.state.netns_path
        self._threads: list[threading.Thread] = []
        self.outcome = Outcome()

    def __enter__(self) -> Traffic:
        for index in range(self._workers):
            thread = threading.Thread(target=self._run, name=f"traffic-{index}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def _run(self) -> None:
        import urllib.error
        import urllib.request

        enter_netns(self._netns)
        deadline = time.monotonic() + self._seconds
        while not self._stop.is_set() and time.monotonic() < deadline:
            with self._lock:
                if self.outcome.ok + len(self.outcome.failures) >= self._limit:
                    return
            failure = ""
            served = ""
            try:
                with urllib.request.urlopen(self._url, timeout=10) as response:  # noqa: S310
                    body = json.loads(response.read())
                upstream = body.get("upstream") or {}
                if body.get("upstream_status") != 200 or upstream.get("upstream_status") != 200:
                    failure = f"upstream failed: {json.dumps(body)[:400]}"
                served = f"{upstream.get('workload')}"
            except urllib.error.HTTPError as error:
                failure = f"HTTP {error.code}: {error.read()[:600].decode(errors='replace')}"
                error.close()
            except Exception as error:  # every failure counts, whatever it is
                failure = repr(error)[:400]
            with self._lock:
                if failure:
                    self.outcome.failures.append(f"{time.strftime('%H:%M:%S')} {failure}")
                else:
                    self.outcome.ok += 1
                    self.outcome.served_by[served] = self.outcome.served_by.get(served, 0) + 1
            time.sleep(0.02)
