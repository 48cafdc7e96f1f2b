#!/usr/bin/env bash
# Build (or reuse from the cache) KubeVirt at $KUBEVIRT_VERSION (versions.env) from its Go module:
#   binaries   virt-operator, virt-api, virt-controller, virt-handler, virt-launcher and their
#              helpers, virtctl, container-disk (one C file) into $KUBEVIRT_BIN
#   manifests  the operator manifest rendered by upstream's manifest-templator, for our images
#   images     OCI archives of the five component images from those binaries and Debian packages
#              (kubevirt/images.sh) and the guest containerDisk (kubevirt/guest/build.sh)
#   guest-kernel  only the guest's kernel (the guest's longest step; needs no k8slan image)
# Usage: e2e/kubevirt/build.sh [all|binaries|manifests|images|guest|guest-kernel]...
# Runs one at a time (a lock in $K8SLAN_CACHE): a second call waits, then finds the cache.
# Like Kubernetes (e2e/build.sh), everything is built through a wrapper module and cached
# under $K8SLAN_CACHE; a ".complete" marker means reuse. Moving the pin: see e2e/README.md.
set -euo pipefail
source "$(dirname "$0")/../lib/common.sh"

# Pure Go commands, and the ones linking libvirt or C helpers (cgo).
KUBEVIRT_GO_COMMANDS=(virt-operator virt-api virt-controller virt-launcher-monitor virt-probe
  virt-tail virt-freezer virtctl)
KUBEVIRT_CGO_COMMANDS=(virt-handler virt-launcher virt-chroot)

# The wrapper module: upstream's go.mod with its module line renamed, a require of kubevirt
# itself, and its two ./staging replaces pointed at the published staging modules.
write_wrapper_module() {
  local src=$1 upstream_mod=$2
  {
    sed -e 's#^module kubevirt.io/kubevirt$#module k8slan.local/e2e-kubevirt-build#' \
      -e "s#=> \./staging/src/\(kubevirt.io/[a-z-]*\)\$#=> \1 $KUBEVIRT_VERSION#" "$upstream_mod"
    echo
    echo "require kubevirt.io/kubevirt $KUBEVIRT_VERSION"
  } >"$src/go.mod"
  grep -q '=> ./staging' "$src/go.mod" && die "a ./staging replace is left in $src/go.mod"
  return 0
}

kubevirt_ldflags() {
  local info=$1 commit date pkg=kubevirt.io/client-go/version
  commit=$(jq -r '.Origin.Hash // empty' "$(jq -r .Info <<<"$info")")
  date=$(jq -r .Time "$(jq -r .Info <<<"$info")")
  echo "-s -w -X $pkg.gitVersion=$KUBEVIRT_VERSION -X $pkg.gitCommit=${commit:-unknown}" \
    "-X $pkg.gitTreeState=clean -X $pkg.buildDate=$date"
}

build_binaries() {
  local out=$KUBEVIRT_BIN
  if [[ -f $out/.complete ]]; then log "kubevirt $KUBEVIRT_VERSION: cached in $out"; return; fi
  local src=$KUBEVIRT_SRC start=$SECONDS info upstream_mod ldflags
  log "kubevirt $KUBEVIRT_VERSION: building into $out (about 10 CPU-minutes)"
  mkdir -p "$src" "$out"
  info=$(cd "$src" && go mod download -json "kubevirt.io/kubevirt@$KUBEVIRT_VERSION")
  upstream_mod=$(jq -r .GoMod <<<"$info")
  write_wrapper_module "$src" "$upstream_mod"
  ldflags=$(kubevirt_ldflags "$info")
  local c go=() cgo=()
  for c in "${KUBEVIRT_GO_COMMANDS[@]}"; do go+=("kubevirt.io/kubevirt/cmd/$c"); done
  for c in "${KUBEVIRT_CGO_COMMANDS[@]}"; do cgo+=("kubevirt.io/kubevirt/cmd/$c"); done
  (cd "$src" && CGO_ENABLED=0 GOFLAGS=-mod=mod go build -p "$GO_BUILD_JOBS" -trimpath \
    -ldflags "$ldflags" -o "$out/" "${go[@]}" kubevirt.io/kubevirt/tools/manifest-templator)
  # libvirt is opened at run time (libvirt_dlopen): no libvirt headers needed to build.
  (cd "$src" && CGO_ENABLED=1 GOFLAGS=-mod=mod go build -p "$GO_BUILD_JOBS" -trimpath \
    -tags libvirt_dlopen -ldflags "$ldflags" -o "$out/" "${cgo[@]}")
  gcc -static -O2 -o "$out/container-disk" \
    "$(jq -r .Dir <<<"$info")/cmd/container-disk-v2alpha/main.c"
  strip "$out/container-disk"
  touch "$out/.complete"
  log "kubevirt $KUBEVIRT_VERSION: built in $((SECONDS - start))s"
}

# Upstream's two passes (hack/build-manifests.sh): fill in the generated resources, then the
# variables (image names, namespace, pull policy).
build_manifests() {
  local out=$KUBEVIRT_MANIFESTS
  if [[ -f $out/.complete ]]; then log "kubevirt manifests: cached in $out"; return; fi
  [[ -f $KUBEVIRT_BIN/.complete ]] || build_binaries
  local dir templator=$KUBEVIRT_BIN/manifest-templator
  dir=$(cd "$KUBEVIRT_SRC" && go mod download -json "kubevirt.io/kubevirt@$KUBEVIRT_VERSION" | jq -r .Dir)
  mkdir -p "$out"
  "$templator" --process-files --generated-manifests-dir="$dir/manifests/generated/" \
    --input-file="$dir/manifests/release/kubevirt-operator.yaml.in" >"$out/kubevirt-operator.yaml.in"
  "$templator" --process-vars --input-file="$out/kubevirt-operator.yaml.in" \
    --namespace="$KUBEVIRT_NAMESPACE" --container-prefix="$KUBEVIRT_IMAGE_PREFIX" \
    --container-tag="$KUBEVIRT_VERSION" --image-pull-policy=IfNotPresent --verbosity=2 \
    --kubevirt-logo-path="$dir/assets/kubevirt_logo.png" \
    >"$out/kubevirt-operator.yaml"
  rm "$out/kubevirt-operator.yaml.in"
  grep -q "image: $KUBEVIRT_IMAGE_PREFIX/virt-operator:$KUBEVIRT_VERSION" "$out/kubevirt-operator.yaml" \
    || die "the rendered operator manifest does not name our virt-operator image"
  touch "$out/.complete"
  log "kubevirt manifests: $out/kubevirt-operator.yaml"
}

main() {
  local targets=() t lock
  (($#)) || set -- all
  mkdir -p "$K8SLAN_CACHE"
  exec {lock}>"$K8SLAN_CACHE/.kubevirt-build.lock"
  flock "$lock"
  # "all" is everything but the guest, which needs k8slan-frame (hack/build-image.sh) first.
  for t in "$@"; do
    if [[ $t == all ]]; then targets+=(binaries manifests images); else targets+=("$t"); fi
  done
  for t in "${targets[@]}"; do
    case $t in
      binaries|manifests) "build_$t" ;;
      images) "$E2E_DIR/kubevirt/images.sh" ;;
      guest) "$E2E_DIR/kubevirt/guest/build.sh" ;;
      guest-kernel) "$E2E_DIR/kubevirt/guest/build.sh" --kernel ;;
      *) die "unknown kubevirt build target: $t" ;;
    esac
  done
}

main "$@"
