# shellcheck shell=bash
# shellcheck disable=SC2034  # used by the scripts that source it
# KubeVirt in the e2e cluster: where its build lives and the names of its local images.
# Sourced by common.sh.

KUBEVIRT_BIN=$K8SLAN_CACHE/bin/kubevirt-$KUBEVIRT_VERSION
KUBEVIRT_SRC=$K8SLAN_CACHE/src/kubevirt-$KUBEVIRT_VERSION
KUBEVIRT_MANIFESTS=$KUBEVIRT_BIN/manifests
KUBEVIRT_NAMESPACE=kubevirt
# Our images are imported into every node, never pulled: k8slan.local/kubevirt/<component>:<version>.
KUBEVIRT_IMAGE_PREFIX=k8slan.local/kubevirt
# The test guest, a containerDisk (kubevirt/guest/build.sh; its contract in that README).
KUBEVIRT_GUEST_IMAGE=$KUBEVIRT_IMAGE_PREFIX/guest:dev
KUBEVIRT_GUEST_TAR=$IMAGES_DIR/kubevirt-guest.tar

# The five component images (kubevirt/images.sh builds them as OCI archives; the installer
# imports them and the rendered operator manifest names them). The operator derives the other
# images' names from its own (same prefix, same tag), so all five follow one pattern.
KUBEVIRT_COMPONENTS=(virt-operator virt-api virt-controller virt-handler virt-launcher)
KUBEVIRT_IMAGES_DIR=$IMAGES_DIR/kubevirt-$KUBEVIRT_VERSION
KUBEVIRT_DEBS=$K8SLAN_CACHE/debs/kubevirt-$KUBEVIRT_VERSION   # Debian packages of the images
kubevirt_image()     { echo "$KUBEVIRT_IMAGE_PREFIX/$1:$KUBEVIRT_VERSION"; }
kubevirt_image_tar() { echo "$KUBEVIRT_IMAGES_DIR/$1.tar"; }

# Unpack the single layer of OCI archive $1 into directory $2; print the image config.
unpack_image() {
  local tar=$1 root=$2 oci=$2.oci manifest layer config
  mkdir -p "$oci" "$root"
  tar -xf "$tar" -C "$oci"
  manifest=$(jq -r '.manifests[0].digest | sub("sha256:"; "")' "$oci/index.json")
  layer=$(jq -r '.layers[0].digest | sub("sha256:"; "")' "$oci/blobs/sha256/$manifest")
  config=$(jq -r '.config.digest | sub("sha256:"; "")' "$oci/blobs/sha256/$manifest")
  tar -xzf "$oci/blobs/sha256/$layer" -C "$root" --numeric-owner \
    --xattrs --xattrs-include='security.capability'
  cat "$oci/blobs/sha256/$config"
}
