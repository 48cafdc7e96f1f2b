//! What the device plugin asks of the node datapath: prepare the host side of a spoke on
//! `Allocate`, tear leftovers down once its member is gone. The agent implements
//! [`SpokePreparer`] with the netagent crate; tests use a recording fake.

use std::path::PathBuf;

use async_trait::async_trait;
use k8slan_api::{LanSpec, SpokeKind};

/// One spoke of one LAN on this node, as the datapath needs it.
#[derive(Debug, Clone, Copy)]
pub struct SpokeRequest<'a> {
    /// `<namespace>/<name>` of the LAN, for logs and errors.
    pub lan: &'a str,
    /// The LAN's spec (validated with `k8slan_api::validate_spec`).
    pub spec: &'a LanSpec,
    /// The underlay device this node uses for the LAN (present in the host namespace).
    pub underlay: &'a str,
    /// The spoke name (validated).
    pub spoke: &'a str,
    /// Pod (`Veth`) or VM (`Mac`) attachment.
    pub kind: SpokeKind,
}

/// The host side of a spoke, ready for the CNI plugin to move into the pod (the plugin records
/// it in a `k8slan_api::prepared::PreparedSpoke`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostSide {
    /// Interface in the host namespace that the CNI plugin moves: the spoke's veth end for
    /// `Veth`, its macvtap for `Mac`.
    pub link: String,
    /// Its interface index in the host namespace.
    pub ifindex: u32,
    /// The macvtap's character device, for `Mac` only.
    pub tap: Option<TapDevice>,
}

/// A tap character device the container runtime must expose in the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TapDevice {
    /// Device node on the host (in the node-private device directory).
    pub host_path: PathBuf,
    /// Path the container sees, `/dev/tap<ifindex>` (see `k8slan_api::naming::container_tap_path`).
    pub container_path: String,
}

/// The datapath failed to prepare or release a spoke; the message says what and why.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct PrepareError(Box<dyn std::error::Error + Send + Sync + 'static>);

impl PrepareError {
    /// Wraps the datapath's own error.
    pub fn new(err: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>) -> Self {
        Self(err.into())
    }
}

/// Host-side preparation of spokes. Both calls must be idempotent: the kubelet has no
/// deallocate call, so `prepare` is called again after restarts and must recreate leftovers
/// (LAN namespace, bridge, VXLAN, the spoke's veth, and for `Mac` the macvtap and its tap node).
#[async_trait]
pub trait SpokePreparer: Send + Sync + 'static {
    /// Makes the spoke's host side exist and returns what the container needs.
    async fn prepare(&self, req: SpokeRequest<'_>) -> Result<HostSide, PrepareError>;
    /// Removes what is left of the spoke's host side once its member is gone.
    async fn release(&self, req: SpokeRequest<'_>) -> Result<(), PrepareError>;
}
