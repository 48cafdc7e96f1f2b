#!/usr/bin/env bash
# Import OCI archives (from oci-image.py) into the CRI image store of running nodes,
# so pods can use them with imagePullPolicy: Never / IfNotPresent.
# Usage: e2e/images/import-image.sh [--node NODE]... IMAGE.tar...
#   Without --node, every node of the cluster gets the images.
set -euo pipefail
source "$(dirname "$0")/../lib/common.sh"

nodes=() tars=()
while (($#)); do
  case $1 in
    --node) nodes+=("$2"); shift 2 ;;
    -h|--help) sed -n '2,6p' "$0"; exit 0 ;;
    *) tars+=("$1"); shift ;;
  esac
done
((${#tars[@]})) || die "usage: $0 [--node NODE]... IMAGE.tar..."
((${#nodes[@]})) || nodes=("${NODES[@]}")

for node in "${nodes[@]}"; do
  [[ -n ${NODE_ID[$node]:-} ]] || die "unknown node '$node'"
  alive_pid "$(holder_pidfile "$node")" >/dev/null || die "node $node is not running"
  for tar in "${tars[@]}"; do
    ctr -a "$(containerd_sock "$node")" -n k8s.io images import "$tar" >/dev/null
    log "imported $(basename "$tar") into $node"
  done
done
