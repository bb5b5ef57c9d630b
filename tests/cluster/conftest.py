"""Fixtures for the real single-node cluster tier (tests/support/cluster.py).

The binaries (``scripts/k8s/build.sh --cluster``) and images (``scripts/k8s/images.sh``) are built
before the first test, so a cold build is not charged to any test's timeout; the cluster starts
once per session and the mesh is installed into it once, with the README's commands.
"""

import sys
import time
from collections.abc import Iterator

import pytest

from tests.cluster.mesh import Mesh, install_mesh
from tests.support.cluster import (
    NodeCluster,
    build_cluster_binaries,
    build_images,
    unavailable,
)

TIMINGS: dict[str, float] = {}
_BUILT: dict[str, object] = {}


def _wanted(session: pytest.Session) -> bool:
    return any(item.get_closest_marker("cluster") for item in session.items)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    reason = ""
    for item in items:
        if item.get_closest_marker("cluster") is None:
            continue
        reason = reason or unavailable() or "ok"
        if reason != "ok":
            item.add_marker(pytest.mark.skip(reason=reason))


def pytest_collection_finish(session: pytest.Session) -> None:
    """Build binaries and images up front, with their progress on the terminal."""
    if not _wanted(session) or unavailable():
        return
    capture = session.config.pluginmanager.getplugin("capturemanager")
    context = capture.global_and_fixture_disabled() if capture is not None else None
    if context is not None:
        context.__enter__()
    try:
        started = time.monotonic()
        _BUILT["bin_dir"] = build_cluster_binaries(echo=sys.stderr)
        TIMINGS["binaries"] = time.monotonic() - started
        started = time.monotonic()
        _BUILT["images"] = build_images(echo=sys.stderr)
        TIMINGS["images"] = time.monotonic() - started
        print(
            f"cluster tier: binaries ready in {TIMINGS['binaries']:.1f}s, "
            f"images in {TIMINGS['images']:.1f}s",
            file=sys.stderr,
        )
    finally:
        if context is not None:
            context.__exit__(None, None, None)


@pytest.fixture(scope="session")
def cluster() -> Iterator[NodeCluster]:
    """The running cluster, stopped (every host change undone) at the end of the session."""
    bin_dir = _BUILT.get("bin_dir") or build_cluster_binaries()
    images = _BUILT.get("images") or build_images()
    assert isinstance(images, dict)
    with NodeCluster.start(bin_dir, images) as node:  # type: ignore[arg-type]
        TIMINGS.update(node.timings)
        print(
            f"cluster {node.state.cluster_id} up in {node.timings['up']:.1f}s "
            f"(images imported in {node.timings['images_import']:.1f}s)"
        )
        yield node


@pytest.fixture(scope="session")
def mesh(cluster: NodeCluster) -> Iterator[Mesh]:
    """crds/, deploy/, the shop and its routing, installed as the README says; shop Ready."""
    with install_mesh(cluster) as installed:
        TIMINGS.update(installed.timings)
        yield installed


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """On a failed cluster test, attach what a person would look at: pods, events, logs."""
    outcome = yield
    report = outcome.get_result()
    if not report.failed or item.get_closest_marker("cluster") is None:
        return
    funcargs = getattr(item, "funcargs", {})
    node = funcargs.get("cluster") or getattr(funcargs.get("mesh"), "cluster", None)
    if isinstance(node, NodeCluster):
        report.sections.append(("cluster diagnostics", diagnostics(node)))


def diagnostics(node: NodeCluster) -> str:
    """Pods, recent events, container logs of the mesh's namespaces and the node's logs."""
    parts = []
    for args in (
        ("get", "pods", "-A", "-o", "wide"),
        ("get", "events", "-A", "--sort-by=.lastTimestamp"),
    ):
        result = node.kubectl(*args, check=False)
        parts.append(f"$ kubectl {' '.join(args)}\n{result.stdout[-6000:]}{result.stderr}")
    for namespace in ("lightmesh-system", "shop"):
        result = node.kubectl("-n", namespace, "get", "pods", "-o", "name", check=False)
        for pod in result.stdout.split():
            logs = node.kubectl(
                "-n", namespace, "logs", pod, "--all-containers", "--prefix", "--tail=25",
                check=False,
            )  # fmt: skip
            parts.append(f"$ kubectl -n {namespace} logs {pod}\n{logs.stdout}{logs.stderr}")
    parts.append(node.log_tails(15))
    return "\n".join(parts)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if TIMINGS:
        figures = ", ".join(f"{name} {seconds:.1f}s" for name, seconds in TIMINGS.items())
        terminalreporter.write_line(f"cluster tier timings: {figures}")
