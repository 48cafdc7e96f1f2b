#!/usr/bin/env bash
# Bring up the e2e cluster: control-plane, worker1, worker2 as namespaced process trees
# on this machine (see e2e/README.md). Idempotent: a running cluster is reused, a
# broken one is torn down and started again. On failure, prints the relevant logs
# and removes what it made. The LAST line on stdout is the admin kubeconfig path.
set -euo pipefail
source "$(dirname "$0")/lib/common.sh"
source "$E2E_DIR/lib/pki.sh"
source "$E2E_DIR/lib/node.sh"
source "$E2E_DIR/lib/components.sh"

START_TIMEOUT=${START_TIMEOUT:-180}   # seconds for nodes to register and become Ready

# none: nothing of ours; running: every node holder alive; broken: anything else.
cluster_state() {
  local node alive=0 any=0
  for node in "${NODES[@]}"; do
    alive_pid "$(holder_pidfile "$node")" >/dev/null && alive=$((alive + 1))
    [[ -e /run/netns/$(netns_name "$node") || -d $(node_dir "$node") ]] && any=1
  done
  if ((alive == ${#NODES[@]})); then echo running
  elif ((alive > 0 || any)); then echo broken
  else echo none
  fi
}

dump_logs() {
  local f
  for f in "$E2E_LOGS"/*/{holder,etcd,kube-apiserver,kube-controller-manager,containerd,kubelet,kube-proxy}.log; do
    [[ -s $f ]] || continue
    printf '\n===== %s (last 40 lines) =====\n' "$f" >&2
    tail -n 40 "$f" >&2
  done
}

on_exit() {
  local rc=$?
  ((rc == 0)) && return
  log "cluster-up FAILED (exit $rc); logs that explain why:"
  dump_logs
  log "tearing down what was started (logs stay in $E2E_LOGS)"
  "$E2E_DIR/cluster-down.sh" >&2 || true
  exit "$rc"
}

nodes_registered() { [[ $(admin_kubectl get nodes -o name 2>/dev/null | wc -l) -eq ${#NODES[@]} ]]; }

start_nodes() {
  local node
  for node in "${NODES[@]}"; do
    setup_node_network "$node"
    setup_node_cgroups "$node"
    start_node_holder "$node"
  done
}

start_control_plane() {
  start_etcd
  start_apiserver
  start_controllers
  apply_cluster_manifests
}

start_runtimes() {
  local node
  for node in "${NODES[@]}"; do
    daemon_alive "$node" kubelet && continue
    write_node_configs "$node"
    install_cni "$node"
    start_containerd "$node"
    import_images "$node" "$IMAGES_DIR/pause.tar" "$IMAGES_DIR/testbox.tar"
  done
  for node in "${NODES[@]}"; do start_node_agents "$node"; done
}

wait_ready() {
  wait_for "$START_TIMEOUT" "all nodes to register" nodes_registered || die "nodes did not register"
  admin_kubectl label node "$CONTROL_PLANE" node-role.kubernetes.io/control-plane= --overwrite >/dev/null
  local w
  for w in "${WORKERS[@]}"; do
    admin_kubectl label node "$w" node-role.kubernetes.io/worker= --overwrite >/dev/null
  done
  admin_kubectl wait --for=condition=Ready node --all --timeout="${START_TIMEOUT}s" >/dev/null \
    || die "nodes did not become Ready"
  # Pods get a service account token only once the default account exists.
  wait_for 60 "default service account" admin_kubectl get serviceaccount default -n default
}

main() {
  [[ $EUID -eq 0 ]] || die "run as root"
  local start=$SECONDS state
  "$E2E_DIR/build.sh" packages kubernetes multus helm images

  state=$(cluster_state)
  case $state in
    running) log "cluster already running: checking its parts" ;;
    broken) log "found a partial cluster: removing it first"; "$E2E_DIR/cluster-down.sh" >&2 ;;
  esac
  [[ $state == running ]] || rm -rf "$E2E_LOGS"
  trap on_exit EXIT
  mkdir -p "$E2E_STATE" "$E2E_LOGS" "$E2E_RUN" "$E2E_NODES"

  make_pki
  setup_host_network
  ensure_mountpoints
  start_nodes
  start_control_plane
  start_runtimes
  wait_ready
  log "cluster up in $((SECONDS - start))s: ${NODES[*]} (kubectl: e2e/kubectl)"
  trap - EXIT
  echo "$ADMIN_KUBECONFIG"
}

main "$@"
