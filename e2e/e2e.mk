# e2e cluster targets; included by the root Makefile. See e2e/README.md.
E2E_DIR := $(dir $(lastword $(MAKEFILE_LIST)))
E2E_DIR := $(E2E_DIR:/=)

.PHONY: e2e-build cluster-up cluster-down e2e-smoke e2e-clean-check

## e2e-build: build or reuse Kubernetes, Multus, Helm, images, Python venv (cached)
e2e-build:
	$(E2E_DIR)/build.sh all

## cluster-up: start the 3-node cluster; last line of output = admin kubeconfig path
cluster-up:
	@$(E2E_DIR)/cluster-up.sh

## cluster-down: remove everything cluster-up made, fail if anything is left
cluster-down:
	@$(E2E_DIR)/cluster-down.sh

## e2e-smoke: cluster-up, pytest smoke tests, cluster-down, leftover check
e2e-smoke:
	@$(E2E_DIR)/run-smoke.sh

e2e-clean-check:
	@$(E2E_DIR)/check-clean.sh
