#!/usr/bin/env bash
# CI proof for e2e/: build (cached), cluster-up, pytest smoke tests, cluster-down, then
# check that nothing is left. KEEP_CLUSTER=1 skips the teardown (for debugging).
# Extra arguments go to pytest (e.g. -k multus). The k8slan tests need k8slan installed:
# make test-cluster runs them.
set -euo pipefail
source "$(dirname "$0")/lib/common.sh"

"$E2E_DIR/build.sh" all
"$E2E_DIR/cluster-up.sh" >/dev/null
rc=0
run_pytest "$E2E_DIR/tests/test_helpers.py" "$E2E_DIR/tests/test_smoke.py" "$@" || rc=$?
teardown_and_exit smoke "$rc"
