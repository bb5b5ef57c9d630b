"""Quick control-plane scale check for issue 12 (delta protocol), until `python -m bench
controlplane` (branch cp-bench) is merged and ported: then fold this into it.

Runs the real control plane (local mode: a directory of VirtualService + DestinationRule files,
services registered by the simulated sidecars, TLS config stream) and P simulated sidecars from K
processes (one TLS channel each, wildcard subscription to every type, every response ACKed), and
measures on the machine's shared monotonic clock:
- cold herd: all P connect at once → every proxy has received all four types;
- VirtualService weight change → the ROUTES response at every proxy (p50/p90/p99/max);
- endpoint change (one more instance of one service registers) → the ENDPOINTS response at the
  proxies that see it, bytes per affected proxy;
- control-plane restart with the same state → every stream reconnected and SYNCED;
- CP RSS and CPU seconds per change.

    flock /tmp/lightmesh-bench.lock python -m bench.cp_quick --proxies 1000 --services 100
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

METHOD = "/lightmesh.v1.ConfigDiscovery/DeltaConfig"


# --- one client process: many simulated sidecars ---


async def _sidecar(target: str, ca: bytes, index: int, services: int, out: Any) -> None:
    import grpc

    from lightmesh.types import PUSH_ORDER, SHORT_NAMES
    from lightmesh.v1 import discovery_pb2 as pb
    from lightmesh.versions import set_version

    registration = pb.ServiceRegistration(
        service=f"svc{index % services}", address="127.0.0.1", port=20000 + index % 40000
    )
    node = pb.Node(id=f"p{index}", workload=f"w{index}", namespace="default")
    node.registrations.append(registration)
    options = (
        ("grpc.use_local_subchannel_pool", 1),
        ("grpc.ssl_target_name_override", "localhost"),
    )
    while True:
        try:
            credentials = grpc.ssl_channel_credentials(root_certificates=ca)
            async with grpc.aio.secure_channel(target, credentials, options=options) as channel:
                call = channel.stream_stream(
                    METHOD,
                    request_serializer=pb.DeltaDiscoveryRequest.SerializeToString,
                    response_deserializer=pb.DeltaDiscoveryResponse.FromString,
                )()
                held: dict[str, dict[str, str]] = _HELD.setdefault(index, {})
                for n, type_url in enumerate(PUSH_ORDER):
                    versions = held.get(type_url, {})
                    request = pb.DeltaDiscoveryRequest(
                        type_url=type_url,
                        resource_names_subscribe=["*"],
                        initial_resource_versions=versions,
                        # As the sidecar does (sidecar/config/protocol.py).
                        initial_resources_digest=set_version(versions) if versions else "",
                    )
                    if n == 0:
                        request.node.CopyFrom(node)
                    await call.write(request)
                out.write(f"{index} OPEN {time.monotonic():.6f} 0 0\n")
                while True:
                    response = await call.read()
                    if response is grpc.aio.EOF:
                        break
                    now = time.monotonic()
                    versions = held.setdefault(response.type_url, {})
                    for resource in response.resources:
                        versions[resource.name] = resource.version
                    for name in response.removed_resources:
                        versions.pop(name, None)
                    await call.write(
                        pb.DeltaDiscoveryRequest(
                            type_url=response.type_url, response_nonce=response.nonce
                        )
                    )
                    short = SHORT_NAMES[response.type_url]
                    out.write(
                        f"{index} {short} {now:.6f} {response.ByteSize()} {len(response.resources)}\n"
                    )
        except grpc.aio.AioRpcError:
            pass
        await asyncio.sleep(0.25)


_HELD: dict[int, dict[str, dict[str, str]]] = {}


async def _clients(target: str, ca: bytes, start: int, count: int, services: int) -> None:
    tasks = [
        asyncio.create_task(_sidecar(target, ca, i, services, sys.stdout))
        for i in range(start, start + count)
    ]
    await asyncio.gather(*tasks)


# --- the orchestrator ---


def _resources(index: int, weight: int) -> str:
    return f"""apiVersion: lightmesh.io/v1alpha1
kind: VirtualService
metadata: {{name: svc{index}, namespace: default}}
spec:
  hosts: [svc{index}]
  http:
    - route:
        - destination: {{host: svc{index}, subset: a}}
          weight: {weight}
        - destination: {{host: svc{index}, subset: b}}
          weight: {100 - weight}
