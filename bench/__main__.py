"""`python -m bench SUBCOMMAND`: the benchmarks of lightmesh.

python -m bench admission [--requests N] [--runs N] [--json]
python -m bench chaos [--only NAME,...] [--quick] [--json FILE] [--markdown FILE]
python -m bench controlplane [--quick] [--run SOURCE:NxS ...] [--json FILE] [--markdown FILE]
python -m bench dataplane [--quick] [--json FILE] [--markdown FILE] [--chart FILE] [--profile]
python -m bench graph [--nodes N] [--series N] [--json]
python -m bench grpc [--calls N] [--concurrency N] [--json FILE]
python -m bench h2codec [--calls N]
python -m bench startup [--runs N]
python -m bench telemetry [--quick] [--json FILE] [--markdown FILE]
python -m bench traffic [--iterations N] [--requests N] [--json FILE]
"""

from __future__ import annotations

import sys


def main(argv: list[str]) -> int:
    """Dispatch to a benchmark's own `main`."""
    usage = (
        "usage: python -m bench {admission,chaos,controlplane,dataplane,graph,grpc,h2codec,"
        "startup,telemetry,traffic} [options]"
        "   (-h after one for its options)"
    )
    if not argv or argv[0] in ("-h", "--help"):
        print(usage)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "admission":
        from bench import admission

        return admission.main(rest)
    if command == "chaos":
        from bench import chaos

        return chaos.main(rest)
    if command == "controlplane":
        from bench import controlplane

        return controlplane.main(rest)
    if command == "dataplane":
        from bench import dataplane

        return dataplane.main(rest)
    if command == "graph":
        from bench import graph

        return graph.main(rest)
    if command == "grpc":
        from bench import grpc

        return grpc.main(rest)
    if command == "h2codec":
        from bench import h2codec

        return h2codec.main(rest)
    if command == "telemetry":
        from bench import telemetry

        return telemetry.main(rest)
    if command == "startup":
        from bench import startup

        sys.argv = ["python -m bench startup", *rest]  # startup.main() reads sys.argv
        return startup.main()
    if command == "traffic":
        from bench import traffic

        return traffic.main(rest)
    print(f"unknown benchmark {command!r}\n{usage}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
