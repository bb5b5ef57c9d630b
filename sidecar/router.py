"""The resolvers the listeners use: outbound (route → cluster → endpoint) and inbound (the app)."""

from __future__ import annotations

from sidecar.config.apply import DataPlane
from sidecar.proxy.decision import Completed, Decision, Forward, LocalReply, RequestHead

# Envoy's name for the cluster of intercepted traffic to destinations outside the mesh.
PASSTHROUGH = "PassthroughCluster"


class OutboundRouter:
    """Resolves the app's outbound requests against the data plane's current config."""

    def __init__(self, dataplane: DataPlane) -> None:
        self._dataplane = dataplane

    def resolve(self, head: RequestHead) -> Decision:
        """Pick the destination of one request, or say why there is none."""
        dataplane = self._dataplane
        host, route = dataplane.routes.route(head)
        if host is None and head.original_dst is not None:
            # An intercepted connection whose Host names no service (the app called an IP, or
            # sent a Host we do not know): the address it dialled may be a service's.
            address, port = head.original_dst
            host, route = dataplane.routes.route(head, domain=address)
            if host is None:
                # Not a mesh destination: let it through to where the app was going.
                return Forward(address=address, port=port, cluster=PASSTHROUGH)
        if host is None:
            return LocalReply(status=404, body=f"no route to host {head.host!r}", flags="NR")
        if route is None:
            return LocalReply(
                status=404, body=f"no route of {host.name} matches {head.path!r}", flags="NR"
            )
        name = route.clusters.pick()
        cluster = dataplane.clusters.get(name) if name else None
        if cluster is None:
            return LocalReply(status=503, body=f"cluster {name!r} not found", flags="NC")
        endpoint = cluster.balancer.pick()
        if endpoint is None:
            return LocalReply(status=503, body=f"no healthy upstream in {cluster.name}", flags="UH")
        cluster.balancer.started(endpoint)
        return Forward(
            address=endpoint.address,
            port=endpoint.port,
            cluster=cluster.name,
            timeout=route.timeout,
            connect_timeout=cluster.connect_timeout,
        )

    def finished(self, completed: Completed) -> None:
        """Release the in-flight slot taken by `resolve`."""
        if completed.upstream:
            cluster = self._dataplane.clusters.get(completed.cluster)
            if cluster is not None:
                cluster.balancer.finished(completed.upstream)


class InboundRouter:
    """Everything arriving on the inbound listener goes to the application."""

    def __init__(self, *, app_host: str, app_port: int) -> None:
        self._forward = Forward(address=app_host, port=app_port, cluster=f"inbound|{app_port}")

    def resolve(self, head: RequestHead) -> Decision:
        """The app."""
        return self._forward
