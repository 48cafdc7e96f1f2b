#!/usr/bin/env bash
# Build OCI archives of KubeVirt's five component images (kubevirt_image_tar in
# lib/kubevirt.sh) from the binaries in $KUBEVIRT_BIN (build.sh binaries) and Debian 12
# packages, the way upstream's Bazel rules lay them out (cmd/<component>/BUILD.bazel):
#   virt-operator, virt-api, virt-controller  /usr/bin/<component>, user 1001 (nonroot-user)
#   virt-handler   virt-handler, virt-chroot, and what it runs in its own container:
#                  findmnt, sysctl, qemu-img, nft (masquerade binding: its pod network
#                  setup runs in virt-handler, in the launcher pod's netns)
#   virt-launcher  virt-launcher(-monitor), virt-probe, virt-tail, virt-freezer,
#                  container-disk, node-labeller.sh; libvirt 9.0 + QEMU 7.2 with a
#                  virtqemud shim (kubevirt/launcher/), xorrisofs (cloud-init ISOs), virsh,
#                  bash/cp/grep for the init containers, qemu = libvirt-qemu = 107
# Usage: e2e/kubevirt/images.sh   (or e2e/kubevirt/build.sh images)
# The .debs are cached in $KUBEVIRT_DEBS; a marker keyed on the version, the package lists
# and the inputs of this script makes a warm run a no-op. Needs root (dpkg-deb -x with
# owners, setcap) and current apt lists (apt-get update) for the download.
# Measured on the 2-core build machine (2026-12-01): closures of 158 (launcher) and 67
# (handler) packages, 171 .debs / 71 MB in the cache together; archives (gzip layer, unpacked):
# operator/api/controller 18 MB (63-67 MB), handler 43 MB (125 MB), launcher 112 MB (319 MB).
# Cold (download ~20 s + unpack + 5 archives): 56 s on a quiet machine, up to ~2 min
# under load (~70 CPU-s); a warm run (marker matches) takes 0.1 s. The same inputs give
# byte-identical archives. e2e/kubevirt/check-images.sh checks them without a cluster.
set -euo pipefail
# shellcheck source=../lib/common.sh
source "$(dirname "$0")/../lib/common.sh"
# shellcheck source=../lib/kubevirt.sh
source "$E2E_DIR/lib/kubevirt.sh"

OCI_IMAGE=$E2E_DIR/images/oci-image.py
KV_FILES=$E2E_DIR/kubevirt
MARKER=$KUBEVIRT_IMAGES_DIR/.complete

# Debian packages of each image. Their closure is resolved against an empty dpkg status,
# so Essential packages (bash, coreutils, grep, ...) that the image runs must be named.
# usr-is-merged (the tree is merged-/usr already) keeps apt from choosing usrmerge and perl.
HANDLER_PACKAGES=(usr-is-merged bash dash coreutils util-linux procps qemu-utils nftables)
LAUNCHER_PACKAGES=(usr-is-merged bash dash coreutils grep sed findutils
  libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients qemu-system-x86 qemu-utils seabios
  ipxe-qemu xorriso)
# Unpacked but never read at run time.
TRIM_PATHS=(usr/share/doc usr/share/man usr/share/info usr/share/locale usr/share/lintian
  usr/share/bug usr/share/doc-base usr/share/bash-completion usr/share/zsh)

