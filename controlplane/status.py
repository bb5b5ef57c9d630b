"""Status writing for Kubernetes resources, by the one replica that holds a Lease.

Every replica serves sidecars; only the leader writes `status.conditions[Accepted]` (with
observedGeneration) back to the resources, so replicas never fight over status. Leadership is a
`coordination.k8s.io/v1` Lease renewed every `duration / 3`; another replica takes over once the
holder has not renewed for `duration`. Runs in threads with the synchronous client, fed by the loop.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import socket
import threading
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from controlplane.schema import KINDS
from controlplane.sources.kube_index import StatusUpdate

log = logging.getLogger("controlplane.status")

LEASE_NAME = "lightmesh-controlplane"


def _micro_time(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse_time(text: str) -> datetime:
    return datetime.strptime(text.rstrip("Z")[:26], "%Y-%m-%dT%H:%M:%S.%f").replace(tzinfo=UTC)


class StatusWriter:
    """Holds (or waits for) the Lease and writes status updates while leading."""

    def __init__(self, api_client: Any, *, lease_namespace: str, duration: float = 15.0) -> None:
        self._api = api_client
        self._namespace = lease_namespace
        self._duration = duration
        self.identity = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self._leader = threading.Event()
        self._stop = threading.Event()
        self._queue: queue.Queue[list[StatusUpdate]] = queue.Queue(maxsize=64)

    @property
    def leading(self) -> bool:
        """Whether this replica holds the Lease."""
        return self._leader.is_set()

    def start(self) -> None:
        """Start the lease and writer threads (daemons)."""
        for target, name in ((self._lead, "lease"), (self._write, "status-writer")):
            threading.Thread(target=target, name=name, daemon=True).start()

    def stop(self) -> None:
        """Stop writing (the Lease then expires and another replica takes over)."""
        self._stop.set()
        self._leader.clear()

    def submit(self, updates: list[StatusUpdate]) -> None:
        """Queue updates (called from the event loop; never blocks, drops when full)."""
        if updates and self.leading:
            try:
                self._queue.put_nowait(updates)
            except queue.Full:
                log.warning("status queue full; updates dropped until the next change")

    # --- threads ---

    def _request(self, method: str, path: str, body: Any = None, content_type: str = "") -> Any:
        headers = {"Accept": "application/json"}
        if content_type:
            headers["Content-Type"] = content_type
        method, url, headers, body, _ = self._api.param_serialize(
            method, path, header_params=headers, body=body, auth_settings=["BearerToken"]
        )
        response = self._api.call_api(
            method, url, header_params=headers, body=body, _request_timeout=(5, 10)
        ).response
        data = response.data
        response.release_conn()
        return response.status, data

    def _lead(self) -> None:
        path = f"/apis/coordination.k8s.io/v1/namespaces/{self._namespace}/leases"
        while not self._stop.is_set():
            try:
                self._try_acquire(path)
            except Exception as error:
                log.warning("lease error: %s", error, extra={"event": "lease_error"})
                self._leader.clear()
            self._stop.wait(self._duration / 3)

    def _try_acquire(self, path: str) -> None:
        now = datetime.now(UTC)
        status, data = self._request("GET", f"{path}/{LEASE_NAME}")
        spec = {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": int(self._duration),
            "renewTime": _micro_time(now),
        }
        if status == 404:
            body = {
                "metadata": {"name": LEASE_NAME},
                "spec": {**spec, "acquireTime": _micro_time(now)},
            }
            status, _ = self._request("POST", path, body, "application/json")
        else:
            lease = json.loads(data)
            held = lease.get("spec", {})
            renewed = held.get("renewTime")
            expired = (
                renewed is None
                or _parse_time(renewed)
                + timedelta(seconds=held.get("leaseDurationSeconds", self._duration))
                < now
            )
            if held.get("holderIdentity") != self.identity and not expired:
                self._set_leader(False)
                return
            if held.get("holderIdentity") != self.identity:
                spec["acquireTime"] = _micro_time(now)
            lease["spec"] = {**held, **spec}
            # resourceVersion in the body makes the update fail if another replica got there first.
            status, _ = self._request("PUT", f"{path}/{LEASE_NAME}", lease, "application/json")
        self._set_leader(status in (200, 201))

    def _set_leader(self, leading: bool) -> None:
        if leading != self._leader.is_set():
            log.info(
                "leadership %s", "acquired" if leading else "lost",
                extra={"event": "leader" if leading else "follower", "identity": self.identity},
            )  # fmt: skip
        if leading:
            self._leader.set()
        else:
            self._leader.clear()

    def _write(self) -> None:
        while not self._stop.is_set():
            try:
                updates = self._queue.get(timeout=0.5)
            except queue.Empty:
                continue
            for update in updates:
                if not self.leading:
                    break
                try:
                    self._patch(update)
                except Exception as error:
                    log.warning("status write failed: %s", error, extra={"event": "status_error"})

    def _patch(self, update: StatusUpdate) -> None:
        plural = KINDS[update.kind][0]
        where = f"/apis/{update.api_version}/namespaces/{update.namespace}"
        path = f"{where}/{plural}/{update.name}/status"
        condition = {
            "type": "Accepted",
            "status": "True" if update.accepted else "False",
            "reason": "Accepted" if update.accepted else "Invalid",
            "message": update.message,
            "observedGeneration": update.generation,
            "lastTransitionTime": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        body = {"status": {"observedGeneration": update.generation, "conditions": [condition]}}
        status, data = self._request("PATCH", path, body, "application/merge-patch+json")
        if status >= 400:
            raise RuntimeError(f"PATCH {path}: HTTP {status}: {data[:200]!r}")
