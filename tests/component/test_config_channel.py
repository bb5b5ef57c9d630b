"""The sidecar's own gRPC client (sidecar/config/channel.py) against a real grpc.aio server.

The control plane serves with grpcio; these check that the h2-based client speaks its protocol:
unary calls with metadata and a deadline, status codes and messages, bidirectional streams,
messages larger than the flow-control windows both ways, cancellation, and a server that goes
away mid-stream.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest

from sidecar.config.channel import EOF, Channel, RpcError, StatusCode, StreamingCall, open_channel

DEADLINE = 10.0


def identity(data: bytes) -> bytes:
    return data


def chat(channel: Channel) -> StreamingCall[bytes, bytes]:
    method = channel.stream_stream(
        "/test.Test/Chat", request_serializer=identity, response_deserializer=identity
    )
    return method()


class Service:
    def __init__(self) -> None:
        self.metadata: list[tuple[str, str]] = []

    async def echo(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        self.metadata = [(m.key, m.value) for m in context.invocation_metadata() or ()]
        if request == b"fail":
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "no way: 100% refused")
        if request == b"slow":
            await asyncio.sleep(5)
        return request[::-1]

    async def chat(
        self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        async for request in requests:
            if request == b"bye":
                return
            if request == b"error":
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "bad request")
            yield request + b"!"


@pytest.fixture
async def server() -> AsyncIterator[tuple[str, Service]]:
    service = Service()
    handlers = {
        "Echo": grpc.unary_unary_rpc_method_handler(
            service.echo, request_deserializer=identity, response_serializer=identity
        ),
        "Chat": grpc.stream_stream_rpc_method_handler(
            service.chat, request_deserializer=identity, response_serializer=identity
        ),
    }
    srv = grpc.aio.server()
    srv.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.Test", handlers),))
    port = srv.add_insecure_port("127.0.0.1:0")
    await srv.start()
    yield f"127.0.0.1:{port}", service
    await srv.stop(0)


async def test_unary_calls_carry_metadata_and_statuses(server: tuple[str, Service]) -> None:
    target, service = server
    async with asyncio.timeout(DEADLINE), open_channel(target, None) as channel:
        echo = channel.unary_unary(
            "/test.Test/Echo", request_serializer=identity, response_deserializer=identity
        )
        assert await echo(b"abc", metadata=(("authorization", "Bearer t"),), timeout=5) == b"cba"
        assert ("authorization", "Bearer t") in service.metadata
        with pytest.raises(RpcError) as failed:
            await echo(b"fail", timeout=5)
        assert failed.value.code() is StatusCode.PERMISSION_DENIED
        assert failed.value.details() == "no way: 100% refused"
        with pytest.raises(RpcError) as late:
            await echo(b"slow", timeout=0.2)
        assert late.value.code() is StatusCode.DEADLINE_EXCEEDED
        big = bytes(range(256)) * 4096  # 1 MiB: beyond both flow-control windows
        assert await echo(big, timeout=5) == big[::-1]


async def test_a_stream_exchanges_messages_until_the_server_ends_it(
    server: tuple[str, Service],
) -> None:
    target, _ = server
    async with asyncio.timeout(DEADLINE), open_channel(target, None) as channel:
        call = chat(channel)
        for word in (b"one", b"two", b"x" * 200_000):
            await call.write(word)
            assert await call.read() == word + b"!"
        await call.write(b"bye")
        assert await call.read() is EOF
        assert await call.read() is EOF

        failing = chat(channel)
        await failing.write(b"error")
        with pytest.raises(RpcError) as failed:
            await failing.read()
        assert failed.value.code() is StatusCode.INVALID_ARGUMENT


async def test_cancel_resets_the_stream_and_a_dead_server_fails_the_call(
    server: tuple[str, Service],
) -> None:
    target, _ = server
    async with asyncio.timeout(DEADLINE), open_channel(target, None) as channel:
        call = chat(channel)
        await call.write(b"hello")
        assert await call.read() == b"hello!"
        call.cancel()
        with pytest.raises(RpcError) as cancelled:
            await call.read()
        assert cancelled.value.code() is StatusCode.CANCELLED
        again = chat(channel)
        await again.write(b"still there")  # the connection outlived the cancelled stream
        assert await again.read() == b"still there!"

    async with asyncio.timeout(DEADLINE), open_channel("127.0.0.1:1", None) as channel:
        echo = channel.unary_unary(
            "/test.Test/Echo", request_serializer=identity, response_deserializer=identity
        )
        with pytest.raises(RpcError) as refused:
            await echo(b"x", timeout=2)
        assert refused.value.code() is StatusCode.UNAVAILABLE
