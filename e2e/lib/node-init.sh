#!/usr/bin/env bash
# Runs as the namespace holder of one node, already inside the node's network
# namespace and a fresh, private mount + UTS namespace (see start_node_holder).
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

echo $$ >"$pidfile"
echo "node $node: holder $$ ready"
exec sleep infinity
