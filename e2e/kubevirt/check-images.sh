#!/usr/bin/env bash
# Check the KubeVirt image archives that images.sh built, without a cluster: unpack each
# one's layer (with file capabilities) into a scratch directory and run what the cluster
# will run, in a chroot: the entrypoint's --help, the dynamic libraries of the cgo binaries
# (resolved by the image's own loader, libvirt.so.0 included: virt-launcher dlopens it),
# and the tools each component execs (--version). Needs root (chroot, file capabilities).
# Usage: e2e/kubevirt/check-images.sh [component]...   (default: all five)
set -euo pipefail
# shellcheck source=../lib/common.sh
source "$(dirname "$0")/../lib/common.sh"
# shellcheck source=../lib/kubevirt.sh
source "$E2E_DIR/lib/kubevirt.sh"

FAILURES=0
fail() { log "FAIL $*"; FAILURES=$((FAILURES + 1)); }
pass() { log "ok   $*"; }
# check DESCRIPTION COMMAND...: pass or fail by the command's status.
check() { local what=$1; shift; if "$@"; then pass "$what"; else fail "$what"; fi; }

# Run a command in the image's root with a clean environment; print its output.
run_in() {
  local root=$1; shift
  env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin chroot "$root" "$@" 2>&1
}

# Run a command in the image's root; $1 the root, $2 a description, the rest the command.
in_root() {
  local root=$1 what=$2 out; shift 2
  if out=$(run_in "$root" "$@"); then
    pass "$what: $(head -1 <<<"$out")"
  else
    fail "$what: $(tail -3 <<<"$out")"
  fi
}

# The binary starts and parses its flags (pflag's --help exits 2 after the usage).
check_help() {
  local root=$1 bin=$2 out
  out=$(run_in "$root" "$bin" --help) || true
  if grep -q 'help requested\|^Usage' <<<"$out"; then
    pass "$bin --help: $(grep -c -- '^ *-' <<<"$out") flags"
  else
    fail "$bin --help: $(tail -3 <<<"$out")"
  fi
}

# Every library of each binary resolves through the image's own loader.
check_libs() {
  local root=$1 bin out; shift
  for bin in "$@"; do
    out=$(chroot "$root" /lib64/ld-linux-x86-64.so.2 --list "$bin" 2>&1) || true
    if grep -q 'not found' <<<"$out" || ! grep -q '=>' <<<"$out"; then
      fail "libraries of $bin: $(grep 'not found' <<<"$out" | tr -s '\t\n' '  ')"
    else
      local first; first=$(grep -o '^\s*lib[^ ]*' <<<"$out" | head -4 | tr -d '\t' | tr '\n' ' ')
      pass "libraries of $bin: $(grep -c '=>' <<<"$out") resolved (${first}...)"
    fi
  done
}

# Static binaries need no loader; file(1) is the host's.
check_static() {
  local root=$1 bin
  for bin in "${@:2}"; do
    if file "$root$bin" | grep -q 'statically linked'; then pass "$bin is static"
    else fail "$bin is not static: $(file -b "$root$bin")"; fi
  done
}

check_user() {
  local root=$1 name=$2 id=$3
  if grep -q "^$name:x:$id:$id:" "$root/etc/passwd" && grep -q "^$name:x:$id:" "$root/etc/group"; then
    pass "user and group $name = $id"
  else
    fail "no $name at $id in /etc/passwd and /etc/group"
  fi
}

check_control() {
  local root=$1 component=$2 config=$3
  check_static "$root" "/usr/bin/$component"
  check_user "$root" nonroot-user 1001
  check "image runs as user 1001" test "$(jq -r .config.User <<<"$config")" = 1001
  check_help "$root" "/usr/bin/$component"
}

check_handler() {
  local root=$1
  check_libs "$root" /usr/bin/virt-handler /usr/bin/virt-chroot
  check_user "$root" qemu 107
  check_help "$root" /usr/bin/virt-handler
  check_help "$root" /usr/bin/virt-chroot
  in_root "$root" findmnt /usr/bin/findmnt --version
  in_root "$root" sysctl sysctl --version
  in_root "$root" qemu-img /usr/bin/qemu-img --version
  in_root "$root" nft nft --version
}

