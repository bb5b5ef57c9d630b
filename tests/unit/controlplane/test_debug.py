"""The debug server's pure helpers: the graph window parameter, and a dashboard page that loads
nothing from elsewhere."""

import re

import pytest

from controlplane.debug import dashboard_page, parse_window


def test_window_takes_seconds_or_a_unit_and_names_itself_when_wrong():
    assert parse_window(None) == 60.0
    assert parse_window("30") == 30.0
    assert parse_window("30s") == 30.0
    assert parse_window("5m") == 300.0
    for bad in ("abc", "0", "-5", "16m"):
        with pytest.raises(ValueError, match="window"):
            parse_window(bad)


def test_the_dashboard_page_is_self_contained():
    page = dashboard_page().decode()
    # Scripts and styles inline, nothing fetched from another origin (works with no network).
    assert not re.search(r"<script[^>]+src=", page)
    assert not re.search(r"<link[^>]+href=", page)
    urls = set(re.findall(r"https?://[^\s\"'<>)]+", page))
    assert urls == {"http://www.w3.org/2000/svg"}  # the SVG namespace, never fetched
    assert "fetch(`/debug/graph?window=" in page  # same origin
