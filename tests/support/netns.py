"""Network namespaces for interception tests: two "pods" joined by a veth pair, processes in them.

Each namespace gets a private address on the veth and its own loopback; nothing routes anywhere
else. Processes start through `ip netns exec` (and `setpriv` to run as another UID, as the
sidecar container does); `ip` and `setpriv` exec the command, so the Popen's pid is the process.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from lightmeshctl.demo.mesh import Process

REPO = Path(__file__).resolve().parents[2]
CLIENT = REPO / "tests" / "netns" / "client.py"


def unavailable() -> str:
    """Why these tests cannot run here, or "" when they can."""
    if os.geteuid() != 0:
        return "network namespaces and iptables need root"
    for tool in ("ip", "iptables", "iptables-save", "setpriv"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (scripts/install-netns-tools.sh installs it)"
    probe = f"lmprobe{uuid.uuid4().hex[:6]}"
    result = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if result.returncode != 0:
        return f"ip netns add fails here: {result.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True, check=False)
    return ""


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], capture_output=True, text=True, check=True)


@dataclass(frozen=True)
class Reply:
    """An HTTP answer received inside a namespace."""

    status: int
    headers: dict[str, str]
    body: str

    def json(self) -> Any:
        """The body parsed as JSON."""
        return json.loads(self.body)


@dataclass
class Namespace:
    """One end of the pair: its name and veth address."""

    name: str
    address: str

    def run(
        self, *argv: str, uid: int | None = None, timeout: float = 30
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside the namespace and wait for it."""
        return subprocess.run(
            [*self._prefix(uid), *argv], capture_output=True, text=True, timeout=timeout, cwd=REPO
        )

    def http(
        self,
        url: str,
        *,
        host: str = "",
        method: str = "GET",
        uid: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> Reply:
        """One request from a plain client in this namespace, as root or as `uid` (raises OSError
        if it cannot connect)."""
        args = [sys.executable, str(CLIENT), url, "--method", method]
        for name, value in (headers or {}).items():
            args += ["--header", f"{name}:{value}"]
        result = self.run(*args, *(["--host", host] if host else []), uid=uid)
        if result.returncode != 0:
            raise OSError(result.stderr.strip() or f"client exited {result.returncode}")
        data = json.loads(result.stdout)
        return Reply(
            data["status"], {k.lower(): v for k, v in data["headers"].items()}, data["body"]
        )

    def _prefix(self, uid: int | None) -> list[str]:
        prefix = ["ip", "netns", "exec", self.name]
        if uid is not None:
            prefix += ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]
        return prefix


@dataclass
class NetnsPair:
    """Two namespaces joined by a veth pair; a context manager that removes them and their processes."""

    work_dir: Path
    a: Namespace = field(init=False)
    b: Namespace = field(init=False)
    _processes: list[Process] = field(default_factory=list)

    def __post_init__(self) -> None:
        tag = uuid.uuid4().hex[:6]
        # Private addresses, reachable only between these two namespaces.
        self.a = Namespace(f"lm-{tag}-a", "10.77.0.1")
        self.b = Namespace(f"lm-{tag}-b", "10.77.0.2")
        self._veth = (f"lm{tag}a", f"lm{tag}b")

    def __enter__(self) -> Self:
        (self.work_dir / "logs").mkdir(parents=True, exist_ok=True)
        try:
            for ns in (self.a, self.b):
                _ip("netns", "add", ns.name)
            _ip("link", "add", self._veth[0], "type", "veth", "peer", "name", self._veth[1])
            for ns, veth in zip((self.a, self.b), self._veth, strict=True):
                _ip("link", "set", veth, "netns", ns.name)
                _ip("-n", ns.name, "addr", "add", f"{ns.address}/24", "dev", veth)
                _ip("-n", ns.name, "link", "set", veth, "up")
                _ip("-n", ns.name, "link", "set", "lo", "up")
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def spawn(
        self, ns: Namespace, name: str, argv: list[str], *, uid: int | None = None
    ) -> Process:
        """Start a long-running process in `ns`; its output goes to logs/NAME.log."""
        log = self.work_dir / "logs" / f"{name}.log"
        with log.open("ab") as out:
            popen = subprocess.Popen(
                [*ns._prefix(uid), *argv],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
                cwd=REPO,
            )
        process = Process(name, popen, log)
        self._processes.append(process)
        return process

    def logs(self) -> str:
        """The tail of every process log."""
        return "\n".join(f"--- {p.name} ---\n{p.tail(30)}" for p in self._processes)

    def close(self) -> None:
        """Stop the processes started here, then delete the namespaces (and with them the veth)."""
        for process in reversed(self._processes):
            process.stop()
        for ns in (self.a, self.b):
            subprocess.run(["ip", "netns", "del", ns.name], capture_output=True, check=False)
