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
  printf '  %s\n' "$found" | sed 's/^  $//' >&2
  leftovers=1
}

report "network namespaces" "$(ip netns list | grep "^$NS_PREFIX-" || true)"
report "links" "$(ip -o link show | awk -F': ' '{print $2}' | grep "^$NS_PREFIX-" || true)"
report "routes" "$(ip route show | grep -F "${TEST_SUPERNET}" || true)"
report "mounts" "$(grep -E "$E2E_STATE|/$NS_PREFIX-" /proc/self/mountinfo || true)"
report "cgroups" "$(ls -d /sys/fs/cgroup/*/"$NS_PREFIX"-* 2>/dev/null || true)"
# Processes running our binaries, or with our state directory on their command line
# (etcd and containerd get data/config paths there; node holders run node-init.sh).
procs=$(for d in /proc/[0-9]*; do
  [[ ${d#/proc/} == "$$" ]] && continue
  exe=$(readlink "$d/exe" 2>/dev/null) || continue
  cmd=$(tr '\0' ' ' 2>/dev/null <"$d/cmdline") || continue
  if [[ $exe == "$K8SLAN_CACHE/bin/"* || $cmd == *"$E2E_STATE"* || $cmd == *"lib/node-init.sh"* ]]; then
    echo "${d#/proc/} $cmd"
  fi
done)
report "processes" "$procs"

if ((leftovers)); then
  log "the machine is NOT clean"
  exit 1
fi
log "clean: no namespaces, links, routes, mounts, processes or cgroups of the e2e cluster left"
