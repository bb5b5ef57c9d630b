"""The gRPC channel to the control plane: TLS verified against the bundle the sidecar was started
with, or plaintext when it was given none (local debugging)."""

from __future__ import annotations

from pathlib import Path

import grpc


def open_channel(target: str, ca_bundle: Path | None) -> grpc.aio.Channel:
    """A new channel to `target`; the caller closes it."""
    if ca_bundle is None:
        return grpc.aio.insecure_channel(target)
    credentials = grpc.ssl_channel_credentials(root_certificates=ca_bundle.read_bytes())
    return grpc.aio.secure_channel(target, credentials)
