"""The one rescue: every typed error becomes its local reply; anything else is a 500."""

import pytest

from lightmesh.response_flags import ResponseFlag
from sidecar.contract import LocalReply
from sidecar.errors import (
    DownstreamTimeout,
    UpstreamConnectFailure,
    UpstreamProtocolError,
    UpstreamReset,
    UpstreamTimeout,
    UpstreamWrongIdentity,
    rescue,
)
from sidecar.http.http1 import BadTarget, HeadTooLarge, ParseError


@pytest.mark.parametrize(
    ("error", "status", "body", "flags"),
    [
        (UpstreamConnectFailure("refused"), 503, "upstream connect error", "UF"),
        (UpstreamWrongIdentity("other sa"), 503, "upstream connect error", "UF"),
        (UpstreamReset("closed"), 503, "upstream connection closed", "UC"),
        (UpstreamTimeout(), 504, "upstream request timeout", "UT"),
        (UpstreamProtocolError("junk"), 502, "upstream protocol error", "UPE"),
        (ParseError("bad"), 400, "bad request", "DPE"),
        (HeadTooLarge("big"), 431, "request header fields too large", "DPE"),
        (BadTarget("x"), 400, "bad request target", "DPE"),
        (DownstreamTimeout(), 408, "request timeout", "DT"),
        (RuntimeError("a resolver bug"), 500, "internal error", ""),
    ],
)
def test_rescue_maps_each_error_to_its_reply(
    error: Exception, status: int, body: str, flags: str
) -> None:
    assert rescue(error) == LocalReply(status=status, body=body, flags=flags)


def test_flags_noted_along_the_way_follow_the_errors_own() -> None:
    joined = rescue(UpstreamConnectFailure("refused"), also=ResponseFlag.URX)
    assert joined.flags == "UF,URX"
    assert rescue(RuntimeError(), also="DI").flags == "DI"
