//! Tap device numbers of macvtaps, and the node agent's tap device nodes.
//!
//! The device plugin hands a VM pod `<dev-dir>/tap-<spoke>`, a node made at `Allocate` with the
//! macvtap's tap device number. Moving a macvtap into another namespace unregisters and
//! re-registers it, and the kernel then gives its tap the lowest free minor number: when another
//! macvtap went away meanwhile, the number changes and the node handed to the pod opens nothing
//! (`ENODEV`). The container is created after `ADD`, so `ADD` re-points the node
//! ([`crate::link::LinkOps::repoint_tap_nodes`]) and the runtime then sees the right number.
//!
//! The primitives (device numbers, reading sysfs, the race-free node directory) live once in the
//! kernel layer, [`k8slan_kernel::tap`].

pub use k8slan_kernel::DevNum;
