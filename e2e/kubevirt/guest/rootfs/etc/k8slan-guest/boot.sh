#!/bin/sh
# The k8slan test guest's boot (busybox init's sysinit, see /etc/inittab). Everything it does is
# announced on the console (ttyS0) as "k8slan-guest: ..." lines; the last one is
#   k8slan-guest: ready
# once the filesystems, NICs and the cloud-init user-data are done. The contract (NIC
# names, user-data, the test control endpoint) is in e2e/kubevirt/guest/README.md.
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export PATH HOME=/root
CLOUD_INIT=/run/cloud-init

say() { echo "k8slan-guest: $*"; }

mount_filesystems() {
  mount -t proc proc /proc
  mount -t sysfs sysfs /sys
  mount -t devtmpfs devtmpfs /dev
  mkdir -p /dev/pts /dev/shm
  mount -t devpts devpts /dev/pts
  mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /run
  mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /tmp
}

# Ethernet NICs in the order the kernel registered them (ifindex), which is KubeVirt's
# interface order: eth0 is the first interface of the VM spec.
nics() {
  local dev
  for dev in /sys/class/net/*; do
    [ "$(cat "$dev/type")" = 1 ] || continue        # ARPHRD_ETHER only (skips lo)
    echo "$(cat "$dev/ifindex") ${dev##*/}"
  done | sort -n | while read -r _ name; do echo "$name"; done
}

# Every NIC comes up as the device advertised it: the MTU virtio-net read from the host
# (VIRTIO_NET_F_MTU) stays, and the kernel gives it an EUI-64 fe80:: address from its MAC.
nics_up() {
  local nic
  for nic in $(nics); do
    ip link set dev "$nic" up || say "$nic did not come up"
  done
}

# The first NIC (KubeVirt's pod network, masquerade) asks for DHCP. udhcpc goes to the
# background once it has a lease (renewals); without one it gives up (-n) after ~10 s, so a
# VM without a pod network sends no DHCP into its LANs after boot.
dhcp_first_nic() {
  local first
  first=$(nics | head -n 1)
  [ -n "$first" ] || { say "no NIC"; return; }
  udhcpc -i "$first" -s /etc/k8slan-guest/udhcpc.sh -n -t 5 -T 2 -x hostname:"$(hostname)" \
    >/dev/null 2>&1 || say "$first: no DHCP lease; it keeps only its link-local address"
}

# Whether $1 has a link-local address that passed duplicate address detection.
has_link_local() {
  ip -6 addr show dev "$1" scope link | grep inet6 | grep -qv tentative
}

# One line per NIC: name, MAC, MTU and addresses, once every NIC has its usable link-local
# address (it appears a moment after the link is up, then DAD takes about a second; ~5 s max).
report_nics() {
  local nic i=0
  for nic in $(nics); do
    while ! has_link_local "$nic" && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
    has_link_local "$nic" || say "$nic has no link-local address yet"
  done
  for nic in $(nics); do
    say "$nic mac $(cat "/sys/class/net/$nic/address") mtu $(cat "/sys/class/net/$nic/mtu")" \
      "addrs $(ip -o addr show dev "$nic" | awk '{printf "%s ", $4}')"
  done
}

# The ISO9660 volume label of a block device, or nothing (primary volume descriptor at 32 KiB).
iso_label() {
  [ "$(dd if="$1" bs=1 skip=32769 count=5 2>/dev/null)" = CD001 ] || return 0
  dd if="$1" bs=1 skip=32808 count=32 2>/dev/null | tr -d ' \000' | tr '[:upper:]' '[:lower:]'
}

# The NoCloud data source: an ISO9660 labelled "cidata" (KubeVirt: on a virtio disk). Block
# devices may appear a moment after their driver loaded, so look for ~3 s.
find_cidata() {
  local _try dev
  for _try in 1 2 3 4 5 6; do
    for dev in /sys/class/block/*; do
      [ "$(iso_label "/dev/${dev##*/}")" = cidata ] && { echo "/dev/${dev##*/}"; return; }
    done
    sleep 0.5
  done
}

# Copies user-data, meta-data and network-config to /run/cloud-init/.
read_cloud_init() {
  local dev
  mkdir -p "$CLOUD_INIT/nocloud"
  dev=$(find_cidata)
  [ -n "$dev" ] || { say "no cloud-init NoCloud disk (ISO9660 labelled cidata)"; return 1; }
  mount -t iso9660 -o ro "$dev" "$CLOUD_INIT/nocloud" || { say "cannot mount $dev"; return 1; }
  cp "$CLOUD_INIT/nocloud/"* "$CLOUD_INIT/" 2>/dev/null
  umount "$CLOUD_INIT/nocloud"
  say "cloud-init data from $dev:" "$(cd "$CLOUD_INIT" && for f in *; do [ -f "$f" ] && printf '%s ' "$f"; done)"
}

# meta-data is JSON from KubeVirt ({"instance-id":...,"local-hostname":...}) or YAML.
meta_value() {
  sed -n -e "s/.*\"$1\" *: *\"\\([^\"]*\\)\".*/\\1/p" -e "s/^$1: *\\([^ ]*\\) *\$/\\1/p" \
    "$CLOUD_INIT/meta-data" 2>/dev/null | head -n 1
}

apply_meta_data() {
  local name
  name=$(meta_value local-hostname)
  [ -n "$name" ] && hostname "$name"
  say "instance-id $(meta_value instance-id), hostname $(hostname)"
}

# cloud-init semantics: user-data starting with "#!" is a script and runs (once, here, as
# root, output on the console); anything else is not ours to interpret and is ignored.
run_user_data() {
  local data=$CLOUD_INIT/user-data script=$CLOUD_INIT/user-data.script interp rc
  [ -s "$data" ] || { say "no user-data"; return; }
  if [ "$(head -c 2 "$data")" != '#!' ]; then
    say "user-data is not a script (does not start with #!): ignored"
    return
  fi
  cp "$data" "$script" && chmod 0700 "$script"
  interp=$(head -n 1 "$script" | sed -e 's/^#! *//' -e 's/[ 	].*//')
  say "running user-data script ($interp)"
  if [ -x "$interp" ]; then
    (cd / && "$script" </dev/null); rc=$?
  else
    say "user-data: $interp is not in this guest; running it with /bin/sh"
    (cd / && /bin/sh "$script" </dev/null); rc=$?
  fi
  say "user-data exit=$rc"
}

# acpid turns the ACPI power button (KubeVirt's graceful stop) into /etc/acpi/PWRF/00000080.
start_acpid() {
  [ -e /dev/input/event0 ] || { say "no input event device: power button ignored"; return; }
  acpid -l /run/acpid.log
}

main() {
  mount_filesystems
  hostname k8slan-guest
  ip link set dev lo up
  start_acpid
  nics_up
  read_cloud_init && apply_meta_data
  dhcp_first_nic
  report_nics
  run_user_data
  say "up $(cut -d ' ' -f 1 /proc/uptime)s"
  say ready
}

main
