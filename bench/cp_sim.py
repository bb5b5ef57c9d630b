"""Simulator worker of `bench controlplane`: many simulated proxies in one process.

    python -m bench.cp_sim SPEC.json

SPEC holds the control plane's address, its root certificate's path and the proxies this worker
owns (global index → `NodeSpec`). Commands arrive on stdin, one a line; events leave on stdout,
one a line, space-separated (flushed every few milliseconds in batches):

    start all | start I...        open the streams of these proxies (at once)
    stop all | stop I...          cancel them (the control plane sees the streams end)
    flap I PERIOD SECONDS         start/stop proxy I every PERIOD s for SECONDS (ends stopped)
    quit

    ready PID
    R I TYPE VERSION BYTES RESOURCES RECEIVED ACKED ERROR   a response (ERROR "-": ACKed)
    S I KIND DETAIL AT                                      a stream event (DETAIL "-": none)
    D SEQ AT                                                command number SEQ was carried out
    F TOGGLES AT                                            a flap ended

Times are `time.monotonic()`. The protocol itself lives in bench/cp_client.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import sys
import time
from collections import Counter
from pathlib import Path

import uvloop

from bench.cp_client import (
    NodeSpec,
    ProxyClient,
    Registration,
    Response,
    StreamEvent,
    channel_credentials,
)

FLUSH_INTERVAL = 0.01
ERRORS_LOGGED = 50  # the first stream errors go to stderr (the work directory's sim-N.log) as is


def spec_to_json(spec: NodeSpec) -> dict[str, object]:
    """A `NodeSpec` as JSON-ready data."""
    return {
        "id": spec.id,
        "workload": spec.workload,
        "namespace": spec.namespace,
        "labels": spec.labels,
        "service_account": spec.service_account,
        "registrations": [[r.service, r.address, r.port] for r in spec.registrations],
    }


def spec_from_json(data: dict[str, object]) -> NodeSpec:
    """The inverse of `spec_to_json`."""
    registrations = data.get("registrations") or []
    assert isinstance(registrations, list)  # noqa: S101 - written by spec_to_json
    labels = data.get("labels") or {}
    assert isinstance(labels, dict)  # noqa: S101
    return NodeSpec(
        id=str(data["id"]),
        workload=str(data["workload"]),
        namespace=str(data["namespace"]),
        labels={str(k): str(v) for k, v in labels.items()},
        service_account=str(data.get("service_account") or "default"),
        registrations=tuple(Registration(str(s), str(a), int(p)) for s, a, p in registrations),
    )


def response_line(index: int, r: Response) -> str:
    """The `R` line of a response of proxy `index`."""
    return (
        f"R {index} {r.type} {r.version or '-'} {r.bytes} {r.resources} "
        f"{r.received:.6f} {r.acked:.6f} {r.error.replace(' ', '_') or '-'}"
    )


def stream_line(index: int, event: StreamEvent, at: float) -> str:
    """The `S` line of a stream event of proxy `index`."""
    return f"S {index} {event.kind} {event.detail or '-'} {at:.6f}"


def parse_response(words: list[str]) -> tuple[int, Response]:
    """The proxy index and response of a split `R` line."""
    _, index, kind, version, size, resources, received, acked, error = words
    return int(index), Response(
        type=kind,
        version="" if version == "-" else version,
        bytes=int(size),
        resources=int(resources),
        received=float(received),
        acked=float(acked),
        error="" if error == "-" else error,
    )


def parse_stream(words: list[str]) -> tuple[int, StreamEvent, float]:
    """The proxy index, event and time of a split `S` line."""
    _, index, kind, detail, at = words
    return int(index), StreamEvent(kind, "" if detail == "-" else detail), float(at)


class Worker:
    """Runs the proxies of one process and reports what they see."""

    def __init__(self, spec: dict[str, object]) -> None:
        self._ca = Path(str(spec["ca"]))
        self._target = str(spec["target"])
        self._client_kind = str(spec.get("client") or "grpcio")
        # grpcio's credentials are shared by the worker's channels (built once).
        self._credentials = (
            channel_credentials(self._ca.read_bytes()) if self._client_kind == "grpcio" else None
        )
        proxies = spec["proxies"]
        assert isinstance(proxies, dict)  # noqa: S101
        self._specs = {int(i): spec_from_json(s) for i, s in proxies.items()}
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._out: list[str] = []
        self._wake = asyncio.Event()
        self._errors: Counter[str] = Counter()  # why streams failed (code: phase: details)

    def _emit(self, line: str) -> None:
        self._out.append(line)
        self._wake.set()

    def _client(self, index: int) -> ProxyClient:
        def on_response(response: Response) -> None:
            self._emit(response_line(index, response))

        def on_stream(event: StreamEvent) -> None:
            if event.kind == "error":
                self._error(index, event)
            self._emit(stream_line(index, event, time.monotonic()))

        return ProxyClient(
            self._specs[index],
            target=self._target,
            ca=self._ca,
            client=self._client_kind,
            credentials=self._credentials,
            on_response=on_response,
            on_stream=on_stream,
        )

    def _error(self, index: int, event: StreamEvent) -> None:
        """Keep why streams fail: the first ones as they come, all of them counted by kind."""
        self._errors[re.sub(r"\d+", "N", f"{event.detail}: {event.message}")] += 1
        if sum(self._errors.values()) <= ERRORS_LOGGED:
            print(f"{time.monotonic():.3f} proxy {index} {event.detail}: {event.message}",
                  file=sys.stderr, flush=True)  # fmt: skip

    def error_summary(self) -> None:
        """Every distinct stream error and how often it happened, to stderr."""
        for reason, count in self._errors.most_common():
            print(f"stream errors: {count} x {reason}", file=sys.stderr, flush=True)

    def start(self, indices: list[int]) -> None:
        """Open the streams of these proxies (already running ones are left alone)."""
        for index in indices:
            if index in self._specs and index not in self._tasks:
                self._tasks[index] = asyncio.create_task(self._client(index).run())

    async def stop(self, indices: list[int]) -> None:
        """Cancel these proxies' streams and wait until they are gone."""
        tasks = [self._tasks.pop(i) for i in indices if i in self._tasks]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def flap(self, index: int, period: float, seconds: float) -> None:
        """Start and stop one proxy every `period` seconds; an even number of toggles."""
        toggles = 0
        began = time.monotonic()
        next_at = began
        while time.monotonic() - began < seconds or toggles % 2:
            if index in self._tasks:
                await self.stop([index])
            else:
                self.start([index])
            toggles += 1
            next_at += period
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        await self.stop([index])
        self._emit(f"F {toggles} {time.monotonic():.6f}")

    async def writer(self) -> None:
        """Write buffered events to stdout in batches."""
        out = sys.stdout
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self._out:
                lines, self._out = self._out, []
                out.write("\n".join(lines) + "\n")
                out.flush()
            await asyncio.sleep(FLUSH_INTERVAL)

    async def serve(self) -> None:
        """Carry out commands from stdin until `quit` or end of input."""
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        writer = asyncio.create_task(self.writer())
        background: set[asyncio.Task[None]] = set()
        self._emit(f"ready {os.getpid()}")
        seq = 0
        while line := (await reader.readline()).decode():
            words = line.split()
            if not words:
                continue
            seq += 1
            command, args = words[0], words[1:]
            if command == "quit":
                break
            if command in ("start", "stop"):
                every = list(self._specs) if args == ["all"] else [int(a) for a in args]
                if command == "start":
                    self.start(every)
                else:
                    await self.stop(every)
            elif command == "flap":
                task = asyncio.create_task(self.flap(int(args[0]), float(args[1]), float(args[2])))
                background.add(task)
                task.add_done_callback(background.discard)
            self._emit(f"D {seq} {time.monotonic():.6f}")
        await self.stop(list(self._tasks))
        self.error_summary()
        await asyncio.sleep(2 * FLUSH_INTERVAL)
        writer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await writer


async def _main(spec: dict[str, object]) -> None:
    await Worker(spec).serve()


def main(argv: list[str]) -> int:
    """Entry point of `python -m bench.cp_sim SPEC.json`."""
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    uvloop.run(_main(json.loads(Path(argv[0]).read_text())))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
