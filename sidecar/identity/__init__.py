"""Workload identity: key generation, certificate requests, rotation, TLS contexts."""
