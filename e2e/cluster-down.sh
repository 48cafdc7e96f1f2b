#!/usr/bin/env bash
# Remove everything cluster-up made: processes, cgroups, namespaces, links, routes,
# mounts, the mount points it created and the state (logs stay in $E2E_LOGS).
# Fails if anything is left over afterwards (checked by check-clean.sh).
set -euo pipefail
source "$(dirname "$0")/lib/common.sh"
source "$E2E_DIR/lib/node.sh"

main() {
  [[ $EUID -eq 0 ]] || die "run as root"
  local node i
  # Workers first, control plane last (its kubelet and apiserver go away together).
  for ((i = ${#NODES[@]} - 1; i >= 0; i--)); do
    node=${NODES[i]}
    log "down: $node"
    teardown_node "$node"
  done
  teardown_host_network
  remove_created_mountpoints
  rm -rf "$E2E_NODES" "$E2E_RUN" "$E2E_PKI" "$ADMIN_KUBECONFIG"
  "$E2E_DIR/check-clean.sh"
}

main "$@"
