//! Kubelet device plugin for LAN spokes.
//!
//! For every spoke of every LAN this node can serve, the plugin advertises two extended
//! resources, `macvtap.k8slan.io/k8slan-veth-<spoke>` (pods) and
//! `macvtap.k8slan.io/k8slan-mac-<spoke>` (KubeVirt VMs), each with one device on its own unix
//! socket registered with the kubelet (device plugin API v1beta1). `Allocate` claims the spoke
//! cluster-wide (a Lease), asks the node datapath ([`SpokePreparer`]) to prepare its host side,
//! records it for the CNI plugins ([`prepared`]) and hands VMs their tap device. A spoke has one member: its twin on this node and the spoke
//! on every other node turn `Unhealthy` while it is held.
//!
//! The core ([`plugin::serve`]) takes its inputs as channels and traits so that tests drive it
//! without an API server; [`run`] wires it to Kubernetes.

pub mod claim;
mod endpoint;
pub mod inventory;
pub mod lan;
pub mod member;
mod memory;
pub mod plugin;
pub mod podresources;
pub mod pods;
pub mod prepared;
pub mod proto;
mod reflect;
mod registration;
pub mod report;
pub mod spoke;
pub mod uds;
pub mod underlay;

#[cfg(feature = "testing")]
pub mod testing;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub use endpoint::{plugin_options, preferred, socket_file};
pub use plugin::{AllocateError, Backends, PluginConfig, PluginError, Sources};
pub use spoke::{HostSide, PrepareError, SpokePreparer, SpokeRequest, TapDevice};

/// Worker threads of the runtime the plugin runs on (the agent's, and the benchmark's plugin
/// process). Each thread that allocates gets its own glibc malloc arena, and the kubelet
/// connections' small long-lived allocations end up spread over all of them: with 2,000
/// resources and 1,000 Allocates the plugin holds ~59 MiB on 2 workers but ~65 MiB on 8, so
/// tokio's default (one worker per core) would break the memory budget on a big node. Two
/// workers keep `Allocate` p99 well under its goal while the datapath works on the blocking
/// pool.
pub const RUNTIME_WORKERS: usize = 2;

/// Default kubelet root directory.
pub const DEFAULT_KUBELET_DIR: &str = "/var/lib/kubelet";
/// Default namespace of the agent (claims and node reports live there).
pub const DEFAULT_NAMESPACE: &str = "k8slan-system";

/// Settings of the device plugin inside the agent.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Kubernetes node name (not the OS hostname).
    pub node_name: String,
    /// The host interface carrying the node's InternalIP: the underlay of LANs that name none.
    pub uplink: Option<String>,
    /// Directory of the kubelet's device-plugin sockets, `<kubelet-dir>/device-plugins`.
    pub device_plugin_dir: PathBuf,
    /// The kubelet's pod-resources socket, `<kubelet-dir>/pod-resources/kubelet.sock`.
    pub pod_resources_socket: PathBuf,
    /// Namespace of claim and node-report Leases.
    pub namespace: String,
    /// Directory listing host interfaces, `/sys/class/net`.
    pub sys_class_net: PathBuf,
    /// How often pod-resources is polled for releases.
    pub poll_interval: Duration,
    /// How long an allocation may stay unconfirmed by pod-resources.
    pub release_grace: Duration,
    /// Directory of the prepared-spoke records the CNI plugins read.
    pub prepared_dir: PathBuf,
    /// Longest wait for a claim write of `Allocate`.
    pub claim_timeout: Duration,
}

impl AgentConfig {
    /// Defaults derived from the kubelet root directory.
    pub fn new(
        node_name: impl Into<String>,
        kubelet_dir: &Path,
        namespace: impl Into<String>,
    ) -> Self {
        AgentConfig {
            node_name: node_name.into(),
            uplink: None,
            device_plugin_dir: kubelet_dir.join("device-plugins"),
            pod_resources_socket: kubelet_dir.join("pod-resources").join("kubelet.sock"),
            namespace: namespace.into(),
            sys_class_net: PathBuf::from(underlay::DEFAULT_SYS_CLASS_NET),
            poll_interval: PluginConfig::DEFAULT_POLL_INTERVAL,
            release_grace: PluginConfig::DEFAULT_RELEASE_GRACE,
            prepared_dir: PathBuf::from(k8slan_api::prepared::DEFAULT_PREPARED_DIR),
            claim_timeout: PluginConfig::DEFAULT_CLAIM_TIMEOUT,
        }
    }
}

/// Runs the device plugin against the cluster until `shutdown` resolves: serves the LANs and
/// claims that `sources` deliver (the caller runs [`lan::watch_lans`] and
/// [`claim::watch_claims`], so that the agent's other loops see the very same snapshots), keeps
/// claims and the node report in Leases in `config.namespace`, prepares spokes with `preparer`
/// and looks underlay devices up with `links` (sysfs, without addresses, when `None`).
pub async fn run(
    config: AgentConfig,
    preparer: Arc<dyn SpokePreparer>,
    links: Option<Arc<dyn underlay::HostLinks>>,
    client: kube::Client,
    sources: Sources,
    shutdown: impl Future<Output = ()>,
) -> Result<(), PluginError> {
    let backends = Backends {
        preparer,
        claims: Arc::new(claim::LeaseClaims::new(client.clone(), &config.namespace)),
        reports: Arc::new(report::LeaseReports::new(client.clone(), &config.namespace)),
        links: links.unwrap_or_else(|| Arc::new(underlay::SysfsLinks::new(&config.sys_class_net))),
        pods: Arc::new(pods::KubePods::new(client, &config.node_name)),
    };
    let plugin_config = PluginConfig {
        node_name: config.node_name,
        uplink: config.uplink,
        device_plugin_dir: config.device_plugin_dir,
        pod_resources_socket: config.pod_resources_socket,
        prepared_dir: config.prepared_dir,
        poll_interval: config.poll_interval,
        release_grace: config.release_grace,
        claim_timeout: config.claim_timeout,
    };
    plugin::serve(plugin_config, backends, sources, shutdown).await
}