---
apiVersion: lightmesh.io/v1alpha1
kind: DestinationRule
metadata: {{name: svc{index}, namespace: default}}
spec:
  host: svc{index}
  subsets:
    - {{name: a, labels: {{}}}}
    - {{name: b, labels: {{}}}}
"""


class Rig:
    """The control plane, the client processes, and what the clients report."""

    def __init__(self, proxies: int, services: int, processes: int, work: Path) -> None:
        self.proxies, self.services, self.processes = proxies, services, processes
        self.work = work
        self.config = work / "config"
        self.config.mkdir(parents=True)
        for i in range(services):
            (self.config / f"svc{i}.yaml").write_text(_resources(i, 50))
        self.port, self.debug = _free_port(), _free_port()
        self.lines: list[str] = []
        self.lock = threading.Lock()
        self.clients: list[subprocess.Popen[str] | subprocess.Popen[bytes]] = []
        self.cp: subprocess.Popen[bytes] | None = None

    def start_cp(self) -> None:
        log = (self.work / "cp.log").open("ab")
        self.cp = subprocess.Popen(
            [sys.executable, "-m", "lightmeshctl.cli", "controlplane",
             "--config-dir", str(self.config), "--state-dir", str(self.work / "state"),
             "--port", str(self.port), "--debug-port", str(self.debug), "--log-level", "warning"],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.debug}/healthz", timeout=1)
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("control plane did not start")

    def start_clients(self) -> None:
        per = self.proxies // self.processes
        for k in range(self.processes):
            count = per if k < self.processes - 1 else self.proxies - per * k
            args = [sys.executable, "-m", "bench.cp_quick", "--client",
                    f"127.0.0.1:{self.port}", str(self.work / "state/root.pem"),
                    str(k * per), str(count), str(self.services)]  # fmt: skip
            proc = subprocess.Popen(
                args, stdout=subprocess.PIPE, text=True, stderr=(self.work / f"c{k}.log").open("w")
            )
            self.clients.append(proc)
            threading.Thread(target=self._read, args=(proc,), daemon=True).start()

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None  # noqa: S101 - set by Popen(stdout=PIPE)
        for line in proc.stdout:
            with self.lock:
                self.lines.append(line)

    def mark(self) -> int:
        with self.lock:
            return len(self.lines)

    def since(self, mark: int) -> list[list[str]]:
        with self.lock:
            return [line.split() for line in self.lines[mark:]]

    def rss_mb(self) -> float:
        assert self.cp is not None  # noqa: S101
        status = Path(f"/proc/{self.cp.pid}/status").read_text()
        return int(status.split("VmRSS:")[1].split()[0]) / 1024

    def cpu_s(self) -> float:
        assert self.cp is not None  # noqa: S101
        fields = Path(f"/proc/{self.cp.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def proxies_synced(self) -> int:
        url = f"http://127.0.0.1:{self.debug}/debug/proxies"
        rows = json.load(urllib.request.urlopen(url, timeout=30))["proxies"]
        return sum(1 for r in rows if all(t["state"] == "SYNCED" for t in r["types"].values()))

    def probe_health(self, stop: threading.Event, out: list[float]) -> None:
        """GET /healthz every 100 ms until `stop`; record each answer's latency."""
        url = f"http://127.0.0.1:{self.debug}/healthz"
        while not stop.wait(0.1):
            t = time.monotonic()
            try:
                urllib.request.urlopen(url, timeout=30).read()
            except OSError:
                out.append(30.0)
                continue
            out.append(time.monotonic() - t)

    def stop(self) -> None:
        for proc in self.clients:
            proc.kill()
        if self.cp is not None:
            self.cp.terminate()
            self.cp.wait(30)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _quantiles(values: list[float]) -> dict[str, float]:
    values = sorted(values)
    if not values:
        return {}

    def pick(q: float) -> float:
        return values[min(len(values) - 1, int(q * len(values)))]

    return {"p50": pick(0.5), "p90": pick(0.9), "p99": pick(0.99), "max": values[-1]}


def _wait_for(
    rig: Rig, mark: int, kind: str, started: float, expect: int, timeout: float
) -> dict[str, tuple[float, int]]:
    got: dict[str, tuple[float, int]] = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and len(got) < expect:
        for index, short, at, size, _ in rig.since(mark):
            if short == kind and index not in got:
                got[index] = (float(at) - started, int(size))
        time.sleep(0.05)
    return got


