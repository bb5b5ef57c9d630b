"""The interception plan: which iptables commands, in which order, for which settings."""

import pytest

from lightmesh.intercept import (
    InterceptSpec,
    cleanup_plan,
    install_plan,
    parse_cidrs,
    parse_ports,
)


def lines(spec: InterceptSpec) -> list[str]:
    return [" ".join(c.args) for c in install_plan(spec) if not c.may_fail]


def test_default_plan_redirects_inbound_and_outbound_and_spares_the_sidecar() -> None:
    assert lines(InterceptSpec()) == [
        "-t nat -N LIGHTMESH_INBOUND",
        "-t nat -N LIGHTMESH_IN_REDIRECT",
        "-t nat -N LIGHTMESH_OUTBOUND",
        "-t nat -N LIGHTMESH_REDIRECT",
        "-t nat -A LIGHTMESH_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006",
        "-t nat -A LIGHTMESH_REDIRECT -p tcp -j REDIRECT --to-ports 15001",
        "-t nat -A LIGHTMESH_INBOUND -p tcp --dport 15000 -j RETURN",
        "-t nat -A LIGHTMESH_INBOUND -p tcp --dport 15020 -j RETURN",
        "-t nat -A LIGHTMESH_INBOUND -p tcp -j LIGHTMESH_IN_REDIRECT",
        "-t nat -A LIGHTMESH_OUTBOUND -m owner --uid-owner 1337 -j RETURN",
        "-t nat -A LIGHTMESH_OUTBOUND -o lo -j RETURN",
        "-t nat -A LIGHTMESH_OUTBOUND -p tcp -j LIGHTMESH_REDIRECT",
        "-t nat -A PREROUTING -p tcp -j LIGHTMESH_INBOUND",
        "-t nat -A OUTPUT -p tcp -j LIGHTMESH_OUTBOUND",
    ]


def test_exclusions_return_before_the_catch_all_redirect() -> None:
    spec = InterceptSpec(
        inbound_port=16006,
        outbound_port=16001,
        proxy_uid=2000,
        exclude_inbound_ports=(15000, 9090),
        exclude_outbound_ports=(5432,),
        exclude_outbound_cidrs=("169.254.169.254/32", "10.96.0.0/12"),
    )
    plan = lines(spec)
    catch_all = plan.index("-t nat -A LIGHTMESH_OUTBOUND -p tcp -j LIGHTMESH_REDIRECT")
    for rule in (
        "-t nat -A LIGHTMESH_OUTBOUND -m owner --uid-owner 2000 -j RETURN",
        "-t nat -A LIGHTMESH_OUTBOUND -p tcp --dport 5432 -j RETURN",
        "-t nat -A LIGHTMESH_OUTBOUND -d 169.254.169.254/32 -j RETURN",
        "-t nat -A LIGHTMESH_OUTBOUND -d 10.96.0.0/12 -j RETURN",
    ):
        assert plan.index(rule) < catch_all
    inbound_all = plan.index("-t nat -A LIGHTMESH_INBOUND -p tcp -j LIGHTMESH_IN_REDIRECT")
    assert plan.index("-t nat -A LIGHTMESH_INBOUND -p tcp --dport 9090 -j RETURN") < inbound_all
    assert "-t nat -A LIGHTMESH_IN_REDIRECT -p tcp -j REDIRECT --to-ports 16006" in plan
    assert "-t nat -A LIGHTMESH_REDIRECT -p tcp -j REDIRECT --to-ports 16001" in plan
    # The jumps come last, once every chain is complete.
    assert plan[-2:] == [
        "-t nat -A PREROUTING -p tcp -j LIGHTMESH_INBOUND",
        "-t nat -A OUTPUT -p tcp -j LIGHTMESH_OUTBOUND",
    ]


def test_install_starts_with_the_whole_cleanup_so_it_can_run_twice() -> None:
    plan = install_plan(InterceptSpec())
    cleanup = cleanup_plan()
    assert plan[: len(cleanup)] == cleanup
    assert all(c.may_fail for c in cleanup)
    assert not any(c.may_fail for c in plan[len(cleanup) :])


def test_cleanup_removes_jumps_before_flushing_and_flushes_before_deleting() -> None:
    verbs = [c.args[2] for c in cleanup_plan()]
    assert verbs == ["-D", "-D", "-F", "-F", "-F", "-F", "-X", "-X", "-X", "-X"]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (InterceptSpec(proxy_uid=0), "must not run as root"),
        (InterceptSpec(inbound_port=15001), "are both 15001"),
        (InterceptSpec(outbound_port=70000), "outbound_port: 70000"),
    ],
)
def test_unsafe_specs_are_refused(spec: InterceptSpec, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        install_plan(spec)


def test_port_and_cidr_lists_are_parsed_and_errors_name_the_field() -> None:
    assert parse_ports(" 80, 8080,80,", field="f") == (80, 8080)
    assert parse_ports("", field="f") == ()
    assert parse_cidrs("10.0.0.1, 10.1.0.0/16", field="f") == ("10.0.0.1/32", "10.1.0.0/16")
    with pytest.raises(ValueError, match=r"lightmesh.io/exclude-outbound-ports: 'http'"):
        parse_ports("80,http", field="lightmesh.io/exclude-outbound-ports")
    with pytest.raises(ValueError, match="not a port number"):
        parse_ports("0", field="f")
    with pytest.raises(ValueError, match=r"cidrs: '10.0.0.300/8' is not an IP"):
        parse_cidrs("10.0.0.300/8", field="cidrs")
    with pytest.raises(ValueError, match="IPv6"):
        parse_cidrs("fd00::/8", field="f")
