"""Control-plane wiring: sources → store → push (views) → gRPC stream server, plus the debug server.

The only place that builds the control plane's long-lived objects; everything else receives them.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from aiohttp import web

from controlplane.ca import (
    ROOT_CONFIGMAP,
    CertificateAuthority,
    FileCAStore,
    SecretCAStore,
    new_root,
    publish_root,
)
from controlplane.certs import (
    Authenticator,
    BootstrapTokenAuthenticator,
    CertificateService,
    TokenReviewAuthenticator,
    Unauthenticated,
    bearer_token,
    load_or_create_token,
)
from controlplane.debug import build_app
from controlplane.injection.webhook import WebhookSettings, run_webhook
from controlplane.metrics import ControlPlaneMetrics
from controlplane.push.pusher import Pusher
from controlplane.sources.files import DirectorySource
from controlplane.sources.jwks import JwksSource
from controlplane.sources.kube import KubeSource
from controlplane.sources.registry import LocalRegistry, RegistrySource
from controlplane.status import StatusWriter
from controlplane.store import Store
from controlplane.traffic import TrafficStore
from controlplane.xds.server import ConfigDiscovery, Vouch
from lightmesh.memory import return_freed_memory
from lightmesh.runtime import stop_on_signals
from lightmesh.v1 import discovery_pb2, discovery_pb2_grpc

log = logging.getLogger("controlplane")

DEBUG_HOST = "127.0.0.1"

# grpc cancels a call the application has not picked up within this time (its default is 30 s):
# a herd of reconnecting sidecars must wait for admission, not be cancelled and retry.
_UNREQUESTED_CALL_TIMEOUT = 600
# grpc rejects new calls at random once more than `max_pending_requests` wait for the application
# to pick them up, and all of them above the hard limit (defaults 1,000 and 3,000 in recent
# grpc cores): the call ends at once with a bare CANCELLED, before any handler runs. grpc.aio's
# server picks up one call per loop turn, so a herd of thousands of sidecars always has more
# than that waiting: at 5,000 proxies half the streams of a cold herd were cancelled this way
# (HTTP/2 trace: CANCEL right after RECV_INITIAL_METADATA, trailers-only) and reconnected.
# Waiting calls cost little, and admission is PushGate's job.
_MAX_PENDING_CALLS = 1 << 16


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """Everything the control plane is started with."""

    config_dir: Path | None = None  # directory source (local mode)
    kubeconfig: Path | None = (
        None  # Kubernetes source; with `in_cluster`, the pod's service account
    )
    in_cluster: bool = False
    lease_namespace: str = "default"  # where the status-writer Lease lives
    watch_namespaces: tuple[str, ...] = ()  # empty: the whole cluster
    # Also watch Istio's groups (networking.istio.io, security.istio.io): their CRDs must exist
    # (Istio's, or crds/istio/ on a cluster without Istio).
    istio_api: bool = False
    # Namespaces of the ingress gateways, whose TLS Secrets (Gateway credentialName) are read.
    gateway_namespaces: tuple[str, ...] = ()
    host: str = "127.0.0.1"
    port: int = 15010
    # The debug server (proxy status, problems, per-proxy config, and metrics/health too) listens
    # on loopback only, whatever `host` says: `kubectl port-forward` reaches it (see debug.py).
    debug_port: int = 15014
    # /metrics, /healthz and /ready only, on `host`, for Prometheus and the kubelet; 0: not served.
    metrics_port: int = 0
    # /debug/graph and /dashboard from this Prometheus instead of the sidecars' reports; "": off.
    prometheus_url: str = ""
    state_dir: Path | None = None  # where the local registry persists; None: not persisted
    debounce: float = 0.1
    max_debounce: float = 1.0
    # Restored registrations expire this long after the last restored sidecar reconnected (the
    # herd is over), and at most `registry_max_wait` after the restart.
    registry_grace: float = 15.0
    registry_max_wait: float = 300.0
    # How often each RequestAuthentication jwksUri is fetched again (Istio's default: 20 min).
    jwks_refresh: float = 20 * 60.0
    # Istio's defaultServiceExportTo (also the default of VirtualServices and DestinationRules).
    default_export_to: tuple[str, ...] = ("*",)
    # Concurrent pushes: a stream's first (large) ones, and updates.
    initial_pushes: int = 32
    update_pushes: int = 256
    # Bytes of responses sent and not yet ACKed, over every stream (PushGate's ByteBudget).
    push_bytes: int = 64 << 20
    poll_interval: float = 0.1
    webhook: WebhookSettings | None = None  # the sidecar injector; None: not served
    trust_domain: str = "cluster.local"
    # The CA's signing material: a PEM file of certificate (+ chain) + key. Local mode creates it
    # (0600) at <state_dir>/ca.pem when absent; a user may point this at their own intermediate.
    ca_file: Path | None = None
    # Cluster mode: the Secret holding the CA (created by the first replica).
    ca_secret_name: str = "lightmesh-ca"  # noqa: S105 (a Secret's name, not a password)
    ca_namespace: str = ""  # default: lease_namespace
    workload_cert_ttl: float = 24 * 3600.0
    # Names the config-stream server certificate is issued for (besides `host`).
    server_names: tuple[str, ...] = ("localhost",)
    plaintext: bool = False  # serve the config stream without TLS (debugging only)


async def run(settings: Settings, *, stop: asyncio.Event | None = None) -> None:
    """Run the control plane until `stop` is set or SIGINT/SIGTERM arrives."""
    stop = stop or asyncio.Event()
    stop_on_signals(stop)

    metrics = ControlPlaneMetrics.create()
    store = Store(default_export_to=settings.default_export_to)
    pusher = Pusher(
        store,
        metrics=metrics,
        debounce=settings.debounce,
        max_delay=settings.max_debounce,
        initial_pushes=settings.initial_pushes,
        update_pushes=settings.update_pushes,
        push_bytes=settings.push_bytes,
    )
    # Sidecars' traffic reports, for /debug/graph and /dashboard (bounded: see traffic.py).
    traffic = TrafficStore()
    state_file = settings.state_dir / "registry.json" if settings.state_dir else None
    if settings.state_dir:
        settings.state_dir.mkdir(parents=True, exist_ok=True)
    registry = LocalRegistry(grace=settings.registry_grace, max_wait=settings.registry_max_wait)
    keeper = RegistrySource(registry, store, state_file)
    keeper.restore()

    api = _kube_api_client(settings) if settings.kubeconfig or settings.in_cluster else None
    ca, authenticator = _identity(settings, api)
    store.set_trust_bundle(ca.root_pem.decode("ascii"))  # sidecars verify peers against it
    store.set_trust_domain(ca.trust_domain)
    server = grpc.aio.server(
        options=[
            ("grpc.server_max_unrequested_time_in_server", _UNREQUESTED_CALL_TIMEOUT),
            ("grpc.server.max_pending_requests", _MAX_PENDING_CALLS),
            ("grpc.server.max_pending_requests_hard_limit", _MAX_PENDING_CALLS),
        ]
    )
    discovery_pb2_grpc.add_CertificateServiceServicer_to_server(
        CertificateService(
            ca,
            authenticator,
            default_ttl=datetime.timedelta(seconds=settings.workload_cert_ttl),
            # lightmesh_controlplane_certificates_signed_total stayed 0 in a real cluster while
            # every sidecar held a certificate: nothing counted the signatures.
            on_issued=lambda outcome: metrics.certificates.inc() if outcome == "issued" else None,
        ),
        server,
    )
    server.add_generic_rpc_handlers(
        (
            ConfigDiscovery(
                pusher=pusher,
                registry=keeper,
                metrics=metrics,
                traffic=traffic,
                vouch=_vouching(authenticator),
            ).handler(),
        )
    )
    address = f"{settings.host}:{settings.port}"
    if _serves_tls(settings):
        chain, key = ca.issue_server_certificate(*_server_names(settings))
        bound = server.add_secure_port(address, grpc.ssl_server_credentials([(key, chain)]))
    else:
        bound = server.add_insecure_port(address)
    if bound == 0:
        raise OSError(f"cannot listen on {settings.host}:{settings.port}")

    runner = web.AppRunner(
        build_app(
            store=store,
            pusher=pusher,
            metrics=metrics,
            traffic=traffic,
            prometheus_url=settings.prometheus_url,
        ),
        access_log=None,
    )
    await runner.setup()
    sites = [web.TCPSite(runner, DEBUG_HOST, settings.debug_port)]
    runners = [runner]
    if settings.metrics_port:
        public = web.AppRunner(
            build_app(store=store, pusher=pusher, metrics=metrics, debug=False), access_log=None
        )
        await public.setup()
        runners.append(public)
        sites.append(web.TCPSite(public, settings.host, settings.metrics_port))

    files = (
        DirectorySource(settings.config_dir, store, interval=settings.poll_interval)
        if settings.config_dir
        else None
    )
    kube: KubeSource | None = None
    status: StatusWriter | None = None
    if api is not None:
        status = StatusWriter(api, lease_namespace=settings.lease_namespace)
        kube = KubeSource(
            store,
            api,
            on_status=status.submit,
            namespaces=settings.watch_namespaces,
            istio=settings.istio_api,
            secret_namespaces=settings.gateway_namespaces,
        )
    jwks = JwksSource(
        store,
        refresh=settings.jwks_refresh,
        on_fetch=lambda outcome: metrics.jwks_fetches.labels(outcome).inc(),
    )
    metrics.observe_store(store, watch_restarts=(lambda: kube.watch_restarts) if kube else None)
    # Load every source before serving so the first sidecar gets the full config, not a partial one.
    if files is not None:
        await files.load()
    if kube is not None and status is not None:
        kube.start()
        status.start()
        await kube.synced()
    # The keys of the jwksUris known now, before the first sidecar is served (bounded by the
    # fetch timeout; a failure is reported and retried, it does not hold the start up further).
    await jwks.sync()
    async with asyncio.TaskGroup() as tasks:
        tasks.create_task(jwks.run(stop), name="jwks")
        if files is not None:
            tasks.create_task(files.watch(stop), name="files")
        tasks.create_task(pusher.run(stop), name="push")
        if kube is not None and status is not None:
            tasks.create_task(_refresh_status_on_leadership(kube, status, stop), name="status")
        tasks.create_task(keeper.run(stop), name="registry")
        if api is not None and settings.gateway_namespaces:
            tasks.create_task(
                _publish_root(api, settings.gateway_namespaces, ca.root_pem, stop),
                name="gateway-root",
            )
        # Each sidecar stream holds TLS buffers that are freed when it goes; without this the
        # heap stays at its high-water mark after a reconnect herd (1000 streams x 100 services:
        # steady RSS 387 -> 365 MB, `python -m bench controlplane`, docs/benchmarks.md).
        tasks.create_task(return_freed_memory(stop), name="memory")
        if settings.webhook is not None:
            tasks.create_task(
                run_webhook(settings.webhook, ca=ca, api=api, stop=stop), name="webhook"
            )
        await server.start()
        for site in sites:
            await site.start()
        log.info(
            "control plane serving",
            extra={
                "event": "started",
                "grpc": f"{settings.host}:{bound}",
                "debug": f"http://{DEBUG_HOST}:{settings.debug_port}",
                "metrics": f"http://{settings.host}:{settings.metrics_port}"
                if settings.metrics_port
                else "",
                "config_dir": str(settings.config_dir or ""),
                "kubernetes": bool(kube),
                "tls": _serves_tls(settings),
                "trust_domain": settings.trust_domain,
            },
        )
        await stop.wait()
        log.info("stopping", extra={"event": "stopping"})
        keeper.flush()
        keeper.persist = False
        await server.stop(grace=1.0)
        for each in runners:
            await each.cleanup()
        pusher.shutdown()
        if kube is not None and status is not None:
            kube.stop()
            status.stop()


# How often the root ConfigMaps of gateway namespaces are checked (and rewritten when missing,
# e.g. the namespace or its Role came after the control plane, or someone deleted it).
ROOT_CHECK_INTERVAL = 10.0


async def _publish_root(
    api: object, namespaces: tuple[str, ...], root_pem: bytes, stop: asyncio.Event
) -> None:
    """Gateways are not injected: they read the mesh's root from a ConfigMap of their namespace,
    which this keeps written (every replica; the writes are idempotent)."""
    reported: set[str] = set()
    while not stop.is_set():
        failed = await asyncio.to_thread(publish_root, api, namespaces, root_pem)
        for reason in failed:
            if reason not in reported:
                log.warning(
                    "root ConfigMap %s not written in %s (retrying)",
                    ROOT_CONFIGMAP,
                    reason,
                    extra={"event": "root_configmap_failed"},
                )
        reported = set(failed)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=ROOT_CHECK_INTERVAL)


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


def _serves_tls(settings: Settings) -> bool:
    # Without a persistent CA there is no trust bundle sidecars could have been given.
    persistent = bool(settings.state_dir or settings.ca_file or settings.kubeconfig)
    return not settings.plaintext and (persistent or settings.in_cluster)


def _server_names(settings: Settings) -> tuple[list[str], list[str]]:
    names = [n for n in settings.server_names if n]
    addresses = []
    try:
        ipaddress.ip_address(settings.host)
        addresses.append(settings.host)
    except ValueError:
        names.append(settings.host)
    return names, addresses


def _vouching(authenticator: Authenticator) -> Vouch:
    """Whether a gateway's token is for the namespace and service account its node claims (the
    certificate service's check: TokenReview in a cluster, the bootstrap token locally)."""

    async def vouch(metadata: Any, node: discovery_pb2.Node) -> str:
        token = bearer_token(metadata)
        if not token:
            return "no bearer token on the stream (the gateway's --token-file)"
        claimed = (node.namespace or "default", node.service_account or "default")
        claim = discovery_pb2.CertificateRequest(namespace=claimed[0], service_account=claimed[1])
        try:
            vouched = await authenticator.authenticate(token, claim)
        except Unauthenticated as error:
            return str(error)
        if vouched != claimed:
            return f"the token is for {vouched[0]}/{vouched[1]}, the node claims {claimed[0]}/{claimed[1]}"
        return ""

    return vouch


