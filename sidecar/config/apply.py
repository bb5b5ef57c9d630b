"""Applying config responses to the running data plane.

Each type is decoded and checked completely before anything is swapped in, so a response either
applies whole or raises `ConfigError` (→ NACK) and changes nothing. Requests already routed keep
the objects they were routed with.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from google.protobuf.any_pb2 import Any as AnyPb
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message

from lightmesh import types
from lightmesh.v1 import config_pb2 as pb
from sidecar.cluster.balancers import Endpoint
from sidecar.cluster.cluster import Cluster
from sidecar.cluster.outlier import DEFAULT as DEFAULT_OUTLIER
from sidecar.cluster.outlier import OutlierConfig
from sidecar.errors import ConfigError
from sidecar.routing.destinations import Destinations, build_destinations
from sidecar.routing.table import RouteTable, compile_routes
from sidecar.security.inbound import InboundPolicy, decode

_KNOWN_LB = set(pb.LbPolicy.values())
_M = TypeVar("_M", bound=Message)


class DataPlane:
    """The config currently serving: route table and clusters (with endpoints)."""

    def __init__(
        self,
        *,
        max_regex_length: int = 1024,
        rng: random.Random | None = None,
        default_outlier: OutlierConfig | None = DEFAULT_OUTLIER,
    ) -> None:
        # Outlier detection of clusters without outlierDetection (None: none, and no
        # local-origin ejection in those with one either).
        self._default_outlier = default_outlier
        self.routes = RouteTable({})
        # Which intercepted connections are HTTP, raw TCP to a cluster, or passed through.
        self.destinations = Destinations()
        self._route_config = pb.RouteConfiguration()
        self.clusters: dict[str, Cluster] = {}
        self._endpoints: dict[str, tuple[Endpoint, ...]] = {}
        self._max_regex = max_regex_length
        self._rng = rng or random.Random()
        self._raw: dict[str, list[dict[str, Any]]] = {}
        self.inbound = InboundPolicy()
        # Called with each newly applied inbound policy (the sidecar feeds the trust bundle to
        # its TLS contexts).
        self.on_inbound: Callable[[InboundPolicy], None] = lambda policy: None

    def apply(self, type_url: str, resources: Sequence[AnyPb]) -> None:
        """Apply the complete set of resources of one type, or raise ConfigError."""
        if type_url == types.CLUSTER:
            clusters = [_unpack(r, pb.Cluster) for r in resources]
            self._apply_clusters(clusters)
            decoded: list[Message] = list(clusters)
        elif type_url == types.ENDPOINTS:
            assignments = [_unpack(r, pb.ClusterLoadAssignment) for r in resources]
            self._apply_endpoints(assignments)
            decoded = list(assignments)
        elif type_url == types.ROUTES:
            configs = [_unpack(r, pb.RouteConfiguration) for r in resources]
            if len(configs) != 1:
                raise ConfigError(f"expected one RouteConfiguration, got {len(configs)}")
            self.routes = compile_routes(configs[0], max_regex=self._max_regex)
            self._route_config = configs[0]
            self._update_destinations()
            decoded = list(configs)
        elif type_url == types.INBOUND:
            inbound = [_unpack(r, pb.InboundPolicy) for r in resources]
            if len(inbound) != 1:
                raise ConfigError(f"expected one InboundPolicy, got {len(inbound)}")
            self.inbound = decode(inbound[0])
            self.on_inbound(self.inbound)
            decoded = list(inbound)
        else:
            raise ConfigError(f"unsupported resource type {type_url}")
        self._raw[type_url] = [MessageToDict(m) for m in decoded]

    def _apply_clusters(self, clusters: list[pb.Cluster]) -> None:
        for cluster in clusters:
            if cluster.lb_policy not in _KNOWN_LB:
                raise ConfigError(
                    f"cluster {cluster.name}: load balancer policy {cluster.lb_policy} is not "
                    "supported by this sidecar version"
                )
        new: dict[str, Cluster] = {}
        for config in clusters:
            state = Cluster(config, rng=self._rng, default_outlier=self._default_outlier)
            old = self.clusters.get(config.name)
            if old is not None:
                # Keeps in-flight counts, latency estimates, ejections, round-robin position.
                state.carry_over(old)
            else:
                state.set_endpoints(self._endpoints.get(config.name, ()))
            new[config.name] = state
        self.clusters = new

    def _apply_endpoints(self, assignments: list[pb.ClusterLoadAssignment]) -> None:
        endpoints = {
            a.cluster_name: tuple(
                Endpoint(address=e.address, port=e.port, workload=e.workload, weight=e.weight or 1)
                for e in a.endpoints
            )
            for a in assignments
        }
        for name, cluster in self.clusters.items():
            cluster.set_endpoints(endpoints.get(name, ()))
        self._endpoints = endpoints
        self._update_destinations()

    def _update_destinations(self) -> None:
        addresses = {name: [e.address for e in found] for name, found in self._endpoints.items()}
        self.destinations = build_destinations(self._route_config, addresses)

    def dump(self) -> dict[str, list[dict[str, Any]]]:
        """Applied resources by short type name, as JSON-ready mappings."""
        return {types.SHORT_NAMES[t]: v for t, v in self._raw.items()}


def _unpack(resource: AnyPb, message_type: type[_M]) -> _M:
    message = message_type()
    if not resource.Unpack(message):
        raise ConfigError(
            f"resource of type {resource.TypeName()} where {message_type.DESCRIPTOR.full_name} "
            "was expected"
        )
    return message
