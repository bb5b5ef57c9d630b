"""Shared pieces of lightmesh: the protocol (`lightmesh.v1`), type URLs, logging and the CLI."""

__version__ = "0.1.0"
