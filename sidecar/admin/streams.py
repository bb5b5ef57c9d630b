"""An asyncio-stream adapter that pulls request events from the sans-IO parser in `http1`.

Used by the admin server (`server.py`), where simplicity beats speed; the proxy's listeners drive
the same parser from Protocol callbacks instead.

It reads from its StreamReader only when it has no parsed event left, so the reader's buffer limit
is the backpressure: a slow consumer stops the socket being read.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque

from sidecar.http.http1 import (
    MAX_HEAD_BYTES,
    MAX_HEADERS,
    RequestEvent,
    RequestParser,
)

READ_SIZE = 64 * 1024


class RequestStream:
    """The requests arriving on one downstream connection, as a sequence of events."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        *,
        read_size: int = READ_SIZE,
        max_head_bytes: int = MAX_HEAD_BYTES,
        max_headers: int = MAX_HEADERS,
    ) -> None:
        self.reader = reader
        self._read_size = read_size
        self._parser = RequestParser(max_head_bytes=max_head_bytes, max_headers=max_headers)
        self._events: deque[RequestEvent] = deque()

    @property
    def ready(self) -> bool:
        """Whether an event is parsed already (the next call returns without reading)."""
        return bool(self._events)

    async def begin(self) -> bool:
        """Wait until the next request has begun to arrive; False if the peer closed first.

        Returns at once if bytes of a request are already here (pipelining, a broken input).
        """
        parser = self._parser
        if parser.paused:  # the last request asked for Upgrade but the protocol stayed HTTP
            self._events.extend(parser.resume())
        if self._events or parser.in_message or parser.error is not None:
            return True
        data = await self.reader.read(self._read_size)
        if not data:
            return False
        self._events.extend(parser.feed(data))
        return True

    async def next_event(self) -> RequestEvent | None:
        """The next event; None on a clean close. Raises ParseError or ConnectionError."""
        parser = self._parser
        while not self._events:
            if parser.error is not None:
                raise parser.error
            if parser.paused:
                self._events.extend(parser.resume())
                continue
            data = await self.reader.read(self._read_size)
            if not data:
                return None
            self._events.extend(parser.feed(data))
        return self._events.popleft()

    def detach(self) -> bytes:
        """Stop parsing (the connection switched protocols); the bytes read but not parsed."""
        return self._parser.detach()


async def close_writer(writer: asyncio.StreamWriter, *, abort: bool = False) -> None:
    """Close a stream and wait for it; `abort` resets instead (signals truncation)."""
    if abort:
        writer.transport.abort()
    else:
        writer.close()
    # Errors here mean the peer already went away, which is what we wanted.
    with contextlib.suppress(Exception):
        await writer.wait_closed()
