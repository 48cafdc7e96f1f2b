//! Types, names and pure validation rules of k8slan, shared by the agent, the CNI plugins and the
//! controller. Nothing here touches the network, the filesystem or the API server.

pub mod lan;
pub mod mtu;
pub mod naming;
pub mod peer;
pub mod prepared;
pub mod report;
pub mod validate;
pub mod watch;

pub use lan::{
    LAN, LanSpec, LanStatus, MacvtapMode, NodeLanState, SpokeHolder, VxlanFamily, VxlanMode,
};
pub use naming::SpokeKind;
pub use validate::{FieldError, InvalidLan, validate_spec};

/// API group of the LAN resource.
pub const GROUP: &str = "lan.k8slan.io";
/// API version of the LAN resource.
pub const VERSION: &str = "v1beta1";
