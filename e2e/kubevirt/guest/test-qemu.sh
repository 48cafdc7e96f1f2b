#!/usr/bin/env bash
# Boot the guest image built by build.sh under plain QEMU (TCG, as in the e2e cluster, whose
# /dev/kvm is useless) the way KubeVirt would, and check its contract (README.md):
#   1. user-data "#!/bin/sh" that sets an address on eth1 and starts the control endpoint:
#      the ready marker appears (timed); the endpoint runs a command and returns its output and
#      "exit=N"; eth1 has that address, its EUI-64 link-local and the MTU the host advertised;
#      a peer on eth1 pings both; the guest's k8slan-frame sends an LLDP frame that tcpdump
#      captures on the peer; the ACPI power button powers it off.
#   2. user-data "Hi.\n" (the seed VM's): ready, nothing run.
# The disk is the exact file inside the OCI archive ($KUBEVIRT_GUEST_TAR), behind a qcow2
# overlay as virt-launcher puts it; -m 62500k is "memory: 64M"; NIC ROMs off, q35, virtio.
# The peer is a tap in a throwaway network namespace (QEMU runs in it too: user networking's
# port forward for 8080 lives on that namespace's loopback). Test addresses only.
# Needs root, qemu-system-x86, qemu-utils, xorriso, tcpdump, curl, socat.
# Usage: e2e/kubevirt/guest/test-qemu.sh (after build.sh); GUEST_TEST_LOGS=DIR keeps the consoles.
set -euo pipefail
# shellcheck source=../../lib/common.sh
source "$(dirname "$0")/../../lib/common.sh"
# shellcheck source=../../lib/kubevirt.sh
source "$E2E_DIR/lib/kubevirt.sh"

NETNS=k8sguest-$$
TAP=gtap0
GUEST_V4=198.18.250.2 PEER_V4=198.18.250.1 LAN_MTU=1400
GUEST_MAC1=52:54:00:4b:38:01                   # eth1; its link-local is fe80::5054:ff:fe4b:3801
GUEST_LL1=fe80::5054:ff:fe4b:3801
CONTROL_PORT=18080                             # host side of the forward to the guest's 8080
BOOT_TIMEOUT=${BOOT_TIMEOUT:-120}
WORK=$(mktemp -d)
QEMU_PID=""
BOOTS=0
CONSOLE=""

# Stops the guest (by QEMU's own pid file) and removes the namespace, whatever failed.
stop_guest() {
  local pid
  pid=$(cat "$WORK/qemu.pid" 2>/dev/null) || return 0
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true                 # QEMU is this shell's child ($!)
  rm -f "$WORK/qemu.pid"
}

cleanup() {
  set +e
  stop_guest
  ip netns del "$NETNS" 2>/dev/null
  [[ -n ${GUEST_TEST_LOGS:-} ]] && mkdir -p "$GUEST_TEST_LOGS" && cp "$WORK"/console-*.log "$GUEST_TEST_LOGS/"
  rm -rf "$WORK"
}
trap cleanup EXIT

fail() { log "FAIL: $*"; [[ -f $CONSOLE ]] && tail -n 30 "$CONSOLE" >&2; exit 1; }
pass() { log "ok: $*"; }
in_ns() { ip netns exec "$NETNS" "$@"; }

# The disk file from the image's one layer, as containerd would unpack it.
extract_disk() {
  local oci=$WORK/oci manifest layer
  mkdir -p "$oci" "$WORK/layer"
  tar -xf "$KUBEVIRT_GUEST_TAR" -C "$oci"
  manifest=$(jq -r '.manifests[0].digest | sub("sha256:"; "")' "$oci/index.json")
  layer=$(jq -r '.layers[0].digest | sub("sha256:"; "")' "$oci/blobs/sha256/$manifest")
  tar -xzf "$oci/blobs/sha256/$layer" -C "$WORK/layer" --numeric-owner
  [[ $(find "$WORK/layer/disk" -type f | wc -l) == 1 ]] || fail "/disk must hold exactly one file"
  [[ $(tar -tvzf "$oci/blobs/sha256/$layer" --numeric-owner disk/k8slan-guest.img) == \
    "-r--r----- 107/107 "* ]] || fail "/disk/k8slan-guest.img is not 107:107 0440"
  pass "image: /disk/k8slan-guest.img 107:107 0440, $(stat -c %s "$WORK/layer/disk/k8slan-guest.img") bytes"
  qemu-img create -q -f qcow2 -F raw -b "$WORK/layer/disk/k8slan-guest.img" "$WORK/overlay.qcow2"
}

