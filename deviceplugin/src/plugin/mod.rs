//! The plugin core at run time: keeps the inventory current from its inputs, serves one endpoint
//! per advertised resource, answers `Allocate`, releases members that are gone, follows kubelet
//! restarts and publishes the node report.
//!
//! One concern per module: [`allocate`] (the `Allocate` call, step by step), [`kubelet`] (the
//! endpoints, their registration and kubelet restarts), [`members`] (members learnt from
//! pod-resources: their pods recorded on the claims, releases, orphan claims and spokes held
//! from a namespace the LAN does not admit), [`underlays`] (probing the underlay devices),
//! [`publish`] (the node report) and this module's serving loop, which feeds them events and
//! recomputes the inventory after every change of an input.

mod allocate;
mod kubelet;
mod members;
mod publish;
mod state;
mod underlays;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tracing::{Instrument, Span, debug, info, info_span};

pub use allocate::AllocateError;

use crate::claim::{ClaimSnapshot, ClaimStore};
use crate::inventory::{self, Inputs};
use crate::lan::LanSnapshot;
use crate::memory::{self, Trimmer};
use crate::podresources::{self, Listing, PodResources};
use crate::pods::Pods;
use crate::prepared::{PreparedDir, PreparedDirError};
use crate::report::ReportSink;
use crate::spoke::SpokePreparer;
use crate::underlay::HostLinks;
use kubelet::{DirEvents, KubeletSide};
use members::MemberTracker;
use publish::Publisher;
use state::Core;
use underlays::Prober;

/// Settings of the plugin core.
#[derive(Debug, Clone)]
pub struct PluginConfig {
    /// Kubernetes node name of this node.
    pub node_name: String,
    /// The host interface carrying the node's InternalIP: the underlay of LANs that name none.
    pub uplink: Option<String>,
    /// The kubelet's device-plugin directory (holds `kubelet.sock` and our sockets).
    pub device_plugin_dir: PathBuf,
    /// The kubelet's pod-resources socket.
    pub pod_resources_socket: PathBuf,
    /// Directory of the `PreparedSpoke` records the CNI plugins read.
    pub prepared_dir: PathBuf,
    /// How often pod-resources is polled (and underlays re-probed).
    pub poll_interval: Duration,
    /// How long an allocation may stay unconfirmed by pod-resources before it is released; also
    /// how long after a kubelet restart (or a pod-resources outage) nothing is released, since
    /// a restarted kubelet lists only the pods it has synced so far.
    pub release_grace: Duration,
    /// Longest wait for one claim write of `Allocate` (create, or the undo of a failed one).
    pub claim_timeout: Duration,
}

impl PluginConfig {
    pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(3);
    pub const DEFAULT_RELEASE_GRACE: Duration = Duration::from_secs(60);
    /// Well inside the kubelet's own wait for `Allocate`, and far above a healthy API server's
    /// answer (milliseconds).
    pub const DEFAULT_CLAIM_TIMEOUT: Duration = Duration::from_secs(5);
}

/// What the core acts on.
#[derive(Clone)]
pub struct Backends {
    pub preparer: Arc<dyn SpokePreparer>,
    pub claims: Arc<dyn ClaimStore>,
    pub reports: Arc<dyn ReportSink>,
    pub links: Arc<dyn HostLinks>,
    pub pods: Arc<dyn Pods>,
}

/// What the core watches: LAN and claim snapshots (`None` until the first full list).
pub struct Sources {
    pub lans: watch::Receiver<Option<LanSnapshot>>,
    pub claims: watch::Receiver<Option<ClaimSnapshot>>,
}

