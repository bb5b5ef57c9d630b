"""Kubernetes source: list-then-watch of the mesh kinds, Services, EndpointSlices and Pods.

One worker thread per kind runs the (synchronous) `kubernetes` client: it lists, then watches from
the list's resourceVersion with bookmarks, and relists on 410 Gone or any error (with backoff); a
collection that does not exist (404: its CRD is not installed) counts as empty and is looked for
again every few seconds; a relist replaces the kind's objects, and only objects that differ are re-evaluated, so a relist
causes no spurious push. Events are handed to the event loop, which owns the index and the store,
and each one changes only the keys it touches. The threads stay out of the loop, and the loop
never blocks on the API.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from functools import partial
from typing import Any

from controlplane.sources.kube_index import (
    ORIGIN,
    SCOPED_KINDS,
    Delta,
    KubeIndex,
    Obj,
    StatusUpdate,
    collection_path,
    watched_kinds,
)
from controlplane.store import Store
from controlplane.world import service_key

log = logging.getLogger("controlplane.sources.kube")

SOURCE = "kubernetes"
WATCH_TIMEOUT = 240  # seconds a watch request stays open before it is renewed


class _Gone(Exception):
    """The watch's resourceVersion is too old (410): relist."""


class _Missing(Exception):
    """The API has no such collection (404): its CRD is not installed (yet)."""


# How long to wait before looking again for a collection whose CRD is missing.
MISSING_RETRY = 10.0


