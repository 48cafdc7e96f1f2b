#!/usr/bin/env bash
# Build (or reuse from the cache) the KubeVirt test guest: a containerDisk image
# $KUBEVIRT_GUEST_IMAGE in $KUBEVIRT_GUEST_TAR (e2e/lib/kubevirt.sh), with no image pulled:
#   kernel  Debian 12's kernel source (linux-source-6.1, apt-get download) built as
#           tinyconfig + kernel.config, everything built in. Debian's own cloud kernel needs
#           more than 72 MB of RAM to boot; the seed VM has 64M.
#   disk    a raw FAT disk that SeaBIOS boots: SYSLINUX -> that kernel with an initramfs of
#           busybox-static, k8slan-frame, dfping (images/dfping.c) and the guest's own files (rootfs/)
#   image   that disk as /disk/k8slan-guest.img, owned 107:107 mode 0440 (KubeVirt's
#           containerDisk convention: the only file under /disk/, readable by its qemu user)
# The guest's contract (NICs, user-data, console marker, test control endpoint): README.md.
# Usage: e2e/kubevirt/guest/build.sh [--force]
# Cached under $K8SLAN_CACHE/src/kubevirt-guest: the source .deb, the kernel (keyed on the
# source version and kernel.config; a few CPU-minutes to build) and a hash of every input of
# the image (these files, busybox, k8slan-frame, the kernel, the tools' versions), which
# decides whether the image is rebuilt. Runs without root; needs the packages in check_tools.
set -euo pipefail
# shellcheck source=../../lib/common.sh
source "$(dirname "$0")/../../lib/common.sh"
# shellcheck source=../../lib/kubevirt.sh
source "$E2E_DIR/lib/kubevirt.sh"

GUEST_DIR=$E2E_DIR/kubevirt/guest
GUEST_CACHE=$K8SLAN_CACHE/src/kubevirt-guest
GUEST_KERNEL_SOURCE=${GUEST_KERNEL_SOURCE:-linux-source-6.1}   # Debian 12's kernel series
BUSYBOX=${BUSYBOX:-/bin/busybox}                                # from busybox-static
K8SLAN_FRAME=${K8SLAN_FRAME:-$IMAGES_DIR/k8slan-frame}          # left there by hack/build-image.sh
GUEST_CMDLINE="console=ttyS0 quiet panic=10"
GUEST_DISK=k8slan-guest.img
QEMU_UID=107                        # KubeVirt's qemu user and group (virt-launcher runs as it)
# command:package; the kernel's only when it is not cached yet (gelf.h: its objtool).
BUILD_TOOLS=(apt-get:apt cpio:cpio gzip:gzip mkfs.fat:dosfstools mcopy:mtools syslinux:syslinux
  python3:python3)
KERNEL_TOOLS=(dpkg-deb:dpkg make:make gcc:gcc flex:flex bison:bison bc:bc xz:xz-utils)

