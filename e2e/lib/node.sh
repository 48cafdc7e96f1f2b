# shellcheck shell=bash
# Host networks, node namespaces, node cgroups — setup and teardown.
#
# A node is a long-lived "holder" process (the node's PID 1, a reaper) in its own network,
# mount, UTS and PID namespaces; every daemon of the node is started with nsenter into the
# holder's namespaces. See lib/node-init.sh for what the holder mounts.

# --- host side ----------------------------------------------------------------

setup_host_network() {
  if ! ip link show "$MGMT_BRIDGE" >/dev/null 2>&1; then
    log "net: management bridge $MGMT_BRIDGE ($MGMT_HOST_CIDR)"
    ip link add "$MGMT_BRIDGE" mtu "$MGMT_MTU" type bridge
    ip addr add "$MGMT_HOST_CIDR" dev "$MGMT_BRIDGE"
  fi
  ip link set "$MGMT_BRIDGE" up
  # Nothing addressed to the test range may leave the machine: anything not on a
  # test link is unreachable (the connected /24 of the bridge is more specific).
  ip route replace unreachable "$TEST_SUPERNET"

  if ! ip link show "$UNDERLAY_BRIDGE" >/dev/null 2>&1; then
    log "net: underlay bridge $UNDERLAY_BRIDGE (L2 only, IPv6 link-local)"
    ip link add "$UNDERLAY_BRIDGE" mtu "$UNDERLAY_MTU" type bridge mcast_snooping 0
  fi
  ip link set "$UNDERLAY_BRIDGE" up
}

teardown_host_network() {
  ip route del unreachable "$TEST_SUPERNET" 2>/dev/null || true
  command -v nft >/dev/null && underlay_multicast pass
  local br
  for br in "$MGMT_BRIDGE" "$UNDERLAY_BRIDGE"; do
    ip link del "$br" 2>/dev/null || true
  done
}

# Standard directories that the nodes bind-mount over must exist on the host.
# Remember which ones we create so cluster-down can remove them again.
ensure_mountpoints() {
  local d missing
  mkdir -p "$E2E_RUN"
  for d in "${NODE_PRIVATE_DIRS[@]}"; do
    # Record every directory we create, parents included (/opt/cni for /opt/cni/bin).
    missing=$d
    while [[ ! -d $missing ]]; do
      echo "$missing" >>"$E2E_RUN/created-mountpoints"
      missing=$(dirname "$missing")
    done
    mkdir -p "$d"
  done
}

remove_created_mountpoints() {
  local f=$E2E_RUN/created-mountpoints d
  [[ -f $f ]] || return 0
  # Deepest first; only empty directories (never anything a user put there).
  sort -r -u "$f" | while read -r d; do rmdir "$d" 2>/dev/null || true; done
  rm -f "$f"
}

# --- node network -------------------------------------------------------------

setup_node_network() {
  local node=$1 ns id ip other
  ns=$(netns_name "$node"); id=${NODE_ID[$node]}; ip=${NODE_IP[$node]}
  if [[ ! -e /run/netns/$ns ]]; then
    log "net: $node: netns $ns, eth0 $ip"
    ip netns add "$ns"
  fi
  if ! ip -n "$ns" link show eth0 >/dev/null 2>&1; then
    ip link add "$NS_PREFIX-$id-m" mtu "$MGMT_MTU" type veth peer name eth0 netns "$ns"
    ip link set "$NS_PREFIX-$id-m" master "$MGMT_BRIDGE" up
    ip -n "$ns" addr add "$ip/24" dev eth0
  fi
  ip -n "$ns" link set lo up
  ip -n "$ns" link set eth0 up
  # Pods of the other nodes are reached through those nodes; no default route.
  for other in "${NODES[@]}"; do
    [[ $other == "$node" ]] || ip -n "$ns" route replace "${POD_CIDR[$other]}" via "${NODE_IP[$other]}"
  done
  # Locally generated packets to service IPs need a route before kube-proxy's DNAT.
  ip -n "$ns" route replace "$SERVICE_CIDR" dev eth0
  nsenter --net="/run/netns/$ns" sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1

  if [[ " ${WORKERS[*]} " == *" $node "* ]] && ! ip -n "$ns" link show "$UNDERLAY_IF" >/dev/null 2>&1; then
    log "net: $node: underlay port $UNDERLAY_IF"
    ip link add "$NS_PREFIX-$id-u" mtu "$UNDERLAY_MTU" type veth peer name "$UNDERLAY_IF" netns "$ns"
    ip link set "$NS_PREFIX-$id-u" master "$UNDERLAY_BRIDGE" up
    ip -n "$ns" addr add "$(underlay_v4 "$node")/24" dev "$UNDERLAY_IF"
    ip -n "$ns" link set "$UNDERLAY_IF" up
  fi
}

