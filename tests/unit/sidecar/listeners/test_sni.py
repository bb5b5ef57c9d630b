"""The SNI of real ClientHellos (made by Python's ssl), whole, in pieces, and malformed."""

from __future__ import annotations

import ssl

import pytest

from sidecar.listeners.sni import MAX_HELLO, NotTLS, read_hello


def client_hello(server_name: str | None) -> bytes:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=server_name)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def test_reads_the_server_name_lower_cased() -> None:
    hello = read_hello(client_hello("Shop.Example.COM"))
    assert hello is not None and hello.server_name == "shop.example.com"


def test_a_hello_without_sni_has_an_empty_name() -> None:
    hello = read_hello(client_hello(None))
    assert hello is not None and hello.server_name == ""


def test_more_bytes_are_asked_for_until_the_hello_is_whole() -> None:
    data = client_hello("admin.example.com")
    for cut in (1, 4, 5, 20, len(data) - 1):
        assert read_hello(data[:cut]) is None
    hello = read_hello(data)
    assert hello is not None and hello.server_name == "admin.example.com"


def test_a_hello_split_over_two_records_is_joined() -> None:
    data = client_hello("split.example.com")
    body = data[5:]
    half = len(body) // 2
    records = b"".join(
        b"\x16\x03\x01" + len(part).to_bytes(2, "big") + part for part in (body[:half], body[half:])
    )
    hello = read_hello(records)
    assert hello is not None and hello.server_name == "split.example.com"


def test_plaintext_and_garbage_are_not_tls() -> None:
    with pytest.raises(NotTLS):
        read_hello(b"GET / HTTP/1.1\r\n")
    with pytest.raises(NotTLS, match="record length"):
        read_hello(b"\x16\x03\x01\x00\x00")
    with pytest.raises(NotTLS, match="not a ClientHello"):
        read_hello(b"\x16\x03\x01\x00\x04\x02\x00\x00\x00")
    too_big = (MAX_HELLO + 1).to_bytes(3, "big")
    with pytest.raises(NotTLS, match="too large"):
        read_hello(b"\x16\x03\x01\x00\x04\x01" + too_big)
