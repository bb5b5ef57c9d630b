"""Protocol client of `python -m bench controlplane`: one simulated sidecar's config stream.

This is the only module of the benchmark that knows the wire protocol: incremental (delta)
`lightmesh.v1.ConfigDiscovery/DeltaConfig`, a wildcard subscription per type, every response
ACKed; a reconnect announces every resource held and the digest of each type's set, as the
sidecar does (sidecar/config/protocol.py).
Porting the benchmark to another protocol means rewriting this file and keeping its interface,
which everything else (bench/cp_sim.py, bench/controlplane.py, bench/cp_rig.py) relies on:

- `TYPES`: short names of the resource types a proxy must have ACKed to be "synced";
  `ROUTES` and `ENDPOINTS` are the two the change scenarios wait for.
- `Registration`, `NodeSpec`: who a simulated proxy says it is (plain data, JSON-able).
- `Response`: what one received response did — its type, an opaque `version` token (the digest of
  what the proxy holds of that type: changes iff that changed; no whitespace), payload bytes,
  resource count (changed and removed), and
  the `time.monotonic()` instants it arrived and its ACK was written. CLOCK_MONOTONIC is shared by
  every process of the machine, so the orchestrator compares these with its own clock.
- `StreamEvent`: "open" (subscriptions written), "error" (detail: the gRPC code) or "eof".
- `channel_credentials(ca_pem)`: TLS credentials trusting the control plane's root.
- `ProxyClient(spec, target=..., credentials=..., on_response=..., on_stream=...)` whose
  `run()` connects, subscribes, ACKs and reconnects (with the sidecar's backoff) until the task
  is cancelled; `held` maps each type to the version token it holds (sent on reconnect).

Like the real sidecar, each stream gets its own channel (own TCP + TLS connection) and a
reconnect announces the versions held, so the control plane can send only what changed. Unlike
it, the resources are not applied: the response envelope is parsed and each resource's type is
checked, which is enough to measure what the control plane sends and when.

The channel is grpc.aio's (one channel per stream, the local subchannel pool) unless
`client="sidecar"`: the sidecar's own (`sidecar/config/channel.py`, HTTP/2 on `h2`), what real
sidecars connect with since they dropped grpcio. grpcio stays the default so that figures compare
with earlier runs. A stream error's details (and grpcio's debug string) go with its event, so the
workers can log why streams fail.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from lightmesh.types import PUSH_ORDER, SHORT_NAMES, WILDCARD
from lightmesh.v1 import discovery_pb2 as pb
from lightmesh.versions import set_version
from sidecar.config import channel as sidecar_channel

TYPES: tuple[str, ...] = tuple(SHORT_NAMES[t] for t in PUSH_ORDER)
CLIENTS = ("grpcio", "sidecar")  # which channel the simulated proxies connect with
ROUTES = "ROUTES"
ENDPOINTS = "ENDPOINTS"

_METHOD = "/lightmesh.v1.ConfigDiscovery/DeltaConfig"
_URLS = {short: url for url, short in SHORT_NAMES.items()}
# One connection per channel, as separate sidecar processes would have.
_CHANNEL_OPTIONS = (("grpc.use_local_subchannel_pool", 1),)
# The sidecar's reconnect backoff (sidecar/config/client.py): base · 2^n, capped, jittered.
_BACKOFF_BASE, _BACKOFF_CAP = 0.25, 4.0


@dataclass(frozen=True, slots=True)
class Registration:
    """A service instance a local-mode proxy announces (ignored by the Kubernetes source)."""

    service: str
    address: str
    port: int


@dataclass(frozen=True, slots=True)
class NodeSpec:
    """Identity of one simulated proxy."""

    id: str
    workload: str
    namespace: str
    labels: dict[str, str] = field(default_factory=dict)
    service_account: str = "default"
    registrations: tuple[Registration, ...] = ()


@dataclass(frozen=True, slots=True)
class Response:
    """One response the proxy received and ACKed (or NACKed: `error` set)."""

    type: str
    version: str
    bytes: int
    resources: int
    received: float
    acked: float
    error: str = ""


@dataclass(frozen=True, slots=True)
class StreamEvent:
    """A stream opened ("open"), failed ("error", detail = gRPC code) or was closed ("eof");
    `message` says why it failed and when (before "open", or after how many responses)."""

    kind: str
    detail: str = ""
    message: str = ""


def channel_credentials(ca_pem: bytes) -> grpc.ChannelCredentials:  # grpcio client only
    """TLS credentials that verify the control plane against its root certificate."""
    return grpc.ssl_channel_credentials(root_certificates=ca_pem)


def _decode(data: bytes) -> tuple[int, pb.DeltaDiscoveryResponse]:
    return len(data), pb.DeltaDiscoveryResponse.FromString(data)


class ProxyClient:
    """One simulated sidecar: subscribes to every type, ACKs every response, reconnects."""

    def __init__(
        self,
        spec: NodeSpec,
        *,
        target: str,
        ca: Path,
        on_response: Callable[[Response], None],
        on_stream: Callable[[StreamEvent], None],
        client: str = "grpcio",
        credentials: grpc.ChannelCredentials | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.spec = spec
        self.held: dict[str, str] = dict.fromkeys(TYPES, "")
        self._resources: dict[str, dict[str, str]] = {short: {} for short in TYPES}
        if client not in CLIENTS:
            raise ValueError(f"client {client!r}: expected one of {CLIENTS}")
        self._target = target
        self._ca = ca
        self._client = client
        self._credentials = credentials
        self._on_response = on_response
        self._on_stream = on_stream
        self._rng = rng or random.Random()
        self._received = 0  # responses on the current stream
        self._opened = False  # whether the current stream's subscriptions were written
        self._node = pb.Node(
            id=spec.id,
            workload=spec.workload,
            namespace=spec.namespace,
            labels=spec.labels,
            service_account=spec.service_account,
            sidecar_version="bench",
        )
        for registration in spec.registrations:
            self._node.registrations.add(
                service=registration.service, address=registration.address, port=registration.port
            )

    async def run(self) -> None:
        """Stay connected until cancelled."""
        attempt = 0
        while True:
            self._received = 0
            self._opened = False
            try:
                answered = await self._stream()
            except (grpc.aio.AioRpcError, sidecar_channel.RpcError) as error:
                phase = f"after {self._received} responses" if self._opened else "before open"
                message = f"{phase}: {error.details()}"
                if isinstance(error, grpc.aio.AioRpcError):
                    message += f" ({error.debug_error_string()})"
                self._on_stream(StreamEvent("error", error.code().name, message))
                answered = self._received > 0
            else:
                self._on_stream(StreamEvent("eof"))
            attempt = 0 if answered else attempt + 1
            delay = min(_BACKOFF_CAP, _BACKOFF_BASE * 2.0**attempt) * self._rng.uniform(0.5, 1.5)
            await asyncio.sleep(delay)

    async def _stream(self) -> bool:
        """One stream until the server ends it; whether any response arrived on it."""
        if self._client == "grpcio":
            credentials = self._credentials or channel_credentials(self._ca.read_bytes())
            async with grpc.aio.secure_channel(
                self._target, credentials, options=_CHANNEL_OPTIONS
            ) as channel:
                call = channel.stream_stream(
                    _METHOD,
                    request_serializer=pb.DeltaDiscoveryRequest.SerializeToString,
                    response_deserializer=_decode,
                )()
                return await self._exchange(call, grpc.aio.EOF)
        async with sidecar_channel.open_channel(self._target, self._ca) as sidecar:
            stream = sidecar.stream_stream(
                _METHOD,
                request_serializer=pb.DeltaDiscoveryRequest.SerializeToString,
                response_deserializer=_decode,
            )()
            try:
                return await self._exchange(stream, sidecar_channel.EOF)
            finally:
                stream.cancel()

    async def _exchange(self, call: Any, eof: object) -> bool:
        """Subscribe, then ACK every response until the server ends the stream."""
        answered = False
        for index, short in enumerate(TYPES):
            held = self._resources[short]
            request = pb.DeltaDiscoveryRequest(
                type_url=_URLS[short],
                resource_names_subscribe=[WILDCARD],
                initial_resource_versions=held,
                initial_resources_digest=self.held[short] if held else "",
            )
            if index == 0:
                request.node.CopyFrom(self._node)
            await call.write(request)
        self._opened = True
        self._on_stream(StreamEvent("open"))
        while True:
            message = await call.read()
            if message is eof:
                return answered
            received = time.monotonic()
            answered = True
            self._received += 1
            size, response = message
            reply, error = self._reply(response)
            await call.write(reply)
            short = SHORT_NAMES.get(response.type_url, response.type_url)
            self._on_response(
                Response(
                    type=short,
                    version=self.held.get(short, "") or "-",
                    bytes=size,
                    resources=len(response.resources) + len(response.removed_resources),
                    received=received,
                    acked=time.monotonic(),
                    error=error,
                )
            )

    def _reply(self, response: pb.DeltaDiscoveryResponse) -> tuple[pb.DeltaDiscoveryRequest, str]:
        """The ACK, or a NACK (keeping what is held) when a resource is not of the response's
        type; with the NACK's message."""
        short = SHORT_NAMES.get(response.type_url, "")
        wrong = [
            r.resource.type_url
            for r in response.resources
            if r.resource.type_url != response.type_url
        ]
        request = pb.DeltaDiscoveryRequest(
            type_url=response.type_url, response_nonce=response.nonce
        )
        error = ""
        if short and not wrong:
            held = self._resources[short]
            for resource in response.resources:
                held[resource.name] = resource.version
            for name in response.removed_resources:
                held.pop(name, None)
            self.held[short] = set_version(held)
        else:
            error = f"unexpected resource type {(wrong or [response.type_url])[0]}"
            request.error_detail.code = grpc.StatusCode.INVALID_ARGUMENT.value[0]
            request.error_detail.message = error
        return request, error
