"""The span exporter against real sockets: a Zipkin v2 collector (aiohttp), a dead port, a collector
that never answers, and a full queue."""

import asyncio
import socket

from aiohttp import web

from sidecar.contract import Completed, RequestHead
from sidecar.telemetry.propagation import Tracer
from sidecar.telemetry.zipkin import CLIENT, SERVER, LocalEndpoint, ZipkinExporter
from tests.support.servers import serving
from tests.support.zipkin import schema_errors

LOCAL = LocalEndpoint(service="frontend.default", address="127.0.0.1")


def exchange(*, sampled: bool = True, status: int = 200) -> Completed:
    tracer = Tracer(sample_percent=100 if sampled else 0)
    _, headers = tracer.continue_trace([(b"x-request-id", b"req-1")])
    head = RequestHead(
        method="GET", path="/items", host="catalog", http_version="1.1", headers=headers,
        peer="127.0.0.5",
    )  # fmt: skip
    return Completed(
        method="GET", host="catalog", cluster="outbound|v1|catalog.default.svc.cluster.local",
        status=status, flags="" if status < 500 else "UF", duration=0.0021, request_bytes=0,
        response_bytes=12, upstream="127.0.0.7:9000", head=head, start_time=1700000000.5,
    )  # fmt: skip


async def test_batches_reach_a_zipkin_collector_in_v2_schema() -> None:
    batches: list[list[dict[str, object]]] = []

    async def receive(request: web.Request) -> web.Response:
        batches.append(await request.json())
        return web.Response(status=202)

    app = web.Application()
    app.router.add_post("/api/v2/spans", receive)
    async with serving(app) as port:
        exporter = ZipkinExporter(
            f"http://127.0.0.1:{port}/api/v2/spans", LOCAL, batch_size=3, interval=0.05
        )
        for _ in range(4):
            exporter.submit(exchange(), CLIENT, "catalog.default.svc.cluster.local")
        exporter.submit(exchange(status=503), SERVER)
        exporter.submit(exchange(sampled=False), SERVER)  # not sampled: never exported
        await exporter.flush()
    assert [len(b) for b in batches] == [3, 2]
    spans = [s for b in batches for s in b]
    assert all(schema_errors(s) == [] for s in spans), [schema_errors(s) for s in spans]
    client = spans[0]
    assert client["kind"] == "CLIENT"
    assert client["timestamp"] == 1700000000500000 and client["duration"] == 2100
    assert client["localEndpoint"] == {"serviceName": "frontend.default", "ipv4": "127.0.0.1"}
    assert client["remoteEndpoint"] == {
        "serviceName": "catalog.default.svc.cluster.local", "ipv4": "127.0.0.7", "port": 9000,
    }  # fmt: skip
    assert client["tags"]["http.method"] == "GET"  # type: ignore[index]
    assert client["tags"]["guid:x-request-id"] == "req-1"  # type: ignore[index]
    server = spans[-1]
    assert server["kind"] == "SERVER" and server["tags"]["error"] == "true"  # type: ignore[index]
    assert server["remoteEndpoint"] == {"ipv4": "127.0.0.5"}
    assert exporter.exported == 5 and exporter.failed == 0 and exporter.dropped == 0


async def test_a_dead_collector_only_counts_failures() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = sock.getsockname()[1]  # closed again before use: nothing listens there
    exporter = ZipkinExporter(f"http://127.0.0.1:{dead}/api/v2/spans", LOCAL, batch_size=10)
    for _ in range(25):
        exporter.submit(exchange(), CLIENT)
    await exporter.flush()
    assert exporter.failed == 25 and exporter.exported == 0 and exporter.queued == 0
    # Backing off: later spans are counted without being built or sent.
    exporter.submit(exchange(), CLIENT)
    await exporter.flush()
    assert exporter.failed == 26 and exporter.queued == 0


async def test_a_collector_that_never_answers_costs_one_bounded_wait() -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # connections complete in the backlog; nobody reads or answers
        port = silent.getsockname()[1]
        exporter = ZipkinExporter(
            f"http://127.0.0.1:{port}/api/v2/spans", LOCAL, batch_size=100, timeout=0.2
        )
        for _ in range(5):
            exporter.submit(exchange(), CLIENT)
        await exporter.flush()
    assert exporter.failed == 5 and exporter.exported == 0


async def test_a_full_queue_drops_and_counts_without_blocking() -> None:
    exporter = ZipkinExporter("http://127.0.0.1:9/api/v2/spans", LOCAL, max_queue=100)
    for _ in range(250):
        exporter.submit(exchange(), CLIENT)  # synchronous: it cannot block
    assert exporter.queued == 100 and exporter.dropped == 150


async def test_run_exports_until_stopped_then_flushes() -> None:
    received: list[int] = []

    async def receive(request: web.Request) -> web.Response:
        received.append(len(await request.json()))
        return web.Response(status=202)

    app = web.Application()
    app.router.add_post("/api/v2/spans", receive)
    async with serving(app) as port:
        exporter = ZipkinExporter(f"http://127.0.0.1:{port}/api/v2/spans", LOCAL, interval=60)
        stop = asyncio.Event()
        task = asyncio.create_task(exporter.run(stop))
        exporter.submit(exchange(), CLIENT)
        stop.set()
        await asyncio.wait_for(task, timeout=10)
    assert sum(received) == 1
