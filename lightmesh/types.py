"""Type URLs of the config resources, in the order a push sends them (make before break).

Clusters first, then their endpoints, then the routes that point at them, so a sidecar never
receives a route to a cluster it has not heard of (the order Envoy's ADS documentation prescribes).
"""

from __future__ import annotations

_PREFIX = "type.googleapis.com/lightmesh.v1."

CLUSTER = _PREFIX + "Cluster"
ENDPOINTS = _PREFIX + "ClusterLoadAssignment"
# One VirtualHost resource per host (named by the host).
ROUTES = _PREFIX + "VirtualHost"
# Last: who may call this workload (mTLS mode, authorization) does not depend on routes, and
# sending it after them keeps the order of the older types unchanged.
INBOUND = _PREFIX + "InboundPolicy"
# The name of the one InboundPolicy resource each sidecar receives.
INBOUND_NAME = "inbound"
# After every other type (and the routes, clusters and policies it relies on): the listeners of an
# ingress gateway, one per port ("port-<number>"); sidecars hold an empty set of it.
GATEWAY = _PREFIX + "GatewayListener"
# Subscribing to this name means: every resource of the type in the sidecar's scope.
WILDCARD = "*"

PUSH_ORDER: tuple[str, ...] = (CLUSTER, ENDPOINTS, ROUTES, INBOUND, GATEWAY)

SHORT_NAMES: dict[str, str] = {
    CLUSTER: "CLUSTERS",
    ENDPOINTS: "ENDPOINTS",
    ROUTES: "ROUTES",
    INBOUND: "INBOUND",
    GATEWAY: "GATEWAY",
}
