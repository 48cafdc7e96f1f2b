#!/usr/bin/env bash
# Installs the Debian packages that building and testing k8slan need. Idempotent; needs root.
set -euo pipefail

packages=(
  iproute2 iputils-ping iptables nftables conntrack socat openssl jq ethtool tcpdump iperf3
  protobuf-compiler busybox-static
  etcd-server containerd runc containernetworking-plugins
  # KubeVirt's binaries (cgo) and the test guest's kernel, which `make test` starts building
  # in the background right after this (hack/kubevirt-early.sh).
  gcc libc6-dev jq make flex bison libelf-dev xz-utils bc
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "install-deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
