"""The pure parts of the sidecar's gRPC client: message framing and status trailers."""

import asyncio
import struct

from sidecar.config.channel import RpcError, StatusCode, _status, _Stream


def framed(message: bytes) -> bytes:
    return struct.pack(">BI", 0, len(message)) + message


async def test_messages_are_cut_out_of_data_however_it_is_split() -> None:
    stream = _Stream()
    wire = framed(b"first") + framed(b"") + framed(b"x" * 70_000)
    for offset in range(0, len(wire), 7):  # 7-byte pieces: prefixes split too
        stream.data(wire[offset : offset + 7])
    got = [stream.messages.get_nowait() for _ in range(3)]
    assert got == [b"first", b"", b"x" * 70_000]
    assert stream.messages.empty()


async def test_a_compressed_message_ends_the_call() -> None:
    stream = _Stream()
    stream.data(struct.pack(">BI", 1, 3) + b"abc")
    assert stream.status is not None and stream.status.code() is StatusCode.INTERNAL
    assert await asyncio.wait_for(stream.messages.get(), 1) is None


def test_status_comes_from_grpc_status_and_its_percent_encoded_message() -> None:
    ok = _status([(b":status", b"200"), (b"grpc-status", b"0")])
    assert isinstance(ok, RpcError) and ok.code() is StatusCode.OK
    denied = _status([(b"grpc-status", b"7"), (b"grpc-message", b"no%20way%3A%20100%25")])
    assert denied is not None and (denied.code(), denied.details()) == (
        StatusCode.PERMISSION_DENIED,
        "no way: 100%",
    )
    assert _status([(b":status", b"200"), (b"content-type", b"application/grpc")]) is None
    proxy = _status([(b":status", b"502")])
    assert proxy is not None and proxy.code() is StatusCode.UNAVAILABLE
    odd = _status([(b"grpc-status", b"99")])
    assert odd is not None and odd.code() is StatusCode.UNKNOWN
