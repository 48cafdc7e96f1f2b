//! The datapath of one node: LAN namespaces, bridges, VXLANs and spokes.
//!
//! [`Datapath`] holds the logic and talks to the kernel only through the small [`Kernel`]
//! trait: [`RtnlKernel`] is the real one (rtnetlink and nix, one kept netlink socket per
//! namespace), `fake::RecordingKernel` an in-memory one that records every call for the unit
//! tier (behind the `testing` cargo feature: tests and benches only). See `docs/datapath.md`.

pub mod datapath;
#[cfg(any(test, feature = "testing"))]
pub mod fake;
pub mod inventory;
pub mod kernel;
pub mod lan;
pub mod netlink;
pub mod netns;
pub mod peers;
pub mod spoke;

pub use datapath::{BRIDGE_GROUP_FWD_MASK, Datapath, DatapathError, Owner, PORT_GROUP_FWD_MASK};
pub use inventory::{NodeLan, SpokeView};
pub use kernel::{IfAddress, Kernel, KernelError, Link, LinkKind, Ns};
pub use lan::LanState;
pub use netlink::{HostNs, RtnlKernel};
pub use peers::PeerChanges;
pub use spoke::{MacAttachment, SpokeAttachment};

// The device plugin shares one datapath between its gRPC handlers.
const _: fn() = || {
    fn shareable<T: Send + Sync>() {}
    shareable::<Datapath<RtnlKernel>>();
    #[cfg(any(test, feature = "testing"))]
    shareable::<Datapath<fake::RecordingKernel>>();
};
