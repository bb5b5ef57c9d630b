"""Telemetry of the sidecar: request metrics aggregated locally, exposed to Prometheus."""
