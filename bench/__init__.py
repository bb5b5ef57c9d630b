"""Benchmarks of lightmesh; each prints its figures and the command that produced them."""
