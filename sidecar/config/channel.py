"""The gRPC channel to the control plane: the sidecar's two calls (the config stream, the
certificate request) over one HTTP/2 connection, on the `h2` state machine and an asyncio
Protocol; TLS verified against the bundle the sidecar was started with, or plaintext h2c when it
was given none (local debugging).

Why not grpcio: importing it costs the steady-state sidecar 12 MB of RSS (its 17 MB C-core
library is mapped nearly whole) and starts a dozen threads, for one long-lived stream and a
request a day; the sidecar's budget is 40 MB. The control plane, which serves thousands of
streams, keeps grpcio; this client speaks the same wire protocol to it (gRPC over HTTP/2:
`application/grpc`, length-prefixed messages, `grpc-status`/`grpc-message` trailers).

What is supported is what the sidecar needs: unary and bidirectional-streaming calls, TLS with
ALPN h2 verified against a CA bundle (or plaintext h2c when there is none), call metadata, a
deadline (`grpc-timeout`), cancellation (RST_STREAM CANCEL), flow control both ways, GOAWAY and a
broken connection failing every call with UNAVAILABLE. No compression (none is advertised, so the
server sends none), no retries (the callers own their backoff).

The API mirrors the part of grpc.aio the callers used: `open_channel(...)` as an async context
manager, `channel.stream_stream(...)()` with `write`/`read`/`cancel`, `read()` giving `EOF` at a
clean end, `channel.unary_unary(...)(request, metadata=, timeout=)`, and `RpcError` with
`code().name` and `details()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import ssl
import struct
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Generic, TypeVar, cast
from urllib.parse import unquote

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings

_Req = TypeVar("_Req")
_Resp = TypeVar("_Resp")

MAX_MESSAGE = 64 * 1024 * 1024  # bytes of one received message (grpcio's default is 4 MiB)
_PREFIX = struct.Struct(">BI")  # compressed flag, length
_CANCEL = 0x8  # HTTP/2 error code CANCEL


class StatusCode(enum.IntEnum):
    """gRPC status codes."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


