import re

import pytest

from lightmesh.durations import PATTERN, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"), [("500ms", 0.5), ("1.5s", 1.5), ("2m", 120), ("1h", 3600)]
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "5", "1.s", "-1s", "1d", "1 s", "s", "1.5.0s"])
def test_what_the_schema_refuses_the_parser_refuses(text: str) -> None:
    """One grammar: the CRD pattern and the parser agree on every input."""
    assert re.match(PATTERN, text) is None
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(text)
