"""Admin endpoints of the sidecar: /ready, /healthz, /metrics, /config_dump, /certs, /logging,
/tap (live requests, `lightmesh tap`), POST /quitquitquit (the admin port, on loopback), and the subset the network may reach (the
metrics port: /metrics, /ready, /healthz, nothing else)."""

from __future__ import annotations

import ipaddress
import json
import logging
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs

from lightmesh.types import SHORT_NAMES
from sidecar.admin.server import LocalResponse
from sidecar.cluster.app_health import AppHealth
from sidecar.config.apply import DataPlane
from sidecar.config.client import ConfigClient
from sidecar.contract import RequestHead
from sidecar.identity.manager import CertificateManager
from sidecar.identity.tls import MeshTLS
from sidecar.telemetry.exposition import (
    OPENMETRICS_CONTENT_TYPE,
    TEXT_CONTENT_TYPE,
    Registry,
    render_openmetrics,
    render_text,
)
from sidecar.telemetry.tap import Tap, parse_filter

_TEXT = [(b"content-type", b"text/plain; charset=utf-8")]
_JSON = [(b"content-type", b"application/json")]


class Admin:
    """Answers admin requests from the sidecar's live state."""

    def __init__(
        self,
        *,
        node: dict[str, Any],
        client: ConfigClient,
        dataplane: DataPlane,
        registry: Registry,
        draining: Callable[[], bool],
        certificates: CertificateManager | None = None,
        quit: Callable[[], None] | None = None,
        mesh_tls: MeshTLS | None = None,
        app_health: AppHealth | None = None,
        logger: logging.Logger | None = None,
        tap: Tap | None = None,
    ) -> None:
        self._tap = tap
        self._logger = logger  # whose level POST /logging?level= sets (the process's root)
        self._app_health = app_health
        self._certificates = certificates
        self._mesh_tls = mesh_tls
        self._node = node
        self._client = client
        self._dataplane = dataplane
        self._registry = registry
        self._draining = draining
        self._quit = quit

    async def handle_public(self, head: RequestHead) -> LocalResponse:
        """Dispatch one request on the metrics port: probes and Prometheus, nothing more."""
        path = head.path.partition("?")[0]
        answer = self._public(path, head)
        if answer is not None:
            return answer
        return LocalResponse(
            status=404,
            headers=_TEXT,
            body=b"this port serves /metrics, /ready and /healthz only "
            b"(the admin interface is on 127.0.0.1)\n",
        )

    def _public(self, path: str, head: RequestHead) -> LocalResponse | None:
        if path == "/ready":
            return self._ready()
        if path == "/healthz":
            return LocalResponse(status=200, headers=_TEXT, body=b"ok\n")
        if path == "/metrics":
            return self._metrics(head)
        return None

    async def handle(self, head: RequestHead) -> LocalResponse:
        """Dispatch one admin request."""
        path = head.path.partition("?")[0]
        answer = self._public(path, head)
        if answer is not None:
            return answer
        if path == "/certs":
            return LocalResponse(
                status=200, headers=_JSON, body=json.dumps(self.certs(), indent=2).encode()
            )
        if path == "/quitquitquit":
            return self._quitquitquit(head)
        if path == "/logging":
            return self._logging(head)
        if path == "/tap":
            return await self._tap_requests(head)
        if path == "/config_dump":
            return LocalResponse(
                status=200, headers=_JSON, body=json.dumps(self.config_dump(), indent=2).encode()
            )
        return LocalResponse(
            status=404,
            headers=_TEXT,
            body=b"try /ready, /healthz, /metrics, /config_dump, /certs, /logging, /tap, "
            b"POST /quitquitquit\n",
        )

    async def _tap_requests(self, head: RequestHead) -> LocalResponse:
        """Long-poll: the requests completed from now on that match ?path=&method=&status=
        &listener=, until ?max= of them (default 100) or ?seconds= passed (default 5)."""
        if self._tap is None:
            return LocalResponse(status=501, headers=_TEXT, body=b"tap is not wired\n")
        try:
            flt, limit, seconds = parse_filter(head.path.partition("?")[2])
        except ValueError as error:
            return LocalResponse(status=400, headers=_TEXT, body=f"tap: {error}\n".encode())
        try:
            body = await self._tap.collect(flt, limit=limit, seconds=seconds)
        except RuntimeError as error:
            return LocalResponse(status=429, headers=_TEXT, body=f"tap: {error}\n".encode())
        return LocalResponse(status=200, headers=_JSON, body=json.dumps(body).encode())

    def _logging(self, head: RequestHead) -> LocalResponse:
        """GET: the log level; POST ?level=debug|info|warning|error: change it (as Envoy's
        /logging does), for a look at a live proxy without a restart."""
        logger = self._logger
        if logger is None:
            return LocalResponse(status=501, headers=_TEXT, body=b"logging is not wired\n")
        if head.method == "POST":
            query = parse_qs(head.path.partition("?")[2])
            level = (query.get("level") or [""])[0].upper()
            if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
                text = b"level: give ?level=debug, info, warning or error\n"
                return LocalResponse(status=400, headers=_TEXT, body=text)
            logger.setLevel(level)
        elif head.method != "GET":
            allow = [(b"allow", b"GET, POST")]
            return LocalResponse(status=405, headers=[*_TEXT, *allow], body=b"GET or POST\n")
        level_name = logging.getLevelName(logger.getEffectiveLevel()).lower()
        return LocalResponse(status=200, headers=_TEXT, body=f"level: {level_name}\n".encode())

    def _quitquitquit(self, head: RequestHead) -> LocalResponse:
        """Drain and exit: how a Job's app (or a preStop hook) lets its pod finish.

        Only from inside the pod: the admin port listens on loopback, and this check stays as a
        second line should it ever be bound elsewhere (nobody else may stop a workload's proxy).
        """
        if head.method != "POST":
            return LocalResponse(status=405, headers=[*_TEXT, (b"allow", b"POST")], body=b"POST\n")
        if not _is_loopback(head.peer):
            return LocalResponse(status=403, headers=_TEXT, body=b"only from inside the pod\n")
        if self._quit is None:
            return LocalResponse(status=501, headers=_TEXT, body=b"quit is not wired\n")
        self._quit()
        return LocalResponse(status=200, headers=_TEXT, body=b"draining, then exiting\n")

    def _metrics(self, head: RequestHead) -> LocalResponse:
        # OpenMetrics only when the scraper asks for it (Prometheus does), text format otherwise.
        accept = head.header(b"accept") or b""
        if b"application/openmetrics-text" in accept:
            body = render_openmetrics(self._registry)
            content_type = OPENMETRICS_CONTENT_TYPE
        else:
            body = render_text(self._registry)
            content_type = TEXT_CONTENT_TYPE
        return LocalResponse(
            status=200, headers=[(b"content-type", content_type.encode())], body=body
        )

    def _ready(self) -> LocalResponse:
        if self._draining():
            return LocalResponse(status=503, headers=_TEXT, body=b"draining\n")
        if not self._client.protocol.complete:
            missing = [
                SHORT_NAMES[t] for t, h in self._client.protocol.held.items() if not h.received
            ]
            text = f"waiting for first config: {', '.join(missing)}\n"
            return LocalResponse(status=503, headers=_TEXT, body=text.encode())
        manager = self._certificates
        if manager is not None and manager.current is None and not manager.failures:
            # Peers originate mutual TLS to us as soon as we are an endpoint: serve once we can
            # terminate it (as Envoy waits for its secrets). A refused certificate request does
            # not hold readiness back: we then serve plaintext, which PERMISSIVE peers accept.
            return LocalResponse(status=503, headers=_TEXT, body=b"waiting for a certificate\n")
        health = self._app_health
        if health is not None and not health.ready:
            # So a cluster's EndpointSlices stop listing this pod while its app is gone.
            return LocalResponse(status=503, headers=_TEXT, body=b"app not accepting connections\n")
        return LocalResponse(status=200, headers=_TEXT, body=b"ready\n")

    def certs(self) -> dict[str, Any]:
        """The workload certificate in use (no private material) and the rotation history."""
        manager = self._certificates
        if manager is None:
            return {"enabled": False}
        current = manager.current
        return {
            "enabled": True,
            "certificate": current.describe() if current else None,
            "rotations": manager.rotations,
            "failed_requests": manager.failures,
            "mtls": {
                "inbound_mode": self._dataplane.inbound.mode,
                "handshakes": self._mesh_tls.handshakes if self._mesh_tls else 0,
                "refused_plaintext": self._mesh_tls.refused_plaintext if self._mesh_tls else 0,
                "failed_handshakes": self._mesh_tls.failed_handshakes if self._mesh_tls else 0,
            },
        }

    def config_dump(self) -> dict[str, Any]:
        """Applied config, versions and last rejection per type."""
        versions: dict[str, Any] = {}
        for type_url, held in self._client.protocol.held.items():
            entry: dict[str, Any] = {
                "version": held.version,
                "applied_at": held.applied_at,
                "resources": dict(sorted(held.versions.items())),
            }
            if held.nack_message:
                entry["last_nack"] = {
                    "version": held.nacked_version,
                    "error": held.nack_message,
                    "at": held.nacked_at,
                }
            versions[SHORT_NAMES[type_url]] = entry
        return {
            "node": self._node,
            "control_plane": {"connected": self._client.connected},
            "versions": versions,
            "config": self._dataplane.dump(),
        }


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address.removeprefix("::ffff:")).is_loopback
    except ValueError:
        return False
