"""A real grpcio server for the HTTP/2 tests: unary, streaming both ways, statuses, metadata.

Messages are raw bytes (identity serializers), so no generated code is needed. Methods of
service `test.Echo`:
- `Unary`: answers the request; `status:<code>` aborts with that gRPC code, `sleep:<s>` sleeps
  first (deadlines, cancellation), `big:<n>` answers n bytes. Request metadata `x-echo` comes
  back as initial metadata, and trailing metadata `x-trailer: <server name>` always.
- `Who`: the server's name (balancing).
- `ServerStream`: `<count>:<size>` -> count messages of size bytes.
- `ClientStream`: the total size of the messages received, as text.
- `Bidi`: each message echoed as it arrives.
- `Flaky`: UNAVAILABLE when the server was started with --flaky, else its name.

Run as `python -m tests.support.grpc_echo --port P --name N [--flaky]` for real processes, or
use `start` inside a test's event loop.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import AsyncIterator

import grpc
from grpc import aio

SERVICE = "test.Echo"


def _identity(data: bytes) -> bytes:
    return data


class Echo:
    """The handlers; `calls` counts calls per method (what reached this server)."""

    def __init__(self, name: str, *, flaky: bool = False) -> None:
        self.name = name
        self.flaky = flaky
        self.calls: dict[str, int] = {}
        self.cancelled = 0

    def _count(self, method: str) -> None:
        self.calls[method] = self.calls.get(method, 0) + 1

    async def unary(self, request: bytes, context: aio.ServicerContext) -> bytes:  # type: ignore[type-arg]
        self._count("Unary")
        metadata = dict(context.invocation_metadata() or ())
        echo = metadata.get("x-echo")
        if echo is not None:
            await context.send_initial_metadata((("x-echo", str(echo)),))
        context.set_trailing_metadata((("x-trailer", self.name),))
        if request.startswith(b"status:"):
            code = int(request.split(b":", 1)[1])
            status = next(s for s in grpc.StatusCode if s.value[0] == code)
            await context.abort(status, f"asked for {status.name}")
        if request.startswith(b"sleep:"):
            try:
                await asyncio.sleep(float(request.split(b":", 1)[1]))
            except asyncio.CancelledError:
                self.cancelled += 1
                raise
        if request.startswith(b"big:"):
            return b"x" * int(request.split(b":", 1)[1])
        return request

    async def who(self, request: bytes, context: aio.ServicerContext) -> bytes:  # type: ignore[type-arg]
        del request, context
        self._count("Who")
        return self.name.encode()

    async def flaky_call(self, request: bytes, context: aio.ServicerContext) -> bytes:  # type: ignore[type-arg]
        del request
        self._count("Flaky")
        if self.flaky:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"{self.name} is flaky")
        return self.name.encode()

    async def server_stream(
        self,
        request: bytes,
        context: aio.ServicerContext,  # type: ignore[type-arg]
    ) -> AsyncIterator[bytes]:
        del context
        self._count("ServerStream")
        count, size = (int(x) for x in request.split(b":"))
        for _ in range(count):
            yield b"s" * size

    async def client_stream(
        self,
        requests: AsyncIterator[bytes],
        context: aio.ServicerContext,  # type: ignore[type-arg]
    ) -> bytes:
        del context
        self._count("ClientStream")
        total = 0
        async for message in requests:
            total += len(message)
        return str(total).encode()

    async def bidi(
        self,
        requests: AsyncIterator[bytes],
        context: aio.ServicerContext,  # type: ignore[type-arg]
    ) -> AsyncIterator[bytes]:
        del context
        self._count("Bidi")
        async for message in requests:
            yield message

    def handler(self) -> grpc.GenericRpcHandler:
        """The service's generic handler."""
        kw = {"request_deserializer": _identity, "response_serializer": _identity}
        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "Unary": grpc.unary_unary_rpc_method_handler(self.unary, **kw),  # type: ignore[arg-type]
                "Who": grpc.unary_unary_rpc_method_handler(self.who, **kw),  # type: ignore[arg-type]
                "Flaky": grpc.unary_unary_rpc_method_handler(self.flaky_call, **kw),  # type: ignore[arg-type]
                "ServerStream": grpc.unary_stream_rpc_method_handler(self.server_stream, **kw),  # type: ignore[arg-type]
                "ClientStream": grpc.stream_unary_rpc_method_handler(self.client_stream, **kw),  # type: ignore[arg-type]
                "Bidi": grpc.stream_stream_rpc_method_handler(self.bidi, **kw),  # type: ignore[arg-type]
            },
        )


async def start(name: str, port: int = 0, *, flaky: bool = False) -> tuple[aio.Server, int, Echo]:
    """Serve on 127.0.0.1 (h2c); the server, its port and its handlers."""
    echo = Echo(name, flaky=flaky)
    server = aio.server(
        options=[
            ("grpc.so_reuseport", 0),
            ("grpc.max_receive_message_length", 64 * 1024 * 1024),
            ("grpc.max_send_message_length", 64 * 1024 * 1024),
        ]
    )
    server.add_generic_rpc_handlers((echo.handler(),))
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    return server, bound, echo


def method(channel: aio.Channel, name: str, kind: str = "unary_unary") -> object:
    """A callable for `test.Echo/<name>` on `channel` with raw-bytes messages."""
    factory = getattr(channel, kind)
    return factory(
        f"/{SERVICE}/{name}", request_serializer=_identity, response_deserializer=_identity
    )


async def _main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--flaky", action="store_true")
    args = parser.parse_args()
    server, _, _ = await start(args.name, args.port, flaky=args.flaky)
    await server.wait_for_termination()


if __name__ == "__main__":
    asyncio.run(_main())