# The cache key: everything that changes what the images contain (the Debian packages by
# name: a warm cache keeps the versions it resolved until the key changes).
images_key() {
  {
    echo "$KUBEVIRT_VERSION ${HANDLER_PACKAGES[*]} / ${LAUNCHER_PACKAGES[*]} / ${TRIM_PATHS[*]}"
    cat "$0" "$OCI_IMAGE" "$KV_FILES/nsswitch.conf" "$KV_FILES"/launcher/*
    find "$KUBEVIRT_BIN" -maxdepth 1 -type f -printf '%f %s %T@\n' 2>/dev/null | sort
  } | sha256sum | cut -d' ' -f1
}

# --- Debian packages ------------------------------------------------------------

# apt-get against the host's package lists but an empty dpkg status (the whole closure,
# whatever the host has installed), downloading into $KUBEVIRT_DEBS.
apt_closure() {
  local state=$1; shift
  apt-get -q -y -o Dir::State::status="$state/status" -o Dir::Cache::archives="$KUBEVIRT_DEBS" \
    -o Dir::Cache::pkgcache= -o Dir::Cache::srcpkgcache= -o Debug::NoLocking=1 \
    -o APT::Install-Recommends=false -o APT::Install-Suggests=false "$@"
}

# Print the .deb files of the closure of the named packages, downloading what is missing.
fetch_debs() {
  local state=$WORK/apt
  mkdir -p "$state"
  : >"$state/status"
  mkdir -p "$KUBEVIRT_DEBS/partial"
  local -a closure
  mapfile -t closure < <(apt_closure "$state" -s install "$@" \
    | sed -n 's/^Inst \([^ ]*\) (\([^ ]*\) [^[]*\[\([a-z0-9]*\)\]).*/\1_\2_\3.deb/p' | sed 's/:/%3a/')
  ((${#closure[@]})) || die "apt resolved no packages for: $*"
  apt_closure "$state" --download-only install "$@" >&2 \
    || die "downloading $* failed (stale package lists? run apt-get update)"
  local deb
  for deb in "${closure[@]}"; do
    [[ -f $KUBEVIRT_DEBS/$deb ]] || die "$deb is not in $KUBEVIRT_DEBS after the download"
    echo "$KUBEVIRT_DEBS/$deb"
  done
}

# A merged-/usr root (as Debian 12 installs it) with the packages unpacked into it.
# No maintainer scripts run: the image gets its users and config files from here.
unpack_debs() {
  local root=$1; shift
  mkdir -p "$root"/usr/{bin,sbin,lib,lib64}
  local d
  for d in bin sbin lib lib64; do ln -s "usr/$d" "$root/$d"; done
  for d in "$@"; do
    dpkg-deb --fsys-tarfile "$d" | tar -x -C "$root" --keep-directory-symlink --numeric-owner
  done
  for d in "${TRIM_PATHS[@]}"; do rm -rf "${root:?}/$d"; done
}

# --- image contents ----------------------------------------------------------------

# The directories every image has, and the files naming its users ($2: passwd lines,
# $3: group lines, each "name:id" or "name:id:home").
base_tree() {
  local root=$1 users=$2 groups=$3 u name id home
  install -d -m 1777 "$root/tmp" "$root/var/tmp"
  install -d -m 755 "$root/run" "$root/etc"
  install -d -m 700 "$root/root"
  # /var/run is /run, as Debian's installer makes it (base-files ships an empty directory).
  if [[ -d $root/var/run && ! -L $root/var/run ]]; then
    rmdir "$root/var/run" || die "$root/var/run is not empty"
  fi
  install -d "$root/var"
  ln -sfn ../run "$root/var/run"
  install -m 644 "$KV_FILES/nsswitch.conf" "$root/etc/nsswitch.conf"
  {
    echo "root:x:0:0:root:/root:/bin/bash"
    for u in $users; do
      IFS=: read -r name id home <<<"$u"
      echo "$name:x:$id:$id::${home:-/}:/bin/bash"
    done
  } >"$root/etc/passwd"
  { echo "root:x:0:"; for u in $groups; do echo "${u%%:*}:x:${u#*:}:"; done; } >"$root/etc/group"
  chmod 644 "$root/etc/passwd" "$root/etc/group"
}

# Install KubeVirt binaries from $KUBEVIRT_BIN into $1/usr/bin.
install_bins() {
  local root=$1 b; shift
  install -d "$root/usr/bin"
  for b in "$@"; do
    [[ -x $KUBEVIRT_BIN/$b ]] || die "$KUBEVIRT_BIN/$b is missing (run e2e/kubevirt/build.sh binaries)"
    install -m 755 "$KUBEVIRT_BIN/$b" "$root/usr/bin/$b"
  done
}

# Upstream's own scripts that its images carry (from the module source, not copied here).
upstream_file() {
  local dir; dir=$(go env GOMODCACHE)/kubevirt.io/kubevirt@$KUBEVIRT_VERSION
  [[ -f $dir/$1 ]] || die "upstream file $1 not found in $dir (build.sh binaries downloads it)"
  echo "$dir/$1"
}

# virt-operator, virt-api, virt-controller: the static binary, run as nonroot-user 1001.
tree_control() {
  local root=$1 component=$2
  base_tree "$root" "nonroot-user:1001:/home/nonroot-user" "nonroot-user:1001"
  install_bins "$root" "$component"
}

# Unpack the closure of packages $2... into $1, recording its .deb files beside the image.
tree_debs() {
  local root=$1 list; shift
  list=$KUBEVIRT_IMAGES_DIR/$(basename "$root").debs
  fetch_debs "$@" >"$list"
  local debs; mapfile -t debs <"$list"
  log "kubevirt image $(basename "$root"): ${#debs[@]} Debian packages" \
    "($(cat "${debs[@]}" | wc -c | numfmt --to=iec))"
  unpack_debs "$root" "${debs[@]}"
}

tree_handler() {
  local root=$1
  tree_debs "$root" "${HANDLER_PACKAGES[@]}"
  base_tree "$root" "qemu:107" "qemu:107"
  install_bins "$root" virt-handler virt-chroot
}

tree_launcher() {
  local root=$1
  tree_debs "$root" "${LAUNCHER_PACKAGES[@]}"
  base_tree "$root" "qemu:107:/home/qemu libvirt-qemu:107:/home/qemu" "qemu:107 libvirt-qemu:107"
  install -d -o 107 -g 107 "$root/home/qemu"
  install_bins "$root" virt-launcher virt-launcher-monitor virt-probe virt-tail virt-freezer \
    container-disk
  # Upstream sets this capability on the monitor; the pod always gets NET_BIND_SERVICE.
  setcap cap_net_bind_service=+ep "$root/usr/bin/virt-launcher-monitor"
  install -m 755 "$(upstream_file cmd/virt-launcher/node-labeller/node-labeller.sh)" "$root/usr/bin/"
  install -D -m 755 "$(upstream_file cmd/virt-launcher/qemu)" "$root/etc/libvirt/hooks/qemu"
  install -m 755 "$KV_FILES/launcher/virtqemud" "$root/usr/sbin/virtqemud"
  local conf
  for conf in virtqemud.conf qemu.conf virtlogd.conf; do
    install -m 644 "$KV_FILES/launcher/$conf" "$root/etc/libvirt/$conf"
  done
  ln -sfn virtqemud.conf "$root/etc/libvirt/libvirtd.conf"
  install -d -m 755 "$root"/var/{lib,log,cache}/libvirt/qemu
}

# --- images --------------------------------------------------------------------------

# Build the tree of one component under $1 and write its OCI archive.
build_image() {
  local component=$2 root=$1/$2 args=()
  log "kubevirt image $component: assembling"
  mkdir -p "$root"
  case $component in
    virt-operator | virt-api | virt-controller)
      tree_control "$root" "$component"; args=(--user 1001) ;;
    virt-handler) tree_handler "$root" ;;
    virt-launcher) tree_launcher "$root" ;;
    *) die "unknown KubeVirt component: $component" ;;
  esac
  python3 "$OCI_IMAGE" --name "$(kubevirt_image "$component")" \
    --output "$(kubevirt_image_tar "$component")" --rootfs "$root" \
    --entrypoint "/usr/bin/$component" "${args[@]}"
  rm -rf "$root"
}