# A NoCloud ISO as virt-launcher makes it (xorrisofs, volume id cidata, Joliet, Rock Ridge).
make_cidata() {
  local user_data=$1 dir=$WORK/cidata
  rm -rf "$dir" "$WORK/cidata.iso"; mkdir -p "$dir"
  printf '%s' "$user_data" >"$dir/user-data"
  printf '{"instance-id":"guest-test.default","local-hostname":"guest-test"}' >"$dir/meta-data"
  xorrisofs -quiet -output "$WORK/cidata.iso" -volid cidata -joliet -rock \
    -partition_cyl_align on "$dir" 2>/dev/null
}

setup_netns() {
  ip netns add "$NETNS"
  in_ns ip link set lo up
  in_ns ip tuntap add dev "$TAP" mode tap
  in_ns ip link set "$TAP" mtu "$LAN_MTU" up
  in_ns ip addr add "$PEER_V4/24" dev "$TAP"
}

start_guest() {
  BOOTS=$((BOOTS + 1)); CONSOLE=$WORK/console-$BOOTS.log
  # ip netns exec execs QEMU: $! is QEMU itself (and -pidfile says so too).
  ip netns exec "$NETNS" qemu-system-x86_64 -pidfile "$WORK/qemu.pid" -accel tcg -machine q35 \
    -m 62500k -smp 1 -display none \
    -no-reboot -serial "file:$CONSOLE" -monitor "unix:$WORK/monitor,server,nowait" \
    -drive "file=$WORK/overlay.qcow2,format=qcow2,if=none,id=disk0,snapshot=on" \
    -device virtio-blk-pci,drive=disk0,bootindex=1 \
    -drive "file=$WORK/cidata.iso,format=raw,if=none,id=disk1,readonly=on" \
    -device virtio-blk-pci,drive=disk1 \
    -netdev "user,id=net0,hostfwd=tcp:127.0.0.1:$CONTROL_PORT-:8080" \
    -device virtio-net-pci,netdev=net0,romfile= \
    -netdev "tap,id=net1,ifname=$TAP,script=no,downscript=no" \
    -device "virtio-net-pci,netdev=net1,mac=$GUEST_MAC1,host_mtu=$LAN_MTU,romfile=" \
    >"$WORK/qemu-$BOOTS.log" 2>&1 &
  QEMU_PID=$!
  QEMU_START=$SECONDS
}

wait_console() {
  local pattern=$1 timeout=$2 deadline=$((SECONDS + $2))
  until grep -q "$pattern" "$CONSOLE" 2>/dev/null; do
    ((SECONDS < deadline)) || fail "no \"$pattern\" on the console after ${timeout}s"
    kill -0 "$QEMU_PID" 2>/dev/null || fail "qemu exited before \"$pattern\""
    sleep 0.5
  done
}

wait_ready() {
  wait_console 'k8slan-guest: ready' "$BOOT_TIMEOUT"
  pass "ready after $((SECONDS - QEMU_START))s wall ($(grep -o 'k8slan-guest: up [0-9.]*s' \
    "$CONSOLE" | cut -d ' ' -f 3) guest uptime)"
}

# POSTs a script to the control endpoint; prints the response body.
control() {
  in_ns curl -sS --max-time 90 --data-binary "$1" "http://127.0.0.1:$CONTROL_PORT/cgi-bin/run"
}

check_control() {
  local out
  out=$(control 'echo out-line; echo err-line >&2; exit 3') || fail "control endpoint unreachable"
  [[ $out == $'out-line\nerr-line\nexit=3' ]] || fail "control endpoint answered: $out"
  pass "control endpoint: output and exit=3 returned"
}