def run(proxies: int, services: int, processes: int) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="lightmesh-cpquick-"))
    rig = Rig(proxies, services, processes, work)
    result: dict[str, Any] = {"proxies": proxies, "services": services, "load": os.getloadavg()}
    try:
        rig.start_cp()
        health: list[float] = []
        probing = threading.Event()
        threading.Thread(target=rig.probe_health, args=(probing, health), daemon=True).start()
        started = time.monotonic()
        cpu0 = rig.cpu_s()
        rig.start_clients()
        seen: dict[str, set[str]] = {}
        done_at = None
        mark = 0
        while time.monotonic() - started < 300:
            for index, short, _at, *_ in rig.since(mark):
                if short != "OPEN":
                    seen.setdefault(index, set()).add(short)
            mark = rig.mark()
            if sum(1 for s in seen.values() if len(s) == 4) >= proxies:
                done_at = time.monotonic() - started
                break
            time.sleep(0.1)
        result["cold_herd_s"] = done_at
        result["healthz_during_herd_s"] = _quantiles(health)
        result["cold_herd_cpu_s"] = rig.cpu_s() - cpu0
        time.sleep(3)  # the registrations' endpoint updates settle
        result["rss_mb"] = rig.rss_mb()
        changes = []
        for n, weight in enumerate((70, 30, 60)):
            mark, cpu0 = rig.mark(), rig.cpu_s()
            t = time.monotonic()
            tmp = rig.config / "svc1.tmp"
            tmp.write_text(_resources(1, weight))
            tmp.replace(rig.config / "svc1.yaml")
            got = _wait_for(rig, mark, "ROUTES", t, proxies, 120)
            time.sleep(1.0)
            changes.append({
                "received": len(got), **_quantiles([v[0] for v in got.values()]),
                "bytes_per_proxy": sum(v[1] for v in got.values()) / max(1, len(got)),
                "cpu_s": rig.cpu_s() - cpu0,
            })  # fmt: skip
            del n
        result["vs_change"] = changes
        probing.set()
        result["healthz_overall_s"] = _quantiles(health)
        # One endpoint more for svc0: a new proxy registering it.
        mark, cpu0 = rig.mark(), rig.cpu_s()
        t = time.monotonic()
        extra = subprocess.Popen(
            [sys.executable, "-m", "bench.cp_quick", "--client", f"127.0.0.1:{rig.port}",
             str(work / "state/root.pem"), str(proxies * services), "1", str(services)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        rig.clients.append(extra)
        got = _wait_for(rig, mark, "ENDPOINTS", t, proxies, 120)
        time.sleep(1.0)
        result["endpoint_change"] = {
            "received": len(got), **_quantiles([v[0] for v in got.values()]),
            "bytes_per_proxy": sum(v[1] for v in got.values()) / max(1, len(got)),
            "cpu_s": rig.cpu_s() - cpu0,
        }  # fmt: skip
        result["rss_after_mb"] = rig.rss_mb()
        # Restart herd: same state directory, every sidecar reconnects holding its config.
        assert rig.cp is not None  # noqa: S101
        rig.cp.kill()
        rig.cp.wait()
        mark = rig.mark()
        t = time.monotonic()
        rig.start_cp()
        synced = 0
        while time.monotonic() - t < 300:
            synced = rig.proxies_synced()
            if synced >= proxies + 1:
                break
            time.sleep(2.0)  # /debug/proxies of thousands of streams is not free
        result["restart_herd_s"] = time.monotonic() - t
        result["restart_synced"] = synced
        result["restart_bytes_per_proxy"] = sum(
            int(size) for _, short, _, size, _ in rig.since(mark) if short != "OPEN"
        ) / max(1, proxies)
        result["restart_rss_mb"] = rig.rss_mb()
    finally:
        rig.stop()
    return result


def main(argv: list[str]) -> int:
    if argv and argv[0] == "--client":
        target, ca, start, count, services = argv[1:6]
        asyncio.run(_clients(target, Path(ca).read_bytes(), int(start), int(count), int(services)))
        return 0
    parser = argparse.ArgumentParser(prog="python -m bench.cp_quick")
    parser.add_argument("--proxies", type=int, default=1000)
    parser.add_argument("--services", type=int, default=100)
    parser.add_argument("--processes", type=int, default=4)
    args = parser.parse_args(argv)
    print(json.dumps(run(args.proxies, args.services, args.processes), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
