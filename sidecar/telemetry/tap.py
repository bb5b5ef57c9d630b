"""Live request tap (`lightmesh tap`, the admin port's /tap): completed exchanges that match a
client's filter, copied into that client's bounded queue while it is attached.

Cost when nobody taps: the listeners' recorder tests one empty list per request; nothing is built,
copied or queued. An attached client gets at most `queue_size` events between two reads; the rest
are counted as dropped, never buffered, so a slow tap cannot grow the sidecar's memory.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from sidecar.contract import Completed

MAX_CLIENTS = 8
QUEUE_SIZE = 1000
MAX_SECONDS = 30.0
_PATH_CHARS = 256  # of the path kept in an event (the query string is dropped)


@dataclass(frozen=True, slots=True, kw_only=True)
class TapFilter:
    """Which exchanges a client wants; empty fields match everything."""

    path_prefix: str = ""
    method: str = ""
    # "503" (exact) or "5xx" (a class).
    status: str = ""
    listener: str = ""  # "inbound" | "outbound"

    def matches(self, done: Completed, listener: str) -> bool:
        """Whether `done` (seen by `listener`) passes."""
        if self.listener and listener != self.listener:
            return False
        if self.method and done.method != self.method:
            return False
        if self.status:
            code = str(done.status)
            if self.status.endswith("xx"):
                if code[:1] != self.status[:1]:
                    return False
            elif code != self.status:
                return False
        if self.path_prefix:
            head = done.head
            if head is None or not head.path.startswith(self.path_prefix):
                return False
        return True


def parse_filter(query: str) -> tuple[TapFilter, int, float]:
    """(filter, max events, seconds) from a /tap query string; ValueError naming the parameter."""
    params = {k: v[-1] for k, v in parse_qs(query).items()}
    status = params.get("status", "")
    if status and not (
        (len(status) == 3 and status[0] in "12345" and status[1:] == "xx")
        or (status.isdigit() and len(status) == 3)
    ):
        raise ValueError(f"status: {status!r} is not a code (503) or a class (5xx)")
    listener = params.get("listener", "")
    if listener not in ("", "inbound", "outbound"):
        raise ValueError(f"listener: {listener!r} is not inbound or outbound")
    path = params.get("path", "")
    if path and not path.startswith("/"):
        raise ValueError(f"path: {path!r} must start with /")
    try:
        limit = int(params.get("max", "100"))
        seconds = float(params.get("seconds", "5"))
    except ValueError:
        raise ValueError("max and seconds must be numbers") from None
    if not 1 <= limit <= QUEUE_SIZE:
        raise ValueError(f"max: {limit} is not within 1..{QUEUE_SIZE}")
    if not 0 < seconds <= MAX_SECONDS:
        raise ValueError(f"seconds: {seconds} is not within 0..{MAX_SECONDS:.0f}")
    flt = TapFilter(
        path_prefix=path,
        method=params.get("method", "").upper(),
        status=status,
        listener=listener,
    )
    return flt, limit, seconds


def event_of(done: Completed, listener: str) -> dict[str, Any]:
    """What a tap client sees of one exchange (no bodies, no header values but the request id)."""
    head = done.head
    path = head.path.partition("?")[0][:_PATH_CHARS] if head is not None else ""
    request_id = head.header(b"x-request-id") if head is not None else None
    peer = head.peer_identity if head is not None else ""
    return {
        "time": done.start_time,
        "listener": listener,
        "method": done.method,
        "host": done.host,
        "path": path,
        "status": done.status,
        "flags": done.flags,
        "duration_ms": round(done.duration * 1000.0, 3),
        "upstream": done.upstream,
        "cluster": done.cluster,
        "peer_identity": peer,
        "mtls": done.upstream_tls if listener == "outbound" else bool(peer),
        "request_id": request_id.decode("latin-1") if request_id else "",
    }


class TapClient:
    """One attached client: its filter and bounded queue."""

    def __init__(self, flt: TapFilter, *, queue_size: int) -> None:
        self.filter = flt
        self.events: deque[dict[str, Any]] = deque()
        self.dropped = 0
        self._queue_size = queue_size
        self.ready = asyncio.Event()

    def offer(self, done: Completed, listener: str) -> None:
        if not self.filter.matches(done, listener):
            return
        if len(self.events) >= self._queue_size:
            self.dropped += 1
            return
        self.events.append(event_of(done, listener))
        self.ready.set()


class Tap:
    """The sidecar's tap: recorders for the listeners, clients attached by /tap."""

    def __init__(self, *, max_clients: int = MAX_CLIENTS, queue_size: int = QUEUE_SIZE) -> None:
        self._clients: list[TapClient] = []
        self._max_clients = max_clients
        self._queue_size = queue_size

    @property
    def clients(self) -> int:
        """Clients attached now."""
        return len(self._clients)

    def recorder(self, listener: str) -> Callable[[Completed], None]:
        """The recorder part of one listener (an empty-list test while nobody taps)."""
        clients = self._clients

        def tap(done: Completed) -> None:
            if clients:
                for client in clients:
                    client.offer(done, listener)

        return tap

    @contextlib.contextmanager
    def attach(self, flt: TapFilter) -> Iterator[TapClient]:
        """Attach a client for the `with` block; RuntimeError when too many are attached."""
        if len(self._clients) >= self._max_clients:
            raise RuntimeError(f"{self._max_clients} tap clients attached already")
        client = TapClient(flt, queue_size=self._queue_size)
        self._clients.append(client)
        try:
            yield client
        finally:
            self._clients.remove(client)

    async def collect(self, flt: TapFilter, *, limit: int, seconds: float) -> dict[str, Any]:
        """Events matching `flt` until `limit` of them or `seconds` passed."""
        with self.attach(flt) as client:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + seconds
            while len(client.events) < limit:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                client.ready.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(remaining):
                        await client.ready.wait()
            events = list(client.events)[:limit]
            return {
                "events": events,
                "dropped": client.dropped + max(0, len(client.events) - limit),
            }
