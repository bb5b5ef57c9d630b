"""Interception tests run as root with `ip netns` and iptables; anywhere else they are skipped."""

import pytest

from tests.support.netns import unavailable


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    reason = ""
    for item in items:
        if item.get_closest_marker("netns") is None:
            continue
        reason = reason or unavailable() or "ok"
        if reason != "ok":
            item.add_marker(pytest.mark.skip(reason=reason))
