"""`--jwks-refresh`: the control plane's JWKS refresh interval, defaulting to Istio's 20 min."""

import argparse
from pathlib import Path

import pytest

from lightmeshctl.flags.controlplane import add_arguments, from_arguments


def parse(tmp_path: Path, *flags: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(["--config-dir", str(tmp_path), *flags])


def test_jwks_refresh_default_and_bounds(tmp_path: Path) -> None:
    assert from_arguments(parse(tmp_path)).jwks_refresh == 1200.0
    assert from_arguments(parse(tmp_path, "--jwks-refresh", "30")).jwks_refresh == 30.0
    with pytest.raises(ValueError, match=r"--jwks-refresh 0\.0: at least 1 second"):
        from_arguments(parse(tmp_path, "--jwks-refresh", "0"))
