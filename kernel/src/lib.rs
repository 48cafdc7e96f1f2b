//! Kernel primitives shared by k8slan's node-side crates (`netagent` for the agent's datapath,
//! `cni` for the plugins), each implemented once. Kubernetes-free and synchronous: no runtime,
//! no API types.
//!
//! - [`netns`]: open a network namespace by path without being fooled (no symlink following
//!   where it matters, fstat/`NS_GET_NSTYPE` verification, the node's own namespace recognised)
//!   and run code inside one on a dedicated OS thread ([`netns::NetNs::run`], [`netns::NsThread`]).
//! - [`nsdir`]: a directory of namespace mounts (the agent's netns directory): entries opened
//!   with `*at()` calls and `O_NOFOLLOW`, namespaces created and mounted race-free, unmounted only
//!   when they are the namespace the caller expects; never the container runtime's directory.
//! - [`sysfs`]: a thread-private sysfs mount that shows the thread's network namespace.
//! - [`tap`]: device numbers, a macvtap's tap number from sysfs, and a directory of tap device
//!   nodes handled race-free.
//! - [`route`]: a blocking rtnetlink socket bound to one namespace.
//! - [`name`]: the kernel-side checks of names that become path components.

pub mod name;
pub mod netns;
pub mod nsdir;
pub mod route;
pub mod sysfs;
pub mod tap;

pub use netns::{Found, NetNs, NsError, NsId, NsThread};
pub use nsdir::{NsDir, NsDirError, NsEntry};
pub use route::{RequestError, RouteSocket};
pub use tap::{DevNum, NodeOwner, TapDir, TapError, TapNode};
