//! Helpers for privileged tests: throwaway network namespaces and directories ([`netns`]) and
//! raw Ethernet frames on interfaces and macvtap devices ([`frame`], also the `k8slan-frame` CLI).
//! Dependency-light on purpose: the `k8slan-frame` binary goes into the e2e test image and builds
//! as a static binary.

pub mod frame;
pub mod netns;

pub use netns::{TestDir, TestNs, in_netns, unique_name};
