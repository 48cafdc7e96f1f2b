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
KUBEVIRT_GUEST_IMAGE=$KUBEVIRT_IMAGE_PREFIX/guest:dev
