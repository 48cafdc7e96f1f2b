#!/usr/bin/env bash
# Runs as the namespace holder of one node, already inside the node's network
# namespace and a fresh, private mount, UTS and PID namespace, as its PID 1 (see
# start_node_holder). KubeVirt's virt-handler (a hostPID pod) takes PID 1 for the node's init:
# /proc/1/root and /proc/1/ns/mnt must be the node's, not the host's.
# Usage: node-init.sh NODE PIDFILE
set -euo pipefail
source "$(dirname "$0")/common.sh"
node=$1 pidfile=$2
root=$(node_root "$node")

# A sysfs of our own shows this netns's devices; keep the host cgroup tree, which the
# new sysfs would hide: bind it aside, mount sysfs, move it back.
aside=$(node_dir "$node")/cgroup-aside
mkdir -p "$aside"
mount --rbind /sys/fs/cgroup "$aside"
mount -t sysfs -o nosuid,nodev,noexec sysfs /sys
mount --move "$aside" /sys/fs/cgroup
rmdir "$aside"

# Private copies of the standard runtime paths.
for d in "${NODE_PRIVATE_DIRS[@]}"; do
  mkdir -p "$root$d"
  mount --bind "$root$d" "$d"
done
# A machine-id per node (kubelet reports it; cadvisor keys on it).
if [[ -f /etc/machine-id ]]; then
  [[ -s $root/machine-id ]] || od -An -N16 -tx1 /dev/urandom | tr -d ' \n' >"$root/machine-id"
  mount --bind "$root/machine-id" /etc/machine-id
fi

# containerd and kubelet expect mounts to propagate (pod netns files, volumes).
mount --make-rshared /
hostname "$node"

# The host's /proc is still mounted: it names this process by its host pid. Then a /proc of
# the node's own PID namespace replaces it.
read -r host_pid _ </proc/self/stat
mount -t proc -o nosuid,nodev,noexec proc /proc

echo "$host_pid" >"$pidfile"
echo "node $node: holder $host_pid (PID 1 of the node) ready"
exec "$NODE_INIT"
