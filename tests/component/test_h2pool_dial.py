"""The HTTP/2 pool's shared dial: requests waiting on another request's connect are not stranded
when that request is cancelled (its client reset, its timeout). A real loopback socket that
accepts TCP and never answers the TLS handshake holds the dial open."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time

import pytest

from sidecar.errors import UpstreamConnectFailure
from sidecar.upstream.h2pool import H2Pool


def _pool() -> H2Pool:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])
    return H2Pool(idle_timeout=60.0, clock=time.monotonic, client_tls=lambda: context, refused={})


async def test_a_cancelled_dialer_does_not_strand_the_requests_waiting_on_its_dial() -> None:
    accepted: list[asyncio.StreamWriter] = []
    dialled = asyncio.Event()

    async def silent(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)  # never a ServerHello: the dial stays open
        dialled.set()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    pool = _pool()

    def stream(connect_timeout: float) -> asyncio.Task[object]:
        return asyncio.create_task(
            pool.stream("127.0.0.1", port, connect_timeout=connect_timeout, tls_server_name="x")
        )

    try:
        first = stream(30.0)
        await asyncio.wait_for(dialled.wait(), 20.0)  # the dial is under way
        waiting = stream(0.5)
        await asyncio.sleep(0.05)  # the second one waits on the first's dial
        first.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await first
        # Before: the waiter awaited the shared dial forever. Now it dials on its own, which
        # fails at its own connect timeout against this silent server.
        with pytest.raises(UpstreamConnectFailure):
            await asyncio.wait_for(waiting, 20.0)
    finally:
        for writer in accepted:
            writer.close()
        server.close()
        await server.wait_closed()
