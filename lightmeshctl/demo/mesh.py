"""A whole mesh as local processes on loopback: control plane, apps and their sidecars.

Used by `lightmesh demo` and by the integration tests, so both exercise exactly what a user runs:
the same commands, real processes, real sockets. Synchronous on purpose (plain subprocess and
urllib), so it can drive the mesh from anywhere.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self


def free_port() -> int:
    """An unused TCP port on 127.0.0.1, below the kernel's ephemeral range.

    Ports the kernel hands out for port 0 come from the ephemeral range, which every outgoing
    connection on the machine also draws from: between this call and the child's bind, a client
    socket could take it (seen under parallel load). Ports below 32768 are never picked for those.
    A port is handed out once per process: the callers bind them later, all at once.
    """
    for _ in range(200):
        port = _PORTS.randrange(20000, 32768)
        if port in _GIVEN:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            _GIVEN.add(port)
            return port
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        chosen: int = sock.getsockname()[1]
        return chosen


_PORTS = random.Random()
_GIVEN: set[int] = set()


@dataclass(frozen=True, slots=True)
class Reply:
    """A finished HTTP exchange."""

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        """The body parsed as JSON."""
        return json.loads(self.body)


def http_get(
    url: str, *, headers: dict[str, str] | None = None, proxy: str = "", timeout: float = 5.0
) -> Reply:
    """GET `url` (through an HTTP proxy such as a sidecar's outbound listener, if given)."""
    handlers: list[urllib.request.BaseHandler] = [
        urllib.request.ProxyHandler({"http": f"http://{proxy}"} if proxy else {})
    ]
    opener = urllib.request.build_opener(*handlers)
    request = urllib.request.Request(url, headers=headers or {})  # noqa: S310 - http URL we build
    try:
        with opener.open(request, timeout=timeout) as response:
            return Reply(response.status, dict(response.headers.items()), response.read())
    except urllib.error.HTTPError as error:
        return Reply(error.code, dict(error.headers.items()), error.read())


def wait_for(
    predicate: Any, *, timeout: float, interval: float = 0.05, what: str = "condition"
) -> Any:
    """Poll `predicate()` until it returns something truthy; raise TimeoutError naming `what`."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = predicate()
            if result:
                return result
        except (OSError, ValueError) as error:
            last_error = error
        time.sleep(interval)
    detail = f" (last error: {last_error})" if last_error else ""
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}{detail}")


@dataclass
class Process:
    """A child process and its log file."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def alive(self) -> bool:
        """Whether it is still running."""
        return self.popen.poll() is None

    def stop(self, *, kill: bool = False, timeout: float = 10.0) -> int | None:
        """SIGTERM (or SIGKILL) and wait; escalate to SIGKILL after `timeout`."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        return self.popen.returncode

    def tail(self, lines: int = 20) -> str:
        """The last lines of its output."""
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@dataclass
class Workload:
    """An app and its sidecar."""

    name: str
    service: str
    version: str
    app_port: int
    inbound_port: int
    outbound_port: int
    admin_port: int
    # /metrics, /ready, /healthz only (what a cluster's Prometheus and kubelet reach).
    metrics_port: int = 0
    app: Process | None = None
    sidecar: Process | None = None

    @property
    def admin(self) -> str:
        """Base URL of the sidecar's admin server."""
        return f"http://127.0.0.1:{self.admin_port}"

    @property
    def inbound(self) -> str:
        """Base URL of the sidecar's inbound listener (what other sidecars call)."""
        return f"http://127.0.0.1:{self.inbound_port}"

    @property
    def outbound(self) -> str:
        """host:port of the sidecar's outbound listener (the app's HTTP proxy)."""
        return f"127.0.0.1:{self.outbound_port}"

    def ready(self) -> bool:
        """Whether the sidecar's /ready answers 200."""
        try:
            return http_get(f"{self.admin}/ready", timeout=1).status == 200
        except OSError:
            return False


@dataclass
class LocalMesh:
    """Starts and stops the processes of a local mesh; a context manager that cleans up."""

    config_dir: Path
    work_dir: Path
    python: str = sys.executable
    cp_port: int = field(default_factory=free_port)
    cp_debug_port: int = field(default_factory=free_port)
    cp_metrics_port: int = field(default_factory=free_port)
    control_plane: Process | None = None
    workloads: dict[str, Workload] = field(default_factory=dict)
    gateways: dict[str, Workload] = field(default_factory=dict)
    _processes: list[Process] = field(default_factory=list)

    def __enter__(self) -> Self:
        (self.work_dir / "logs").mkdir(parents=True, exist_ok=True)
        return self

    def __exit__(self, *_: object) -> None:
        self.stop_all()

    @property
    def state_dir(self) -> Path:
        """The control plane's state: registry, CA (0600), bootstrap token, trust bundle."""
        return self.work_dir / "state"

    @property
    def debug_url(self) -> str:
        """Base URL of the control plane's debug server."""
        return f"http://127.0.0.1:{self.cp_debug_port}"

    def spawn(self, name: str, args: list[str]) -> Process:
        """Start `python ARGS` as a child whose output goes to logs/NAME.log."""
        log = self.work_dir / "logs" / f"{name}.log"
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with log.open("ab") as out:
            popen = subprocess.Popen(
                [self.python, *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                stdin=subprocess.DEVNULL,
            )
        process = Process(name, popen, log)
        self._processes.append(process)
        return process

    def start_control_plane(
        self, *, wait: bool = True, extra_args: tuple[str, ...] = ()
    ) -> Process:
        """Start (or restart, on the same ports and state) the control plane."""
        self.control_plane = self.spawn(
            "controlplane",
            [
                "-m", "lightmeshctl.cli", "controlplane",
                "--config-dir", str(self.config_dir),
                "--port", str(self.cp_port),
                "--debug-port", str(self.cp_debug_port),
                "--metrics-port", str(self.cp_metrics_port),
                "--state-dir", str(self.state_dir),
                *extra_args,
            ],
        )  # fmt: skip
        if wait:
            wait_for(
                lambda: http_get(f"{self.debug_url}/healthz", timeout=1).status == 200,
                timeout=60,  # a hang guard: a loaded 2-core CI machine took > 20 s once
                what="control plane /healthz",
            )
        return self.control_plane

    def control_plane_args(self) -> list[str]:
        """The sidecar flags that reach this mesh's control plane: its address, and the trust
        bundle and bootstrap token it writes into its state directory before it serves."""
        return [
            "--control-plane", f"127.0.0.1:{self.cp_port}",
            "--ca-bundle", str(self.state_dir / "root.pem"),
            "--token-file", str(self.state_dir / "bootstrap-token"),
        ]  # fmt: skip

    def start_workload(
        self,
        name: str,
        *,
        service: str,
        version: str = "v1",
        call: str = "",
        namespace: str = "default",
        sidecar_args: tuple[str, ...] = (),
        app_args: tuple[str, ...] = (),
        app: tuple[str, ...] = (),
        protocol: str = "",
    ) -> Workload:
        """Start a demo app and its sidecar (not waiting for readiness).

        `protocol` (grpc, http2, http) is registered with the service, as a Kubernetes Service
        port's appProtocol would declare it: other sidecars and this one's inbound use it.

        `app_args` go to the demo app (e.g. `--fail-first 5`, `--delay 1`); `app`, if given, is
        another app's Python arguments instead, "{port}" in them replaced by its port.
        """
        workload = Workload(
            name=name,
            service=service,
            version=version,
            app_port=free_port(),
            inbound_port=free_port(),
            outbound_port=free_port(),
            admin_port=free_port(),
            metrics_port=free_port(),
        )
        workload.app = self.spawn(
            f"{name}-app",
            [arg.replace("{port}", str(workload.app_port)) for arg in app]
            if app
            else [
                "-m", "lightmeshctl.demo.app",
                "--name", service, "--version", version, "--workload", name,
                "--port", str(workload.app_port),
                "--call", call, "--outbound", workload.outbound,
                *app_args,
            ],
        )  # fmt: skip
        workload.sidecar = self.spawn(
            f"{name}-sidecar",
            [
                "-m", "lightmeshctl.cli", "sidecar",
                *self.control_plane_args(),
                "--workload", name, "--namespace", namespace,
                "--service", f"{service}:{protocol}" if protocol else service,
                "--labels", f"app={service},version={version}",
                "--app-port", str(workload.app_port),
                "--inbound-port", str(workload.inbound_port),
                "--outbound-port", str(workload.outbound_port),
                "--admin-port", str(workload.admin_port),
                "--metrics-port", str(workload.metrics_port),
                *sidecar_args,
            ],
        )  # fmt: skip
        self.workloads[name] = workload
        return workload

    def start_gateway(
        self,
        name: str = "ingressgateway",
        *,
        namespace: str = "default",
        labels: str = "istio=ingressgateway",
        service_account: str = "ingressgateway",
        args: tuple[str, ...] = (),
    ) -> Workload:
        """Start an ingress gateway (`lightmesh gateway`): its ports are its Gateways' servers."""
        gateway = Workload(
            name=name,
            service="",
            version="",
            app_port=0,
            inbound_port=0,
            outbound_port=0,
            admin_port=free_port(),
        )
        gateway.sidecar = self.spawn(
            name,
            [
                "-m", "lightmeshctl.cli", "gateway",
                *self.control_plane_args(),
                "--workload", name, "--namespace", namespace, "--labels", labels,
                "--service-account", service_account,
                "--admin-port", str(gateway.admin_port),
                *args,
            ],
        )  # fmt: skip
        self.gateways[name] = gateway
        return gateway

    def wait_ready(self, *, timeout: float = 30.0) -> None:
        """Wait until every sidecar is ready and every app answers."""
        for workload in self.workloads.values():
            wait_for(workload.ready, timeout=timeout, what=f"{workload.name} sidecar /ready")
            wait_for(
                lambda w=workload: _port_open(w.app_port),
                timeout=timeout,
                what=f"{workload.name} app on port {workload.app_port}",
            )

    def proxies(self) -> list[dict[str, Any]]:
        """The control plane's proxy status."""
        rows: list[dict[str, Any]] = http_get(f"{self.debug_url}/debug/proxies").json()["proxies"]
        return rows

    def problems(self) -> list[dict[str, Any]]:
        """The control plane's current resource problems."""
        items: list[dict[str, Any]] = http_get(f"{self.debug_url}/debug/problems").json()[
            "problems"
        ]
        return items

    def stop_all(self) -> None:
        """Stop every process this mesh started (sidecars first, then apps, then the control plane)."""
        running = [p for p in reversed(self._processes) if p.alive()]
        for process in running:
            process.popen.send_signal(signal.SIGTERM)
        for process in running:
            process.stop()


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0
