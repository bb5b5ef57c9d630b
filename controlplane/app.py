"""Control-plane wiring: file source → store → push → gRPC stream server, plus the debug server.

The only place that builds the control plane's long-lived objects; everything else receives them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
from aiohttp import web

from controlplane.debug import build_app
from controlplane.metrics import ControlPlaneMetrics
from controlplane.push import Pusher
from controlplane.registry import LocalRegistry
from controlplane.snapshots import SnapshotCache
from controlplane.sources.files import DirectorySource
from controlplane.sources.kube import KubeSource
from controlplane.status import StatusWriter
from controlplane.store import Store
from controlplane.xds.server import ConfigDiscovery
from lightmesh.runtime import stop_on_signals
from lightmesh.v1 import discovery_pb2_grpc

log = logging.getLogger("controlplane")

REGISTRY_SOURCE = "local-registry"


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """Everything the control plane is started with."""

    config_dir: Path | None = None  # directory source (local mode)
    kubeconfig: Path | None = (
        None  # Kubernetes source; with `in_cluster`, the pod's service account
    )
    in_cluster: bool = False
    lease_namespace: str = "default"  # where the status-writer Lease lives
    host: str = "127.0.0.1"
    port: int = 15010
    debug_port: int = 15014
    state_dir: Path | None = None  # where the local registry persists; None: not persisted
    debounce: float = 0.1
    registry_grace: float = 15.0
    poll_interval: float = 0.1


class _RegistryKeeper:
    """Feeds the local registry into the store and persists it (atomically) on every change."""

    def __init__(self, registry: LocalRegistry, store: Store, state_file: Path | None) -> None:
        self.registry = registry
        self._store = store
        self._state_file = state_file
        self.persist = True  # turned off at shutdown so closing streams do not erase the state

    def changed(self) -> None:
        self._store.replace_services(REGISTRY_SOURCE, self.registry.services())
        if self.persist and self._state_file is not None:
            tmp = self._state_file.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.registry.dump()))
            os.replace(tmp, self._state_file)

    def restore(self) -> None:
        if self._state_file is None or not self._state_file.exists():
            return
        try:
            saved = json.loads(self._state_file.read_text())
        except (OSError, ValueError) as error:
            log.warning("ignoring unreadable registry state: %s", error)
            return
        self.registry.restore(saved, now=time.monotonic())
        self.changed()
        log.info("restored %d registrations", len(saved), extra={"event": "registry_restored"})

    async def expire_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=1.0)
            if self.registry.expire(now=time.monotonic()):
                self.changed()


async def run(settings: Settings, *, stop: asyncio.Event | None = None) -> None:
    """Run the control plane until `stop` is set or SIGINT/SIGTERM arrives."""
    stop = stop or asyncio.Event()
    stop_on_signals(stop)

    metrics = ControlPlaneMetrics.create()
    store = Store()
    cache = SnapshotCache()
    pusher = Pusher(store, cache, debounce=settings.debounce)
    state_file = settings.state_dir / "registry.json" if settings.state_dir else None
    if settings.state_dir:
        settings.state_dir.mkdir(parents=True, exist_ok=True)
    keeper = _RegistryKeeper(LocalRegistry(grace=settings.registry_grace), store, state_file)
    keeper.restore()

    server = grpc.aio.server()
    discovery_pb2_grpc.add_ConfigDiscoveryServicer_to_server(
        ConfigDiscovery(
            pusher=pusher,
            cache=cache,
            registry=keeper.registry,
            on_registry_change=keeper.changed,
            metrics=metrics,
        ),
        server,
    )
    bound = server.add_insecure_port(f"{settings.host}:{settings.port}")
    if bound == 0:
        raise OSError(f"cannot listen on {settings.host}:{settings.port}")

    runner = web.AppRunner(
        build_app(store=store, pusher=pusher, cache=cache, metrics=metrics), access_log=None
    )
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.debug_port)

    files = (
        DirectorySource(settings.config_dir, store, interval=settings.poll_interval)
        if settings.config_dir
        else None
    )
    kube: KubeSource | None = None
    status: StatusWriter | None = None
    if settings.kubeconfig or settings.in_cluster:
        api = _kube_api_client(settings)
        status = StatusWriter(api, lease_namespace=settings.lease_namespace)
        kube = KubeSource(store, api, on_status=status.submit)
    metrics.observe_store(store, watch_restarts=(lambda: kube.watch_restarts) if kube else None)
    # Load every source before serving so the first sidecar gets the full config, not a partial one.
    if files is not None:
        await files.load()
    if kube is not None and status is not None:
        kube.start()
        status.start()
        await kube.synced()
    async with asyncio.TaskGroup() as tasks:
        if files is not None:
            tasks.create_task(files.watch(stop), name="files")
        tasks.create_task(pusher.run(stop), name="push")
        if kube is not None and status is not None:
            tasks.create_task(_refresh_status_on_leadership(kube, status, stop), name="status")
        tasks.create_task(keeper.expire_loop(stop), name="registry-expiry")
        await server.start()
        await site.start()
        log.info(
            "control plane serving",
            extra={
                "event": "started",
                "grpc": f"{settings.host}:{bound}",
                "debug": f"http://{settings.host}:{settings.debug_port}",
                "config_dir": str(settings.config_dir or ""),
                "kubernetes": bool(kube),
            },
        )
        await stop.wait()
        log.info("stopping", extra={"event": "stopping"})
        keeper.persist = False
        await server.stop(grace=1.0)
        await runner.cleanup()
        pusher.shutdown()
        if kube is not None and status is not None:
            kube.stop()
            status.stop()


async def _refresh_status_on_leadership(
    kube: KubeSource, status: StatusWriter, stop: asyncio.Event
) -> None:
    was_leading = False
    while not stop.is_set():
        if status.leading and not was_leading:
            kube.refresh_status()
        was_leading = status.leading
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=0.5)


def _kube_api_client(settings: Settings) -> object:
    from kubernetes import client, config  # only cluster mode pays for the import

    if settings.in_cluster:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
        return client.ApiClient()
    return config.new_client_from_config(config_file=str(settings.kubeconfig))  # type: ignore[no-untyped-call]
