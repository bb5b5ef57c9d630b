"""Sidecar injection: one pod template, applied by the admission webhook and by `lightmesh inject`."""
