"""Clients of the chaos suite, each its own process: `python -m bench.chaos_load MODE ...`.

- `rate`: open-loop load at a constant rate through a sidecar's outbound listener (as an app
  calls a service through its proxy), over keep-alive connections opened as needed (bounded).
  Every request is written as one JSON line: when it was sent (CLOCK_MONOTONIC, shared by every
  process of the machine, so the orchestrator's kill times line up), its id (sent as
  x-request-id, which apps record), status, response flags, latency, or the error.
- `idle`: open N connections and keep them open without a byte, for S seconds.
- `slowloris`: N connections, each sending one byte of a request head every I seconds.
- `slowread`: one download of B bytes, read at R bytes/s (a slow reader of a large body).

Each mode is bounded in count and time and prints a one-line JSON summary on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from dataclasses import dataclass

import uvloop

REQUEST_TIMEOUT = 10.0


@dataclass(slots=True)
class Result:
    """One request of a `rate` run."""

    id: str
    method: str
    sent: float
    status: int = 0
    flags: str = ""
    latency: float = 0.0
    error: str = ""


class Connection:
    """A keep-alive client connection (plain asyncio streams)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    def close(self) -> None:
        self.writer.close()


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bool]:
    """Read one response; returns status, headers (lower-case names), and keep-alive."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if ":" in line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    if "content-length" in headers:
        await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    else:
        await reader.read()  # until close
        return status, headers, False
    return status, headers, headers.get("connection", "").lower() != "close"


async def rate(args: argparse.Namespace) -> dict[str, object]:
    """Open-loop load: request i is sent at start + i / rate, whatever happened to earlier ones."""
    total = int(args.rate * args.seconds)
    idle: list[Connection] = []
    opened = [0]
    results: list[Result] = []
    body = b"x" * args.body if args.method != "GET" else b""
    host = args.host
    prefix = f"{args.prefix}-" if args.prefix else ""

    async def one(index: int) -> None:
        rid = f"{prefix}{index}"
        result = Result(id=rid, method=args.method, sent=time.monotonic())
        results.append(result)
        request = (
            f"{args.method} http://{host}{args.path} HTTP/1.1\r\nHost: {host}\r\n"
            f"x-request-id: {rid}\r\ncontent-length: {len(body)}\r\n\r\n"
        ).encode() + body
        conn: Connection | None = None
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                if idle:
                    conn = idle.pop()
                else:
                    reader, writer = await asyncio.open_connection(args.proxy_host, args.proxy_port)
                    opened[0] += 1
                    conn = Connection(reader, writer)
                conn.writer.write(request)
                status, headers, keep = await read_response(conn.reader)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
            result.error = type(exc).__name__
        except TimeoutError:
            result.error = "timeout"
        else:
            result.status = status
            result.flags = headers.get("x-lightmesh-response-flags", "")
            if keep and len(idle) < args.connections:
                idle.append(conn)
                conn = None
        finally:
            result.latency = time.monotonic() - result.sent
            if conn is not None:
                conn.close()

    start = time.monotonic()
    tasks: set[asyncio.Task[None]] = set()
    for index in range(total):
        delay = start + index / args.rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(one(index))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.wait(tasks, timeout=REQUEST_TIMEOUT + 5)
    for conn in idle:
        conn.close()
    write_results(args.out, results)
    failed = sum(1 for r in results if r.status != 200)
    return {"requests": len(results), "failed": failed, "connections_opened": opened[0]}


def write_results(path: str, results: list[Result]) -> None:
    """One JSON line per request."""
    with open(path, "w") as out:
        for r in results:
            line = {
                "id": r.id,
                "method": r.method,
                "sent": round(r.sent, 6),
                "status": r.status,
                "flags": r.flags,
                "latency": round(r.latency, 6),
                "error": r.error,
            }
            out.write(json.dumps(line) + "\n")


async def idle_connections(args: argparse.Namespace) -> dict[str, object]:
    """Hold N silent connections open for S seconds; count those the server closed meanwhile."""
    conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    refused = 0
    for _ in range(args.connections):
        try:
            conns.append(await asyncio.open_connection(args.proxy_host, args.proxy_port))
        except OSError:
            refused += 1
    print(json.dumps({"opened": len(conns)}), flush=True)
    await asyncio.sleep(args.seconds)
    closed = sum(1 for reader, _ in conns if reader.at_eof())
    for _, writer in conns:
        writer.close()
    return {"opened": len(conns), "refused": refused, "closed_by_server": closed}


async def slowloris(args: argparse.Namespace) -> dict[str, object]:
    """N connections each dribbling a request head, one byte every `interval` seconds."""
    head = f"GET http://{args.host}/ HTTP/1.1\r\nHost: {args.host}\r\nx-slow: ".encode()
    head += b"a" * 10_000
    conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    for _ in range(args.connections):
        with contextlib.suppress(OSError):
            conns.append(await asyncio.open_connection(args.proxy_host, args.proxy_port))
    print(json.dumps({"opened": len(conns)}), flush=True)
    deadline = time.monotonic() + args.seconds
    position = 0
    answered = 0
    while time.monotonic() < deadline and position < len(head):
        byte = head[position : position + 1]
        position += 1
        for _, writer in conns:
            if not writer.is_closing():
                with contextlib.suppress(OSError):
                    writer.write(byte)
        await asyncio.sleep(args.interval)
    for reader, writer in conns:
        if reader.at_eof() or writer.is_closing():
            answered += 1
        writer.close()
    return {"opened": len(conns), "bytes_each": position, "closed_by_server": answered}


async def slow_read(args: argparse.Namespace) -> dict[str, object]:
    """Download `size` bytes at about `read_rate` bytes/s (the socket buffer fills meanwhile)."""
    reader, writer = await asyncio.open_connection(args.proxy_host, args.proxy_port, limit=65536)
    path = f"{args.path}{'&' if '?' in args.path else '?'}bytes={args.size}"
    writer.write(f"GET http://{args.host}{path} HTTP/1.1\r\nHost: {args.host}\r\n\r\n".encode())
    start = time.monotonic()
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split()[1])
    received = 0
    chunk = max(1, int(args.read_rate / 10))
    deadline = start + args.seconds
    while received < args.size and time.monotonic() < deadline:
        data = await reader.read(chunk)
        if not data:
            break
        received += len(data)
        await asyncio.sleep(len(data) / args.read_rate)
    writer.close()
    return {"status": status, "received": received, "seconds": round(time.monotonic() - start, 2)}


def main(argv: list[str]) -> int:
    """Run one client mode; the summary goes to stdout as one JSON line."""
    parser = argparse.ArgumentParser(prog="python -m bench.chaos_load")
    parser.add_argument("mode", choices=["rate", "idle", "slowloris", "slowread"])
    parser.add_argument("--proxy", required=True, help="host:port of the sidecar's outbound")
    parser.add_argument("--host", default="upstream", help="service (Host) to call")
    parser.add_argument("--path", default="/")
    parser.add_argument("--method", default="GET")
    parser.add_argument("--body", type=int, default=256, help="request body bytes (not GET)")
    parser.add_argument("--rate", type=float, default=400.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--size", type=int, default=50 * 1024 * 1024)
    parser.add_argument("--read-rate", type=float, default=2 * 1024 * 1024)
    parser.add_argument("--prefix", default="", help="request ids start with this")
    parser.add_argument("--out", default="/dev/null", help="rate: one JSON line per request")
    args = parser.parse_args(argv)
    host, _, port = args.proxy.rpartition(":")
    args.proxy_host, args.proxy_port = host, int(port)
    modes = {"rate": rate, "idle": idle_connections, "slowloris": slowloris, "slowread": slow_read}
    summary = uvloop.run(modes[args.mode](args))
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
