#!/usr/bin/env bash
# Install (or upgrade) k8slan on the running e2e cluster, the way a user would with Helm:
#   1. hack/build-image.sh builds k8slan.local/k8slan:<appVersion> (cached static build) and
#      leaves the raw-frame tool k8slan-frame next to it;
#   2. the testbox image is rebuilt with k8slan-frame in /usr/local/bin (plus TESTBOX_ADD);
#   3. both images are imported into every node; the k8slan image is also tagged
#      <appVersion>-<digest of the archive>, and the chart is installed with that tag, so a
#      rebuilt image rolls the pods and an unchanged one does not;
#   4. helm upgrade --install k8slan charts/k8slan -n k8slan-system --create-namespace --wait;
#   5. waits until the validating webhook answers (a server-side dry run of a LAN passes).
# Environment: SKIP_BUILD=1 reuses the existing archive; HELM_ARGS adds helm flags.
# Prints the admin kubeconfig path as the last line.
set -euo pipefail
source "$(dirname "$0")/lib/common.sh"
REPO_DIR=$(cd "$E2E_DIR/.." && pwd)
RELEASE=$K8SLAN_RELEASE
NAMESPACE=$K8SLAN_NAMESPACE
KUBECTL=$E2E_DIR/kubectl
HELM=$E2E_DIR/helm

[[ $EUID -eq 0 ]] || die "run as root"
[[ -s $ADMIN_KUBECONFIG ]] || die "no cluster: run make cluster-up first"
start=$SECONDS

archive=$IMAGES_DIR/k8slan.tar
if [[ ${SKIP_BUILD:-0} == 1 && -s $archive ]]; then
  log "SKIP_BUILD=1: reusing $archive"
else
  log "building the k8slan image (hack/build-image.sh; static release build, cached)"
  archive=$("$REPO_DIR/hack/build-image.sh" | tail -n 1)
fi
frame=$IMAGES_DIR/k8slan-frame
[[ -x $frame ]] || die "$frame is missing (hack/build-image.sh leaves it there)"

log "rebuilding the testbox image with k8slan-frame"
"$E2E_DIR/images/build-images.sh" --add "$frame:/usr/local/bin/k8slan-frame" >&2

app_version=$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' "$REPO_DIR/charts/k8slan/Chart.yaml")
image=k8slan.local/k8slan:$app_version
tag=$app_version-$(sha256sum "$archive" | cut -c1-12)
"$E2E_DIR/images/import-image.sh" "$archive" "$IMAGES_DIR/testbox.tar"
for node in "${NODES[@]}"; do
  ctr -a "$(containerd_sock "$node")" -n k8s.io images tag --force "$image" "k8slan.local/k8slan:$tag" >/dev/null
done
log "image k8slan.local/k8slan:$tag on every node"

log "helm upgrade --install $RELEASE charts/k8slan -n $NAMESPACE"
# shellcheck disable=SC2086  # HELM_ARGS is a list of flags
"$HELM" upgrade --install "$RELEASE" "$REPO_DIR/charts/k8slan" -n "$NAMESPACE" --create-namespace \
  --set-string image.tag="$tag" --wait --timeout 5m ${HELM_ARGS:-} >&2

# The webhook is ready once the API server can call it: a dry run of a valid LAN passes.
probe=$(cat <<EOF
{"apiVersion": "lan.k8slan.io/v1beta1", "kind": "LAN",
 "metadata": {"name": "install-probe", "namespace": "default"},
 "spec": {"ns": "install-probe", "bridge": "br0", "vxlan": "vx0", "vni": 16777215,
          "defaultVxlanDev": "$UNDERLAY_IF", "spokes": ["install-probe"]}}
EOF
)
# shellcheck disable=SC2016  # expanded by the inner bash
wait_for 90 "the k8slan webhook to admit a LAN (server-side dry run)" \
  bash -c '"$0" apply --dry-run=server -f - <<<"$1" >/dev/null 2>&1' "$KUBECTL" "$probe" \
  || { "$KUBECTL" apply --dry-run=server -f - <<<"$probe" >&2 || true; die "the webhook does not admit LANs"; }
"$KUBECTL" -n "$NAMESPACE" get pods -o wide >&2
log "k8slan installed in $((SECONDS - start))s"
echo "$ADMIN_KUBECONFIG"
