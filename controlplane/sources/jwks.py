"""JWKS source: the keys behind every RequestAuthentication `jwksUri`, fetched by the control
plane and put in the store, so sidecars get them inline in their InboundPolicy (they never reach
out to an issuer themselves, as with istiod).

`JwksSchedule` (pure) decides which URLs are due: a new URL at once, a fetched one again after
the refresh interval (Istio's default: 20 minutes), a failed one sooner, with a doubling backoff
(1 s up to 60 s, never past the refresh interval). A failure keeps the last good keys serving and
is reported as a problem of the resources naming that URL (`lightmesh analyze`-style, on the
debug server's /problems); with no good keys yet, tokens of that issuer are refused (401) by
the sidecars rather than let through unverified. `JwksSource` is the I/O edge (aiohttp).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from controlplane.model import RequestAuthentication
from controlplane.security import SpecError, check_jwks
from controlplane.store import Change, Store
from controlplane.validate import Problem
from controlplane.world import jwks_key

log = logging.getLogger("controlplane.sources.jwks")

SOURCE = "jwks"
DEFAULT_REFRESH = 20 * 60.0
FIRST_RETRY = 1.0
MAX_RETRY = 60.0
FETCH_TIMEOUT = 5.0
MAX_JWKS_BYTES = 1 << 20  # a JWKS is a few KiB; refuse to hold anything near this

Fetch = Callable[[str], Awaitable[str]]


class FetchError(Exception):
    """A JWKS could not be fetched or is not a usable JWKS; the message says why."""


@dataclass(slots=True)
class _State:
    due: float
    retry: float = FIRST_RETRY
    fetched_at: float | None = None  # wall clock of the last good fetch


@dataclass(slots=True)
class JwksSchedule:
    """Which URLs to fetch when. Pure: the caller passes the time."""

    refresh: float = DEFAULT_REFRESH
    _urls: dict[str, _State] = field(default_factory=dict)

    def want(self, urls: set[str], now: float) -> set[str]:
        """Track exactly `urls` (new ones are due now); return the ones no longer wanted."""
        gone = set(self._urls) - urls
        for url in gone:
            del self._urls[url]
        for url in urls - set(self._urls):
            self._urls[url] = _State(due=now)
        return gone

    def due(self, now: float) -> list[str]:
        """The URLs to fetch now, in order."""
        return sorted(url for url, state in self._urls.items() if state.due <= now)

    def next_due(self) -> float | None:
        """When the next fetch is due (None: nothing tracked)."""
        return min((s.due for s in self._urls.values()), default=None)

    def succeeded(self, url: str, now: float, wall: float) -> None:
        state = self._urls.get(url)
        if state is not None:
            state.due, state.retry, state.fetched_at = now + self.refresh, FIRST_RETRY, wall

    def failed(self, url: str, now: float) -> float | None:
        """Schedule the retry; return the wall time of the keys still served (None: none)."""
        state = self._urls.get(url)
        if state is None:
            return None
        state.due = now + min(state.retry, self.refresh)
        state.retry = min(state.retry * 2, MAX_RETRY)
        return state.fetched_at


async def fetch_jwks(url: str) -> str:
    """GET a JWKS over http(s); raise FetchError unless it is a usable JWKS."""
    import aiohttp  # the control plane's HTTP client; imported where it is used

    timeout = aiohttp.ClientTimeout(total=FETCH_TIMEOUT)
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.get(url, allow_redirects=True) as response,
        ):
            if response.status != 200:
                raise FetchError(f"HTTP {response.status}")
            # The whole body, not one read: a JWKS sent in several chunks (chunked encoding, TLS
            # records, a slow link) must not be cut at the first.
            body = bytearray()
            async for chunk in response.content.iter_chunked(64 * 1024):
                body += chunk
                if len(body) > MAX_JWKS_BYTES:
                    break
    except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as error:
        raise FetchError(f"{type(error).__name__}: {error}".rstrip(": ")) from None
    if len(body) > MAX_JWKS_BYTES:
        raise FetchError(f"larger than {MAX_JWKS_BYTES} bytes")
    text = body.decode("utf-8", errors="replace")
    try:
        check_jwks(text, "jwks")
    except SpecError as error:
        raise FetchError(f"not a usable JWKS ({error})") from None
    return text


class JwksSource:
    """Keeps the store's JWKS keys current for the RequestAuthentications it holds."""

    def __init__(
        self,
        store: Store,
        *,
        refresh: float = DEFAULT_REFRESH,
        fetch: Fetch = fetch_jwks,
        on_fetch: Callable[[str], None] = lambda outcome: None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._fetch = fetch
        self._on_fetch = on_fetch
        self._clock = clock
        self._wall = wall
        self.schedule = JwksSchedule(refresh=refresh)
        self._wake = asyncio.Event()
        store.subscribe(self._changed)

    def _changed(self, change: Change) -> None:
        if any(k.kind == "RequestAuthentication" for k in change.keys):
            self._wake.set()

    def _users(self) -> dict[str, list[tuple[str, str]]]:
        """jwksUri -> (resource, field path) of every rule naming it."""
        users: dict[str, list[tuple[str, str]]] = {}
        for resource in self._store.world.of_kind("RequestAuthentication"):
            if isinstance(resource, RequestAuthentication):
                for index, rule in enumerate(resource.rules):
                    if rule.jwks_uri:
                        users.setdefault(rule.jwks_uri, []).append(
                            (str(resource.key), f"spec.jwtRules[{index}].jwksUri")
                        )
        return users

    async def sync(self) -> None:
        """Follow the RequestAuthentications, and fetch every URL that is due."""
        now = self._clock()
        users = self._users()
        for url in self.schedule.want(set(users), now):
            self._store.update(SOURCE, {jwks_key(url): None}, at=now)
            self._store.set_problems(SOURCE, url, ())
        for url in self.schedule.due(now):
            try:
                text = await self._fetch(url)
            except FetchError as error:
                self._on_fetch("failure")
                served = self.schedule.failed(url, self._clock())
                self._report(url, users.get(url, []), str(error), served)
                continue
            self._on_fetch("success")
            self.schedule.succeeded(url, self._clock(), self._wall())
            self._store.set_problems(SOURCE, url, ())
            self._store.update(SOURCE, {jwks_key(url): text}, at=self._clock())

    def _report(
        self, url: str, users: list[tuple[str, str]], error: str, served: float | None
    ) -> None:
        if served is None:
            effect = "no keys yet: its issuer's tokens are refused (401)"
        else:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(served))
            effect = f"the keys fetched at {stamp} keep serving"
        message = f"fetching {url} failed: {error}; {effect}"
        log.warning(message, extra={"event": "jwks_fetch_failed", "url": url})
        self._store.set_problems(
            SOURCE,
            url,
            tuple(
                Problem(
                    origin="jwks", resource=resource, path=path, message=message, severity="warning"
                )
                for resource, path in users
            ),
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Sync until `stop` is set: when a RequestAuthentication changes, and when due."""
        while not stop.is_set():
            self._wake.clear()
            await self.sync()
            due = self.schedule.next_due()
            delay = 3600.0 if due is None else max(0.0, due - self._clock())
            stopper = asyncio.ensure_future(stop.wait())
            waker = asyncio.ensure_future(self._wake.wait())
            try:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        asyncio.wait((stopper, waker), return_when=asyncio.FIRST_COMPLETED),
                        timeout=delay,
                    )
            finally:
                stopper.cancel()
                waker.cancel()