class RpcError(Exception):
    """A call that ended with a status other than OK (or never got one)."""

    def __init__(self, code: StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self._code = code
        self._details = details

    def code(self) -> StatusCode:
        """The status code."""
        return self._code

    def details(self) -> str:
        """The status message."""
        return self._details


class _Eof:
    def __repr__(self) -> str:
        return "EOF"


EOF: Any = _Eof()  # what `read()` returns once the server ended the stream with OK


class _Stream:
    """One call's receiving side: messages as they complete, then the status."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.messages: asyncio.Queue[bytes | None] = asyncio.Queue()  # None: ended
        self.status: RpcError | None = None  # set at the end (code OK: clean end)
        self.window_open = asyncio.Event()

    def data(self, chunk: bytes) -> None:
        buffer = self.buffer
        buffer += chunk
        while len(buffer) >= _PREFIX.size:
            compressed, length = _PREFIX.unpack_from(buffer)
            if compressed:
                self.end(RpcError(StatusCode.INTERNAL, "compressed message (none was asked)"))
                return
            if length > MAX_MESSAGE:
                self.end(RpcError(StatusCode.RESOURCE_EXHAUSTED, f"message of {length} bytes"))
                return
            if len(buffer) < _PREFIX.size + length:
                return
            self.messages.put_nowait(bytes(buffer[_PREFIX.size : _PREFIX.size + length]))
            del buffer[: _PREFIX.size + length]

    def end(self, status: RpcError) -> None:
        if self.status is None:
            self.status = status
            self.messages.put_nowait(None)
            self.window_open.set()


def _status(headers: Sequence[tuple[bytes, bytes]]) -> RpcError | None:
    """The call's status from (trailing, or trailers-only) headers, if they carry one."""
    fields = dict(headers)
    raw = fields.get(b"grpc-status")
    if raw is None:
        http = fields.get(b":status")
        if http is not None and http != b"200":
            return RpcError(StatusCode.UNAVAILABLE, f"HTTP status {http.decode()}")
        return None
    try:
        code = StatusCode(int(raw))
    except ValueError:
        code = StatusCode.UNKNOWN
    return RpcError(code, unquote(fields.get(b"grpc-message", b"").decode("utf-8", "replace")))


class _Connection(asyncio.Protocol):
    """The HTTP/2 connection and its streams."""

    def __init__(self) -> None:
        config = h2.config.H2Configuration(client_side=True, header_encoding=None)
        self.h2 = h2.connection.H2Connection(config=config)
        self.transport: asyncio.Transport | None = None
        self.streams: dict[int, _Stream] = {}
        self.closed: RpcError | None = None
        self.ready = asyncio.Event()  # the server's first SETTINGS arrived

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.h2.initiate_connection()
        self.h2.update_settings({h2.settings.SettingCodes.ENABLE_PUSH: 0})
        self.flush()

    def flush(self) -> None:
        data = self.h2.data_to_send()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            # Most often frames the server sent after its GOAWAY closed the connection.
            self.fail(RpcError(StatusCode.UNAVAILABLE, f"HTTP/2 connection unusable: {exc}"))
            return
        for event in events:
            self._event(event)
        self.flush()

    def _event(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.RemoteSettingsChanged):
            self.ready.set()
            for stream in self.streams.values():
                stream.window_open.set()
            return
        if isinstance(event, h2.events.WindowUpdated):
            if not event.stream_id:
                for stream in self.streams.values():
                    stream.window_open.set()
            elif event.stream_id in self.streams:
                self.streams[event.stream_id].window_open.set()
            return
        if isinstance(event, h2.events.ConnectionTerminated):
            self.fail(RpcError(StatusCode.UNAVAILABLE, f"GOAWAY ({event.error_code})"))
            return
        stream_id: int = getattr(event, "stream_id", 0)
        found = self.streams.get(stream_id) if stream_id else None
        if found is None:
            return
        stream = found
        if isinstance(event, h2.events.DataReceived):
            self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            stream.data(event.data)
        elif isinstance(event, h2.events.ResponseReceived | h2.events.TrailersReceived):
            status = _status(event.headers)  # trailers, or a trailers-only response
            if status is not None:
                stream.end(status)
        elif isinstance(event, h2.events.StreamEnded):
            stream.end(RpcError(StatusCode.INTERNAL, "stream ended without a grpc-status"))
            self.streams.pop(event.stream_id, None)
        elif isinstance(event, h2.events.StreamReset):
            stream.end(RpcError(StatusCode.UNAVAILABLE, f"stream reset ({event.error_code})"))
            self.streams.pop(event.stream_id, None)

    def fail(self, error: RpcError) -> None:
        """Every call fails with `error`; the connection is of no more use."""
        if self.closed is None:
            self.closed = error
        for stream in self.streams.values():
            stream.end(error)
        self.streams.clear()
        self.ready.set()
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(RpcError(StatusCode.UNAVAILABLE, f"connection lost: {exc!r}"))

    async def send(self, stream_id: int, payload: bytes, *, end: bool = False) -> None:
        """One message (or the end of the request) on `stream_id`, within flow control."""
        view = memoryview(payload)
        while True:
            if self.closed is not None:
                raise self.closed
            stream = self.streams.get(stream_id)
            if stream is None or stream.status is not None:
                ended = stream.status if stream is not None else None
                if ended is not None and ended.code() is not StatusCode.OK:
                    raise ended
                raise RpcError(StatusCode.CANCELLED, "the call has ended")
            try:
                window = min(
                    self.h2.local_flow_control_window(stream_id), self.h2.max_outbound_frame_size
                )
            except h2.exceptions.StreamClosedError:
                raise RpcError(StatusCode.CANCELLED, "stream closed") from None
            if len(view) <= window:
                self.h2.send_data(stream_id, bytes(view), end_stream=end)
                self.flush()
                return
            if window > 0:
                self.h2.send_data(stream_id, bytes(view[:window]))
                self.flush()
                view = view[window:]
                continue
            stream.window_open.clear()
            await stream.window_open.wait()


class Call(Generic[_Req, _Resp]):
    """One call's client side: write requests, read responses."""

    def __init__(
        self,
        connection: _Connection,
        stream_id: int,
        stream: _Stream,
        serialize: Callable[[_Req], bytes],
        deserialize: Callable[[bytes], _Resp],
    ) -> None:
        self._connection = connection
        self._stream_id = stream_id
        self._stream = stream
        self._serialize = serialize
        self._deserialize = deserialize

    async def write(self, request: _Req, *, end: bool = False) -> None:
        """Send one request message (`end`: and half-close)."""
        body = self._serialize(request)
        await self._connection.send(self._stream_id, _PREFIX.pack(0, len(body)) + body, end=end)

    async def read(self) -> Any:
        """The next response message, EOF at a clean end; raises RpcError otherwise."""
        message = await self._stream.messages.get()
        if message is not None:
            return self._deserialize(message)
        self._stream.messages.put_nowait(None)  # reads after the end see it again
        status = self._stream.status
        if status is None or status.code() is StatusCode.OK:
            return EOF
        raise status

    def cancel(self) -> None:
        """Give the call up (RST_STREAM CANCEL)."""
        connection = self._connection
        if self._stream.status is None and connection.closed is None:
            self._stream.end(RpcError(StatusCode.CANCELLED, "cancelled"))
            with contextlib.suppress(h2.exceptions.ProtocolError):
                connection.h2.reset_stream(self._stream_id, error_code=_CANCEL)
            connection.flush()
        connection.streams.pop(self._stream_id, None)


def _timeout(seconds: float) -> bytes:
    return f"{max(1, int(seconds * 1000))}m".encode()


class Channel:
    """One HTTP/2 connection to `target` ("host:port"), opened on first use."""

    def __init__(self, target: str, ca_bundle: Path | None) -> None:
        host, _, port = target.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"control plane address {target!r} is not host:port")
        self._host = host.strip("[]")
        self._port = int(port)
        self._authority = target.encode()
        self._ca_bundle = ca_bundle
        self._connection: _Connection | None = None
        self._lock = asyncio.Lock()

    async def __aenter__(self) -> Channel:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the connection (GOAWAY, then the socket); calls in flight fail."""
        connection, self._connection = self._connection, None
        if connection is not None and connection.transport is not None:
            if connection.closed is None:
                connection.h2.close_connection()
                connection.flush()
            connection.fail(RpcError(StatusCode.CANCELLED, "channel closed"))

    async def _connect(self) -> _Connection:
        async with self._lock:
            if self._connection is not None and self._connection.closed is None:
                return self._connection
            context = None
            if self._ca_bundle is not None:
                context = ssl.create_default_context(cafile=str(self._ca_bundle))
                context.set_alpn_protocols(["h2"])
            loop = asyncio.get_running_loop()
            try:
                _, connection = await loop.create_connection(
                    _Connection,
                    self._host,
                    self._port,
                    ssl=context,
                    server_hostname=self._host if context is not None else None,
                )
            except (OSError, ssl.SSLError) as exc:
                raise RpcError(
                    StatusCode.UNAVAILABLE, f"connect {self._authority.decode()}: {exc}"
                ) from exc
            self._connection = connection
            return connection

    async def _start(
        self, method: str, metadata: Sequence[tuple[str, str]], deadline: float | None
    ) -> tuple[_Connection, int, _Stream]:
        connection = await self._connect()
        stream_id = connection.h2.get_next_available_stream_id()
        headers = [
            (b":method", b"POST"),
            (b":scheme", b"https" if self._ca_bundle is not None else b"http"),
            (b":path", method.encode()),
            (b":authority", self._authority),
            (b"te", b"trailers"),
            (b"content-type", b"application/grpc"),
            (b"user-agent", b"lightmesh-sidecar"),
        ]
        if deadline is not None:
            headers.append((b"grpc-timeout", _timeout(deadline)))
        headers += [(k.lower().encode(), v.encode()) for k, v in metadata]
        stream = _Stream()
        connection.streams[stream_id] = stream
        connection.h2.send_headers(stream_id, headers)
        connection.flush()
        return connection, stream_id, stream

    def stream_stream(
        self,
        method: str,
        *,
        request_serializer: Callable[[_Req], bytes],
        response_deserializer: Callable[[bytes], _Resp],
    ) -> Callable[..., StreamingCall[_Req, _Resp]]:
        """A bidirectional-streaming method: calling the result (`metadata=` optional) starts a
        call."""

        def start(metadata: Sequence[tuple[str, str]] = ()) -> StreamingCall[_Req, _Resp]:
            return StreamingCall(self, method, request_serializer, response_deserializer, metadata)

        return start

    def unary_unary(
        self,
        method: str,
        *,
        request_serializer: Callable[[_Req], bytes],
        response_deserializer: Callable[[bytes], _Resp],
    ) -> Callable[..., Any]:
        """A unary method: `await result(request, metadata=..., timeout=...)`."""

        async def invoke(
            request: _Req,
            *,
            metadata: Sequence[tuple[str, str]] = (),
            timeout: float | None = None,  # noqa: ASYNC109 - grpc.aio's: also sent as grpc-timeout
        ) -> _Resp:
            async def exchange() -> _Resp:
                connection, stream_id, stream = await self._start(method, metadata, timeout)
                call = Call(
                    connection, stream_id, stream, request_serializer, response_deserializer
                )
                try:
                    await call.write(request, end=True)
                    response = await call.read()
                    if response is EOF:
                        raise RpcError(StatusCode.INTERNAL, "no response message")
                    trailer = await call.read()
                    if trailer is not EOF:
                        raise RpcError(StatusCode.INTERNAL, "more than one response message")
                    result: _Resp = response
                    return result
                finally:
                    call.cancel()

            if timeout is None:
                return await exchange()
            try:
                async with asyncio.timeout(timeout):
                    return await exchange()
            except TimeoutError:
                raise RpcError(StatusCode.DEADLINE_EXCEEDED, "deadline exceeded") from None

        return invoke


class StreamingCall(Generic[_Req, _Resp]):
    """A streaming call that opens its stream on the first write (like grpc.aio's)."""

    def __init__(
        self,
        channel: Channel,
        method: str,
        serialize: Callable[[_Req], bytes],
        deserialize: Callable[[bytes], _Resp],
        metadata: Sequence[tuple[str, str]] = (),
    ) -> None:
        self._channel = channel
        self._method = method
        self._metadata = tuple(metadata)
        self._serialize = serialize
        self._deserialize = deserialize
        self._call: Call[_Req, _Resp] | None = None
        self._cancelled = False

    async def _ensure(self) -> Call[_Req, _Resp]:
        if self._call is None:
            connection, stream_id, stream = await self._channel._start(
                self._method, self._metadata, None
            )
            self._call = Call(connection, stream_id, stream, self._serialize, self._deserialize)
        return self._call

    async def write(self, request: _Req) -> None:
        """Send one request message."""
        await (await self._ensure()).write(request)

    async def read(self) -> Any:
        """The next response message, or EOF; raises RpcError when the call failed."""
        return await (await self._ensure()).read()

    def cancel(self) -> None:
        """Give the call up."""
        self._cancelled = True
        if self._call is not None:
            self._call.cancel()


def open_channel(target: str, ca_bundle: Path | None) -> Channel:
    """A channel to `target`, TLS verified against `ca_bundle` (plaintext h2c without one);
    use it as an async context manager."""
    return Channel(target, ca_bundle)
