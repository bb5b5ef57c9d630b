#!/usr/bin/env bash
# A real single-node Kubernetes cluster on this machine, the one tests/cluster runs against
# (tests/support/cluster.py: every component in a network namespace of its own, state under one
# directory, nothing left on the host after `down`).
#
#   scripts/k8s/cluster.sh up            # build what is missing (binaries, images), start, and
#                                        # print the KUBECONFIG, the netns and the stop command
#   scripts/k8s/cluster.sh down DIR      # stop that cluster and undo its host changes; also after
#                                        # a crash of whatever started it
#   scripts/k8s/cluster.sh sweep         # `down` every cluster whose owning process is gone
#
# Needs root, `make` (the virtualenv) and scripts/k8s/install-node-tools.sh.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
[[ -x .venv/bin/python ]] || make .venv/.installed >&2
exec .venv/bin/python -m tests.support.cluster "$@"
