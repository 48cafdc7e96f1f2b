#!/usr/bin/env bash
# Build (or reuse from the cache) everything the e2e cluster runs:
#   kubernetes  kube-apiserver, kube-controller-manager, kube-scheduler, kubelet,
#               kube-proxy, kubectl — from the Go module proxy, pinned in versions.env
#   multus      Multus thin CNI plugin
#   helm        Helm v3 client
#   macvtapcni  KubeVirt's macvtap-cni plugin (cmd/cni, as "macvtap"), or a stand-in when the
#               module proxy does not serve it (the coexistence test, test_k8slan_coexist.py)
#   images      pause and testbox OCI archives (see images/README in e2e/README.md)
#   pyenv       Python venv with pytest and grpcio for the smoke tests
#   packages    the Debian packages the cluster and these builds need (apt, idempotent)
# Usage: e2e/build.sh [all|packages|kubernetes|multus|helm|macvtapcni|images|pyenv]...
# Artifacts live under $K8SLAN_CACHE/bin/<name>-<version>/ and are reused when the
# directory holds a ".complete" marker.
set -euo pipefail
source "$(dirname "$0")/lib/common.sh"

APT_PACKAGES=(etcd-server containerd runc containernetworking-plugins iproute2 iptables
  conntrack socat openssl busybox-static jq ethtool curl gcc libc6-dev python3 python3-venv
  # KubeVirt's test guest (kubevirt/guest): its disk and initramfs, and its kernel's first build.
  cpio dosfstools mtools syslinux make flex bison libelf-dev xz-utils bc)
K8S_COMMANDS=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl)
export CGO_ENABLED=0 GOFLAGS=-mod=mod
MACVTAP_CNI_BIN=$K8SLAN_CACHE/bin/macvtap-cni-$MACVTAP_CNI_VERSION

# The 31 staging modules are read from upstream's go.mod (its "=> ./staging/" replaces).
staging_modules() {
  sed -n 's#^\s*\(k8s\.io/[a-z0-9-]*\) => \./staging/.*#\1#p' "$1"
}

