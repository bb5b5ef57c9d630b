"""Secure naming: the pool's check of an upstream's verified identity."""

from sidecar.upstream.pool import named_securely


def test_secure_naming_admits_only_the_expected_identities_unless_none_are_known() -> None:
    expected = frozenset({"spiffe://cluster.local/ns/shop/sa/catalog"})
    assert named_securely("spiffe://cluster.local/ns/shop/sa/catalog", expected)
    assert not named_securely("spiffe://cluster.local/ns/shop/sa/payments", expected)
    assert not named_securely("", expected)  # a certificate without a SPIFFE ID
    assert named_securely("spiffe://cluster.local/ns/shop/sa/payments", frozenset())
