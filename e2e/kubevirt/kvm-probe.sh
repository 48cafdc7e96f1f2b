#!/usr/bin/env bash
# Does KVM run a guest on this machine? Boots the test guest's disk (kubevirt/guest) with the
# launcher image's own QEMU under -accel kvm, in a chroot of that image, and waits for the guest's
# "k8slan-guest: ready" line. Exit 0: KVM works (KubeVirt may use it); 1: it does not (no
# /dev/kvm, or QEMU or the guest failed under it: then KubeVirt must emulate). The reason is
# logged. A /dev/kvm that exists is not enough: on these build machines it is PVM-backed, and a
# guest kernel dies there with "KVM internal error ... emulation failure".
# Usage: e2e/kubevirt/kvm-probe.sh   (root; install.sh runs it)
set -euo pipefail
source "$(dirname "$0")/../lib/common.sh"
PROBE_TIMEOUT=${PROBE_TIMEOUT:-90}

[[ -c /dev/kvm ]] || { log "kvm probe: no /dev/kvm"; exit 1; }
work=$(mktemp -d)
# unshare ignores SIGTERM while it waits; SIGKILL ends it and, through --kill-child, QEMU.
# unshare ignores SIGTERM while it waits; SIGKILL ends it and, through --kill-child, QEMU.
cleanup() { [[ -n ${qemu:-} ]] && kill -KILL "$qemu" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

root=$work/launcher
unpack_image "$(kubevirt_image_tar virt-launcher)" "$root" >/dev/null
unpack_image "$KUBEVIRT_GUEST_TAR" "$work/guest" >/dev/null
cp "$work/guest/disk/"* "$root/probe.img"
: >"$work/console"
# A private mount namespace gives the chroot /dev (for /dev/kvm) and /proc.
unshare --mount --fork --kill-child bash -c '
  mount --rbind /dev "$1/dev" && mount -t proc proc "$1/proc"
  exec chroot "$1" qemu-system-x86_64 -accel kvm -m 64M -display none -no-reboot \
    -serial stdio -drive file=/probe.img,format=raw,if=virtio' probe "$root" >"$work/console" 2>&1 &
qemu=$!
deadline=$((SECONDS + PROBE_TIMEOUT))
until grep -q 'k8slan-guest: ready' "$work/console"; do
  # QEMU stays alive (paused) after a KVM internal error: that is a verdict too.
  if ! kill -0 "$qemu" 2>/dev/null || grep -q 'KVM internal error' "$work/console" || ((SECONDS > deadline)); then
    log "kvm probe: the guest did not boot under KVM: $(grep -a -m1 -i 'error\|fail\|abort' "$work/console" || tail -c 200 "$work/console" | tr -d '\r')"
    exit 1
  fi
  sleep 1
done
log "kvm probe: the guest booted under KVM in $((SECONDS + PROBE_TIMEOUT - deadline))s"
