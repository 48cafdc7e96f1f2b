#!/usr/bin/env bash
# Builds k8slan's one image, k8slan.local/k8slan:<tag>, as an OCI archive without Docker:
# static Rust binaries (glibc, +crt-static) laid out as the chart expects, written by
# e2e/images/oci-image.py.
#   /usr/local/bin/k8slan-controller, /usr/local/bin/k8slan-agent
#   /opt/k8slan/cni/k8slanveth, /opt/k8slan/cni/k8slanmacvtap   (copied to the host by install-cni)
# Usage: hack/build-image.sh [--tag TAG] [--output FILE]
# Prints the archive's path as the last line.
set -euo pipefail
cd "$(dirname "$0")/.."

cache=${K8SLAN_CACHE:-/var/cache/k8slan}
tag=$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' charts/k8slan/Chart.yaml)
output=""
while (($#)); do
  case $1 in
    --tag) tag=$2; shift 2 ;;
    --output) output=$2; shift 2 ;;
    *) echo "usage: $0 [--tag TAG] [--output FILE]" >&2; exit 2 ;;
  esac
done
[[ -n $tag ]] || { echo "build-image: no tag (charts/k8slan/Chart.yaml has no appVersion)" >&2; exit 1; }
output=${output:-$cache/images/k8slan.tar}
mkdir -p "$(dirname "$output")"

# Static binaries get their own target dir: RUSTFLAGS would otherwise invalidate the main cache.
target_dir=$cache/target-static
triple=x86_64-unknown-linux-gnu
RUSTFLAGS='-C target-feature=+crt-static' CARGO_TARGET_DIR=$target_dir \
  cargo build --profile image --target "$triple" --locked \
  -p k8slan-agent -p k8slan-controller -p k8slan-cni -p k8slan-testkit \
  --bin k8slan-agent --bin k8slan-controller --bin k8slan-frame --bin k8slanveth --bin k8slanmacvtap >&2
bin=$target_dir/$triple/image
for b in k8slan-agent k8slan-controller k8slanveth k8slanmacvtap k8slan-frame; do
  if ldd "$bin/$b" 2>&1 | grep -q '=>'; then
    echo "build-image: $bin/$b is dynamically linked" >&2; exit 1
  fi
done

python3 e2e/images/oci-image.py --name "k8slan.local/k8slan:$tag" --output "$output" \
  --add "$bin/k8slan-controller:/usr/local/bin/k8slan-controller" \
  --add "$bin/k8slan-agent:/usr/local/bin/k8slan-agent" \
  --add "$bin/k8slanveth:/opt/k8slan/cni/k8slanveth" \
  --add "$bin/k8slanmacvtap:/opt/k8slan/cni/k8slanmacvtap" \
  --mkdir /tmp:1777 \
  --entrypoint /usr/local/bin/k8slan-agent \
  --label "org.opencontainers.image.title=k8slan" \
  --label "org.opencontainers.image.version=$tag" >&2
# The raw-frame tool goes into the e2e test image; leave it where e2e can pick it up.
install -m 0755 "$bin/k8slan-frame" "$cache/images/k8slan-frame"
echo "$output"
