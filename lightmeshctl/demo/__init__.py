"""The shop demo: frontend → catalog (v1, v2) → customer, each behind its own sidecar, on loopback."""
