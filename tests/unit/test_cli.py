"""The proxy-status table."""

from lightmesh.cli import format_proxy_status


def test_proxy_status_shows_each_state_and_the_nack_reason() -> None:
    proxies = [
        {
            "id": "frontend-ab12.default",
            "types": {
                "CLUSTERS": {"state": "SYNCED", "acked": "0123456789abcdef"},
                "ENDPOINTS": {"state": "STALE", "pending_seconds": 1.25},
                "ROUTES": {
                    "state": "NACKED",
                    "nacked_version": "fedcba9876543210",
                    "nack": "bad regex",
                },
            },
        }
    ]
    lines = format_proxy_status(proxies).splitlines()
    assert lines[0].split() == ["NAME", "CLUSTERS", "ENDPOINTS", "ROUTES"]
    assert lines[1].split() == [
        "frontend-ab12.default",
        "SYNCED",
        "(01234567)",
        "STALE",
        "(1.2s)",
        "NACKED",
        "(fedcba98)",
    ]
    assert lines[-1].strip() == "frontend-ab12.default ROUTES: bad regex"
