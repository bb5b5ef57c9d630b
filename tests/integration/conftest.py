"""Fixtures for tests that run the mesh as real processes on loopback."""

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from lightmeshctl.demo.mesh import LocalMesh

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "demo"


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    """A private copy of the demo resources, free to edit."""
    target = tmp_path / "config"
    shutil.copytree(EXAMPLES, target)
    return target


@pytest.fixture
def mesh(tmp_path: Path, config_dir: Path, request: pytest.FixtureRequest) -> Iterator[LocalMesh]:
    """A local mesh that stops every process it started; prints their logs when the test failed."""
    with LocalMesh(config_dir=config_dir, work_dir=tmp_path / "mesh") as local:
        yield local
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            for process in local._processes:
                print(f"--- {process.name} ---\n{process.tail(30)}")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> object:
    report = yield
    setattr(item, f"rep_{report.when}", report)  # type: ignore[attr-defined]
    return report
