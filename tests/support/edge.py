"""Clients of an ingress gateway as users run them: `requests` with the SNI of a name while
connecting to an IP, `openssl s_client` for what certificate is presented, and a bounded load
that runs while a credential is rotated."""

from __future__ import annotations

import socket
import ssl
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests
from requests.adapters import HTTPAdapter

from lightmeshctl.demo.mesh import wait_for


class SNIAdapter(HTTPAdapter):
    """`requests` to 127.0.0.1 with the SNI and certificate check of another name."""

    def __init__(self, name: str) -> None:
        self._name = name
        super().__init__()

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["server_hostname"] = self._name
        kwargs["assert_hostname"] = self._name
        super().init_poolmanager(*args, **kwargs)


def https_get(
    port: int, name: str, ca: Path, path: str = "/", *, headers: dict[str, str] | None = None,
    **kwargs: Any,
) -> requests.Response:  # fmt: skip
    """GET https://name:port/path dialled at 127.0.0.1, on a new connection."""
    with requests.Session() as session:
        session.mount("https://", SNIAdapter(name))
        return session.get(
            f"https://127.0.0.1:{port}{path}",
            headers={"Host": name, **(headers or {})},
            verify=str(ca),
            timeout=5,
            **kwargs,
        )


def https_status(port: int, name: str, ca: Path) -> int:
    """The status of GET / (0 when the request failed)."""
    try:
        return https_get(port, name, ca).status_code
    except requests.RequestException:
        return 0


def s_client(port: int, name: str, *extra: str, send: str = "") -> subprocess.CompletedProcess[str]:
    """`openssl s_client` to 127.0.0.1:port with SNI `name`."""
    return subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", name, *extra],
        input=send,
        capture_output=True,
        text=True,
        timeout=10,
    )


def presented_subject(port: int, name: str) -> str:
    """The subject of the certificate presented for SNI `name`."""
    out = s_client(port, name)
    for line in out.stdout.splitlines():
        if line.startswith("subject="):
            return line.removeprefix("subject=").strip()
    return f"(none: {out.stderr.strip()[-200:]})"


def presented_serial(port: int, name: str) -> str:
    """The serial number of the certificate presented for SNI `name` ("" when none)."""
    out = s_client(port, name).stdout
    pem = out[out.find("-----BEGIN CERTIFICATE-----") :]
    serial = subprocess.run(
        ["openssl", "x509", "-noout", "-serial"], input=pem, capture_output=True, text=True
    )
    return serial.stdout.strip()


def rotate_under_load(
    request: Callable[[], int], rotate: Callable[[], None], rotated: Callable[[], bool], *,
    most: int, after: int = 20,
) -> tuple[Counter[str], int]:  # fmt: skip
    """Run `request` in a loop (at most `most` times); after 10, `rotate`; once `rotated()` says
    the new credential is served, `after` more. Returns the outcomes (status codes, or the
    exception names) and how many requests ran after the rotation was seen."""
    outcomes: Counter[str] = Counter()
    started, switched = threading.Event(), threading.Event()
    done_after = 0

    def load() -> None:
        nonlocal done_after
        for count in range(most):
            try:
                outcomes[str(request())] += 1
            except requests.RequestException as error:
                outcomes[type(error).__name__] += 1
            if count == 10:
                started.set()
            if switched.is_set():
                done_after += 1
                if done_after >= after:
                    return

    runner = threading.Thread(target=load)
    runner.start()
    try:
        if not started.wait(60):
            raise AssertionError(f"the load did not start: {outcomes}")
        rotate()
        wait_for(rotated, timeout=30, what="the rotated credential is served")
        switched.set()
    finally:
        switched.set()
        runner.join(120)
    return outcomes, done_after


def handshake_in_pieces(port: int, name: str, ca: Path, *, piece: int = 7) -> str:
    """A TLS handshake whose ClientHello reaches the gateway `piece` bytes per segment (with
    Nagle off), then one request; returns the status line. Exercises the SNI read across reads."""
    context = ssl.create_default_context(cafile=str(ca))
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=name)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        first = True
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                data = outgoing.read()
                if first:
                    for at in range(0, len(data), piece):
                        sock.sendall(data[at : at + piece])
                        time.sleep(0.002)
                    first = False
                elif data:
                    sock.sendall(data)
                received = sock.recv(65536)
                if not received:
                    raise ConnectionError("closed during the handshake") from None
                incoming.write(received)
        tls.write(f"GET / HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n".encode())
        sock.sendall(outgoing.read())
        answer = b""
        while b"\r\n" not in answer:
            try:
                answer += tls.read(65536)
            except ssl.SSLWantReadError:
                received = sock.recv(65536)
                if not received:
                    break
                incoming.write(received)
        return answer.split(b"\r\n", 1)[0].decode()
