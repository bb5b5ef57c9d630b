# lightmesh — every entry point a developer or CI needs. `make demo` and `make test` are the
# README's two set-up commands; both create the virtualenv on first use.

PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed

# One target per line, so branches that add targets do not collide here.
.PHONY: demo
.PHONY: test
.PHONY: lint
.PHONY: typecheck
.PHONY: unit
.PHONY: component
.PHONY: integration
.PHONY: kube
.PHONY: k8s-bins
.PHONY: cluster
.PHONY: cluster-bins
.PHONY: cluster-images
.PHONY: node-tools
.PHONY: netns
.PHONY: netns-tools
.PHONY: prometheus-bin
.PHONY: h2spec-bin
.PHONY: browser
.PHONY: proto
.PHONY: crds
.PHONY: check-demo
.PHONY: clean
.PHONY: bench
.PHONY: bench-quick
.PHONY: bench-tools
.PHONY: bench-telemetry
.PHONY: bench-controlplane
.PHONY: bench-controlplane-quick
.PHONY: bench-chaos
.PHONY: bench-grpc

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

demo: $(STAMP)
	$(BIN)/lightmesh demo

check-demo: $(STAMP)
	$(BIN)/lightmesh demo --check

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports --no-logo
	$(BIN)/python scripts/check_test_layout.py

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest -q tests/unit

component: $(STAMP) h2spec-bin
	$(BIN)/pytest -q tests/component

integration: $(STAMP) prometheus-bin browser
	$(BIN)/pytest -q tests/integration

# A real kube-apiserver + etcd + kubectl, built from Go modules into ~/.cache/lightmesh/k8s/ (about
# 7 minutes cold on 2 cores, skipped when present).
k8s-bins:
	scripts/k8s/build.sh

# The real Prometheus server and promtool the observability tests scrape with (Debian package
# `prometheus`; skipped when both are on PATH).
prometheus-bin:
	scripts/install-prometheus.sh

# h2spec, the HTTP/2 conformance tester of tests/component/test_h2spec.py, built from its Go module
# into ~/.cache/lightmesh/bin (about a minute cold).
h2spec-bin:
	scripts/install-h2spec.sh

# Debian's chromium and chromium-driver, which the dashboard's browser test drives through selenium
# (tests/integration/test_dashboard.py; skipped when both are on PATH).
browser:
	scripts/install-browser.sh

kube: $(STAMP) k8s-bins
	$(BIN)/pytest -q tests/kube

# The single-node cluster of tests/cluster: kubelet, kube-controller-manager, kube-scheduler,
# kube-proxy and CoreDNS built from Go modules next to the apiserver (about 5 more minutes cold),
# containerd, runc, CNI plugins, buildah and mmdebstrap from Debian, and the images built from
# deploy/images/ by buildah (about 4 minutes cold; cached in ~/.cache/lightmesh/images by content).
cluster-bins:
	scripts/k8s/build.sh --cluster

node-tools:
	scripts/k8s/install-node-tools.sh

cluster-images: node-tools
	scripts/k8s/images.sh >/dev/null

cluster: $(STAMP) cluster-bins cluster-images
	$(BIN)/pytest -q tests/cluster

# iptables and iproute2 (interception tests in network namespaces) and wrk (a real-client test) from Debian.
netns-tools:
	scripts/install-netns-tools.sh

netns: $(STAMP) netns-tools
	$(BIN)/pytest -q tests/netns

test: lint typecheck $(STAMP) k8s-bins cluster-bins netns-tools node-tools cluster-images prometheus-bin h2spec-bin browser
	$(BIN)/pytest -q tests

bench-tools: $(STAMP)
	VENV=$(VENV) scripts/install-bench-tools.sh

bench: bench-tools
	$(BIN)/python -m bench dataplane --profile --json docs/dataplane.json --markdown docs/benchmarks.md --chart docs/dataplane.png
	flock /tmp/lightmesh-bench.lock $(BIN)/python -m bench grpc --json docs/grpc.json

# gRPC unary calls/s and CPU per 1000 calls with ghz: direct, one and two sidecars (HTTP/2 over
# mTLS), nginx grpc_pass and haproxy (h2) in the same run (docs/grpc.json).
bench-grpc: bench-tools
	flock /tmp/lightmesh-bench.lock $(BIN)/python -m bench grpc --json docs/grpc.json

# Telemetry cost: metrics on vs off, p99 with a dead or slow span collector.
bench-telemetry: bench-tools
	$(BIN)/python -m bench telemetry --json docs/telemetry.json --markdown docs/benchmarks.md

# The control plane at scale (issue 12): the real CP against simulated proxies, file and Kubernetes
# sources. Default runs: files 100x100 and 1000x100, kube 100x100 (about 30 min); pick others with
# CP_BENCH_ARGS, e.g. "--run files:2000x100 --label after". Run it under the shared lock:
#   flock /tmp/lightmesh-bench.lock make bench-controlplane
CP_BENCH_ARGS ?=
bench-controlplane: $(STAMP) k8s-bins
	$(BIN)/python -m bench controlplane $(CP_BENCH_ARGS) --json docs/controlplane.json --markdown docs/benchmarks.md

# A couple of minutes: files 100x100, one change, short churn; figures to /tmp only.
bench-controlplane-quick: $(STAMP)
	$(BIN)/python -m bench controlplane --quick --json /tmp/lightmesh-controlplane.json

# The chaos suite (bench/chaos.py): a local mesh on default config under load while instances,
# sidecars and the control plane die, config and certificates change, and clients misbehave.
# About 9 minutes; under the shared benchmark lock.
bench-chaos: $(STAMP)
	flock /tmp/lightmesh-bench.lock $(BIN)/python -m bench chaos --json docs/chaos.json --markdown docs/reliability.md

bench-quick: bench-tools
	$(BIN)/python -m bench dataplane --quick --json /tmp/lightmesh-dataplane.json

proto: $(STAMP)
	PYTHON=$(BIN)/python scripts/gen_proto.sh

crds: $(STAMP)
	$(BIN)/python scripts/gen_crds.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
