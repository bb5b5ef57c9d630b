"""Route table compiled from `VirtualHost`s: regexes compiled once per host, lookups by domain.

Each route carries its compiled action: where to send (weighted clusters) or a redirect, and the
edits (rewrite, header edits, fault, retry policy, mirror) the router applies to a matching request.

`compile_host` compiles one virtual host (so an update recompiles only the hosts it changed) and
raises `ConfigError` for anything this sidecar cannot apply, which the config client turns into a
NACK; `route_table` indexes compiled hosts by domain. Pure: no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from urllib.parse import parse_qsl

from lightmesh.protocols import GRPC_STATUSES
from lightmesh.v1 import config_pb2 as pb
from sidecar.contract import RequestHead
from sidecar.errors import ConfigError
from sidecar.policies.headers import HeaderEdits
from sidecar.policies.retry import DEFAULT_RETRY, RetryPolicy

Matcher = Callable[[str], bool]


def _string_matcher(match: pb.StringMatch, where: str, *, max_regex: int) -> Matcher:
    kind = match.WhichOneof("kind")
    if kind == "exact":
        exact = match.exact
        return lambda value: value == exact
    if kind == "prefix":
        prefix = match.prefix
        return lambda value: value.startswith(prefix)
    if kind == "regex":
        pattern = match.regex
        if len(pattern) > max_regex:
            raise ConfigError(
                f"{where}.regex: pattern is {len(pattern)} characters, over this sidecar's "
                f"limit of {max_regex} (--max-regex-length)"
            )
        try:
            compiled = re.compile(pattern)
        except re.error as error:
            raise ConfigError(f"{where}.regex: {pattern!r} does not compile: {error}") from None
        return lambda value: compiled.fullmatch(value) is not None
    if kind == "present":
        return _any
    raise ConfigError(f"{where}: empty string match (a newer control plane?)")


def request_port(head: RequestHead) -> int:
    """The port a request was addressed to: the Host header's, else the intercepted connection's
    original destination, else 80 (HTTP's default). Read only by routes that match on a port."""
    host = head.header(b"host")
    if host is not None:
        _, colon, port = host.decode("latin-1").rpartition(":")
        if colon and port.isdigit():
            return int(port)
    if head.original_dst is not None:
        return head.original_dst[1]
    return 80


def _any(_: str) -> bool:
    return True


@dataclass(frozen=True, slots=True)
class CompiledMatch:
    """One match entry; all present parts must match."""

    uri: Matcher | None
    method: Matcher | None
    # (name, matcher, invert): invert is Istio's withoutHeaders (absent or not matching).
    headers: tuple[tuple[bytes, Matcher, bool], ...]
    query: tuple[tuple[str, Matcher], ...]
    # The uri prefix matched, for rewrite.uri (None: the whole path is replaced).
    uri_prefix: str | None = None
    # Every path this entry accepts starts with this ("" when unknown): a cheap pre-filter.
    literal: str = ""
    # Istio's match.port (0: any port).
    port: int = 0

    def matches(self, head: RequestHead, path: str, query: dict[str, str] | None) -> bool:
        """Whether the request satisfies this entry."""
        if self.uri is not None and not self.uri(path):
            return False
        if self.method is not None and not self.method(head.method):
            return False
        if self.port and request_port(head) != self.port:
            return False
        for name, matcher, invert in self.headers:
            value = head.header(name)
            found = value is not None and matcher(value.decode("latin-1"))
            if found == invert:
                return False
        if self.query:
            params = query if query is not None else {}
            for qname, matcher in self.query:
                qvalue = params.get(qname)
                if qvalue is None or not matcher(qvalue):
                    return False
        return True


class WeightedClusters:
    """Smooth weighted round robin over a route's clusters: exact shares, evenly interleaved."""

    __slots__ = ("_current", "_names", "_total", "_weights")

    def __init__(self, entries: list[tuple[str, int]]) -> None:
        self._names = [name for name, weight in entries if weight > 0]
        self._weights = [weight for _, weight in entries if weight > 0]
        self._total = sum(self._weights)
        self._current = [0] * len(self._names)

    @property
    def names(self) -> list[str]:
        """Cluster names with non-zero weight."""
        return self._names

    def pick(self) -> str | None:
        """The next cluster, or None when no cluster has weight."""
        if len(self._names) <= 1:
            return self._names[0] if self._names else None
        best = 0
        for index, weight in enumerate(self._weights):
            self._current[index] += weight
            if self._current[index] > self._current[best]:
                best = index
        self._current[best] -= self._total
        return self._names[best]


@dataclass(frozen=True, slots=True)
class Redirect:
    """Answer with a redirect: new path (with query) and/or authority, and the status code."""

    uri: str
    authority: str
    code: int


@dataclass(frozen=True, slots=True)
class Fault:
    """Fault injection of a route: percentages 0-100."""

    delay: float
    delay_percent: float
    abort_status: int
    abort_percent: float
    abort_grpc: int | None = None  # the gRPC status code a gRPC caller is answered with


@dataclass(frozen=True, slots=True)
class CompiledRoute:
    """A route: its match alternatives and what to do with matching requests."""

    name: str
    matches: tuple[CompiledMatch, ...]
    clusters: WeightedClusters
    timeout: float | None
    needs_query: bool
    redirect: Redirect | None = None
    rewrite_uri: str | None = None
    rewrite_authority: str = ""
    request_headers: HeaderEdits | None = None
    response_headers: HeaderEdits | None = None
    fault: Fault | None = None
    retry: RetryPolicy = DEFAULT_RETRY
    mirror_cluster: str = ""
    mirror_percent: float = 0.0

    def accepts(self, head: RequestHead, path: str, query: dict[str, str] | None) -> bool:
        """Whether the request matches (a route without match entries matches everything)."""
        return not self.matches or any(m.matches(head, path, query) for m in self.matches)

    def rewritten_path(self, head: RequestHead) -> str:
        """The request's path with rewrite.uri applied (query kept), as Envoy's prefix_rewrite.

        The prefix of the match entry that matched is replaced; for other matches the whole path.
        """
        if self.rewrite_uri is None:
            return head.path
        path, sep, raw_query = head.path.partition("?")
        query = dict(parse_qsl(raw_query, keep_blank_values=True)) if self.needs_query else None
        entry = next((m for m in self.matches if m.matches(head, path, query)), None)
        prefix = entry.uri_prefix if entry is not None else None
        new = self.rewrite_uri + path[len(prefix) :] if prefix is not None else self.rewrite_uri
        if not new.startswith("/"):
            new = "/" + new
        return new + sep + raw_query


@dataclass(frozen=True, slots=True)
class CompiledHost:
    """A virtual host's ordered routes."""

    name: str
    routes: tuple[CompiledRoute, ...]
    needs_query: bool


class RouteTable:
    """Virtual hosts by domain."""

    def __init__(self, hosts: dict[str, CompiledHost]) -> None:
        self._by_domain = hosts

    def route(
        self, head: RequestHead, *, domain: str | None = None
    ) -> tuple[CompiledHost | None, CompiledRoute | None]:
        """The virtual host for `domain` (default: the request's host), and its first matching
        route."""
        host = self._by_domain.get(head.host if domain is None else domain)
        if host is None:
            return None, None
        path, _, raw_query = head.path.partition("?")
        query = dict(parse_qsl(raw_query, keep_blank_values=True)) if host.needs_query else None
        for route in host.routes:
            if not route.matches:
                return host, route
            for match in route.matches:
                # The literal start of the uri pattern rules most routes out before any regex runs.
                if path.startswith(match.literal) and match.matches(head, path, query):
                    return host, route
        return host, None

    @property
    def domains(self) -> list[str]:
        """Every domain served (for config_dump)."""
        return sorted(self._by_domain)


def compile_host(vh: pb.VirtualHost, *, max_regex: int, matches_only: bool = False) -> CompiledHost:
    """Compile one virtual host, or raise ConfigError naming the offending field. `matches_only`:
    its routes are only matched (their names wanted), so they need no destination."""
    where = f"route {vh.origin or vh.name}"
    routes = tuple(
        _compile_route(
            route, f"{where} {route.name}", max_regex=max_regex, matches_only=matches_only
        )
        for route in vh.routes
    )
    return CompiledHost(name=vh.name, routes=routes, needs_query=any(r.needs_query for r in routes))


def route_table(hosts: Iterable[tuple[pb.VirtualHost, CompiledHost]]) -> RouteTable:
    """Index compiled hosts by their domains (the first host listing a domain wins)."""
    by_domain: dict[str, CompiledHost] = {}
    for vh, host in hosts:
        for domain in vh.domains:
            by_domain.setdefault(domain.lower(), host)
    return RouteTable(by_domain)


def compile_routes(vhosts: Iterable[pb.VirtualHost], *, max_regex: int) -> RouteTable:
    """Compile a whole set of virtual hosts into one table."""
    return route_table((vh, compile_host(vh, max_regex=max_regex)) for vh in vhosts)


def route_namer(
    vhosts: Iterable[pb.VirtualHost], *, max_regex: int
) -> Callable[[RequestHead], str]:
    """The name of the route a request takes through these virtual hosts ("": none); raises
    ConfigError naming a match that does not compile."""
    table = route_table(
        (vh, compile_host(vh, max_regex=max_regex, matches_only=True)) for vh in vhosts
    )

    def name(head: RequestHead) -> str:
        _, route = table.route(head)
        return route.name if route is not None else ""

    return name


_META = frozenset(".^$*+?{}[]\\|()")


def literal_prefix(match: pb.StringMatch) -> str:
    """A string every value accepted by `match` starts with (conservative: "" when unsure)."""
    kind = match.WhichOneof("kind")
    if kind == "exact":
        return match.exact
    if kind == "prefix":
        return match.prefix
    if kind != "regex":
        return ""
    pattern = match.regex
    if _has_top_level_alternation(pattern):
        return ""
    end = 0
    while end < len(pattern) and pattern[end] not in _META:
        end += 1
    if end < len(pattern) and pattern[end] in "*?{":
        end -= 1  # the last literal character is optional or repeated
    return pattern[: max(end, 0)]


def _has_top_level_alternation(pattern: str) -> bool:
    depth, escaped = 0, False
    for char in pattern:
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif char in "([":
            depth += 1
        elif char in ")]":
            depth -= 1
        elif char == "|" and depth <= 0:
            return True  # also when a class like [|] confused the count: "unsure" is safe
    return False


def _compile_route(
    route: pb.Route, where: str, *, max_regex: int, matches_only: bool = False
) -> CompiledRoute:
    matches = []
    for index, match in enumerate(route.matches):
        at = f"{where} match[{index}]"

        def string(m: pb.StringMatch, field: str, at: str = at) -> Matcher:
            return _string_matcher(m, f"{at}.{field}", max_regex=max_regex)

        has_uri = match.HasField("uri")
        matches.append(
            CompiledMatch(
                uri=string(match.uri, "uri") if has_uri else None,
                method=string(match.method, "method") if match.HasField("method") else None,
                headers=tuple(
                    (h.name.lower().encode(), string(h.value, f"headers.{h.name}"), h.invert)
                    for h in match.headers
                ),
                query=tuple(
                    (q.name, string(q.value, f"queryParams.{q.name}")) for q in match.query_params
                ),
                uri_prefix=match.uri.prefix if has_uri and match.uri.HasField("prefix") else None,
                literal=literal_prefix(match.uri) if has_uri else "",
                port=match.port,
            )
        )
    redirect = None
    if route.HasField("redirect"):
        r = route.redirect
        if r.code not in (301, 302, 303, 307, 308):
            raise ConfigError(f"{where}: redirect code {r.code} is not supported")
        redirect = Redirect(uri=r.uri, authority=r.authority, code=r.code)
    elif not route.clusters and not matches_only:
        raise ConfigError(f"{where}: route has no destination")
    retry = DEFAULT_RETRY
    if route.HasField("retries"):
        try:
            retry = RetryPolicy.from_proto(route.retries)
        except ValueError as error:
            raise ConfigError(f"{where}: retries: {error}") from None
    fault = None
    if route.HasField("fault"):
        f = route.fault
        fault = Fault(
            delay=f.delay_ms / 1000,
            delay_percent=f.delay_percent,
            abort_status=f.abort_status
            or (GRPC_STATUSES[f.abort_grpc_status][1] if f.abort_grpc_status else 0),
            abort_percent=f.abort_percent,
            abort_grpc=GRPC_STATUSES[f.abort_grpc_status][0] if f.abort_grpc_status else None,
        )
    rewrite = route.rewrite if route.HasField("rewrite") else None
    return CompiledRoute(
        name=route.name,
        matches=tuple(matches),
        clusters=WeightedClusters([(c.cluster, c.weight) for c in route.clusters]),
        timeout=route.timeout_ms / 1000 if route.timeout_ms else None,
        needs_query=any(m.query for m in matches),
        redirect=redirect,
        rewrite_uri=rewrite.uri if rewrite is not None and rewrite.HasField("uri") else None,
        rewrite_authority=rewrite.authority if rewrite is not None else "",
        request_headers=HeaderEdits.from_proto(route.request_headers),
        response_headers=HeaderEdits.from_proto(route.response_headers),
        fault=fault,
        retry=retry,
        mirror_cluster=route.mirror.cluster,
        mirror_percent=route.mirror.percent if route.mirror.cluster else 0.0,
    )