build_kubernetes() {
  local out=$K8S_BIN
  if [[ -f $out/.complete ]]; then log "kubernetes $KUBERNETES_VERSION: cached in $out"; return; fi
  local src=$K8SLAN_CACHE/src/kubernetes-$KUBERNETES_VERSION start=$SECONDS
  log "kubernetes $KUBERNETES_VERSION: building into $out (takes a while on 2 cores)"
  mkdir -p "$src" "$out"

  # Fetch upstream's go.mod and commit hash through the module proxy.
  local info upstream_mod commit
  info=$(cd "$src" && go mod download -json "k8s.io/kubernetes@$KUBERNETES_VERSION")
  upstream_mod=$(jq -r .GoMod <<<"$info")
  # Commit for `version` output: the proxy records it (Origin.Hash) only for some modules.
  commit=$(jq -r '.Origin.Hash // empty' "$(jq -r .Info <<<"$info")")
  commit=${commit:-0000000000000000000000000000000000000000}

  # Wrapper module: require kubernetes, point each staging module at its published version.
  {
    echo "module k8slan.local/e2e-kubernetes-build"
    echo
    grep -E '^go [0-9]' "$upstream_mod"
    grep -E '^godebug ' "$upstream_mod" || true
    echo
    echo "require k8s.io/kubernetes $KUBERNETES_VERSION"
    echo
    echo "replace ("
    staging_modules "$upstream_mod" | while read -r m; do
      echo "	$m => $m $KUBERNETES_STAGING_VERSION"
    done
    echo ")"
  } >"$src/go.mod"
  [[ $(grep -c ' => ' "$src/go.mod") -eq 31 ]] || die "expected 31 staging modules in $upstream_mod"

  local pkgs=() c
  for c in "${K8S_COMMANDS[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$c"); done
  # Resolve the full module graph and record checksums for the packages we build.
  # (@version on each package, or go get would move kubernetes to its latest release.)
  (cd "$src" && go get "${pkgs[@]/%/@$KUBERNETES_VERSION}")
  grep -q "k8s.io/kubernetes $KUBERNETES_VERSION" "$src/go.mod" || die "go get moved k8s.io/kubernetes off $KUBERNETES_VERSION"

  local major minor v=${KUBERNETES_VERSION#v} pkg
  major=${v%%.*}; minor=${v#*.}; minor=${minor%%.*}
  local ldflags="-s -w" date
  date=$(jq -r .Time "$(jq -r .Info <<<"$info")")
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkg.gitVersion=$KUBERNETES_VERSION -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
    ldflags+=" -X $pkg.gitCommit=$commit -X $pkg.gitTreeState=clean -X $pkg.buildDate=$date"
  done
  (cd "$src" && go build -p "$GO_BUILD_JOBS" -trimpath -ldflags "$ldflags" -o "$out/" "${pkgs[@]}")
  touch "$out/.complete"
  log "kubernetes $KUBERNETES_VERSION: built in $((SECONDS - start))s"
}

# build_pinned NAME MODULE PACKAGE VERSION OUT [LDFLAGS]: build one command of a module at
# a pinned version. Like `go install PACKAGE@VERSION`, but through a wrapper module,
# because `go install` asks the proxy for the module's version list (to check
# deprecation) and the proxy refuses that for some modules (gopkg.in/...multus).
# The wrapper copies the module's go and godebug lines so runtime defaults match.
build_pinned() {
  local name=$1 module=$2 pkg=$3 version=$4 out=$5 ldflags="-s -w ${6:-}" start=$SECONDS
  if [[ -f $out/.complete ]]; then log "$name $version: cached in $out"; return; fi
  log "$name $version: building into $out"
  local src=$K8SLAN_CACHE/src/$name-$version upstream_mod
  mkdir -p "$src" "$out"
  upstream_mod=$(cd "$src" && go mod download -json "$module@$version" | jq -r .GoMod)
  {
    echo "module k8slan.local/e2e-$name-build"
    grep -E '^(go|godebug) ' "$upstream_mod"
  } >"$src/go.mod"
  (cd "$src" && go get "$pkg@$version")
  (cd "$src" && go build -p "$GO_BUILD_JOBS" -trimpath -ldflags "$ldflags" -o "$out/" "$pkg")
  touch "$out/.complete"
  log "$name $version: built in $((SECONDS - start))s"
}

build_multus() {
  build_pinned multus gopkg.in/k8snetworkplumbingwg/multus-cni.v4 \
    gopkg.in/k8snetworkplumbingwg/multus-cni.v4/cmd/multus "$MULTUS_VERSION" "$MULTUS_BIN"
}

build_helm() {
  # helm reports its version from this variable (empty otherwise).
  build_pinned helm helm.sh/helm/v3 helm.sh/helm/v3/cmd/helm "$HELM_VERSION" "$HELM_BIN" \
    "-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
}

# KubeVirt's macvtap-cni into $MACVTAP_CNI_BIN/macvtap. The proxy has refused this module so far
# (versions.env); then the stand-in is installed there, and $MACVTAP_CNI_BIN/SOURCE says
# STANDIN and what the proxy answered.
build_macvtapcni() {
  local out=$MACVTAP_CNI_BIN module=github.com/kubevirt/macvtap-cni answer
  if [[ -f $out/.complete ]]; then log "macvtap-cni $MACVTAP_CNI_VERSION: cached in $out"; return; fi
  mkdir -p "$out" "$K8SLAN_CACHE/src"
  answer=$(cd "$K8SLAN_CACHE/src" && go mod download -json "$module@$MACVTAP_CNI_VERSION" 2>/dev/null \
    | jq -r '.Error // empty' || true)
  if [[ -z $answer ]]; then
    build_pinned macvtap-cni "$module" "$module/cmd/cni" "$MACVTAP_CNI_VERSION" "$out/build"
    install -m 755 "$out/build/cni" "$out/macvtap"
    echo "kubevirt macvtap-cni $MACVTAP_CNI_VERSION" >"$out/SOURCE"
    touch "$out/.complete"
    return
  fi
  # No .complete for the stand-in: the next build asks the proxy again.
  log "macvtap-cni $MACVTAP_CNI_VERSION: the module proxy answered: ${answer//$'\n'/ }"
  log "macvtap-cni: installing the stand-in e2e/tools/macvtap-cni-standin/macvtap instead"
  install -m 755 "$E2E_DIR/tools/macvtap-cni-standin/macvtap" "$out/macvtap"
  printf 'STANDIN: the module proxy answered: %s\n' "${answer//$'\n'/ }" >"$out/SOURCE"
}

build_packages() {
  local p missing=()
  for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  ((${#missing[@]})) || return 0
  log "apt: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y "${missing[@]}" >/dev/null \
    || { apt-get update >/dev/null && apt-get install -y "${missing[@]}" >/dev/null; }
}

build_images() { "$E2E_DIR/images/build-images.sh"; }

build_pyenv() {
  local marker=$PY_VENV/.complete-$PYTEST_VERSION-$GRPCIO_VERSION
  if [[ -f $marker ]]; then log "python venv: cached in $PY_VENV"; return; fi
  log "python venv: installing pytest, grpcio into $PY_VENV"
  python3 -m venv "$PY_VENV"
  "$PY_VENV/bin/pip" install --quiet --disable-pip-version-check \
    "pytest==$PYTEST_VERSION" "grpcio==$GRPCIO_VERSION"
  touch "$marker"
}

main() {
  local targets=("$@")
  [[ ${#targets[@]} -gt 0 ]] || targets=(all)
  [[ ${targets[0]} == all ]] && targets=(packages kubernetes multus helm macvtapcni images pyenv)
  command -v go >/dev/null || die "go is not installed (Go >= 1.24 with access to the module proxy)"
  local t
  for t in "${targets[@]}"; do
    case $t in
      packages|kubernetes|multus|helm|macvtapcni|images|pyenv) "build_$t" ;;
      *) die "unknown build target: $t" ;;
    esac
  done
}

main "$@"
