"""The admission webhook's HTTPS server (aiohttp) and the caBundle it keeps in its registration.

Two paths, because the API server's namespaceSelector is what knows the namespace labels
(deploy/injector.yaml registers one webhook for each side):
- `/inject`: pods of namespaces labelled `lightmesh-injection=enabled`;
- `/inject/opt-in`: pods of every other namespace, injected only with `lightmesh.io/inject: "true"`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import logging
import os
import ssl
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from controlplane.ca import CertificateAuthority
from controlplane.injection.review import review
from controlplane.injection.template import InjectionConfig

log = logging.getLogger("controlplane.injector")

# AdmissionReviews carry a whole pod (and on UPDATE its old version too); etcd caps objects at
# about 1.5 MB.
MAX_BODY = 8 * 1024 * 1024
CA_BUNDLE_CHECK_INTERVAL = 30.0


def build_webhook_app(config: InjectionConfig) -> web.Application:
    """The aiohttp application answering AdmissionReviews."""

    async def admit(request: web.Request, *, namespace_enabled: bool) -> web.Response:
        outcome = review(await request.read(), namespace_enabled=namespace_enabled, config=config)
        response = outcome.answer["response"]
        log.info(
            "admission %s", outcome.note,
            extra={
                "event": "admission",
                "uid": response["uid"],
                "namespace": outcome.namespace,
                "pod": outcome.pod,
                "allowed": response["allowed"],
            },
        )  # fmt: skip
        return web.json_response(outcome.answer)

    async def labelled(request: web.Request) -> web.Response:
        return await admit(request, namespace_enabled=True)

    async def opt_in(request: web.Request) -> web.Response:
        return await admit(request, namespace_enabled=False)

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    app = web.Application(client_max_size=MAX_BODY)
    app.router.add_post("/inject", labelled)
    app.router.add_post("/inject/opt-in", opt_in)
    app.router.add_get("/healthz", healthz)
    return app


def server_ssl_context(cert_pem: bytes, key_pem: bytes) -> ssl.SSLContext:
    """A TLS server context for the webhook; the key touches disk only in a private temp dir,
    because `ssl` loads keys from files alone."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    with tempfile.TemporaryDirectory(prefix="lightmesh-webhook-") as directory:
        cert_file, key_file = Path(directory, "tls.crt"), Path(directory, "tls.key")
        cert_file.write_bytes(cert_pem)
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(key_pem)
        context.load_cert_chain(cert_file, key_file)
    return context


async def start_webhook(
    config: InjectionConfig, *, host: str, port: int, context: ssl.SSLContext
) -> tuple[web.AppRunner, int]:
    """Serve the webhook over HTTPS; returns the runner (clean it up to stop) and the port."""
    runner = web.AppRunner(build_webhook_app(config), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=context)
    await site.start()
    bound = runner.addresses[0][1]
    return runner, int(bound)


# Roots kept in a caBundle besides ours: other replicas' until the CA is shared (a Secret-backed
# CA store), and a few predecessors so a replica restarting with a new root breaks nobody.
MAX_OTHER_ROOTS = 3
_PEM_END = b"-----END CERTIFICATE-----"


def _certificates(bundle: bytes) -> list[bytes]:
    parts = bundle.split(_PEM_END)
    return [
        p.strip() + b"\n" + _PEM_END + b"\n" for p in parts if b"-----BEGIN CERTIFICATE-----" in p
    ]


def merged_bundle(current_b64: str, root_pem: bytes) -> str:
    """The caBundle (base64) trusting our root: unchanged when it already does, else our root
    first, then up to MAX_OTHER_ROOTS of the certificates it trusted. Pure."""
    try:
        current = base64.b64decode(current_b64, validate=True) if current_b64 else b""
    except ValueError:
        current = b""  # garbage in the field: replace it
    ours = _certificates(root_pem)
    trusted = _certificates(current)
    if all(c in trusted for c in ours):
        return current_b64  # already trusted: leave the order alone (replicas must not flip it)
    others = [c for c in trusted if c not in ours]
    return base64.b64encode(b"".join([*ours, *others[:MAX_OTHER_ROOTS]])).decode("ascii")


