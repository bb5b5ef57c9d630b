"""The sidecar's side of InboundPolicy: decoding (NACK of unknown values), the inbound router's
authorization decision and x-forwarded-client-cert."""

from __future__ import annotations

import pytest
from google.protobuf.any_pb2 import Any as AnyPb

from lightmesh import types
from lightmesh.v1 import config_pb2 as pb
from sidecar.config.apply import DataPlane
from sidecar.contract import Forward, LocalReply, RequestHead
from sidecar.errors import ConfigError
from sidecar.http.http1 import RequestParser, RequestStart
from sidecar.http.messages import forwarded_head
from sidecar.routing.router import InboundRouter

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
    allowed_head = head("/items", identity=FRONTEND)
    assert isinstance(router.resolve(allowed_head), Forward)
    assert allowed_head.headers == [
        (b"x-forwarded-client-cert", f"By=spiffe://us;URI={FRONTEND}".encode())
    ]


def test_a_client_written_xfcc_never_reaches_the_router_and_plaintext_gets_none() -> None:
    (start, *_) = RequestParser().feed(
        b"GET / HTTP/1.1\r\nHost: catalog\r\nX-Forwarded-Client-Cert: URI=spiffe://forged\r\n"
        b"A: 1\r\n\r\n"
    )
    assert isinstance(start, RequestStart)
    forwarded = forwarded_head(start, peer="127.0.0.1")
    router = InboundRouter(app_host="127.0.0.1", app_port=8080, dataplane=DataPlane())
    assert isinstance(router.resolve(forwarded), Forward)
    assert b"x-forwarded-client-cert" not in {name for name, _ in forwarded.headers}
    assert forwarded.header(b"a") == b"1"
