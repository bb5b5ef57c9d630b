"""Type URLs of the config resources, in the order a push sends them (make before break).

Clusters first, then their endpoints, then the routes that point at them, so a sidecar never
receives a route to a cluster it has not heard of (the order Envoy's ADS documentation prescribes).
"""

from __future__ import annotations

_PREFIX = "type.googleapis.com/lightmesh.v1."

CLUSTER = _PREFIX + "Cluster"
ENDPOINTS = _PREFIX + "ClusterLoadAssignment"
ROUTES = _PREFIX + "RouteConfiguration"

PUSH_ORDER: tuple[str, ...] = (CLUSTER, ENDPOINTS, ROUTES)

SHORT_NAMES: dict[str, str] = {CLUSTER: "CLUSTERS", ENDPOINTS: "ENDPOINTS", ROUTES: "ROUTES"}
