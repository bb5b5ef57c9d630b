"""Errors of the sidecar."""

from __future__ import annotations


class ConfigError(Exception):
    """Config the sidecar cannot apply; its message becomes the NACK's error detail."""
