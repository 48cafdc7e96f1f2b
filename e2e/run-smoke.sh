#!/usr/bin/env bash
# CI proof for e2e/: build (cached), cluster-up, pytest smoke tests, cluster-down, then
# check that nothing is left. KEEP_CLUSTER=1 skips the teardown (for debugging).
# Extra arguments go to pytest (e.g. -k multus).
set -euo pipefail
source "$(dirname "$0")/lib/common.sh"

"$E2E_DIR/build.sh" all
"$E2E_DIR/cluster-up.sh" >/dev/null
rc=0
env KUBERNETES_VERSION="$KUBERNETES_VERSION" PY_VENV="$PY_VENV" TESTBOX_IMAGE="$TESTBOX_IMAGE" \
  "$PY_VENV/bin/pytest" -p no:cacheprovider -v "$E2E_DIR/tests" "$@" || rc=$?
if [[ ${KEEP_CLUSTER:-0} == 1 ]]; then
  log "KEEP_CLUSTER=1: cluster left running"
else
  "$E2E_DIR/cluster-down.sh" || rc=1      # includes check-clean.sh
fi
if ((rc == 0)); then log "smoke: PASSED"; else log "smoke: FAILED"; fi
exit "$rc"
