"""Access logs: one JSON object per exchange with Envoy-like fields, written as a line.

`entry` is pure (a Completed → a dict); `AccessLog` writes lines to stdout or a file, line-buffered,
so a crash loses at most one line.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any, TextIO

from sidecar.contract import Completed
from sidecar.telemetry.propagation import B3_TRACE


def entry(done: Completed, *, direction: str) -> dict[str, Any]:
    """The access-log record of one exchange."""
    head = done.head
    # Requests refused before parsing completed carry no start time: derive it from now.
    started = done.start_time or time.time() - done.duration
    record: dict[str, Any] = {
        "start_time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(started))
        + f".{int(started * 1000) % 1000:03d}Z",
        "direction": direction,
        "method": done.method,
        "path": head.path if head else "",
        "protocol": f"HTTP/{head.http_version}" if head else "",
        "authority": head.host if head else "",
        "response_code": done.status,
        "response_flags": done.flags or "-",
        "bytes_received": done.request_bytes,
        "bytes_sent": done.response_bytes,
        "duration_ms": round(done.duration * 1000, 3),
        "upstream_cluster": done.cluster,
        "upstream_host": done.upstream,
        "downstream_remote_address": head.peer if head else "",
        "request_id": "",
        "trace_id": "",
        "peer_identity": "",
    }
    if done.grpc_status:
        record["grpc_status"] = done.grpc_status  # one record per stream, HTTP/2 or not
    if head is not None:
        if direction == "inbound" and head.peer_identity:
            # The caller's announcement, believed (as by metrics) only over mutual TLS.
            record["peer_identity"] = head.mesh_peer.decode("latin-1")
        for name, value in head.headers:
            if name == b"x-request-id":
                record["request_id"] = value.decode("latin-1")
            elif name == B3_TRACE:
                record["trace_id"] = value.decode("latin-1")
            elif name == b"user-agent":
                record["user_agent"] = value.decode("latin-1")
    return record


class AccessLog:
    """Writes access-log lines to `path` ("-": stdout)."""

    def __init__(self, path: str) -> None:
        self._out: TextIO = sys.stdout if path == "-" else open(path, "a", buffering=1)  # noqa: SIM115

    def writer(self, direction: str) -> Any:
        """A recorder-shaped callable logging one direction."""
        out = self._out
        dumps = json.JSONEncoder(separators=(",", ":")).encode

        def write(done: Completed) -> None:
            out.write(dumps(entry(done, direction=direction)) + "\n")

        return write

    def close(self) -> None:
        """Close the file (not stdout)."""
        if self._out is not sys.stdout:
            self._out.close()