# A worker's IPv4 address on the underlay: UNDERLAY_V4_CIDR's .<last octet of its NODE_IP>.
underlay_v4() {
  echo "${UNDERLAY_V4_CIDR%.*}.${NODE_IP[$1]##*.}"
}

# underlay_multicast drop|pass: make the underlay bridge drop IP multicast between nodes as
# cloud and routed networks do: every IPv4 multicast packet and every IPv6 multicast packet but
# neighbour discovery (ICMPv6 133-137), which IPv6 needs to resolve a unicast peer. ARP
# (broadcast, not IP multicast) passes. `pass` removes the rule. Idempotent.
underlay_multicast() {
  nft delete table bridge "$UNDERLAY_NFT_TABLE" 2>/dev/null || true
  [[ $1 == pass ]] && return 0
  [[ $1 == drop ]] || die "underlay_multicast: drop or pass, not '$1'"
  local node ports=()
  for node in "${WORKERS[@]}"; do ports+=("\"$NS_PREFIX-${NODE_ID[$node]}-u\""); done
  local IFS=,
  nft -f - <<NFT
table bridge $UNDERLAY_NFT_TABLE {
  chain forward {
    type filter hook forward priority 0; policy accept;
    iifname != { ${ports[*]} } accept
    ip daddr 224.0.0.0/4 counter drop
    ip6 daddr ff00::/8 icmpv6 type { nd-router-solicit, nd-router-advert, nd-neighbor-solicit, nd-neighbor-advert, nd-redirect } accept
    ip6 daddr ff00::/8 counter drop
  }
}
NFT
}

# --- node cgroups ---------------------------------------------------------------