def ca_bundle_patch(configuration: dict[str, Any], root_pem: bytes) -> list[dict[str, Any]]:
    """JSONPatch putting our root into every webhook's caBundle; empty when all trust it. Pure."""
    patch = []
    for index, webhook in enumerate(configuration.get("webhooks") or []):
        current = (webhook.get("clientConfig") or {}).get("caBundle") or ""
        bundle = merged_bundle(current, root_pem)
        if bundle != current:
            path = f"/webhooks/{index}/clientConfig/caBundle"
            patch.append({"op": "add", "path": path, "value": bundle})
    return patch


async def keep_ca_bundle(
    api: Any,
    name: str,
    root_pem: bytes,
    stop: asyncio.Event,
    *,
    interval: float = CA_BUNDLE_CHECK_INTERVAL,
) -> None:
    """Fill the caBundle of MutatingWebhookConfiguration `name` now, and again whenever it drifts
    (a re-applied manifest, a CA change), until `stop`. Errors are logged and retried."""
    from kubernetes import client  # only cluster mode pays for the import

    admission = client.AdmissionregistrationV1Api(api)

    def sync() -> int:
        current = admission.read_mutating_webhook_configuration(name)
        patch = ca_bundle_patch(api.sanitize_for_serialization(current), root_pem)
        if patch:
            admission.patch_mutating_webhook_configuration(name, patch)
        return len(patch)

    while not stop.is_set():
        try:
            patched = await asyncio.to_thread(sync)
        except Exception as error:  # the API server's errors, connection errors: retry later
            log.warning(
                "cannot fill the caBundle of MutatingWebhookConfiguration %s: %s", name, error,
                extra={"event": "ca_bundle_error"},
            )  # fmt: skip
        else:
            if patched:
                log.info(
                    "filled the caBundle of %d webhooks of %s", patched, name,
                    extra={"event": "ca_bundle_patched", "configuration": name},
                )  # fmt: skip
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=interval)


@dataclass(frozen=True, slots=True, kw_only=True)
class WebhookSettings:
    """How the control plane serves the injector."""

    port: int = 15017
    host: str = "0.0.0.0"  # the API server calls in through the Service
    # Names the API server reaches the webhook by: its Service's DNS name, or the `url` host.
    dns_names: tuple[str, ...] = ("lightmesh-controlplane.lightmesh-system.svc",)
    ip_addresses: tuple[str, ...] = ()
    # MutatingWebhookConfiguration whose caBundle the control plane keeps filled; "" for none.
    configuration: str = ""
    injection: InjectionConfig = field(default_factory=InjectionConfig)


async def run_webhook(
    settings: WebhookSettings,
    *,
    ca: CertificateAuthority,
    api: Any | None,
    stop: asyncio.Event,
) -> None:
    """Serve the injector with a certificate from the mesh CA and keep the caBundle, until `stop`."""
    cert_pem, key_pem = ca.issue_server_certificate(
        list(settings.dns_names), list(settings.ip_addresses)
    )
    # Injected proxies verify the control plane against this root (see ROOT_ANNOTATION).
    injection = dataclasses.replace(settings.injection, trust_root=ca.root_pem.decode("ascii"))
    runner, port = await start_webhook(
        injection,
        host=settings.host,
        port=settings.port,
        context=server_ssl_context(cert_pem, key_pem),
    )
    log.info(
        "injector serving",
        extra={"event": "webhook_started", "webhook": f"https://{settings.host}:{port}"},
    )
    try:
        if api is not None and settings.configuration:
            await keep_ca_bundle(api, settings.configuration, ca.root_pem, stop)
        else:
            await stop.wait()
    finally:
        await runner.cleanup()
