"""The redirect rules, as iptables argument lists. Pure: no I/O, so every rule is unit-tested.

Inbound TCP (PREROUTING) goes to the sidecar's inbound listener, outbound TCP (OUTPUT) to its
outbound listener, in chains of our own so install is repeatable and cleanup removes exactly ours:

    PREROUTING -p tcp -> LIGHTMESH_INBOUND   excluded ports RETURN, the rest -> LIGHTMESH_IN_REDIRECT
    OUTPUT     -p tcp -> LIGHTMESH_OUTBOUND  the sidecar's UID, loopback, excluded ports and CIDRs
                                             RETURN, the rest -> LIGHTMESH_REDIRECT

The sidecar's own connections leave untouched because they match its UID (otherwise every
upstream call would loop back into the outbound listener). Loopback stays untouched so the
sidecar reaches the app on 127.0.0.1 and the app reaches the sidecar's admin port.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

TABLE = "nat"
INBOUND = "LIGHTMESH_INBOUND"
IN_REDIRECT = "LIGHTMESH_IN_REDIRECT"
OUTBOUND = "LIGHTMESH_OUTBOUND"
REDIRECT = "LIGHTMESH_REDIRECT"
CHAINS = (INBOUND, IN_REDIRECT, OUTBOUND, REDIRECT)
# (built-in chain, our chain) pairs: the only rules we add outside our own chains.
JUMPS = (("PREROUTING", INBOUND), ("OUTPUT", OUTBOUND))

# The sidecar's defaults (sidecar/settings.py) and the UID its container runs as.
INBOUND_PORT = 15006
OUTBOUND_PORT = 15001
ADMIN_PORT = 15000  # on loopback only
METRICS_PORT = 15020  # /metrics, /ready, /healthz: what probes and Prometheus reach
PROXY_UID = 1337


@dataclass(frozen=True, slots=True, kw_only=True)
class InterceptSpec:
    """What to redirect where, and what to leave alone."""

    inbound_port: int = INBOUND_PORT
    outbound_port: int = OUTBOUND_PORT
    proxy_uid: int = PROXY_UID
    # Inbound ports reached directly, not through the sidecar: its metrics/health port, so probes
    # and Prometheus reach it, and its admin port, so a connection to it from outside is refused
    # (it listens on loopback) rather than redirected to the app.
    exclude_inbound_ports: tuple[int, ...] = (ADMIN_PORT, METRICS_PORT)
    exclude_outbound_ports: tuple[int, ...] = ()
    exclude_outbound_cidrs: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Command:
    """One iptables invocation (arguments after the program name)."""

    args: tuple[str, ...]
    # Cleanup steps fail when there is nothing to remove; that is not an error.
    may_fail: bool = False


def parse_ports(text: str, *, field: str) -> tuple[int, ...]:
    """Parse "80,8080" (spaces allowed, empty allowed); ValueError names `field` and the item."""
    ports: list[int] = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        if not item.isdigit() or not 0 < int(item) < 65536:
            raise ValueError(f"{field}: {item!r} is not a port number (1-65535)")
        if int(item) not in ports:
            ports.append(int(item))
    return tuple(ports)


def parse_cidrs(text: str, *, field: str) -> tuple[str, ...]:
    """Parse "10.0.0.0/8,192.168.1.5" into normalised IPv4 CIDRs; ValueError names the item."""
    cidrs: list[str] = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        try:
            network = ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise ValueError(f"{field}: {item!r} is not an IP address or CIDR") from None
        if network.version != 4:
            raise ValueError(f"{field}: {item!r} is IPv6; only IPv4 traffic is intercepted")
        if str(network) not in cidrs:
            cidrs.append(str(network))
    return tuple(cidrs)


def _validate(spec: InterceptSpec) -> None:
    for name, port in (("inbound_port", spec.inbound_port), ("outbound_port", spec.outbound_port)):
        if not 0 < port < 65536:
            raise ValueError(f"{name}: {port} is not a port number (1-65535)")
    if spec.inbound_port == spec.outbound_port:
        raise ValueError(f"inbound_port and outbound_port are both {spec.inbound_port}")
    if spec.proxy_uid < 0:
        raise ValueError(f"proxy_uid: {spec.proxy_uid} is negative")
    if spec.proxy_uid == 0:
        # Excluding UID 0 would let every root process in the pod bypass the sidecar.
        raise ValueError("proxy_uid: the sidecar must not run as root (UID 0)")


def _nat(*args: str | int) -> tuple[str, ...]:
    return ("-t", TABLE, *(str(a) for a in args))


def cleanup_plan() -> list[Command]:
    """Remove our jumps, then empty and delete our chains; each step may find nothing to do."""
    commands = [
        Command(_nat("-D", builtin, "-p", "tcp", "-j", chain), True) for builtin, chain in JUMPS
    ]
    # Flush every chain before deleting any: a chain still referenced cannot be deleted.
    commands += [Command(_nat("-F", chain), True) for chain in CHAINS]
    commands += [Command(_nat("-X", chain), True) for chain in CHAINS]
    return commands


def install_plan(spec: InterceptSpec) -> list[Command]:
    """Cleanup first (so installing twice gives one set of rules), then create everything."""
    _validate(spec)
    rules: list[tuple[str, ...]] = [_nat("-N", chain) for chain in CHAINS]
    rules += [
        _nat("-A", IN_REDIRECT, "-p", "tcp", "-j", "REDIRECT", "--to-ports", spec.inbound_port),
        _nat("-A", REDIRECT, "-p", "tcp", "-j", "REDIRECT", "--to-ports", spec.outbound_port),
    ]
    rules += [
        _nat("-A", INBOUND, "-p", "tcp", "--dport", port, "-j", "RETURN")
        for port in spec.exclude_inbound_ports
    ]
    rules.append(_nat("-A", INBOUND, "-p", "tcp", "-j", IN_REDIRECT))
    rules += [
        _nat("-A", OUTBOUND, "-m", "owner", "--uid-owner", spec.proxy_uid, "-j", "RETURN"),
        # Anything leaving through lo stays in the pod: 127.0.0.0/8 and the pod's own address.
        _nat("-A", OUTBOUND, "-o", "lo", "-j", "RETURN"),
    ]
    rules += [
        _nat("-A", OUTBOUND, "-p", "tcp", "--dport", port, "-j", "RETURN")
        for port in spec.exclude_outbound_ports
    ]
    rules += [
        _nat("-A", OUTBOUND, "-d", cidr, "-j", "RETURN") for cidr in spec.exclude_outbound_cidrs
    ]
    rules.append(_nat("-A", OUTBOUND, "-p", "tcp", "-j", REDIRECT))
    # Jumps last: traffic is redirected only once every chain is complete.
    rules += [_nat("-A", builtin, "-p", "tcp", "-j", chain) for builtin, chain in JUMPS]
    return [*cleanup_plan(), *(Command(args) for args in rules)]