main() {
  (($# == 0)) || die "usage: $0 (no arguments; settings come from versions.env)"
  local key start=$SECONDS c
  key=$(images_key)
  if [[ -f $MARKER && $(<"$MARKER") == "$key" ]]; then
    log "kubevirt images $KUBEVIRT_VERSION: cached in $KUBEVIRT_IMAGES_DIR"; return
  fi
  [[ -f $KUBEVIRT_BIN/.complete ]] || die "no KubeVirt binaries in $KUBEVIRT_BIN (build.sh binaries)"
  ((EUID == 0)) || die "run as root (package owners, file capabilities)"
  rm -f "$MARKER"
  mkdir -p "$KUBEVIRT_IMAGES_DIR" "$K8SLAN_CACHE/tmp"
  WORK=$(mktemp -d "$K8SLAN_CACHE/tmp/kubevirt-images.XXXXXX")   # global: the EXIT trap removes it
  trap 'rm -rf "$WORK"' EXIT
  for c in "${KUBEVIRT_COMPONENTS[@]}"; do build_image "$WORK" "$c"; done
  echo "$key" >"$MARKER"
  log "kubevirt images $KUBEVIRT_VERSION: built in $((SECONDS - start))s:" \
    "$(cd "$KUBEVIRT_IMAGES_DIR" && du -h ./*.tar | awk '{printf "%s %s  ", $2, $1}')"
}

main "$@"
