"""Applying config responses to the running data plane, resource by resource.

A delta response (resources of one type to add or replace, names to remove) is decoded and checked
completely before anything is swapped in, so it applies whole or raises `ConfigError` (→ NACK) and
changes nothing. Only what changed is rebuilt: the clusters named, the endpoints of the clusters
named, the virtual hosts named (the route table is reassembled from the compiled hosts). Requests
already routed keep the objects they were routed with.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
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
from sidecar.routing.gateway import CompiledListener, compile_listener
from sidecar.routing.table import (
    CompiledHost,
    RouteTable,
    compile_host,
    route_namer,
    route_table,
)
from sidecar.security.inbound import InboundPolicy, decode

_KNOWN_LB = set(pb.LbPolicy.values())
_M = TypeVar("_M", bound=Message)


# (address, port, TLS server name): what upstream connections are pooled by.
UpstreamKey = tuple[str, int, str]


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
        self.clusters: dict[str, Cluster] = {}
        self._endpoints: dict[str, tuple[Endpoint, ...]] = {}
        self._vhosts: dict[str, pb.VirtualHost] = {}
        self._compiled: dict[str, CompiledHost] = {}
        self._max_regex = max_regex_length
        self._rng = rng or random.Random()
        self._raw: dict[str, dict[str, Message]] = {}
        self.inbound = InboundPolicy()
        # Called with each newly applied inbound policy (the sidecar feeds the trust bundle to
        # its TLS contexts).
        self.on_inbound: Callable[[InboundPolicy], None] = lambda policy: None
        # An ingress gateway's ports, by listener name; called with all of them on each change.
        self.gateway: dict[str, CompiledListener] = {}
        self.on_gateway: Callable[[Mapping[str, CompiledListener]], None] = lambda ports: None
        # Called when a change of clusters or endpoints left upstreams no cluster has any more,
        # with those: the sidecar sends GOAWAY on its pooled HTTP/2 connections to them (and
        # only to them: connections passed through to non-mesh addresses are not the config's).
        # None: nobody listens.
        self.on_upstreams: Callable[[set[UpstreamKey]], object] | None = None
        self._upstreams: set[UpstreamKey] = set()

    def apply(self, type_url: str, resources: Sequence[AnyPb]) -> None:
        """Make the resources of one type exactly `resources` (all of them), or raise
        ConfigError. Names come from the resources themselves."""
        decoded = [(_name(type_url, r), r) for r in resources]
        held = self._raw.get(type_url, {})
        new = {name for name, _ in decoded}
        self.apply_delta(type_url, decoded, [n for n in held if n not in new])

    def apply_delta(
        self, type_url: str, updated: Sequence[tuple[str, AnyPb]], removed: Iterable[str]
    ) -> None:
        """Add or replace `updated` (name, resource) and drop `removed`, or raise ConfigError."""
        removed = [n for n in removed if n not in {name for name, _ in updated}]
        decoded: dict[str, Message]
        if type_url == types.CLUSTER:
            clusters = {name: _unpack(r, pb.Cluster) for name, r in updated}
            self._apply_clusters(clusters, removed)
            decoded = dict(clusters)
            self._upstreams_changed()
        elif type_url == types.ENDPOINTS:
            assignments = {name: _unpack(r, pb.ClusterLoadAssignment) for name, r in updated}
            self._apply_endpoints(assignments, removed)
            decoded = dict(assignments)
            self._upstreams_changed()
        elif type_url == types.ROUTES:
            vhosts = {name: _unpack(r, pb.VirtualHost) for name, r in updated}
            self._apply_routes(vhosts, removed)
            decoded = dict(vhosts)
        elif type_url == types.INBOUND:
            policies = {name: _unpack(r, pb.InboundPolicy) for name, r in updated}
            if set(policies) - {types.INBOUND_NAME}:
                raise ConfigError(f"unexpected InboundPolicy names {sorted(policies)}")
            decoded = dict(policies)
            policy = policies.get(types.INBOUND_NAME)
            if policy is not None:
                self.inbound = decode(policy)
                hosts = policy.rate_limit.inbound_hosts
                if hosts:
                    self.inbound = dataclasses.replace(
                        self.inbound, route_of=route_namer(hosts, max_regex=self._max_regex)
                    )
            elif types.INBOUND_NAME in removed:
                self.inbound = InboundPolicy()
            self.on_inbound(self.inbound)
        elif type_url == types.GATEWAY:
            listeners = {name: _unpack(r, pb.GatewayListener) for name, r in updated}
            compiled = {
                name: compile_listener(listener, max_regex=self._max_regex)
                for name, listener in listeners.items()
            }
            ports = {**self.gateway, **compiled}
            for name in removed:
                ports.pop(name, None)
            seen: dict[int, str] = {}
            for name, port in ports.items():
                if port.port in seen:
                    raise ConfigError(f"gateway listeners {seen[port.port]} and {name}: one port")
                seen[port.port] = name
            self.gateway = ports
            decoded = dict(listeners)
            self.on_gateway(ports)
        else:
            raise ConfigError(f"unsupported resource type {type_url}")
        raw = dict(self._raw.get(type_url, {}))
        raw.update(decoded)
        for name in removed:
            raw.pop(name, None)
        self._raw[type_url] = raw

    def _apply_clusters(self, configs: Mapping[str, pb.Cluster], removed: Sequence[str]) -> None:
        for config in configs.values():
            if config.lb_policy not in _KNOWN_LB:
                raise ConfigError(
                    f"cluster {config.name}: load balancer policy {config.lb_policy} is not "
                    "supported by this sidecar version"
                )
        new = dict(self.clusters)
        for name in removed:
            new.pop(name, None)
        for name, config in configs.items():
            state = Cluster(config, rng=self._rng, default_outlier=self._default_outlier)
            old = self.clusters.get(name)
            if old is not None:
                # Keeps in-flight counts, latency estimates, ejections, round-robin position.
                state.carry_over(old)
            else:
                state.set_endpoints(self._endpoints.get(name, ()))
            new[name] = state
        self.clusters = new

    def _apply_endpoints(
        self, assignments: Mapping[str, pb.ClusterLoadAssignment], removed: Sequence[str]
    ) -> None:
        endpoints = dict(self._endpoints)
        for name in removed:
            endpoints.pop(name, None)
        for name, assignment in assignments.items():
            endpoints[name] = tuple(
                Endpoint(address=e.address, port=e.port, workload=e.workload, weight=e.weight or 1)
                for e in assignment.endpoints
            )
        for name in [*assignments, *removed]:
            cluster = self.clusters.get(name)
            if cluster is not None:
                cluster.set_endpoints(endpoints.get(name, ()))
        self._endpoints = endpoints
        self._update_destinations()

    def _apply_routes(self, vhosts: Mapping[str, pb.VirtualHost], removed: Sequence[str]) -> None:
        compiled = {
            name: compile_host(vhost, max_regex=self._max_regex) for name, vhost in vhosts.items()
        }
        hosts = dict(self._compiled)
        sources = dict(self._vhosts)
        for name in removed:
            hosts.pop(name, None)
            sources.pop(name, None)
        hosts.update(compiled)
        sources.update(vhosts)
        self.routes = route_table((sources[n], hosts[n]) for n in sorted(hosts))
        self._compiled, self._vhosts = hosts, sources
        self._update_destinations()

    def upstream_keys(self) -> set[UpstreamKey]:
        """(address, port, TLS server name) of every endpoint of every cluster: the upstream
        connections the config has a use for."""
        return {
            (e.address, e.port, cluster.tls_server_name)
            for name, cluster in self.clusters.items()
            for e in self._endpoints.get(name, ())
        }

    def _upstreams_changed(self) -> None:
        # O(endpoints), as `_update_destinations` is on every endpoints change; tracked with
        # nobody listening too, so a listener set later learns of every removal.
        now = self.upstream_keys()
        gone, self._upstreams = self._upstreams - now, now
        if gone and self.on_upstreams is not None:
            self.on_upstreams(gone)

    def _update_destinations(self) -> None:
        addresses = {name: [e.address for e in found] for name, found in self._endpoints.items()}
        self.destinations = build_destinations(self._vhosts.values(), addresses)

    def dump(self) -> dict[str, list[dict[str, Any]]]:
        """Applied resources by short type name, as JSON-ready mappings."""
        return {
            types.SHORT_NAMES[t]: [MessageToDict(_redacted(held[n])) for n in sorted(held)]
            for t, held in self._raw.items()
        }


def _redacted(message: Message) -> Message:
    """A gateway listener without its private keys (config dumps never show key material)."""
    if not isinstance(message, pb.GatewayListener) or not any(
        s.tls.private_key_pem for s in message.servers
    ):
        return message
    copy = pb.GatewayListener()
    copy.CopyFrom(message)
    for server in copy.servers:
        if server.tls.private_key_pem:
            server.tls.private_key_pem = "(redacted)"
    return copy


def _name(type_url: str, resource: AnyPb) -> str:
    """The name of a resource from its content (for state-of-the-world `apply`)."""
    if type_url == types.CLUSTER:
        return _unpack(resource, pb.Cluster).name
    if type_url == types.ENDPOINTS:
        return _unpack(resource, pb.ClusterLoadAssignment).cluster_name
    if type_url == types.ROUTES:
        return _unpack(resource, pb.VirtualHost).name
    if type_url == types.GATEWAY:
        return _unpack(resource, pb.GatewayListener).name
    return types.INBOUND_NAME


def _unpack(resource: AnyPb, message_type: type[_M]) -> _M:
    message = message_type()
    if not resource.Unpack(message):
        raise ConfigError(
            f"resource of type {resource.TypeName()} where {message_type.DESCRIPTOR.full_name} "
            "was expected"
        )
    return message