check_eth1() {
  local out
  out=$(control 'ip -o addr show dev eth1; cat /sys/class/net/eth1/mtu')
  grep -q "inet $GUEST_V4/24" <<<"$out" || fail "eth1 lacks $GUEST_V4/24: $out"
  grep -q "inet6 $GUEST_LL1/64" <<<"$out" || fail "eth1 lacks $GUEST_LL1/64: $out"
  grep -qx "$LAN_MTU" <<<"$out" || fail "eth1 MTU is not $LAN_MTU: $out"
  in_ns ping -c 2 -W 5 "$GUEST_V4" >/dev/null || fail "peer cannot ping $GUEST_V4"
  in_ns ping -6 -c 2 -W 5 "$GUEST_LL1%$TAP" >/dev/null || fail "peer cannot ping $GUEST_LL1"
  pass "eth1: $GUEST_V4/24, $GUEST_LL1 (pinged from the peer), mtu $LAN_MTU"
}

check_lldp() {
  local cap=$WORK/lldp.txt pid
  in_ns timeout 30 tcpdump -l -n -e -c 1 -i "$TAP" 'ether proto 0x88cc' >"$cap" 2>/dev/null &
  pid=$!
  sleep 2
  control "k8slan-frame send --iface eth1 --dst 01:80:c2:00:00:0e --src $GUEST_MAC1 \
    --ethertype 88cc --payload k8slan-guest-lldp" >/dev/null
  wait "$pid" || fail "no LLDP frame captured on the peer"
  grep -q "$GUEST_MAC1 > 01:80:c2:00:00:0e, ethertype LLDP (0x88cc)" "$cap" \
    || fail "unexpected capture: $(cat "$cap")"
  pass "LLDP frame from the guest's k8slan-frame captured: $(head -c 90 "$cap")"
}

check_poweroff() {
  local deadline=$((SECONDS + 60))
  in_ns socat - "UNIX-CONNECT:$WORK/monitor" <<<"system_powerdown" >/dev/null
  while kill -0 "$QEMU_PID" 2>/dev/null; do
    ((SECONDS < deadline)) || fail "guest did not power off within 60s of the power button"
    sleep 0.5
  done
  wait "$QEMU_PID" || fail "qemu exited with status $? after the power off"
  rm -f "$WORK/qemu.pid"
  grep -q 'k8slan-guest: power button' "$CONSOLE" || fail "power button not logged"
  pass "ACPI power button: the guest powered off"
}

# The seed VM's user-data (base64 SGkuXG4=: the 5 bytes `Hi.\n`): boots to ready, runs nothing,
# and a LAN peer reaches the guest's link-local address with no configuration at all.
check_not_a_script() {
  make_cidata 'Hi.\n'
  start_guest
  wait_ready
  in_ns ping -6 -c 2 -W 5 "$GUEST_LL1%$TAP" >/dev/null || fail "peer cannot ping $GUEST_LL1"
  stop_guest
  grep -q 'k8slan-guest: user-data is not a script' "$CONSOLE" || fail "no 'not a script' line"
  ! grep -q 'running user-data' "$CONSOLE" || fail "ran a user-data that is not a script"
  pass "user-data \"Hi.\\n\": ignored with one console line; $GUEST_LL1 pinged from the peer"
}

main() {
  [[ $(id -u) == 0 ]] || die "run as root (network namespace, tap)"
  [[ -f $KUBEVIRT_GUEST_TAR ]] || die "no $KUBEVIRT_GUEST_TAR: run e2e/kubevirt/guest/build.sh"
  extract_disk
  setup_netns
  make_cidata "#!/bin/sh
ip addr add $GUEST_V4/24 dev eth1
k8slan-guest-control start
"
  start_guest
  wait_ready
  grep -q 'k8slan-guest: user-data exit=0' "$CONSOLE" || fail "user-data did not exit 0"
  check_control
  check_eth1
  check_lldp
  check_poweroff
  check_not_a_script
  log "guest contract: all checks passed"
}

main "$@"
