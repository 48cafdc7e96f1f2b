# k8slan — top-level tasks. `make demo` runs the main job; `make test` runs every test tier.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

# Build caches live outside the work tree so that fresh clones (CI) reuse them.
K8SLAN_CACHE ?= /var/cache/k8slan
export K8SLAN_CACHE
export CARGO_TARGET_DIR ?= $(K8SLAN_CACHE)/target
CARGO ?= cargo
CRD_FILE := charts/k8slan/crds/lan.k8slan.io_lans.yaml

.PHONY: help
help: ## list the targets
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | sort | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

.PHONY: deps
deps: ## install the Debian packages builds and tests need (idempotent; root)
	./hack/install-deps.sh

.PHONY: build
build: ## build every binary (release)
	$(CARGO) build --release --workspace --bins

# Pinned versions of the tools built from Go modules (Kubernetes, Multus, Helm).
include e2e/versions.env

# Helm renders the all-in-one manifest; it is built from its Go module at the pinned version.
HELM ?= $(K8SLAN_CACHE)/bin/helm-$(HELM_VERSION)/helm
export HELM

.PHONY: helm
helm: ## build (or reuse) the pinned Helm client
	e2e/build.sh helm

.PHONY: generate
generate: helm ## regenerate the CRD YAML and the rendered all-in-one manifest from the code
	$(CARGO) run -q -p k8slan-api --bin crdgen -- $(CRD_FILE)
	./hack/render-manifest.sh

.PHONY: check-generated
check-generated: helm ## fail when a generated artifact differs from what the code generates
	$(CARGO) run -q -p k8slan-api --bin crdgen -- --check $(CRD_FILE)
	./hack/render-manifest.sh --check
	$(HELM) lint charts/k8slan
	./hack/chart-guards.sh

.PHONY: lint
lint: ## rustfmt and clippy, warnings are errors
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

.PHONY: test-unit
test-unit: ## unit tier: no root, no cluster
	$(CARGO) test --workspace

.PHONY: test-privileged
test-privileged: ## privileged tier: real kernel, fresh network namespaces per test (root)
	$(CARGO) test --workspace -- --ignored

FUZZ_SECONDS ?= 30

.PHONY: fuzz-cni
fuzz-cni: ## fuzz the CNI config/environment parser for FUZZ_SECONDS (nightly toolchain, cargo-fuzz)
	cargo +nightly fuzz --version >/dev/null 2>&1 || cargo +nightly install --locked cargo-fuzz
	cd cni/fuzz && mkdir -p corpus/parse && \
	  CARGO_TARGET_DIR=$(K8SLAN_CACHE)/target-fuzz cargo +nightly fuzz run parse corpus/parse seeds -- -max_total_time=$(FUZZ_SECONDS)

.PHONY: image
image: ## build the k8slan image (static binaries) as an OCI archive under $(K8SLAN_CACHE)/images
	./hack/build-image.sh

.PHONY: bench-deviceplugin
bench-deviceplugin: ## device plugin benchmark: Allocate latency, registration time, RSS with 1,000 spokes
	$(CARGO) bench -p k8slan-deviceplugin --features testing --bench deviceplugin

.PHONY: bench-datapath
bench-datapath: ## datapath benchmark: spoke-up latency over 1,000 spokes, multicast and unicast throughput vs hand-built, flood cost, peer changes, the multicast limit (root)
	$(CARGO) bench -p k8slan-netagent --bench datapath

.PHONY: test
test: deps kubevirt-early lint check-generated test-unit test-privileged fuzz-cni test-cluster ## every test tier (the command CI runs)

.PHONY: kubevirt-early
kubevirt-early: ## start building KubeVirt and the test guest's kernel in the background, at the lowest priority (cached: a no-op)
	./hack/kubevirt-early.sh

.PHONY: demo
demo: ## main job: local multi-node cluster, k8slan installed, a demo LAN working
	./hack/demo.sh

-include e2e/e2e.mk
