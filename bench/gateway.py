"""Quick figures of the ingress gateway: one sequential client, N requests each (bounded), to a
meshed workload under STRICT mTLS (the gateway's own identity), compared with the sidecar's
outbound listener on the same machine:

- sidecar outbound, HTTP keep-alive (the baseline: one proxy hop + mTLS + inbound sidecar);
- gateway HTTP keep-alive; gateway HTTPS keep-alive (TLS terminated, SNI-selected certificate);
- gateway HTTPS with a new connection per request (a full TLS handshake each, ECDSA P-256);
- the gateway's RSS afterwards.

    flock /tmp/lightmesh-bench.lock .venv/bin/python -m bench.gateway --requests 1000

The client is Python (`requests`): its own cost is in every figure, so compare rows, not with
other proxies' published numbers.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import requests

from lightmeshctl.demo.mesh import LocalMesh, free_port, wait_for
from tests.support.certs import EdgeCA
from tests.support.edge import SNIAdapter

NAME = "shop.example.com"


def _resources(http_port: int, https_port: int, secret: Path) -> str:
    return f"""
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: default, namespace: shop}}
spec: {{mtls: {{mode: STRICT}}}}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: gw, namespace: shop}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
    - port: {{number: {http_port}, name: http, protocol: HTTP}}
      hosts: ["*"]
    - port: {{number: {https_port}, name: https, protocol: HTTPS}}
      hosts: ["*"]
      tls: {{mode: SIMPLE, credentialName: "{secret}"}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: shop, namespace: shop}}
spec:
  hosts: ["{NAME}"]
  gateways: [gw]
  http: [{{route: [{{destination: {{host: catalog}}}}]}}]
"""


def timed(count: int, call: Callable[[], requests.Response]) -> str:
    """`count` sequential calls: rate and latency percentiles (every answer must be 200)."""
    latencies = []
    start = time.perf_counter()
    for _ in range(count):
        began = time.perf_counter()
        status = call().status_code
        latencies.append(time.perf_counter() - began)
        if status != 200:
            raise SystemExit(f"answered {status}")
    total = time.perf_counter() - start
    latencies.sort()
    p50, p99 = latencies[count // 2], latencies[int(count * 0.99)]
    return f"{count / total:7.0f} req/s  p50 {p50 * 1000:6.2f} ms  p99 {p99 * 1000:6.2f} ms"


def main() -> None:
    """Run the rows and print them."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000)
    count = parser.parse_args().requests
    work = Path(tempfile.mkdtemp(prefix="lightmesh-bench-gw-"))
    config = work / "config"
    config.mkdir()
    ca = EdgeCA("bench")
    ca_file = work / "ca.pem"
    ca_file.write_text(ca.pem)
    secret = ca.write_secret_dir(work / "shop", NAME, dns=(NAME,))
    http_port, https_port = free_port(), free_port()
    (config / "gateway.yaml").write_text(_resources(http_port, https_port, secret))
    host = {"Host": NAME}
    with LocalMesh(config_dir=config, work_dir=work / "mesh") as mesh:
        mesh.start_control_plane()
        mesh.start_workload("catalog", service="catalog", namespace="shop")
        frontend = mesh.start_workload("frontend", service="frontend", namespace="shop")
        mesh.wait_ready()
        gateway = mesh.start_gateway(namespace="shop")
        plain = requests.Session()
        proxy = {"http": f"http://{frontend.outbound}"}

        def through_gateway() -> requests.Response:
            return plain.get(f"http://127.0.0.1:{http_port}/", headers=host, timeout=5)

        def through_sidecar() -> requests.Response:
            return plain.get("http://catalog.shop/", proxies=proxy, timeout=5)

        wait_for(lambda: through_gateway().status_code == 200, timeout=60, what="gateway")
        wait_for(lambda: through_sidecar().status_code == 200, timeout=60, what="sidecar")
        for _ in range(100):  # warm both paths (pools, TLS sessions)
            through_gateway(), through_sidecar()
        tls = requests.Session()
        tls.mount("https://", SNIAdapter(NAME))

        def https_kept() -> requests.Response:
            url = f"https://127.0.0.1:{https_port}/"
            return tls.get(url, headers=host, verify=str(ca_file), timeout=5)

        def https_new() -> requests.Response:
            with requests.Session() as session:
                session.mount("https://", SNIAdapter(NAME))
                url = f"https://127.0.0.1:{https_port}/"
                return session.get(url, headers=host, verify=str(ca_file), timeout=5)

        print("sidecar outbound, HTTP keep-alive    ", timed(count, through_sidecar))
        print("gateway HTTP keep-alive              ", timed(count, through_gateway))
        print("gateway HTTPS keep-alive             ", timed(count, https_kept))
        print("gateway HTTPS, new connection each   ", timed(count, https_new))
        if gateway.sidecar is not None:
            status = Path(f"/proc/{gateway.sidecar.popen.pid}/status").read_text()
            rss = next(line for line in status.splitlines() if line.startswith("VmRSS"))
            print("gateway", rss)


if __name__ == "__main__":
    main()
