"""The bottom layer of lightmesh, shared by both daemons and importing neither: the protocol
(`lightmesh.v1`), type URLs, SPIFFE ids, durations, response flags, logs, the loop runner and
the interception rules."""

__version__ = "0.1.0"
