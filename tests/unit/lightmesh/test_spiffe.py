from lightmesh.spiffe import namespace_of, peer_identity, principal_of, spiffe_id


class _Peer:
    def __init__(self, cert: dict[str, object] | None) -> None:
        self._cert = cert

    def getpeercert(self) -> dict[str, object] | None:
        return self._cert


def test_an_id_its_principal_and_namespace() -> None:
    identity = spiffe_id("cluster.local", "shop", "frontend")
    assert identity == "spiffe://cluster.local/ns/shop/sa/frontend"
    assert principal_of(identity) == "cluster.local/ns/shop/sa/frontend"
    assert namespace_of(principal_of(identity)) == "shop"
    assert namespace_of("cluster.local/frontend") == ""


def test_peer_identity_is_the_spiffe_uri_san_only() -> None:
    sans = (("DNS", "catalog"), ("URI", "https://x"), ("URI", "spiffe://td/ns/a/sa/b"))
    assert peer_identity(_Peer({"subjectAltName": sans})) == "spiffe://td/ns/a/sa/b"
    assert peer_identity(_Peer({"subjectAltName": (("DNS", "catalog"),)})) == ""
    assert peer_identity(_Peer(None)) == ""
    assert peer_identity(None) == ""
