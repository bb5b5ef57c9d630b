"""Request-smuggling corpus: raw requests a proxy must refuse (400 + close) without forwarding.

Each case is (name, family, raw bytes). Families: CL.TE and TE.CL (both framings present),
TE.TE (an obfuscated Transfer-Encoding one side may not recognise), CL (malformed or repeated
Content-Length), CHUNK (invalid chunked body arriving with its head), HEAD (line and field syntax:
bare CR/LF, obs-fold, whitespace before the colon, NUL/CTL, repeated Host, odd versions), and
UPGRADE (a body after an Upgrade head, CONNECT). Every raw request arrives in one write, so the
fault is seen before the head could be forwarded.
"""

from __future__ import annotations

from typing import NamedTuple


class Case(NamedTuple):
    """One raw request and where it comes from."""

    name: str
    family: str
    raw: bytes


_POST = b"POST /submit HTTP/1.1\r\nHost: echo\r\n"
_SMUGGLED = b"GET /admin HTTP/1.1\r\nHost: echo\r\n\r\n"


def _post(fields: bytes, body: bytes = b"") -> bytes:
    return _POST + fields + b"\r\n" + body


CORPUS: tuple[Case, ...] = (
    # --- CL.TE / TE.CL: both framings in one head -----------------------------------------------
    Case(
        "cl-te",
        "CL.TE",
        _post(b"Content-Length: 6\r\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\nG"),
    ),
    Case(
        "te-cl",
        "TE.CL",
        _post(
            b"Transfer-Encoding: chunked\r\nContent-Length: 4\r\n",
            b"%x\r\n%s\r\n0\r\n\r\n" % (len(_SMUGGLED), _SMUGGLED),
        ),
    ),
    Case(
        "cl-zero-te",
        "CL.TE",
        _post(b"Content-Length: 0\r\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\n"),
    ),
    Case(
        "cl-te-xchunked",
        "CL.TE",
        _post(b"Content-Length: 5\r\nTransfer-Encoding: xchunked\r\n", b"0\r\n\r\n"),
    ),
    Case(
        "te-in-trailer-cl",
        "TE.CL",
        _post(b"Transfer-Encoding: chunked\r\n", b"0\r\nContent-Length: 5\r\n\r\n"),
    ),
    # --- TE.TE: obfuscated Transfer-Encoding ------------------------------------------------------
    Case("te-xchunked", "TE.TE", _post(b"Transfer-Encoding: xchunked\r\n", b"0\r\n\r\n")),
    Case("te-chunked-gzip", "TE.TE", _post(b"Transfer-Encoding: chunked, gzip\r\n", b"0\r\n\r\n")),
    Case(
        "te-chunked-upper-gzip",
        "TE.TE",
        _post(b"Transfer-Encoding: CHUNKED, gzip\r\n", b"0\r\n\r\n"),
    ),
    Case(
        "te-chunked-chunked",
        "TE.TE",
        _post(b"Transfer-Encoding: chunked, chunked\r\n", b"0\r\n\r\n"),
    ),
    Case("te-identity", "TE.TE", _post(b"Transfer-Encoding: identity\r\n", b"0\r\n\r\n")),
    Case(
        "te-identity-chunked",
        "TE.TE",
        _post(b"Transfer-Encoding: identity, chunked\r\n", b"0\r\n\r\n"),
    ),
    Case(
        "te-two-fields-chunked-identity",
        "TE.TE",
        _post(b"Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n", b"0\r\n\r\n"),
    ),
    Case("te-empty", "TE.TE", _post(b"Transfer-Encoding: \r\n", b"0\r\n\r\n")),
    Case("te-leading-comma", "TE.TE", _post(b"Transfer-Encoding: ,chunked\r\n", b"0\r\n\r\n")),
    Case("te-quoted", "TE.TE", _post(b'Transfer-Encoding: "chunked"\r\n', b"0\r\n\r\n")),
    Case("te-space-inside", "TE.TE", _post(b"Transfer-Encoding: chun ked\r\n", b"0\r\n\r\n")),
    Case("te-space-before-colon", "TE.TE", _post(b"Transfer-Encoding : chunked\r\n", b"0\r\n\r\n")),
    Case("te-tab-before-colon", "TE.TE", _post(b"Transfer-Encoding\t: chunked\r\n", b"0\r\n\r\n")),
    Case("te-vtab-prefix", "TE.TE", _post(b"Transfer-Encoding: \x0bchunked\r\n", b"0\r\n\r\n")),
    Case("te-formfeed-suffix", "TE.TE", _post(b"Transfer-Encoding: chunked\x0c\r\n", b"0\r\n\r\n")),
    Case("te-nul-suffix", "TE.TE", _post(b"Transfer-Encoding: chunked\x00\r\n", b"0\r\n\r\n")),
    Case("te-obs-fold", "TE.TE", _post(b"Transfer-Encoding:\r\n chunked\r\n", b"0\r\n\r\n")),
    Case(
        "te-obs-fold-tab",
        "TE.TE",
        _post(b"Transfer-Encoding: gzip,\r\n\tchunked\r\n", b"0\r\n\r\n"),
    ),
    Case(
        "te-underscore-name",
        "TE.TE",
        _post(b"Transfer_Encoding: chunked\r\nContent-Length: 5\r\n", b"0\r\n\r\n"),
    ),
    Case(
        "te-http10",
        "TE.TE",
        b"POST /submit HTTP/1.0\r\nHost: echo\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    ),
    # --- CL: malformed or repeated Content-Length ------------------------------------------------
    Case(
        "cl-duplicate-differing",
        "CL",
        _post(b"Content-Length: 5\r\nContent-Length: 6\r\n", b"hello!"),
    ),
    Case("cl-duplicate-same", "CL", _post(b"Content-Length: 5\r\nContent-Length: 5\r\n", b"hello")),
    Case("cl-list", "CL", _post(b"Content-Length: 5, 5\r\n", b"hello")),
    Case("cl-plus", "CL", _post(b"Content-Length: +5\r\n", b"hello")),
    Case("cl-negative", "CL", _post(b"Content-Length: -1\r\n", b"hello")),
    Case("cl-hex", "CL", _post(b"Content-Length: 0x5\r\n", b"hello")),
    Case("cl-space-inside", "CL", _post(b"Content-Length: 1 0\r\n", b"hello")),
    Case("cl-overflow", "CL", _post(b"Content-Length: 99999999999999999999999\r\n", b"hello")),
    Case("cl-space-before-colon", "CL", _post(b"Content-Length : 5\r\n", b"hello")),
    Case(
        "cl-underscore-name",
        "CL",
        _post(b"Content_Length: 5\r\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\n"),
    ),
    # --- CHUNK: invalid chunked body ---------------------------------------------------------------
    Case(
        "chunk-size-not-hex",
        "CHUNK",
        _post(b"Transfer-Encoding: chunked\r\n", b"zz\r\nabc\r\n0\r\n\r\n"),
    ),
    Case(
        "chunk-size-0x",
        "CHUNK",
        _post(b"Transfer-Encoding: chunked\r\n", b"0x3\r\nabc\r\n0\r\n\r\n"),
    ),
    Case(
        "chunk-size-negative",
        "CHUNK",
        _post(b"Transfer-Encoding: chunked\r\n", b"-3\r\nabc\r\n0\r\n\r\n"),
    ),
    Case(
        "chunk-size-overflow",
        "CHUNK",
        _post(b"Transfer-Encoding: chunked\r\n", b"10000000000000003\r\nabc\r\n0\r\n\r\n"),
    ),
    Case(
        "chunk-size-trailing-space",
        "CHUNK",
        _post(b"Transfer-Encoding: chunked\r\n", b"3 \r\nabc\r\n0\r\n\r\n"),
    ),
    Case(
        "chunk-size-leading-space",
        "CHUNK",
        _post(b"Transfer-Encoding: chunked\r\n", b" 3\r\nabc\r\n0\r\n\r\n"),
    ),
    Case(
        "chunk-data-overrun",
        "CHUNK",
        _post(b"Transfer-Encoding: chunked\r\n", b"3\r\nabcdef\r\n0\r\n\r\n"),
    ),
    Case("chunk-bare-lf", "CHUNK", _post(b"Transfer-Encoding: chunked\r\n", b"3\nabc\n0\n\n")),
    Case(
        "chunk-ext-bare-lf",
        "CHUNK",
        _post(b"Transfer-Encoding: chunked\r\n", b"3;\nabc\r\n0\r\n\r\n"),
    ),
    # --- HEAD: line and field syntax -----------------------------------------------------------------
    Case("bare-lf-request-line", "HEAD", b"GET / HTTP/1.1\nHost: echo\n\n"),
    Case("bare-lf-header", "HEAD", b"GET / HTTP/1.1\r\nHost: echo\nX-A: b\r\n\r\n"),
    Case("bare-cr-header", "HEAD", b"GET / HTTP/1.1\r\nHost: echo\rX-A: b\r\n\r\n"),
    Case("obs-fold", "HEAD", b"GET / HTTP/1.1\r\nHost: echo\r\nX-A: a\r\n b\r\n\r\n"),
    Case("first-field-folded", "HEAD", b"GET / HTTP/1.1\r\n Host: echo\r\n\r\n"),
    Case("nul-in-value", "HEAD", b"GET / HTTP/1.1\r\nHost: echo\r\nX-A: a\x00b\r\n\r\n"),
    Case("nul-in-name", "HEAD", b"GET / HTTP/1.1\r\nHost: echo\r\nX\x00A: b\r\n\r\n"),
    Case("ctl-in-value", "HEAD", b"GET / HTTP/1.1\r\nHost: echo\r\nX-A: a\x01b\r\n\r\n"),
    Case("space-before-colon", "HEAD", b"GET / HTTP/1.1\r\nHost : echo\r\n\r\n"),
    Case("duplicate-host", "HEAD", b"GET / HTTP/1.1\r\nHost: echo\r\nHost: admin\r\n\r\n"),
    Case("http-2-0", "HEAD", b"GET / HTTP/2.0\r\nHost: echo\r\n\r\n"),
    Case("http-0-9", "HEAD", b"GET /\r\n\r\n"),
    Case("space-in-target", "HEAD", b"GET /a b HTTP/1.1\r\nHost: echo\r\n\r\n"),
    # --- UPGRADE: bodies llhttp would not parse -------------------------------------------------------
    Case(
        "upgrade-with-content-length",
        "UPGRADE",
        b"POST / HTTP/1.1\r\nHost: echo\r\nConnection: upgrade\r\nUpgrade: h2c\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(_SMUGGLED), _SMUGGLED),
    ),
    Case(
        "upgrade-with-chunked",
        "UPGRADE",
        b"POST / HTTP/1.1\r\nHost: echo\r\nConnection: upgrade\r\nUpgrade: websocket\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(_SMUGGLED), _SMUGGLED),
    ),
    Case("connect", "UPGRADE", b"CONNECT echo:80 HTTP/1.1\r\nHost: echo:80\r\n\r\n"),
)
