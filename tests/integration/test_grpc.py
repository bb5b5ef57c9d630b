"""gRPC through the mesh as real processes: a grpcio client, its sidecar, mutual TLS, three pricing
pods (real sidecars in front of real grpcio servers), config from the control plane's files.

The client dials its sidecar's outbound port with prior knowledge (h2c), as an app whose traffic
is redirected does; the sidecars speak HTTP/2 to each other over mutual TLS (ALPN h2) and h2c to
each app (the caller's protocol). One client channel — one HTTP/2 connection — is balanced per
call across the three pods.
"""

from __future__ import annotations

import http.client
from pathlib import Path

import grpc
import pytest

from lightmeshctl.demo.mesh import LocalMesh, http_get, wait_for
from tests.support.grpc_echo import SERVICE

pytestmark = pytest.mark.integration

PODS = ("pricing-a", "pricing-b", "pricing-c")
RULE = """\
apiVersion: lightmesh.io/v1alpha1
kind: DestinationRule
metadata: {name: pricing, namespace: shop}
spec:
  host: pricing
  trafficPolicy:
    loadBalancer: {simple: ROUND_ROBIN}
    connectionPool: {http: {maxConcurrentStreams: 50, http2MaxRequests: 500}}
---
apiVersion: lightmesh.io/v1alpha1
kind: VirtualService
metadata: {name: pricing, namespace: shop}
spec:
  hosts: [pricing]
  http:
    - route: [{destination: {host: pricing}}]
      retries: {attempts: 2, retryOn: "unavailable,connect-failure"}
"""


def _identity(data: bytes) -> bytes:
    return data


def start(mesh: LocalMesh, config_dir: Path) -> None:
    (config_dir / "pricing.yaml").write_text(RULE)
    mesh.start_control_plane()
    workloads = [("frontend", "frontend", ())]
    workloads += [
        (
            name,
            "pricing",
            (
                "-m", "tests.support.grpc_echo", "--port", "{port}", "--name", name,
                *(("--flaky",) if name == "pricing-a" else ()),
            ),
        )
        for name in PODS
    ]  # fmt: skip
    for name, service, app in workloads:
        mesh.start_workload(
            name,
            service=service,
            namespace="shop",
            sidecar_args=(
                "--service-account", f"{service}-sa",
                "--identity-dir", str(mesh.work_dir / f"{name}-identity"),
            ),
            app=app,
        )  # fmt: skip
    mesh.wait_ready()
    for name in mesh.workloads:
        wait_for(
            lambda n=name: http_get(f"{mesh.workloads[n].admin}/certs").json()["certificate"],
            timeout=30,
            what=f"{name}: certificate installed",
        )


def stub(channel: grpc.Channel, name: str, kind: str = "unary_unary") -> object:
    return getattr(channel, kind)(
        f"/{SERVICE}/{name}", request_serializer=_identity, response_deserializer=_identity
    )


def test_grpc_through_two_sidecars_balanced_per_call(mesh: LocalMesh, config_dir: Path) -> None:
    start(mesh, config_dir)
    outbound = mesh.workloads["frontend"].outbound_port
    options = [("grpc.default_authority", "pricing"), ("grpc.enable_retries", 0)]
    with grpc.insecure_channel(f"127.0.0.1:{outbound}", options=options) as channel:
        who = stub(channel, "Who")

        def all_three_serve() -> bool:
            try:
                return {who(b"", timeout=2) for _ in range(6)} == {n.encode() for n in PODS}  # type: ignore[operator]
            except grpc.RpcError:
                return False

        wait_for(all_three_serve, timeout=30, what="pricing routed to all three pods")
        names = [who(b"", timeout=5) for _ in range(300)]  # type: ignore[operator]
        shares = {name.decode(): names.count(name) for name in set(names)}
        assert shares == dict.fromkeys(PODS, 100), shares  # round robin, per call

        unary = stub(channel, "Unary")
        reply, call = unary.with_call(b"hi", metadata=(("x-echo", "1"),), timeout=5)  # type: ignore[attr-defined]
        assert reply == b"hi"
        assert ("x-echo", "1") in call.initial_metadata()
        assert dict(call.trailing_metadata())["x-trailer"] in PODS
        big = unary(b"big:3000000", timeout=10)  # type: ignore[operator]
        assert len(big) == 3_000_000
        stream = stub(channel, "ServerStream", "unary_stream")(b"20:100000", timeout=10)  # type: ignore[operator]
        assert sum(len(m) for m in stream) == 2_000_000
        with pytest.raises(grpc.RpcError) as caught:
            unary(b"status:5", timeout=5)  # type: ignore[operator]
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]

        # pricing-a answers Flaky with UNAVAILABLE: the route retries it on another pod.
        flaky = stub(channel, "Flaky")
        assert {flaky(b"", timeout=5) for _ in range(9)} <= {b"pricing-b", b"pricing-c"}  # type: ignore[operator]

    metrics = http_get(f"{mesh.workloads['frontend'].admin}/metrics").body.decode()
    lines = [line for line in metrics.splitlines() if line.startswith("lightmesh_requests_total{")]
    grpc_ok = [line for line in lines if 'grpc_response_status="0"' in line]
    assert grpc_ok and all('mtls="true"' in line for line in grpc_ok), lines
    assert any('grpc_response_status="5"' in line for line in lines)
    served = http_get(f"{mesh.workloads['pricing-b'].admin}/metrics").body.decode()
    assert any(
        'reporter="destination"' in line and 'grpc_response_status="0"' in line
        and 'mtls="true"' in line
        for line in served.splitlines()
    )  # fmt: skip


def _http11_unary(port: int, message: bytes) -> tuple[int, bytes]:
    """A gRPC-framed call sent as HTTP/1.1 (what the inbound listener gets from an HTTP/1.1
    caller): the status and body of the answer."""
    frame = b"\x00" + len(message).to_bytes(4, "big") + message
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request(
            "POST",
            f"/{SERVICE}/Unary",
            body=frame,
            headers={"Host": "pricing", "Content-Type": "application/grpc", "TE": "trailers"},
        )
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def test_the_registered_protocol_makes_the_inbound_speak_http2_to_the_app(
    mesh: LocalMesh,
) -> None:
    """No --app-protocol: the control plane pushes the protocol the service is declared with
    (here registered as `--service pricing:grpc`, Kubernetes' appProtocol in cluster mode), so
    an HTTP/1.1 call reaches the grpcio app (HTTP/2 only) as HTTP/2. Undeclared, the same call
    goes to its app as HTTP/1.1, which a grpcio server cannot answer."""
    mesh.start_control_plane()
    app = ("-m", "tests.support.grpc_echo", "--port", "{port}", "--name", "app")
    declared = mesh.start_workload("pricing-a", service="pricing", namespace="shop", app=app,
                                   protocol="grpc")  # fmt: skip
    undeclared = mesh.start_workload("ledger-a", service="ledger", namespace="shop", app=app)
    mesh.wait_ready()
    message = b"hi over h1"
    framed = b"\x00" + len(message).to_bytes(4, "big") + message
    wait_for(
        lambda: _http11_unary(declared.inbound_port, message) == (200, framed),
        timeout=30,
        what="an HTTP/1.1 call answered by the gRPC app",
    )
    status, _ = _http11_unary(undeclared.inbound_port, message)
    assert status >= 500
