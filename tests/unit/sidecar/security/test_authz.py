"""AuthorizationPolicy semantics (Istio's): DENY first, then ALLOW if any ALLOW policy exists."""

from sidecar.security.authz import Peer, Policy, Rule, Verdict, evaluate, matches_value

FRONTEND = Peer(principal="cluster.local/ns/shop/sa/frontend")
OTHER_NS = Peer(principal="cluster.local/ns/lab/sa/frontend")
PLAINTEXT = Peer()


def test_no_policy_allows_everything() -> None:
    assert evaluate([], PLAINTEXT, "GET", "/").allowed


def test_allow_policy_admits_exactly_what_it_says() -> None:
    allow = Policy(
        name="shop/frontend-reads",
        action="ALLOW",
        rules=(Rule(principals=("cluster.local/ns/shop/sa/frontend",), methods=("GET",)),),
    )
    assert evaluate([allow], FRONTEND, "GET", "/items") == Verdict(True, "shop/frontend-reads")
    assert not evaluate([allow], FRONTEND, "POST", "/items").allowed
    assert not evaluate([allow], OTHER_NS, "GET", "/items").allowed
    assert not evaluate([allow], PLAINTEXT, "GET", "/items").allowed


def test_deny_wins_over_allow() -> None:
    allow_all = Policy(name="shop/all", action="ALLOW", rules=(Rule(),))
    deny_admin = Policy(
        name="shop/no-admin", action="DENY", rules=(Rule(paths=("/admin/*", "/admin")),)
    )
    assert evaluate([allow_all, deny_admin], FRONTEND, "GET", "/admin/users") == Verdict(
        False, "shop/no-admin"
    )
    assert evaluate([allow_all, deny_admin], FRONTEND, "GET", "/admin?x=1").allowed is False
    assert evaluate([allow_all, deny_admin], FRONTEND, "GET", "/items").allowed


def test_allow_without_rules_denies_everything() -> None:
    nothing = Policy(name="shop/allow-nothing", action="ALLOW", rules=())
    assert not evaluate([nothing], FRONTEND, "GET", "/").allowed


def test_namespaces_come_from_the_peer_identity() -> None:
    same_ns = Policy(name="shop/ns", action="ALLOW", rules=(Rule(namespaces=("shop",)),))
    assert evaluate([same_ns], FRONTEND, "GET", "/").allowed
    assert not evaluate([same_ns], OTHER_NS, "GET", "/").allowed
    assert not evaluate([same_ns], PLAINTEXT, "GET", "/").allowed


def test_wildcards() -> None:
    assert matches_value("*", "x") and not matches_value("*", "")
    assert matches_value("/api/*", "/api/v1") and not matches_value("/api/*", "/apx")
    assert matches_value("*/info", "/a/info") and not matches_value("*/info", "/a/infos")
    assert matches_value("GET", "GET") and not matches_value("GET", "get")