# Dies naming the packages to install for the command:package pairs given.
need_tools() {
  local t missing=()
  for t in "$@"; do command -v "${t%%:*}" >/dev/null || missing+=("${t#*:}"); done
  ((${#missing[@]} == 0)) || die "guest build needs: apt-get install ${missing[*]}"
}

check_tools() {
  need_tools "${BUILD_TOOLS[@]}"
  if ! "$BUSYBOX" --list-full >/dev/null 2>&1 || ldd "$BUSYBOX" >/dev/null 2>&1; then
    die "$BUSYBOX is not a static busybox (apt-get install busybox-static)"
  fi
  [[ -x $K8SLAN_FRAME ]] || die "no $K8SLAN_FRAME: run hack/build-image.sh (make image) first"
  [[ -x $DFPING ]] || die "no $DFPING: run e2e/images/build-images.sh first"
}

# The cached .deb of package $1 (the newest apt knows), downloaded once.
cached_deb() {
  local pkg=$1 dir=$GUEST_CACHE/debs version deb
  version=$(apt-cache policy "$pkg" 2>/dev/null | sed -n 's/^ *Candidate: *//p')
  [[ -n $version && $version != "(none)" ]] || die "apt knows no $pkg (apt-get update?)"
  deb=$dir/${pkg}_${version//:/%3a}_all.deb
  if [[ ! -f $deb ]]; then
    log "guest: downloading $pkg $version"
    mkdir -p "$dir"
    (cd "$dir" && apt-get download -q "$pkg=$version" >&2) || die "apt-get download $pkg failed"
  fi
  [[ -f $deb ]] || die "apt-get download $pkg did not leave $deb"
  echo "$deb"
}

# Every CONFIG_ line of kernel.config must have survived olddefconfig (a dependency we did not
# ask for would otherwise drop it silently).
check_kernel_config() {
  local config=$1 line missing=()
  while read -r line; do
    grep -qxF "$line" "$config" || missing+=("$line")
  done < <(grep '^CONFIG_' "$GUEST_DIR/kernel.config")
  ((${#missing[@]} == 0)) || die "kernel .config lacks ${missing[*]} (see kernel.config)"
}

# tinyconfig + kernel.config in $2 for the source tree $1.
configure_kernel() {
  local src=$1 obj=$2
  make -s -C "$src" O="$obj" ARCH=x86_64 tinyconfig >/dev/null
  "$src/scripts/kconfig/merge_config.sh" -m -O "$obj" "$obj/.config" "$GUEST_DIR/kernel.config" >/dev/null
  make -s -C "$src" O="$obj" ARCH=x86_64 olddefconfig >/dev/null
  check_kernel_config "$obj/.config"
}

compile_kernel() {
  local src=$1 obj=$2
  make -s -C "$src" O="$obj" ARCH=x86_64 -j "$GO_BUILD_JOBS" KBUILD_BUILD_VERSION=1 \
    KBUILD_BUILD_TIMESTAMP="Thu Jan  1 00:00:00 UTC 1970" KBUILD_BUILD_USER=k8slan \
    KBUILD_BUILD_HOST=e2e bzImage >&2
}

# The bzImage, built once per source .deb, kernel.config and recipe (the functions above).
build_kernel() {
  local deb=$1 key out
  key=$( (cat "$GUEST_DIR/kernel.config"; declare -f configure_kernel compile_kernel) | sha256sum)
  out=$GUEST_CACHE/kernel-$(basename "$deb" _all.deb)-${key:0:12}
  [[ -f $out/.complete ]] && { echo "$out/bzImage"; return; }
  local src=$WORK/linux obj=$WORK/kernel-obj start=$SECONDS
  need_tools "${KERNEL_TOOLS[@]}"
  [[ -f /usr/include/gelf.h ]] || die "guest build needs: apt-get install libelf-dev"
  log "guest: building the kernel from $(basename "$deb") into $out (~10 CPU-minutes)"
  mkdir -p "$src" "$obj" "$out"
  dpkg-deb --fsys-tarfile "$deb" | tar -xO --wildcards './usr/src/linux-source-*.tar.xz' \
    | tar -xJ -C "$src" --strip-components 1
  configure_kernel "$src" "$obj"
  compile_kernel "$src" "$obj"
  install -m 0644 "$obj/arch/x86/boot/bzImage" "$out/bzImage"
  install -m 0644 "$obj/.config" "$out/config"
  rm -rf "$src" "$obj"
  touch "$out/.complete"
  log "guest: kernel built in $((SECONDS - start))s"
  echo "$out/bzImage"
}

# A hash of every input of the image; the cache marker holds it.
input_key() {
  local kernel=$1
  {
    (cd "$GUEST_DIR" && find build.sh kernel.config rootfs -printf '%m %p\n' | LC_ALL=C sort)
    (cd "$GUEST_DIR" && find build.sh rootfs -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum)
    sha256sum "$E2E_DIR/images/oci-image.py" "$BUSYBOX" "$K8SLAN_FRAME" "$DFPING" "$kernel" | cut -d ' ' -f 1
    dpkg-query -W syslinux mtools dosfstools cpio gzip
    echo "$GUEST_CMDLINE $KUBEVIRT_GUEST_IMAGE"
  } | sha256sum | cut -c 1-32
}

# The initramfs tree: busybox with one symlink per applet, /init = busybox init, our files.
stage_rootfs() {
  local root=$1 applet
  cp -R "$GUEST_DIR/rootfs/." "$root/"
  find "$root" -type d -exec chmod 0755 {} +
  find "$root" -type f -perm /111 -exec chmod 0755 {} +
  find "$root" -type f ! -perm /111 -exec chmod 0644 {} +
  mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,dev,proc,sys,run,tmp,root,mnt,var/log}
  chmod 1777 "$root/tmp"; chmod 0700 "$root/root"
  install -m 0755 "$BUSYBOX" "$root/bin/busybox"
  for applet in $("$BUSYBOX" --list-full); do
    [[ $applet == bin/busybox ]] || ln -sf /bin/busybox "$root/$applet"
  done
  ln -s /bin/busybox "$root/init"
  install -m 0755 "$K8SLAN_FRAME" "$root/usr/local/bin/k8slan-frame"
  install -m 0755 "$DFPING" "$root/usr/local/bin/dfping"
}

# A newc cpio, gzip'd; sorted names, mtime 0 and owner root make it reproducible.
make_initramfs() {
  local root=$1 out=$2
  find "$root" -exec touch -h -d @0 {} +
  (cd "$root" && find . -mindepth 1 | LC_ALL=C sort \
    | cpio --quiet -o -H newc -R 0:0 --reproducible) | gzip -9 -n >"$out"
}

# A FAT file system on the whole disk (no partition table; SeaBIOS runs its boot sector),
# SYSLINUX installed through mtools: no loop mount, no root needed. Every FAT time stamp is
# 1980-01-01 (mtools, also the one syslinux runs, honours SOURCE_DATE_EPOCH): reproducible.
make_disk() {
  local kernel=$1 initrd=$2 out=$3 work=$4 kib
  local -x TZ=UTC MTOOLS_SKIP_CHECK=1 SOURCE_DATE_EPOCH=315532800
  printf '%s\n' "SERIAL 0 115200" "PROMPT 0" "TIMEOUT 0" "DEFAULT k8slan" "LABEL k8slan" \
    "  LINUX /vmlinuz" "  INITRD /initrd.gz" "  APPEND $GUEST_CMDLINE" >"$work/syslinux.cfg"
  kib=$(( ($(stat -c %s "$kernel") + $(stat -c %s "$initrd")) / 1024 + 1024 ))
  kib=$(( (kib + 1023) / 1024 * 1024 ))                          # whole MiB
  rm -f "$out"
  mkfs.fat --invariant -i 4b38534c -n K8SLANGUEST -C "$out" "$kib" >/dev/null
  touch -d "@$SOURCE_DATE_EPOCH" "$kernel" "$initrd" "$work/syslinux.cfg"
  local f dest
  for f in "$kernel:vmlinuz" "$initrd:initrd.gz" "$work/syslinux.cfg:syslinux.cfg"; do
    dest=${f##*:}
    mcopy -m -i "$out" "${f%:*}" "::$dest"
  done
  syslinux --install "$out"
}

make_image() {
  local disk=$1
  python3 "$E2E_DIR/images/oci-image.py" --name "$KUBEVIRT_GUEST_IMAGE" \
    --output "$KUBEVIRT_GUEST_TAR" --add "$disk:/disk/$GUEST_DISK" \
    --chown "/disk:$QEMU_UID:$QEMU_UID" --chown "/disk/$GUEST_DISK:$QEMU_UID:$QEMU_UID" \
    --chmod "/disk/$GUEST_DISK:440" \
    --label "org.opencontainers.image.title=k8slan KubeVirt test guest"
}

build_guest() {
  local force=$1 kernel key marker=$GUEST_CACHE/image.key
  check_tools
  kernel=$(build_kernel "$(cached_deb "$GUEST_KERNEL_SOURCE")")
  key=$(input_key "$kernel")
  if [[ $force == 0 && -f $KUBEVIRT_GUEST_TAR && $(cat "$marker" 2>/dev/null) == "$key" ]]; then
    log "guest: cached in $KUBEVIRT_GUEST_TAR"; return
  fi
  local work=$WORK start=$SECONDS
  mkdir -p "$work/root" "$IMAGES_DIR"
  stage_rootfs "$work/root"
  make_initramfs "$work/root" "$work/initrd.gz"
  cp "$kernel" "$work/vmlinuz"
  make_disk "$work/vmlinuz" "$work/initrd.gz" "$work/$GUEST_DISK" "$work"
  make_image "$work/$GUEST_DISK"
  echo "$key" >"$marker"
  log "guest: $KUBEVIRT_GUEST_TAR (kernel $(($(stat -c %s "$kernel") >> 10)) KiB, disk $(($(stat -c %s "$work/$GUEST_DISK") >> 20)) MiB," \
    "initramfs $(($(stat -c %s "$work/initrd.gz") >> 10)) KiB) in $((SECONDS - start))s"
}

main() {
  WORK=$(mktemp -d)
  trap 'rm -rf "$WORK"' EXIT
  case ${1:-} in
    "") build_guest 0 ;;
    --force) build_guest 1 ;;
    # Only the kernel (cached): what a cold build spends most of its time on, and needs no
    # k8slan-frame, so it can start before the k8slan image is built.
    --kernel) build_kernel "$(cached_deb "$GUEST_KERNEL_SOURCE")" >/dev/null ;;
    *) die "usage: $0 [--force|--kernel]" ;;
  esac
}

main "$@"
