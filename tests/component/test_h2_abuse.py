"""Abusive HTTP/2 clients against a proxy listener: a PING flood that never reads, rapid reset.

A raw h2c client (the `h2` package over a loopback socket) talks to a listener forwarding to a
real HTTP/1.1 app. The flood must leave the listener's write buffer bounded (it stops reading the
client) and the connection usable once the client reads again; a HEADERS + RST_STREAM loop must
get GOAWAY ENHANCE_YOUR_CALM and a closed connection, while a client that cancels a few streams
and completes the rest is served.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import h2.config
import h2.connection
import h2.errors
import h2.events
from aiohttp import web

from sidecar.contract import Forward
from sidecar.listeners.engine import ProxyListener, start_proxy
from sidecar.listeners.h2down import EARLY_RESET_LIMIT, H2Downstream
from tests.support.servers import serving

BOUND = 30.0
PING = b"\x00\x00\x08\x06\x00\x00\x00\x00\x00" + b"floodpng"  # PING, 8 bytes, stream 0
LAST = b"lastping"
LAST_ACK = b"\x00\x00\x08\x06\x01\x00\x00\x00\x00" + LAST


async def _ok(request: web.Request) -> web.Response:
    return web.Response(text="ok")


@asynccontextmanager
async def _listener() -> AsyncIterator[ProxyListener]:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", _ok)
    async with serving(app) as app_port:
        target = Forward(address="127.0.0.1", port=app_port, cluster="app")
        listener = await start_proxy(
            "127.0.0.1", 0, resolver=lambda _: target, recorder=lambda _: None, listener="inbound"
        )
        try:
            yield listener
        finally:
            await listener.close(1.0)


def _server_conn(listener: ProxyListener) -> H2Downstream:
    conns = [c for c in listener._state.clients if isinstance(c, H2Downstream)]
    assert len(conns) == 1
    return conns[0]


async def _connect(
    port: int, *, rcvbuf: int = 0
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, h2.connection.H2Connection]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:  # a small receive window makes the server's output back up sooner
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    reader, writer = await asyncio.open_connection(sock=sock, limit=1 << 20)
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    client.initiate_connection()
    writer.write(client.data_to_send())
    return reader, writer, client


async def _until_paused(listener: ProxyListener, writer: asyncio.StreamWriter) -> int:
    """Flood PINGs (bounded) until the server pauses reading; the peak write buffer seen."""
    batch = PING * 4096  # 68 KiB
    peak = 0
    for _ in range(2000):  # at most 136 MiB offered; the server pauses long before
        conns = [c for c in listener._state.clients if isinstance(c, H2Downstream)]
        if conns:
            peak = max(peak, conns[0].transport.get_write_buffer_size())
            if conns[0].reading_paused:
                return peak
        if writer.transport.get_write_buffer_size() < 4 * len(batch):
            writer.write(batch)
        await asyncio.sleep(0)
    raise AssertionError("the server never stopped reading the flood")


async def test_a_ping_flood_that_never_reads_is_held_back_by_not_reading() -> None:
    async with _listener() as listener:
        reader, writer, _ = await _connect(listener.port, rcvbuf=65536)
        writer.transport.pause_reading()  # the client reads nothing (not even into its buffer)
        try:
            peak = await asyncio.wait_for(_until_paused(listener, writer), BOUND)
            conn = _server_conn(listener)
            # Offer much more while the client still reads nothing: the server must not take it.
            writer.write(PING * 4096 * 16)  # 1.1 MiB more
            for _ in range(200):
                peak = max(peak, conn.transport.get_write_buffer_size())
                await asyncio.sleep(0)
            assert conn.reading_paused
            # Above the high-water mark by at most what one read (256 KiB) of PINGs answers.
            cap = 64 * 1024 + 256 * 1024 + 4096
            print(f"peak server write buffer: {peak} bytes (cap {cap})")
            assert peak <= cap
            # The client reads again: the server resumes, answers every PING, then the last one.
            writer.write(PING[:9] + LAST)
            writer.transport.resume_reading()

            async def until_last_ack() -> None:
                tail = b""
                while LAST_ACK not in tail:
                    chunk = await reader.read(1 << 20)
                    assert chunk, "connection closed before the last PING's ACK"
                    tail = tail[-len(LAST_ACK) :] + chunk

            await asyncio.wait_for(until_last_ack(), BOUND)
            assert not conn.closed and not conn.reading_paused
        finally:
            writer.close()


async def _events_until_closed(
    reader: asyncio.StreamReader, client: h2.connection.H2Connection
) -> list[h2.events.Event]:
    events: list[h2.events.Event] = []
    while True:
        try:
            chunk = await reader.read(65536)
        except ConnectionResetError:
            return events
        if not chunk:
            return events
        events += client.receive_data(chunk)


async def test_rapid_reset_gets_enhance_your_calm_and_a_closed_connection() -> None:
    async with _listener() as listener:
        reader, writer, client = await _connect(listener.port)
        headers = [(":method", "GET"), (":scheme", "http"), (":authority", "app"), (":path", "/")]
        try:
            sent = 0
            for _ in range(4 * EARLY_RESET_LIMIT):  # bounded: the server closes after ~101
                sid = client.get_next_available_stream_id()
                client.send_headers(sid, headers, end_stream=True)
                client.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
                sent += 1
            writer.write(client.data_to_send())
            events = await asyncio.wait_for(_events_until_closed(reader, client), BOUND)
        finally:
            writer.close()
        goaways = [e for e in events if isinstance(e, h2.events.ConnectionTerminated)]
        assert goaways, events[-5:]
        assert goaways[0].error_code == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM
        for _ in range(500):  # the server forgets the connection once the socket is gone
            if not [c for c in listener._state.clients if isinstance(c, H2Downstream)]:
                break
            await asyncio.sleep(0.01)
        else:
            raise AssertionError("the server kept the connection")
        print(
            f"rapid reset: {sent} streams sent, GOAWAY last_stream_id={goaways[0].last_stream_id}"
        )


async def test_a_client_cancelling_a_few_streams_is_served() -> None:
    async with _listener() as listener:
        reader, writer, client = await _connect(listener.port)
        headers = [(":method", "GET"), (":scheme", "http"), (":authority", "app"), (":path", "/")]
        try:
            for round_ in range(3):  # each round: 20 requests, 5 cancelled at once
                sids = []
                for i in range(20):
                    sid = client.get_next_available_stream_id()
                    client.send_headers(sid, headers, end_stream=True)
                    if i % 4 == 0:
                        client.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
                    else:
                        sids.append(sid)
                writer.write(client.data_to_send())
                ended: set[int] = set()

                async def responses() -> None:
                    while not ended >= set(sids):  # noqa: B023 - awaited within the round
                        chunk = await reader.read(65536)
                        assert chunk, "connection closed"
                        for event in client.receive_data(chunk):
                            assert not isinstance(event, h2.events.ConnectionTerminated), event
                            if isinstance(event, h2.events.StreamEnded):
                                ended.add(event.stream_id)  # noqa: B023
                        writer.write(client.data_to_send())

                await asyncio.wait_for(responses(), BOUND)
                print(f"round {round_}: {len(ended)} responses")
            conn = _server_conn(listener)
            assert not conn.closed and conn.early_resets <= 15
        finally:
            writer.close()
