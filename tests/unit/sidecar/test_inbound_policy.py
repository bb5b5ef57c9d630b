"""The sidecar's side of InboundPolicy: decoding (NACK of unknown values), the inbound router's
authorization decision and x-forwarded-client-cert."""

from __future__ import annotations

import pytest
from google.protobuf.any_pb2 import Any as AnyPb

from lightmesh import types
from lightmesh.v1 import config_pb2 as pb
from sidecar.config.apply import DataPlane
from sidecar.errors import ConfigError
from sidecar.proxy.decision import Forward, LocalReply, RequestHead
from sidecar.router import InboundRouter

FRONTEND = "spiffe://cluster.local/ns/shop/sa/frontend"


def packed(message: pb.InboundPolicy) -> list[AnyPb]:
    resource = AnyPb()
    resource.Pack(message)
    return [resource]


def dataplane(message: pb.InboundPolicy) -> DataPlane:
    plane = DataPlane()
    plane.apply(types.INBOUND, packed(message))
    return plane


def head(
    path: str = "/", *, identity: str = "", headers: list[tuple[bytes, bytes]] | None = None
) -> RequestHead:
    return RequestHead(
        method="GET",
        path=path,
        host="catalog",
        http_version="1.1",
        headers=list(headers or []),
        peer_identity=identity,
    )


def test_applied_policy_is_decoded_and_announced() -> None:
    seen = []
    plane = DataPlane()
    plane.on_inbound = seen.append
    plane.apply(
        types.INBOUND, packed(pb.InboundPolicy(mtls_mode=pb.MTLS_STRICT, trust_bundle="PEM"))
    )
    assert plane.inbound.mode == "STRICT"
    assert [p.trust_bundle for p in seen] == ["PEM"]
    assert plane.dump()["INBOUND"][0]["mtlsMode"] == "MTLS_STRICT"


def test_unknown_mode_or_action_is_refused_and_changes_nothing() -> None:
    plane = dataplane(pb.InboundPolicy(mtls_mode=pb.MTLS_STRICT))
    with pytest.raises(ConfigError, match="mTLS mode 7"):
        plane.apply(types.INBOUND, packed(pb.InboundPolicy(mtls_mode=7)))  # type: ignore[arg-type]
    newer = pb.InboundPolicy(policies=[pb.AuthorizationPolicy(name="shop/x", action=5)])  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="shop/x"):
        plane.apply(types.INBOUND, packed(newer))
    assert plane.inbound.mode == "STRICT"


def test_inbound_router_denies_with_rbac_and_names_the_verified_caller() -> None:
    plane = dataplane(
        pb.InboundPolicy(
            policies=[
                pb.AuthorizationPolicy(
                    name="shop/deny-admin",
                    action=pb.AUTHZ_DENY,
                    rules=[pb.AuthorizationRule(paths=["/admin*"])],
                ),
                pb.AuthorizationPolicy(
                    name="shop/allow-frontend",
                    action=pb.AUTHZ_ALLOW,
                    rules=[pb.AuthorizationRule(principals=["cluster.local/ns/shop/sa/frontend"])],
                ),
            ]
        )
    )
    router = InboundRouter(
        app_host="127.0.0.1", app_port=8080, dataplane=plane, own_identity=lambda: "spiffe://us"
    )
    denied = router.resolve(head("/admin/x", identity=FRONTEND))
    assert isinstance(denied, LocalReply) and (denied.status, denied.flags) == (403, "RBAC")
    plaintext = router.resolve(head("/items"))
    assert isinstance(plaintext, LocalReply) and plaintext.status == 403
    forged = [(b"x-forwarded-client-cert", b"URI=spiffe://forged")]
    allowed_head = head("/items", identity=FRONTEND, headers=forged)
    assert isinstance(router.resolve(allowed_head), Forward)
    assert allowed_head.headers == [
        (b"x-forwarded-client-cert", f"By=spiffe://us;URI={FRONTEND}".encode())
    ]


def test_without_policies_everything_goes_to_the_app_and_forged_xfcc_is_dropped() -> None:
    router = InboundRouter(app_host="127.0.0.1", app_port=8080, dataplane=DataPlane())
    forged = head("/", headers=[(b"x-forwarded-client-cert", b"URI=spiffe://forged"), (b"a", b"1")])
    assert isinstance(router.resolve(forged), Forward)
    assert forged.headers == [(b"a", b"1")]