# Every mounted cgroup hierarchy (v1 controllers, the named systemd one, unified v2).
cgroup_hierarchies() {
  local h
  for h in /sys/fs/cgroup/*/; do
    [[ -f $h/cgroup.procs ]] && realpath "$h"
  done | sort -u
}

# The kubelet refuses a cgroupRoot that is missing in any hierarchy; cpuset children
# start with empty cpus/mems and accept no tasks until they are filled.
setup_node_cgroups() {
  local node=$1 root h
  root=$(cgroup_root "$node")
  for h in $(cgroup_hierarchies); do
    mkdir -p "$h$root"
    if [[ -f $h/cpuset.cpus ]]; then
      [[ -n $(<"$h$root/cpuset.cpus") ]] || cat "$h/cpuset.cpus" >"$h$root/cpuset.cpus"
      [[ -n $(<"$h$root/cpuset.mems") ]] || cat "$h/cpuset.mems" >"$h$root/cpuset.mems"
    fi
  done
}

node_cgroup_pids() {
  local node=$1 h
  for h in $(cgroup_hierarchies); do
    [[ -d $h$(cgroup_root "$node") ]] && find "$h$(cgroup_root "$node")" -name cgroup.procs -exec cat {} + 2>/dev/null
  done | sort -u
}

remove_node_cgroups() {
  local node=$1 h
  for h in $(cgroup_hierarchies); do
    [[ -d $h$(cgroup_root "$node") ]] || continue
    find "$h$(cgroup_root "$node")" -depth -type d -exec rmdir {} + 2>/dev/null || true
  done
}

# --- node holder ----------------------------------------------------------------

start_node_holder() {
  local node=$1 pidfile ns
  pidfile=$(holder_pidfile "$node"); ns=$(netns_name "$node")
  alive_pid "$pidfile" >/dev/null && return
  log "node: $node: starting namespace holder"
  mkdir -p "$(node_dir "$node")" "$(node_logs "$node")" "$E2E_RUN"
  rm -f "$pidfile"
  setsid nsenter --net="/run/netns/$ns" \
    unshare --mount --uts --pid --propagation private --fork --kill-child -- \
    bash "$E2E_DIR/lib/node-init.sh" "$node" "$pidfile" \
    >>"$(node_logs "$node")/holder.log" 2>&1 </dev/null &
  wait_for 20 "holder of $node" alive_pid "$pidfile" || die "node $node did not start (see $(node_logs "$node")/holder.log)"
  # Remember the namespaces: teardown finds every process of the node by them.
  local pid; pid=$(<"$pidfile")
  readlink "/proc/$pid/ns/mnt" >"$E2E_RUN/$node.mntns"
  readlink "/proc/$pid/ns/net" >"$E2E_RUN/$node.netns"
  readlink "/proc/$pid/ns/pid" >"$E2E_RUN/$node.pidns"
}

# Every process that belongs to a node: in its network, mount or PID namespace, or in
# its cgroup tree (containers have their own namespaces but live in the tree).
node_pids() {
  local node=$1 net="" mnt="" pidns=""
  [[ -f $E2E_RUN/$node.netns ]] && net=$(<"$E2E_RUN/$node.netns")
  [[ -f $E2E_RUN/$node.mntns ]] && mnt=$(<"$E2E_RUN/$node.mntns")
  [[ -f $E2E_RUN/$node.pidns ]] && pidns=$(<"$E2E_RUN/$node.pidns")
  if [[ -e /run/netns/$(netns_name "$node") ]]; then
    net="net:[$(stat -L -c %i "/run/netns/$(netns_name "$node")")]"
  fi
  {
    # One find over /proc/<pid>/ns/{net,mnt} prints "<dir> <link target>".
    find /proc/[0-9]*/ns/ -maxdepth 1 \( -name net -o -name mnt -o -name pid \) -printf '%h %l\n' 2>/dev/null \
      | awk -v net="${net:-none}" -v mnt="${mnt:-none}" -v pidns="${pidns:-none}" \
        '$2 == net || $2 == mnt || $2 == pidns { split($1, p, "/"); print p[3] }'
    node_cgroup_pids "$node"
  } | sort -u | grep -vx "$$" || true
}

# wait_gone NODE SECONDS: wait until the node has no processes left.
wait_gone() {
  local node=$1 deadline=$((SECONDS + $2))
  while [[ -n $(node_pids "$node") ]]; do
    ((SECONDS < deadline)) || return 1
    sleep 0.5
  done
}

# SIGTERM everything of the node, give it 5s, then SIGKILL what is left (the API
# server may linger in graceful shutdown; nothing here needs more).
kill_node_processes() {
  local node=$1 pids sig
  for sig in TERM KILL; do
    pids=$(node_pids "$node")
    [[ -n $pids ]] || return 0
    [[ $sig == KILL ]] && log "down: $node: SIGKILL for $(ps -o comm= -p "${pids//$'\n'/,}" | sort -u | tr '\n' ' ')"
    # shellcheck disable=SC2086
    kill -"$sig" $pids 2>/dev/null || true
    wait_gone "$node" 5 && return 0
  done
  log "WARN: $node: processes survive SIGKILL: $(node_pids "$node" | tr '\n' ' ')"
}

teardown_node() {
  local node=$1 ns id
  ns=$(netns_name "$node"); id=${NODE_ID[$node]}
  kill_node_processes "$node"
  remove_node_cgroups "$node"
  ip netns del "$ns" 2>/dev/null || true
  ip link del "$NS_PREFIX-$id-m" 2>/dev/null || true
  ip link del "$NS_PREFIX-$id-u" 2>/dev/null || true
  rm -f "$E2E_RUN/$node".* 
  rm -rf "$(node_dir "$node")"
}
