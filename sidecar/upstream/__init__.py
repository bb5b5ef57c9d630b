"""Upstream side: pooled connections to endpoints (plain or mutual TLS) and mirrored copies."""
