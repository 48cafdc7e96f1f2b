# e2e cluster targets (a real 3-node Kubernetes on this machine, see e2e/README.md).
# Included by the root Makefile; kept here so e2e changes do not touch it.
E2E_DIR := $(patsubst %/,%,$(dir $(lastword $(MAKEFILE_LIST))))

# Extra static binaries for the testbox image, "SRC:DEST ..." (e.g. a raw-frame tool).
TESTBOX_ADD ?=
export TESTBOX_ADD

.PHONY: e2e-build cluster-up cluster-down e2e-smoke e2e-clean-check

e2e-build: ## e2e: build or reuse Kubernetes, Multus, Helm, images, Python venv (cached)
	$(E2E_DIR)/build.sh all

cluster-up: ## e2e: start the 3-node cluster; last stdout line = admin kubeconfig path
	@$(E2E_DIR)/cluster-up.sh

cluster-down: ## e2e: remove everything cluster-up made; fails if anything is left
	@$(E2E_DIR)/cluster-down.sh

e2e-smoke: ## e2e: cluster-up, pytest smoke tests, cluster-down, leftover check
	@$(E2E_DIR)/run-smoke.sh

e2e-clean-check: ## e2e: fail if anything of the e2e cluster is left on this machine
	@$(E2E_DIR)/check-clean.sh

.PHONY: test-cluster k8slan-install
test-cluster: ## cluster tier: up, install k8slan (Helm), k8slan scenario tests + smoke, down, leftover check
	@$(E2E_DIR)/run-cluster-tests.sh

k8slan-install: ## e2e: build the k8slan image and helm upgrade --install it into the running cluster
	@$(E2E_DIR)/install-k8slan.sh
