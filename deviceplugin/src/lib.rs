//! Kubelet device plugin for LAN spokes.
