"""The store: the control plane's single, versioned world state, fed by any number of sources.

Sources replace their own slice (resources with the problems found, or services) and the store
notifies its listeners; the push stage reads an immutable `World` whenever it is ready. Pure apart
from calling the listeners it was given.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from controlplane.model import DestinationRule, Resource, ResourceKey, Service, VirtualService
from controlplane.security import AuthorizationPolicy, PeerAuthentication
from controlplane.validate import Problem
from controlplane.world import World

Listener = Callable[[int], None]


class Store:
    """Holds resources and services by source; every accepted change bumps the revision."""

    def __init__(self) -> None:
        self._resources: dict[str, Mapping[ResourceKey, Resource]] = {}
        self._problems: dict[str, tuple[Problem, ...]] = {}
        self._services: dict[str, Mapping[str, Service]] = {}
        self._revision = 0
        self._trust_bundle = ""
        self._trust_domain = "cluster.local"
        self._world = World()
        self._listeners: list[Listener] = []

    def subscribe(self, listener: Listener) -> None:
        """Call `listener(revision)` after every change."""
        self._listeners.append(listener)

    @property
    def revision(self) -> int:
        """Revision of the latest change."""
        return self._revision

    def replace_resources(
        self,
        source: str,
        resources: Mapping[ResourceKey, Resource],
        problems: tuple[Problem, ...] = (),
    ) -> None:
        """Replace everything `source` contributes; a no-op change does not bump the revision."""
        self._problems[source] = problems
        if self._resources.get(source) == resources:
            return
        self._resources[source] = dict(resources)
        self._changed()

    def replace_services(self, source: str, services: Mapping[str, Service]) -> None:
        """Replace the services (by FQDN) that `source` knows of."""
        if self._services.get(source) == services:
            return
        self._services[source] = dict(services)
        self._changed()

    def problems(self) -> list[Problem]:
        """Current problems of every source."""
        return [p for problems in self._problems.values() for p in problems]

    def set_trust_domain(self, domain: str) -> None:
        """The CA's trust domain (the SPIFFE IDs sidecars expect of their upstreams)."""
        if domain != self._trust_domain:
            self._trust_domain = domain
            self._changed()

    def set_trust_bundle(self, pem: str) -> None:
        """The CA's trust roots, sent to every sidecar (both roots while one is rotated out)."""
        if pem != self._trust_bundle:
            self._trust_bundle = pem
            self._changed()

    def world(self) -> World:
        """The current world (cached until the next change)."""
        if self._world.revision != self._revision:
            merged: dict[ResourceKey, Resource] = {}
            for source in sorted(self._resources):
                for key, resource in self._resources[source].items():
                    merged.setdefault(key, resource)
            ordered = [merged[k] for k in sorted(merged)]
            services: dict[str, Service] = {}
            for source in sorted(self._services):
                for host, service in self._services[source].items():
                    services.setdefault(host, service)
            self._world = World(
                revision=self._revision,
                virtual_services=tuple(r for r in ordered if isinstance(r, VirtualService)),
                destination_rules=tuple(r for r in ordered if isinstance(r, DestinationRule)),
                peer_authentications=tuple(r for r in ordered if isinstance(r, PeerAuthentication)),
                authorization_policies=tuple(
                    r for r in ordered if isinstance(r, AuthorizationPolicy)
                ),
                services=services,
                trust_bundle=self._trust_bundle,
                trust_domain=self._trust_domain,
            )
        return self._world

    def _changed(self) -> None:
        self._revision += 1
        for listener in self._listeners:
            listener(self._revision)
