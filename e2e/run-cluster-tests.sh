#!/usr/bin/env bash
# `make test-cluster`: the cluster tier. Builds what is missing (cached), brings the e2e cluster
# up (reused when running), installs k8slan with Helm (e2e/install-k8slan.sh), runs the k8slan
# scenario tests in three phases (the rest; the VM scenarios of test_k8slan_kubevirt.py once
# KubeVirt is built and installed by e2e/kubevirt/install.sh; uninstall and the e2e smoke
# tests), and tears everything down with the leftover check.
# On failure, logs are collected under $E2E_LOGS/k8slan (kept by cluster-down): the agent and
# controller logs and the events of each failed test (tests/conftest.py), all events, and the
# kubelet/containerd/multus logs of every node (their last lines are printed too).
# KEEP_CLUSTER=1 leaves the cluster running; extra arguments go to pytest (e.g. -k members).
set -euo pipefail
source "$(dirname "$0")/lib/common.sh"
ARTIFACTS=$K8SLAN_ARTIFACTS

collect_logs() {
  mkdir -p "$ARTIFACTS"
  local k=$E2E_DIR/kubectl node f
  "$k" get events -A --sort-by=.lastTimestamp >"$ARTIFACTS/events.txt" 2>&1 || true
  "$k" get pods -A -o wide >"$ARTIFACTS/pods.txt" 2>&1 || true
  "$k" get lans -A -o yaml >"$ARTIFACTS/lans.yaml" 2>&1 || true
  "$k" -n "$K8SLAN_NAMESPACE" get leases -o yaml >"$ARTIFACTS/leases.yaml" 2>&1 || true
  "$k" get vm,vmi -A -o wide >"$ARTIFACTS/vms.txt" 2>&1 || true
  for pod in $("$k" -n "$KUBEVIRT_NAMESPACE" get pods -o name 2>/dev/null); do
    "$k" -n "$KUBEVIRT_NAMESPACE" logs "$pod" --all-containers --prefix >"$ARTIFACTS/${pod#pod/}.log" 2>&1 || true
  done
  for pod in $("$k" -n "$K8SLAN_NAMESPACE" get pods -o name 2>/dev/null); do
    "$k" -n "$K8SLAN_NAMESPACE" logs "$pod" --all-containers --prefix >"$ARTIFACTS/${pod#pod/}.log" 2>&1 || true
  done
  for node in "${NODES[@]}"; do
    for f in kubelet containerd multus; do
      [[ -s $(node_logs "$node")/$f.log ]] || continue
      printf '\n===== %s %s (last 30 lines; full: %s) =====\n' "$node" "$f" "$(node_logs "$node")/$f.log" >&2
      tail -n 30 "$(node_logs "$node")/$f.log" >&2
    done
  done
  log "logs collected in $ARTIFACTS (and $E2E_LOGS/<node>/)"
}

# pytest in one phase; "no test selected" (exit 5, e.g. -k naming another file's tests) is fine.
phase() {
  local status=0
  run_pytest -s "$@" || status=$?
  ((status == 5)) && status=0
  return "$status"
}

# KubeVirt's build is cached after the first run; cold it costs ~35 CPU-minutes (binaries, the
# guest's kernel). It runs at the lowest priority beside the first phase of scenarios, which
# leaves a core mostly idle, and only when a KubeVirt test is selected at all.
kubevirt_wanted() {
  local status=0
  run_pytest -q --collect-only "$TESTS/test_k8slan_kubevirt.py" "$@" >/dev/null 2>&1 || status=$?
  ((status == 0))
}

TESTS=$E2E_DIR/tests
"$E2E_DIR/build.sh" all
"$E2E_DIR/cluster-up.sh" >/dev/null
rc=0
"$E2E_DIR/install-k8slan.sh" >/dev/null || rc=$?
kubevirt_build=""
if ((rc == 0)) && kubevirt_wanted "$@"; then
  nice -n 19 "$E2E_DIR/kubevirt/build.sh" all guest >"$E2E_LOGS/kubevirt-build.log" 2>&1 &
  kubevirt_build=$!
  log "KubeVirt: building in the background (cached when built before; log $E2E_LOGS/kubevirt-build.log)"
fi
first=()
for f in "$TESTS"/test_k8slan_*.py; do
  [[ $f == */test_k8slan_kubevirt.py || $f == */test_k8slan_uninstall.py ]] || first+=("$f")
done
((rc == 0)) && { phase "$TESTS/test_helpers.py" "${first[@]}" "$@" || rc=$?; }
if [[ -n $kubevirt_build ]]; then
  wait "$kubevirt_build" || { log "KubeVirt build failed:"; tail -n 40 "$E2E_LOGS/kubevirt-build.log" >&2; rc=1; }
  ((rc == 0)) && { "$E2E_DIR/kubevirt/install.sh" >/dev/null || rc=$?; }
  ((rc == 0)) && { phase "$TESTS/test_k8slan_kubevirt.py" "$@" || rc=$?; }
fi
# Uninstall runs last among the k8slan tests (it does not reinstall), then the smoke tests.
((rc == 0)) && { phase "$TESTS/test_k8slan_uninstall.py" "$TESTS/test_smoke.py" "$@" || rc=$?; }
((rc == 0)) || collect_logs
teardown_and_exit test-cluster "$rc"
