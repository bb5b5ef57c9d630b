"""The JWKS source: when each jwksUri is fetched (new at once, refresh interval, backoff after a
failure), and what a failure leaves serving (the last good keys) and reports."""

from __future__ import annotations

from typing import Any

from controlplane.model import ResourceKey
from controlplane.sources.jwks import FetchError, JwksSchedule, JwksSource
from controlplane.store import Store
from controlplane.validate import parse_document
from controlplane.world import jwks_key
from tests.support.jwks import Issuer

URL = "https://issuer.test/jwks.json"
KEYS = Issuer("https://issuer.test").jwks()
ROTATED = Issuer("https://issuer.test", kid="key-2").jwks()


def test_schedule_new_at_once_then_refresh_and_backoff_after_failures() -> None:
    schedule = JwksSchedule(refresh=100.0)
    assert schedule.want({URL}, now=0.0) == set()
    assert schedule.due(0.0) == [URL]
    schedule.succeeded(URL, 0.0, wall=1_700_000_000.0)
    assert schedule.due(99.0) == [] and schedule.next_due() == 100.0
    retries = []
    for _ in range(9):
        now = schedule.next_due()
        assert now is not None
        assert schedule.failed(URL, now) == 1_700_000_000.0  # the keys still served
        retries.append((schedule.next_due() or 0.0) - now)
    assert retries == [1, 2, 4, 8, 16, 32, 60, 60, 60]
    assert schedule.want(set(), now=0.0) == {URL}
    assert schedule.next_due() is None


def put_request_authentication(store: Store, url: str = URL) -> ResourceKey:
    document: dict[str, Any] = {
        "apiVersion": "security.istio.io/v1",
        "kind": "RequestAuthentication",
        "metadata": {"name": "jwt", "namespace": "shop"},
        "spec": {"jwtRules": [{"issuer": "https://issuer.test", "jwksUri": url}]},
    }
    parsed = parse_document(document, origin="test")
    assert parsed.key is not None and parsed.resource is not None
    store.update("files", {parsed.key: parsed.resource}, at=0.0)
    return parsed.key


async def test_failures_keep_the_last_good_keys_and_are_reported() -> None:
    store = Store()
    answers: list[str | Exception] = [KEYS, FetchError("HTTP 503"), ROTATED]
    fetched: list[str] = []
    outcomes: list[str] = []
    clock = [0.0]

    async def fetch(url: str) -> str:
        fetched.append(url)
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    source = JwksSource(store, refresh=10.0, fetch=fetch, on_fetch=outcomes.append,
                        clock=lambda: clock[0], wall=lambda: 0.0)  # fmt: skip
    await source.sync()
    assert fetched == []  # no RequestAuthentication yet
    put_request_authentication(store)
    await source.sync()
    assert store.world.jwks[URL] == KEYS and store.problems() == []
    clock[0] = 10.0
    await source.sync()
    assert store.world.jwks[URL] == KEYS  # kept
    (problem,) = store.problems()
    assert problem.resource == "RequestAuthentication shop/jwt"
    assert problem.path == "spec.jwtRules[0].jwksUri"
    assert problem.message == (
        f"fetching {URL} failed: HTTP 503; the keys fetched at 1970-01-01T00:00:00Z keep serving"
    )
    clock[0] = 11.0  # the first retry, 1 s later
    await source.sync()
    assert store.world.jwks[URL] == ROTATED and store.problems() == []
    assert outcomes == ["success", "failure", "success"]
    version = store.version(jwks_key(URL))
    store.update("files", {ResourceKey("RequestAuthentication", "shop", "jwt"): None}, at=0.0)
    await source.sync()
    assert URL not in store.world.jwks and store.version(jwks_key(URL)) > version


async def test_no_keys_yet_says_tokens_are_refused() -> None:
    store = Store()

    async def fetch(url: str) -> str:
        raise FetchError("ClientConnectorError: connection refused")

    source = JwksSource(store, fetch=fetch, clock=lambda: 0.0)
    put_request_authentication(store)
    await source.sync()
    (problem,) = store.problems()
    assert problem.message.endswith("no keys yet: its issuer's tokens are refused (401)")
    assert URL not in store.world.jwks