def _identity(settings: Settings, api: object | None) -> tuple[CertificateAuthority, Authenticator]:
    """The CA (loaded or created once) and how certificate requests are authenticated."""
    if settings.ca_file is not None:
        store: FileCAStore | SecretCAStore | None = FileCAStore(settings.ca_file)
    elif api is not None:
        namespace = settings.ca_namespace or settings.lease_namespace
        store = SecretCAStore(api, namespace=namespace, name=settings.ca_secret_name)
    elif settings.state_dir is not None:
        store = FileCAStore(settings.state_dir / "ca.pem")
    else:
        store = None
    if store is not None:
        ca = CertificateAuthority.load_or_create(store, trust_domain=settings.trust_domain)
    else:
        log.warning(
            "no --state-dir: using a CA that lives only as long as this process",
            extra={"event": "ephemeral_ca"},
        )
        ca = CertificateAuthority(
            new_root(settings.trust_domain, now=datetime.datetime.now(datetime.UTC)),
            trust_domain=settings.trust_domain,
        )
    authenticator: Authenticator
    if api is not None:
        authenticator = TokenReviewAuthenticator(api)
    else:
        token_dir = settings.state_dir or (settings.ca_file.parent if settings.ca_file else None)
        # Without a place to share it, nobody could present the token: generate one nobody has.
        token = (
            load_or_create_token(token_dir / "bootstrap-token")
            if token_dir is not None
            else secrets.token_urlsafe(32)
        )
        authenticator = BootstrapTokenAuthenticator(token)
    if settings.state_dir is not None:
        # The trust bundle is public: sidecars started on this machine are pointed at it.
        _write_atomic(settings.state_dir / "root.pem", ca.root_pem)
    return ca, authenticator


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _kube_api_client(settings: Settings) -> object:
    from kubernetes import client, config  # only cluster mode pays for the import

    if settings.in_cluster:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
        return client.ApiClient()
    return config.new_client_from_config(config_file=str(settings.kubeconfig))  # type: ignore[no-untyped-call]
