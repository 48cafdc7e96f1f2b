#!/usr/bin/env bash
# Fail (exit 1) if anything of the e2e cluster is left on this machine: network
# namespaces, links, routes, mounts, processes or cgroups. Read-only.
set -euo pipefail
source "$(dirname "$0")/lib/common.sh"

leftovers=0
report() {
  local what=$1 found=$2
  [[ -z $found ]] && return
  log "LEFTOVER $what:"
  # shellcheck disable=SC2001  # indent every line
  sed 's/^/  /' <<<"$found" >&2
  leftovers=1
}

report "network namespaces" "$(ip netns list | grep "^$NS_PREFIX-" || true)"
report "links" "$(ip -o link show | awk -F': ' '{print $2}' | grep "^$NS_PREFIX-" || true)"
report "routes" "$(ip route show | grep -F "${TEST_SUPERNET}" || true)"
report "mounts" "$(grep -E "$E2E_STATE|/$NS_PREFIX-" /proc/self/mountinfo || true)"
report "cgroups" "$(ls -d /sys/fs/cgroup/*/"$NS_PREFIX"-* 2>/dev/null || true)"
# Processes of the cluster: with our state directory on the command line (etcd,
# apiserver, containerd...), living in a node's mount namespace (their mount table
# shows binds from the state directory: kubelet, kube-proxy, shims, containers) or in
# a node's cgroup tree. Other users of the shared binary cache are not ours.
procs=$(
  { grep -l -F "$E2E_STATE" /proc/[0-9]*/cmdline /proc/[0-9]*/mountinfo 2>/dev/null || true
    grep -l "^[0-9]*:[^:]*:/$NS_PREFIX-" /proc/[0-9]*/cgroup 2>/dev/null || true
  } | cut -d/ -f3 | sort -u | { grep -vx -e "$$" -e "$BASHPID" || true; } | while read -r pid; do
    [[ -d /proc/$pid ]] || continue
    echo "$pid $(tr '\0' ' ' 2>/dev/null </proc/"$pid"/cmdline)"
  done
)
report "processes" "$procs"

if ((leftovers)); then
  log "the machine is NOT clean"
  exit 1
fi
log "clean: no namespaces, links, routes, mounts, processes or cgroups of the e2e cluster left"
