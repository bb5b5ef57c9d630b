"""Component tests of TCP passthrough on loopback: raw bytes both ways, half-close, backpressure,
connect failure and the idle timeout. The upstream is a real asyncio echo server."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import socket
from collections.abc import AsyncIterator

import pytest

from sidecar.contract import Completed, Forward
from sidecar.listeners.tcp import TcpProxyListener, start_tcp_proxy

DEADLINE = 10.0  # bound on every wait; never reached when things work


class EchoServer:
    """Echoes every byte; answers a half-close by finishing its own side."""

    def __init__(self) -> None:
        self.port = 0
        self.connections = 0
        self._server: asyncio.Server | None = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
            writer.write_eof()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def __aenter__(self) -> EchoServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()


class Recorded:
    def __init__(self) -> None:
        self.items: list[Completed] = []
        self.changed = asyncio.Event()

    def __call__(self, completed: Completed) -> None:
        self.items.append(completed)
        self.changed.set()

    async def wait_for(self, count: int) -> list[Completed]:
        async with asyncio.timeout(DEADLINE):
            while len(self.items) < count:
                self.changed.clear()
                await self.changed.wait()
        return self.items


@pytest.fixture
async def echo() -> AsyncIterator[EchoServer]:
    async with EchoServer() as server:
        yield server


@pytest.fixture
def recorded() -> Recorded:
    return Recorded()


async def _start(port: int, recorded: Recorded, **tunables: float) -> TcpProxyListener:
    target = Forward(address="127.0.0.1", port=port, cluster="tcp|db")
    return await start_tcp_proxy(
        "127.0.0.1",
        0,
        resolve=lambda peer: target,
        listener="tcp-test",
        recorder=recorded,
        **tunables,
    )


@contextlib.asynccontextmanager
async def connection(port: int) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def test_bytes_flow_both_ways_and_half_close_is_passed_on(
    echo: EchoServer, recorded: Recorded
) -> None:
    proxy = await _start(echo.port, recorded)
    try:
        async with connection(proxy.port) as (reader, writer), asyncio.timeout(DEADLINE):
            writer.write(b"\x00not http at all\r\n\r\n")
            assert await reader.readexactly(20) == b"\x00not http at all\r\n\r\n"
            writer.write(b"last words")
            writer.write_eof()  # the echo server sees EOF, answers, then closes its side
            assert await reader.read() == b"last words"
        (record,) = await recorded.wait_for(1)
        assert (record.cluster, record.flags, record.status) == ("tcp|db", "", 0)
        assert (record.request_bytes, record.response_bytes) == (30, 30)
        assert record.upstream == f"127.0.0.1:{echo.port}"
    finally:
        await proxy.close(drain_timeout=1.0)
    assert proxy.active == 0


async def test_large_transfer_keeps_every_byte_in_order(
    echo: EchoServer, recorded: Recorded
) -> None:
    """8 MiB through a reader that lags behind: backpressure, not buffering, bounds the proxy."""
    proxy = await _start(echo.port, recorded)
    block = bytes(range(256)) * 256
    total = 128 * len(block)
    sent = hashlib.sha256()
    received = hashlib.sha256()
    try:
        async with connection(proxy.port) as (reader, writer), asyncio.timeout(DEADLINE):

            async def send() -> None:
                for _ in range(128):
                    sent.update(block)
                    writer.write(block)
                    await writer.drain()
                writer.write_eof()

            sender = asyncio.ensure_future(send())
            count = 0
            while data := await reader.read(65536):
                received.update(data)
                count += len(data)
            await sender
        assert count == total
        assert received.digest() == sent.digest()
    finally:
        await proxy.close(drain_timeout=1.0)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_connect_failure_closes_the_client_and_is_recorded(recorded: Recorded) -> None:
    proxy = await _start(_closed_port(), recorded)
    try:
        async with connection(proxy.port) as (reader, _), asyncio.timeout(DEADLINE):
            assert await reader.read() == b""
        (record,) = await recorded.wait_for(1)
        assert record.flags == "UF"
    finally:
        await proxy.close(drain_timeout=1.0)


async def test_refused_by_resolver_closes_the_client(recorded: Recorded) -> None:
    proxy = await start_tcp_proxy(
        "127.0.0.1", 0, resolve=lambda peer: None, listener="tcp-test", recorder=recorded
    )
    try:
        async with connection(proxy.port) as (reader, _), asyncio.timeout(DEADLINE):
            assert await reader.read() == b""
        (record,) = await recorded.wait_for(1)
        assert record.flags == "NR"
    finally:
        await proxy.close(drain_timeout=1.0)


async def test_idle_connection_is_closed_after_the_idle_timeout(
    echo: EchoServer, recorded: Recorded
) -> None:
    proxy = await _start(echo.port, recorded, idle_timeout=0.05)
    try:
        async with connection(proxy.port) as (reader, writer), asyncio.timeout(DEADLINE):
            writer.write(b"ping")
            assert await reader.readexactly(4) == b"ping"
            assert await reader.read() == b""  # nothing more either way: the sweeper closes it
        (record,) = await recorded.wait_for(1)
        assert (record.request_bytes, record.response_bytes) == (4, 4)
    finally:
        await proxy.close(drain_timeout=1.0)


async def test_close_waits_for_open_connections_then_resets_them(
    echo: EchoServer, recorded: Recorded
) -> None:
    proxy = await _start(echo.port, recorded)
    async with connection(proxy.port) as (reader, writer), asyncio.timeout(DEADLINE):
        writer.write(b"x")
        assert await reader.readexactly(1) == b"x"
        await proxy.close(drain_timeout=0.05)
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", proxy.port)
        with contextlib.suppress(ConnectionResetError):  # a reset is what the timeout does
            assert await reader.read() == b""
    assert proxy.active == 0
