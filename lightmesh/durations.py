"""Durations as resources write them ("500ms", "1.5s", "2m", "1h"): one grammar for the CRD schema
and the parser, so what the API server admits is exactly what the control plane reads. Pure."""

from __future__ import annotations

import re

# The OpenAPI `pattern` of every duration field (controlplane/schema.py, crds/).
PATTERN = r"^[0-9]+(\.[0-9]+)?(ms|s|m|h)$"
_MATCH = re.compile(PATTERN).match
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """Parse "500ms", "1.5s", "2m", "1h" into seconds; raise ValueError otherwise."""
    found = _MATCH(text)
    if found is None:
        raise ValueError(f"invalid duration {text!r}")
    unit = found.group(2)
    return float(text[: -len(unit)]) * _UNIT_SECONDS[unit]
