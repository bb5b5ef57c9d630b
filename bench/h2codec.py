"""`python -m bench h2codec`: the CPU the pure-Python `h2` codec costs one sidecar hop per gRPC call.

A hop decodes a call from its client and encodes it for the upstream, then decodes the response
and encodes it back: four codec passes. Measured in memory, without sockets or the exchange
machine, on connections kept open (as pooled ones are): a small unary call (headers, one 16-byte
message, trailers). The HTTP/1.1 figure beside it is the same hop's parse work with httptools (C)
for a request and response of like size, the path the sidecar's HTTP/1.1 budget is set on.
"""

from __future__ import annotations

import argparse
import json
import time

import h2.config
import h2.connection
import h2.events
import httptools

from sidecar.http.http2 import new_connection

REQUEST = [
    (b":method", b"POST"),
    (b":scheme", b"http"),
    (b":authority", b"catalog"),
    (b":path", b"/shop.Catalog/Get"),
    (b"content-type", b"application/grpc"),
    (b"te", b"trailers"),
    (b"grpc-timeout", b"1S"),
    (b"user-agent", b"grpc-python/1.85"),
]
RESPONSE = [(b":status", b"200"), (b"content-type", b"application/grpc")]
TRAILERS = [(b"grpc-status", b"0"), (b"grpc-message", b"")]
MESSAGE = b"\x00\x00\x00\x00\x0b" + b"hello world"


def _pair() -> tuple[h2.connection.H2Connection, h2.connection.H2Connection]:
    # The sidecar's own codec settings (and its quieted hpack logging).
    client = new_connection(client_side=True)
    server = new_connection(client_side=False)
    client.initiate_connection()
    server.initiate_connection()
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    server.receive_data(client.data_to_send())
    return client, server


def one_call(client: h2.connection.H2Connection, server: h2.connection.H2Connection) -> None:
    """A unary call over one connection: encode and decode both ways (two of a hop's passes)."""
    sid = client.get_next_available_stream_id()
    client.send_headers(sid, REQUEST)
    client.send_data(sid, MESSAGE, end_stream=True)
    for event in server.receive_data(client.data_to_send()):
        if isinstance(event, h2.events.DataReceived):
            server.acknowledge_received_data(event.flow_controlled_length, sid)
    client.receive_data(server.data_to_send())
    server.send_headers(sid, RESPONSE)
    server.send_data(sid, MESSAGE)
    server.send_headers(sid, TRAILERS, end_stream=True)
    for event in client.receive_data(server.data_to_send()):
        if isinstance(event, h2.events.DataReceived):
            client.acknowledge_received_data(event.flow_controlled_length, sid)
    # Window updates back to where they are owed (the next call needs the credit).
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())


class _Sink:
    def on_body(self, body: bytes) -> None:
        pass


H1_REQUEST = (
    b"POST /shop.Catalog/Get HTTP/1.1\r\nhost: catalog\r\ncontent-type: application/json\r\n"
    b"user-agent: bench\r\ncontent-length: 16\r\n\r\n" + MESSAGE
)
H1_RESPONSE = (
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 16\r\n\r\n" + MESSAGE
)


def h1_hop() -> None:
    """A hop's HTTP/1.1 parse work: the request once, the response once (both C)."""
    httptools.HttpRequestParser(_Sink()).feed_data(H1_REQUEST)
    httptools.HttpResponseParser(_Sink()).feed_data(H1_RESPONSE)


def measure(calls: int) -> dict[str, float]:
    """CPU microseconds per call of each."""
    downstream = _pair()  # the client's connection to the hop
    upstream = _pair()  # the hop's connection to the server
    start = time.process_time()
    for _ in range(calls):
        one_call(*downstream)
        one_call(*upstream)
    h2_hop = (time.process_time() - start) / calls * 1e6
    start = time.process_time()
    for _ in range(calls):
        h1_hop()
    h1 = (time.process_time() - start) / calls * 1e6
    return {
        "calls": calls,
        # Both ends of two connections: twice what the hop itself runs (the peers' halves).
        "h2_codec_us_per_hop_both_ends": round(h2_hop, 1),
        "h2_codec_us_per_hop": round(h2_hop / 2, 1),
        "h1_parse_us_per_hop": round(h1, 2),
    }


def main(argv: list[str]) -> int:
    """Run and print the figures as JSON."""
    parser = argparse.ArgumentParser(prog="python -m bench h2codec")
    parser.add_argument("--calls", type=int, default=20_000)
    args = parser.parse_args(argv)
    print(json.dumps(measure(args.calls), indent=2))
    return 0
