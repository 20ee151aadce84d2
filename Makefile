# dbps — `make demo` runs it locally, `make test` runs the whole suite.
# Both build the local control plane binaries once (cached in ~/.cache/dbps).

SHELL := /bin/bash
CARGO ?= cargo
BINARIES = $(shell e2e/tools/build-binaries.sh)

.PHONY: demo test e2e-kind deps binaries crds fmt-check lint bench clean-cache

## demo: the local control plane, local databases, the operator and the sample services
## (dedicated instances on a real node when this machine can host one)
demo: deps binaries
	$(CARGO) build -q -p dbps-samples --bin dbps-sample -p dbps-operator --bin dbps-operator
	KUBEBUILDER_ASSETS=$(BINARIES) $(CARGO) run -q -p dbps-e2e --bin dbps-demo

## test: formatting, lints, unit tests and every suite against real components
test: deps fmt-check lint binaries
	$(CARGO) build -p dbps-operator --bin dbps-operator -p dbps-samples --bin dbps-sample
	KUBEBUILDER_ASSETS=$(BINARIES) $(CARGO) test --workspace --lib --bins --tests --no-fail-fast

## e2e-kind: the cluster suites on a kind cluster (Docker hosts only: kind, docker, helm on PATH)
e2e-kind:
	e2e/kind/run.sh

## deps: install what a fresh machine lacks (Debian packages, a Go toolchain, rustfmt/clippy)
deps:
	@e2e/tools/install-deps.sh >/dev/null

## binaries: build (once) etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kwok, kubectl, helm, FerretDB,
## OpenSearch (from Maven Central), and the real node's kubelet, kube-proxy, containerd, runc, CNI plugins, CoreDNS,
## kube-router, pause
binaries:
	@e2e/tools/build-binaries.sh >/dev/null
	@e2e/tools/build-ferretdb.sh >/dev/null
	@e2e/tools/build-opensearch.sh >/dev/null
	@e2e/tools/build-binaries.sh --node >/dev/null

## crds: regenerate crds/ from the Rust types
crds:
	$(CARGO) run -q -p dbps-operator -- crd > crds/dbps.io.yaml
	cp crds/dbps.io.yaml charts/dbps-operator/crds/dbps.io.yaml

fmt-check:
	$(CARGO) fmt --all -- --check

lint:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

## bench: start-up, claims at scale on the local plane (shared and dedicated), dedicated claims on the real node
## (DBPS_BENCH_RUNS sets repetitions)
# The claims bench keeps its databases and etcd in memory when /dev/shm has
# room (12 GiB): on a disk, file creation sets the pace of CREATE DATABASE
# and varies several times over minutes (docs/development.md, Benchmarks).
BENCH_TMPDIR ?= $(shell [ "$$(df --output=avail -BG /dev/shm 2>/dev/null | tail -1 | tr -dc 0-9)" -ge 12 ] 2>/dev/null && echo /dev/shm || echo $${TMPDIR:-/tmp})

bench: binaries
	$(CARGO) build --release -p dbps-operator --bin dbps-operator -p dbps-samples --bin dbps-sample
	KUBEBUILDER_ASSETS=$(BINARIES) $(CARGO) bench -p dbps-e2e --bench control_plane_startup --bench node
	KUBEBUILDER_ASSETS=$(BINARIES) TMPDIR=$(BENCH_TMPDIR) $(CARGO) bench -p dbps-e2e --bench claims
	KUBEBUILDER_ASSETS=$(BINARIES) TMPDIR=$(BENCH_TMPDIR) DBPS_BENCH_PLACEMENT=dedicated $(CARGO) bench -p dbps-e2e --bench claims

clean-cache:
	rm -rf $${DBPS_CACHE_DIR:-$$HOME/.cache/dbps}
