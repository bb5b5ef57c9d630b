"""`python -m bench admission`: what inbound admission (sidecar/security/admission.py) costs per
request, in process, one case at a time: no policy, an AuthorizationPolicy, a JWT verified for the
first time (a new token each request: the signature check) and again (the verified-token cache),
for RS256 and ES256, and the local rate limit. Microseconds per request, the median of `--runs`.

Run it under the bench lock (`flock /tmp/lightmesh-bench.lock python -m bench admission`): the
figures are CPU time of one core.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

from sidecar.contract import RequestHead
from sidecar.security.admission import Admission
from sidecar.security.authn import Authenticator, JwtRule
from sidecar.security.authz import Policy, Rule
from sidecar.security.inbound import InboundPolicy
from sidecar.security.ratelimit import Bucket, RateLimitConfig
from tests.support.jwks import Issuer

PRINCIPAL = "cluster.local/ns/shop/sa/frontend"


def _head(token: str = "") -> RequestHead:
    headers = [(b"host", b"catalog"), (b"user-agent", b"bench")]
    if token:
        headers.append((b"authorization", f"Bearer {token}".encode()))
    return RequestHead(method="GET", path="/items?page=2", host="catalog", http_version="1.1",
                       headers=headers)  # fmt: skip


def _per_request(run: Callable[[int], None], requests: int, runs: int) -> float:
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        run(requests)
        samples.append((time.perf_counter() - started) / requests * 1e6)
    return round(statistics.median(samples), 2)


def measure(*, requests: int = 2000, runs: int = 5) -> dict[str, float]:
    """Microseconds per request of each case (the policy made anew for each run, so a run of
    new tokens never finds them in the verified-token cache)."""
    allow = Policy(name="shop/allow", action="ALLOW", rules=(Rule(principals=(PRINCIPAL,)),))
    results: dict[str, float] = {}

    def case(name: str, policy: Callable[[], InboundPolicy], tokens: list[str]) -> None:
        def run(count: int) -> None:
            admission, made = Admission(clock=time.monotonic), policy()
            for index in range(count):
                token = tokens[index % len(tokens)]
                if admission.check(made, _head(token), PRINCIPAL) is not None:
                    raise AssertionError(f"{name}: refused")

        results[name] = _per_request(run, requests, runs)

    case("none", InboundPolicy, [""])
    case("authorization_policy", lambda: InboundPolicy(policies=(allow,)), [""])
    for alg in ("RS256", "ES256"):
        issuer = Issuer("https://issuer.bench", alg=alg)
        rules = [JwtRule(issuer=issuer.name, jwks=issuer.jwks())]

        def verifying(rules: list[JwtRule] = rules) -> InboundPolicy:
            return InboundPolicy(authenticator=Authenticator(rules))

        case(
            f"jwt_{alg}_new_token", verifying, [issuer.token(sub=f"u{i}") for i in range(requests)]
        )
        case(f"jwt_{alg}_cached", verifying, [issuer.token()])
    limit = RateLimitConfig(name="shop/limit", total=Bucket(rate=1e9, burst=10**9))
    case("rate_limit", lambda: InboundPolicy(rate_limit=limit), [""])
    return results


def main(argv: list[str]) -> int:
    """Print the figures (JSON with --json)."""
    parser = argparse.ArgumentParser(prog="python -m bench admission")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    results = measure(requests=args.requests, runs=args.runs)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for name, micros in results.items():
            print(f"{name:28} {micros:8.2f} us/request")
    return 0
