//! Shared code of the k8slanveth and macvtap CNI plugins.
