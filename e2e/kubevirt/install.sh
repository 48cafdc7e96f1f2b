#!/usr/bin/env bash
# Install KubeVirt $KUBEVIRT_VERSION on the running e2e cluster the way its docs do, from our own
# build: the operator manifest (e2e/kubevirt/build.sh manifests), then the KubeVirt CR
# (e2e/kubevirt/kubevirt-cr.yaml) with the macvtap binding plugin, and waits until it is Available.
#   1. builds what is missing (binaries, manifests, images, guest; cached) and imports the
#      images into the nodes (nothing is pulled);
#   2. decides emulation: KVM is used only when a probe guest boots under it on this machine
#      (K8SLAN_KUBEVIRT_EMULATION=true|false overrides the probe);
#   3. kubectl apply of the operator and the CR; waits for condition Available.
# Idempotent: an installed KubeVirt is updated in place. Prints the admin kubeconfig path last.
set -euo pipefail
source "$(dirname "$0")/../lib/common.sh"
KUBECTL=$E2E_DIR/kubectl
KUBEVIRT_TIMEOUT=${KUBEVIRT_TIMEOUT:-600}

# The operator, virt-api and virt-controller prefer the control plane (they tolerate its taint);
# virt-handler, the launchers and the guest's containerDisk run on the workers.
import_kubevirt_images() {
  local c control=() workers=() node
  for c in virt-operator virt-api virt-controller; do control+=("$(kubevirt_image_tar "$c")"); done
  for c in virt-handler virt-launcher; do workers+=("$(kubevirt_image_tar "$c")"); done
  "$E2E_DIR/images/import-image.sh" "${control[@]}" >&2
  for node in "${WORKERS[@]}"; do
    "$E2E_DIR/images/import-image.sh" --node "$node" "${workers[@]}" "$KUBEVIRT_GUEST_TAR" >&2
  done
}

# true when QEMU cannot run a guest under this machine's KVM (kvm-probe.sh).
use_emulation() {
  case ${K8SLAN_KUBEVIRT_EMULATION:-auto} in
    true|false) echo "$K8SLAN_KUBEVIRT_EMULATION" ;;
    auto) if "$E2E_DIR/kubevirt/kvm-probe.sh"; then echo false; else echo true; fi ;;
    *) die "K8SLAN_KUBEVIRT_EMULATION=$K8SLAN_KUBEVIRT_EMULATION: use true, false or auto" ;;
  esac
}

apply_kubevirt() {
  local emulation=$1
  "$KUBECTL" apply -f "$KUBEVIRT_MANIFESTS/kubevirt-operator.yaml" >&2
  "$KUBECTL" -n "$KUBEVIRT_NAMESPACE" rollout status deployment/virt-operator --timeout=300s >&2
  sed "s/@USE_EMULATION@/$emulation/" "$E2E_DIR/kubevirt/kubevirt-cr.yaml" | "$KUBECTL" apply -f - >&2
}

main() {
  [[ $EUID -eq 0 ]] || die "run as root"
  [[ -s $ADMIN_KUBECONFIG ]] || die "no cluster: run make cluster-up first"
  local start=$SECONDS emulation
  # The guest image needs k8slan-frame, which install-k8slan.sh (hack/build-image.sh) leaves.
  "$E2E_DIR/kubevirt/build.sh" all guest
  import_kubevirt_images
  emulation=$(use_emulation)
  log "kubevirt: useEmulation=$emulation"
  apply_kubevirt "$emulation"
  "$KUBECTL" -n "$KUBEVIRT_NAMESPACE" wait kubevirt/kubevirt --for=condition=Available \
    --timeout="${KUBEVIRT_TIMEOUT}s" >&2 \
    || { "$KUBECTL" -n "$KUBEVIRT_NAMESPACE" get pods -o wide >&2; die "KubeVirt did not become Available"; }
  "$KUBECTL" -n "$KUBEVIRT_NAMESPACE" get pods -o wide >&2
  log "kubevirt $KUBEVIRT_VERSION installed in $((SECONDS - start))s"
  echo "$ADMIN_KUBECONFIG"
}

main "$@"