# virt-launcher is built with libvirt_dlopen: it dlopen()s these sonames (RTLD_NOW) when it
# first calls libvirt. Do the same from a host-built program run in the image's root.
check_dlopen() {
  local root=$1; shift
  gcc -O -Wall -Werror -x c -o "$root/tmp/dlopen-check" - -ldl <<'EOF'
#include <dlfcn.h>
#include <stdio.h>
int main(int argc, char **argv) {
  for (int i = 1; i < argc; i++)
    if (!dlopen(argv[i], RTLD_NOW | RTLD_LOCAL)) { fprintf(stderr, "%s\n", dlerror()); return 1; }
  return 0;
}
EOF
  in_root "$root" "dlopen $*" /tmp/dlopen-check "$@"
  rm -f "$root/tmp/dlopen-check"
}

check_launcher() {
  local root=$1
  check_libs "$root" /usr/bin/virt-launcher /usr/sbin/libvirtd /usr/bin/qemu-system-x86_64
  check_dlopen "$root" libvirt.so.0 libvirt-qemu.so.0 libvirt-lxc.so.0 libvirt-admin.so.0
  check_static "$root" /usr/bin/container-disk /usr/bin/virt-launcher-monitor /usr/bin/virt-probe \
    /usr/bin/virt-tail /usr/bin/virt-freezer
  check_user "$root" qemu 107
  check_user "$root" libvirt-qemu 107
  if getcap "$root/usr/bin/virt-launcher-monitor" | grep -q cap_net_bind_service=ep; then
    pass "virt-launcher-monitor has cap_net_bind_service=ep"
  else fail "virt-launcher-monitor lacks cap_net_bind_service"; fi
  check_help "$root" /usr/bin/virt-launcher
  check_help "$root" /usr/bin/virt-launcher-monitor
  in_root "$root" "virtqemud shim" /usr/sbin/virtqemud --version
  in_root "$root" virtlogd /usr/sbin/virtlogd --version
  in_root "$root" qemu-system-x86_64 qemu-system-x86_64 --version
  in_root "$root" qemu-img /usr/bin/qemu-img --version
  in_root "$root" virsh virsh --version
  in_root "$root" xorrisofs xorrisofs -version
  in_root "$root" "the tools of node-labeller.sh and the init containers" \
    /bin/sh -c 'command -v node-labeller.sh bash grep cut uname mknod chmod cp'
  local conf
  for conf in virtqemud.conf qemu.conf virtlogd.conf libvirtd.conf hooks/qemu; do
    check "/etc/libvirt/$conf is there" test -f "$root/etc/libvirt/$conf"
  done
  # QEMU finds the firmware of KubeVirt's default machine, NIC and video (BIOS, the NIC's
  # option ROM and VGA BIOS are loaded at realize, so a paused machine that quits is enough).
  in_root "$root" "QEMU q35 with virtio-net and VGA under TCG" /bin/sh -c 'echo quit |
    qemu-system-x86_64 -machine q35,accel=tcg -nodefaults -display none -S -monitor stdio \
      -netdev user,id=n0 -device virtio-net-pci,netdev=n0 -device VGA >/dev/null'
}

check_image() {
  local component=$2 tar root=$1/$2 config entry
  tar=$(kubevirt_image_tar "$component")
  [[ -f $tar ]] || { fail "$component: no $tar (run e2e/kubevirt/images.sh)"; return; }
  log "--- $component ($(du -h "$tar" | cut -f1), $(tar -tf "$tar" | wc -l) archive entries)"
  config=$(unpack_image "$tar" "$root")
  entry=$(jq -r '.config.Entrypoint[0]' <<<"$config")
  check "entrypoint $entry is executable" test -x "$root$entry"
  case $component in
    virt-operator | virt-api | virt-controller) check_control "$root" "$component" "$config" ;;
    virt-handler) check_handler "$root" ;;
    virt-launcher) check_launcher "$root" ;;
  esac
  rm -rf "$root" "$root.oci"
}

main() {
  local components=("$@") c
  ((${#components[@]})) || components=("${KUBEVIRT_COMPONENTS[@]}")
  mkdir -p "$K8SLAN_CACHE/tmp"
  WORK=$(mktemp -d "$K8SLAN_CACHE/tmp/kubevirt-check.XXXXXX")   # global: the EXIT trap removes it
  trap 'rm -rf "$WORK"' EXIT
  for c in "${components[@]}"; do check_image "$WORK" "$c"; done
  ((FAILURES == 0)) || die "$FAILURES check(s) failed"
  log "all checks passed"
}

main "$@"
