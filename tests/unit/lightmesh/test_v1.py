"""Generated files are never edited by hand: regenerating them must reproduce what is committed."""

import os
import subprocess
import sys
from pathlib import Path

import yaml

from controlplane.schema import ISTIO_GROUPS, KINDS
from scripts.gen_crds import render

ROOT = Path(__file__).resolve().parents[3]


def test_protobuf_code_matches_the_proto_files(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHON": sys.executable}
    subprocess.run(["bash", str(ROOT / "scripts/gen_proto.sh"), str(tmp_path)], check=True, env=env)
    generated = sorted(p.name for p in (tmp_path / "lightmesh/v1").iterdir())
    committed = sorted(
        p.name
        for p in (ROOT / "lightmesh/v1").iterdir()
        if p.suffix in (".py", ".pyi") and p.name != "__init__.py"
    )
    assert generated == committed
    for name in generated:
        assert (tmp_path / "lightmesh/v1" / name).read_text() == (
            ROOT / "lightmesh/v1" / name
        ).read_text(), f"lightmesh/v1/{name} is stale: run `make proto`"


def test_crds_match_the_schema_module() -> None:
    for kind, (plural, _, _) in KINDS.items():
        path = ROOT / "crds" / f"{plural}.yaml"
        assert path.read_text() == render(kind), f"{path} is stale: run `make crds`"
        crd = yaml.safe_load(path.read_text())
        assert crd["spec"]["names"]["kind"] == kind
        istio = ROOT / "crds" / "istio" / f"{plural}.yaml"
        if kind not in ISTIO_GROUPS:  # ours alone (HTTPLocalRateLimitPolicy)
            assert not istio.exists(), f"{istio}: {kind} has no Istio group"
            continue
        assert istio.read_text() == render(kind, istio=True), f"{istio} is stale: run `make crds`"