class KubeSource:
    """Feeds the store from the Kubernetes API; `start()` spawns the watchers, `stop()` ends them."""

    def __init__(
        self,
        store: Store,
        api_client: Any,
        *,
        on_status: Callable[[list[StatusUpdate]], None],
        namespaces: tuple[str, ...] = (),
        istio: bool = False,
        secret_namespaces: tuple[str, ...] = (),
    ) -> None:
        self._on_status = on_status
        # Also Istio's groups (networking.istio.io, security.istio.io): their CRDs must exist.
        self._kinds = watched_kinds(istio=istio)
        # Empty: watch cluster-wide. Otherwise one watch per kind and namespace, so a control
        # plane can run with namespaced RBAC only.
        self._scopes: tuple[str | None, ...] = namespaces or (None,)
        # Every (kind, namespace or None) list/watch. Secrets only in the gateways' namespaces
        # (`--gateway-namespace`), never cluster-wide: the RBAC to read them is namespaced too.
        self._watches: list[tuple[str, str | None]] = [
            (kind, scope) for kind in self._kinds for scope in self._scopes
        ] + [("Secret", space) for space in secret_namespaces]
        self._store = store
        self._api = api_client
        self._index = KubeIndex()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._synced: set[tuple[str, str | None]] = set()
        self._all_synced = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        # (kind, "expired" | "error") -> list/watch restarts, read by the metrics at scrape time
        self.watch_restarts: Counter[tuple[str, str]] = Counter()

    def start(self) -> None:
        """Start one list/watch thread per kind (and namespace, when scoped)."""
        self._loop = asyncio.get_running_loop()
        for kind, scope in self._watches:
            thread = threading.Thread(
                target=self._run,
                args=(kind, scope),
                name=f"watch-{kind}-{scope or 'all'}",
                daemon=True,
            )
            thread.start()
            self._threads.append(thread)

    def refresh_status(self) -> None:
        """Offer every out-of-date status again (after this replica became leader)."""
        if self._all_synced.is_set():
            self._on_status(self._index.status_updates())

    async def synced(self) -> None:
        """Wait until every kind has been listed once (the first config is then complete)."""
        await self._all_synced.wait()

    def stop(self) -> None:
        """End the watches: nothing is delivered after this returns.

        The watch threads are daemons blocked in reads; closing their sockets from here can
        deadlock inside urllib3, and they deliver nothing once stopped, so the process does not
        wait for them.
        """
        self._stop.set()

    # --- worker threads ---

    def _run(self, kind: str, scope: str | None) -> None:
        backoff = 0.2
        while not self._stop.is_set():
            try:
                version = self._list(kind, scope)
                backoff = 0.2
                while not self._stop.is_set():
                    version = self._watch(kind, scope, version)
            except _Missing:
                # A CRD not installed (an older crds/, or Istio's groups without crds/istio/): the
                # kind has no objects, so the first config need not wait for it; look again later.
                self.watch_restarts[(kind, "missing")] += 1
                log.warning(
                    "no such collection (CRD not installed?); retrying in %.0fs",
                    MISSING_RETRY,
                    extra={"event": "watch_missing", "kind": kind, "namespace": scope or ""},
                )
                self._deliver(partial(self._on_list, kind, scope, [], time.monotonic()))
                self._stop.wait(MISSING_RETRY)
            except _Gone:
                self.watch_restarts[(kind, "expired")] += 1
                log.info(
                    "watch expired, relisting",
                    extra={"event": "relist", "kind": kind, "namespace": scope or ""},
                )
            except Exception as error:
                if self._stop.is_set():
                    return
                self.watch_restarts[(kind, "error")] += 1
                log.warning(
                    "list/watch failed: %s",
                    error,
                    extra={"event": "watch_error", "kind": kind},
                )
                self._stop.wait(backoff * random.uniform(0.5, 1.5))
                backoff = min(backoff * 2, 5.0)

    def _get(
        self, kind: str, scope: str | None, query: list[tuple[str, str]], *, read_timeout: float
    ) -> Any:
        """GET a collection (list or watch); returns the streaming urllib3 response."""
        path = collection_path(kind, scope)
        method, url, headers, _, _ = self._api.param_serialize(
            "GET",
            path,
            query_params=query,
            header_params={"Accept": "application/json"},
            auth_settings=["BearerToken"],
        )
        response = self._api.call_api(
            method, url, header_params=headers, _request_timeout=(5, read_timeout)
        ).response
        if response.status == 410:
            response.release_conn()
            raise _Gone
        if response.status == 404 or (response.status == 403 and kind in SCOPED_KINDS):
            # 403 on a gateway namespace's Secrets: its Role (deploy/gateway.yaml) is not there
            # (yet); as a missing CRD, it must not hold the first config back for everyone.
            response.release_conn()
            raise _Missing
        if response.status >= 400:
            text = response.data[:300].decode(errors="replace")
            response.release_conn()
            raise RuntimeError(f"GET {path}: HTTP {response.status}: {text}")
        return response

    def _list(self, kind: str, scope: str | None) -> str:
        response = self._get(kind, scope, [], read_timeout=60)
        try:
            body = json.loads(response.data)
        finally:
            response.release_conn()
        self._deliver(
            partial(self._on_list, kind, scope, body.get("items") or [], time.monotonic())
        )
        version: str = body["metadata"]["resourceVersion"]
        return version

    def _watch(self, kind: str, scope: str | None, version: str) -> str:
        query = [
            ("watch", "true"),
            ("resourceVersion", version),
            ("allowWatchBookmarks", "true"),
            ("timeoutSeconds", str(WATCH_TIMEOUT)),
        ]
        response = self._get(kind, scope, query, read_timeout=WATCH_TIMEOUT + 30)
        try:
            for line in _lines(response):
                event = json.loads(line)
                kind_of_event = event.get("type")
                obj = event.get("object") or {}
                if kind_of_event == "ERROR":
                    if obj.get("code") == 410:
                        raise _Gone
                    raise RuntimeError(obj.get("message", "watch error"))
                version = obj.get("metadata", {}).get("resourceVersion", version)
                if kind_of_event in ("ADDED", "MODIFIED", "DELETED"):
                    deleted = kind_of_event == "DELETED"
                    seen = time.monotonic()
                    self._deliver(partial(self._on_event, kind, obj, deleted=deleted, at=seen))
        finally:
            response.release_conn()
        return version

    def _deliver(self, callback: Callable[[], None]) -> None:
        if self._loop is not None and not self._stop.is_set():
            self._loop.call_soon_threadsafe(callback)

    # --- on the event loop ---

    def _on_list(self, kind: str, scope: str | None, items: list[Obj], at: float) -> None:
        delta = self._index.replace(kind, items, namespace=scope)
        was_synced = self._all_synced.is_set()
        self._synced.add((kind, scope))
        if len(self._synced) == len(self._watches):
            self._all_synced.set()
        if not self._all_synced.is_set():
            return  # a partial world would push partial config; wait for every first list
        if not was_synced:
            # Every kind is listed: publish the whole index once.
            resources, _ = self._index.resources()
            self._store.update(
                SOURCE,
                {
                    **resources,
                    **{service_key(s): s for s in self._index.services().values()},
                    **self._index.secrets(),
                },
                at=at,
            )
            self._report(self._index.status_updates())
            return
        self._publish(delta, at)

    def _on_event(self, kind: str, obj: Obj, *, deleted: bool, at: float) -> None:
        delta = self._index.delete(kind, obj) if deleted else self._index.apply(kind, obj)
        if self._all_synced.is_set():
            self._publish(delta, at)

    def _publish(self, delta: Delta, at: float) -> None:
        self._store.update(SOURCE, {**delta.resources, **delta.services, **delta.secrets}, at=at)
        if delta.evaluated:
            self._report(self._index.status_updates(delta.evaluated))
        elif delta.services:
            self._store.set_problems(SOURCE, ORIGIN, self._index.problems())

    def _report(self, updates: list[StatusUpdate]) -> None:
        for update in updates:
            if not update.accepted:
                log.warning(
                    "resource rejected: %s %s/%s: %s",
                    update.kind,
                    update.namespace,
                    update.name,
                    update.message,
                    extra={"event": "resource_rejected"},
                )
        if updates:
            self._on_status(updates)
        self._store.set_problems(SOURCE, ORIGIN, self._index.problems())


def _lines(response: Any) -> Any:
    """Newline-delimited JSON objects from a streaming urllib3 response."""
    buffer = b""
    for chunk in response.stream(4096, decode_content=True):
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            if line.strip():
                yield line