/// The plugin could not run.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error("invalid node name: {0}")]
    NodeName(k8slan_api::FieldError),
    #[error("cannot create the device-plugin directory {dir}: {source}")]
    Dir {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot watch the device-plugin directory {dir} for kubelet restarts: {source}")]
    Watch {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    PreparedDir(#[from] PreparedDirError),
}

/// Runs the plugin until `shutdown` resolves, then stops serving and removes its sockets (the
/// kubelet keeps the allocations; a restarted agent picks them up again).
pub async fn serve(
    config: PluginConfig,
    backends: Backends,
    sources: Sources,
    shutdown: impl Future<Output = ()>,
) -> Result<(), PluginError> {
    k8slan_api::validate::node_name("node name", &config.node_name)
        .map_err(PluginError::NodeName)?;
    let records = PreparedDir::open(&config.prepared_dir)?;
    let dir_events = DirEvents::watch(&config.device_plugin_dir)?;
    let span = info_span!("deviceplugin", node = %config.node_name);
    let core = Arc::new(Core::new(&config, backends, records));
    let (listing_tx, listing_rx) = watch::channel(None);
    let poller = tokio::spawn(
        podresources::poll(
            PodResources::new(&config.pod_resources_socket),
            config.poll_interval,
            listing_tx,
        )
        .instrument(span.clone()),
    );
    let (probe_tx, probe_rx) = mpsc::unbounded_channel();
    let mut runner = Runner {
        kubelet: KubeletSide::new(&config.device_plugin_dir, core.clone()),
        members: MemberTracker::new(config.release_grace),
        prober: Prober::new(probe_tx),
        publisher: Publisher::default(),
        trimmer: Trimmer::default(),
        core,
        poll_interval: config.poll_interval,
    };
    info!(parent: &span, dir = %config.device_plugin_dir.display(), "device plugin running");
    let inputs = Events {
        sources,
        listing: listing_rx,
        probes: probe_rx,
        dir: dir_events,
    };
    runner.run(inputs, shutdown, &span).await;
    info!(parent: &span, "device plugin stopping");
    poller.abort();
    runner.kubelet.stop().await;
    Ok(())
}

/// Everything the serving loop waits on.
struct Events {
    sources: Sources,
    listing: watch::Receiver<Option<Listing>>,
    probes: mpsc::UnboundedReceiver<(underlays::Probed, underlays::Addressed)>,
    dir: DirEvents,
}

/// The serving loop's state: one part per concern.
struct Runner {
    core: Arc<Core>,
    kubelet: KubeletSide,
    members: MemberTracker,
    prober: Prober,
    publisher: Publisher,
    trimmer: Trimmer,
    poll_interval: Duration,
}

impl Runner {
    /// The serving loop. Only input changes recompute the inventory; directory events (2,000
    /// socket deletions when the kubelet restarts) just rebind and register.
    async fn run(&mut self, mut inputs: Events, shutdown: impl Future<Output = ()>, span: &Span) {
        let Sources { lans, claims } = &mut inputs.sources;
        let mut tick = tokio::time::interval(self.poll_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let (mut lans_open, mut claims_open, mut listing_open) = (true, true, true);
        tokio::pin!(shutdown);
        // The initial values count as changes.
        lans.mark_changed();
        claims.mark_changed();
        loop {
            let dirty = tokio::select! {
                _ = &mut shutdown => break,
                v = changed(lans, &mut lans_open), if lans_open => {
                    if let Some(v) = v { self.core.lock().lans = v; }
                    true
                }
                v = changed(claims, &mut claims_open), if claims_open => {
                    if let Some(v) = v { self.members.claims_changed(&self.core, v); }
                    true
                }
                v = changed(&mut inputs.listing, &mut listing_open), if listing_open => {
                    if let Some(v) = v { self.members.listing_changed(&self.core, v); }
                    true
                }
                _ = self.core.wake.notified() => true,
                Some(probed) = inputs.probes.recv() => { self.prober.probed(&self.core, probed); true }
                _ = tick.tick() => { self.tick(); true }
                ev = inputs.dir.next() => {
                    if let Some((mask, name)) = ev { self.kubelet.dir_event(mask, name.as_deref()); }
                    false
                }
            };
            if dirty {
                let _enter = span.enter();
                self.reconcile();
            }
        }
    }

    fn tick(&mut self) {
        self.members.expire(&self.core);
        self.members.release_orphan_claims(&self.core);
        self.prober.probe(&self.core);
        self.kubelet.check_sockets();
        if self.trimmer.due(&self.core.churn) {
            debug!("quiet after a burst; returning free heap memory to the kernel");
            tokio::task::spawn_blocking(memory::return_free_memory);
        }
    }

    /// Recomputes the inventory and brings endpoints, device lists and the report in line.
    fn reconcile(&mut self) {
        let inputs = {
            let st = self.core.lock();
            let Some(lans) = st.lans.clone() else {
                return; // the LANs are not listed yet: advertise nothing, withdraw nothing
            };
            if self
                .prober
                .missing(&self.core.node, self.core.uplink(), &lans, &st.underlays)
            {
                // A LAN names an underlay not probed yet: wait for the probe rather than
                // report it missing for a moment.
                drop(st);
                self.prober.probe(&self.core);
                return;
            }
            // Compute outside the lock so that Allocate never waits for it: Allocate re-checks
            // the twin under the lock and wakes us again after changing the members.
            state::Snapshot::of(&st, lans)
        };
        let no_claims = Default::default();
        let inv = Arc::new(inventory::compute(Inputs {
            node: &self.core.node,
            lans: &inputs.lans,
            uplink: self.core.uplink(),
            underlays: &inputs.underlays,
            addresses: &inputs.addresses,
            members: &inputs.members,
            claims: inputs.claims.as_deref().unwrap_or(&no_claims),
            failures: &inputs.failures,
            denied: &inputs.denied,
        }));
        self.core.lock().inventory = inv.clone();
        self.kubelet.advertise(&inv);
        self.publisher
            .publish(&self.core.backends.reports, &self.core.node, &inv.report);
    }
}

/// The next value of a watch channel; `None` (and `open` cleared) once its sender is gone.
async fn changed<T: Clone>(rx: &mut watch::Receiver<T>, open: &mut bool) -> Option<T> {
    match rx.changed().await {
        Ok(()) => Some(rx.borrow_and_update().clone()),
        Err(_) => {
            *open = false;
            debug!("an input of the device plugin closed; it keeps its last value");
            None
        }
    }
}
