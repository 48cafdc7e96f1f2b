//! The plugin core at run time: keeps the inventory current from its inputs, serves one endpoint
//! per advertised resource, answers `Allocate`, releases members that are gone, follows kubelet
//! restarts and publishes the node report.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::StreamExt;
use inotify::{EventMask, Inotify, WatchMask};
use k8slan_api::naming::{parse_resource_name, resource_name};
use k8slan_api::{LanSpec, SpokeKind};
use tokio::sync::{Notify, mpsc, watch};
use tonic::Status;
use tracing::{Instrument, debug, info, info_span, instrument, warn};

use crate::claim::{Acquired, Claim, ClaimError, ClaimSnapshot, ClaimStore};
use crate::endpoint::{Allocator, Endpoint};
use crate::inventory::{self, Failure, Health, Inputs, Inventory, device_id};
use crate::lan::LanSnapshot;
use crate::member::{Holdings, Member, Members, Reserved};
use crate::memory::{self, Churn, Trimmer};
use crate::podresources::{self, PodResources};
use crate::proto::KUBELET_SOCKET;
use crate::proto::v1beta1::{ContainerAllocateResponse, DeviceSpec};
use crate::registration::Registrar;
use crate::report::{NodeReport, ReportSink};
use crate::spoke::{PrepareError, SpokePreparer, SpokeRequest};
use crate::underlay::HostLinks;

/// Settings of the plugin core.
#[derive(Debug, Clone)]
pub struct PluginConfig {
    /// Kubernetes node name of this node.
    pub node_name: String,
    /// The kubelet's device-plugin directory (holds `kubelet.sock` and our sockets).
    pub device_plugin_dir: PathBuf,
    /// The kubelet's pod-resources socket.
    pub pod_resources_socket: PathBuf,
    /// How often pod-resources is polled (and underlays re-probed).
    pub poll_interval: Duration,
    /// How long an allocation may stay unconfirmed by pod-resources before it is released; also
    /// how long after a kubelet restart (or a pod-resources outage) nothing is released, since
    /// a restarted kubelet lists only the pods it has synced so far.
    pub release_grace: Duration,
}

impl PluginConfig {
    pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(3);
    pub const DEFAULT_RELEASE_GRACE: Duration = Duration::from_secs(60);
}

/// What the core acts on.
#[derive(Clone)]
pub struct Backends {
    pub preparer: Arc<dyn SpokePreparer>,
    pub claims: Arc<dyn ClaimStore>,
    pub reports: Arc<dyn ReportSink>,
    pub links: Arc<dyn HostLinks>,
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
}

/// Why an `Allocate` was refused.
#[derive(Debug, thiserror::Error)]
pub enum AllocateError {
    #[error("resource {resource} has no device {got:?}; its only device is {want:?}")]
    UnknownDevice {
        resource: String,
        want: String,
        got: Vec<String>,
    },
    #[error(
        "resource {resource} is not served on node {node} (LAN gone, spoke removed or no underlay)"
    )]
    NotServed { resource: String, node: String },
    #[error("spoke {spoke} is held on node {node} by {}; a spoke has one member", pod.as_deref().unwrap_or("a pod not yet reported"))]
    HeldElsewhere {
        spoke: String,
        node: String,
        pod: Option<String>,
    },
    #[error("spoke {spoke} is already attached as {kind} on this node by {}; a spoke has one member", pod.as_deref().unwrap_or("a pod not yet reported"))]
    TwinHeld {
        spoke: String,
        kind: SpokeKind,
        pod: Option<String>,
    },
    #[error("cannot claim spoke {spoke}: {source}")]
    Claim { spoke: String, source: ClaimError },
    #[error("cannot prepare spoke {spoke} of LAN {lan} as {kind}: {source}")]
    Prepare {
        spoke: String,
        lan: String,
        kind: SpokeKind,
        source: PrepareError,
    },
}

impl From<AllocateError> for Status {
    fn from(e: AllocateError) -> Self {
        let msg = e.to_string();
        match e {
            AllocateError::UnknownDevice { .. } => Status::invalid_argument(msg),
            AllocateError::NotServed { .. } => Status::not_found(msg),
            AllocateError::HeldElsewhere { .. } | AllocateError::TwinHeld { .. } => {
                Status::failed_precondition(msg)
            }
            AllocateError::Claim { .. } => Status::unavailable(msg),
            AllocateError::Prepare { .. } => Status::internal(msg),
        }
    }
}

#[derive(Default)]
struct State {
    lans: Option<LanSnapshot>,
    claims: Option<ClaimSnapshot>,
    holdings: Option<Holdings>,
    members: Members,
    underlays: BTreeMap<String, bool>,
    failures: BTreeMap<String, Failure>,
    inventory: Arc<Inventory>,
    /// Pods already written onto our claims.
    pods_recorded: BTreeMap<String, String>,
}

struct Core {
    node: String,
    backends: Backends,
    state: Mutex<State>,
    /// Wakes the main loop after an `Allocate` changed the members.
    wake: Notify,
    /// Allocates, releases and pod recordings since start (heap churn), for returning freed
    /// memory.
    churn: Churn,
}

impl Core {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data behind: keep going with it.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    #[instrument(name = "allocate", skip(self), fields(node = %self.node))]
    async fn do_allocate(
        &self,
        kind: SpokeKind,
        spoke: &str,
        device_ids: &[String],
    ) -> Result<ContainerAllocateResponse, AllocateError> {
        self.churn.record();
        let resource = resource_name(kind, spoke);
        let want = device_id(kind, spoke);
        if device_ids.len() != 1 || device_ids[0] != want {
            return Err(AllocateError::UnknownDevice {
                resource,
                want,
                got: device_ids.to_vec(),
            });
        }
        let (advert, spec, reserved) = {
            let mut st = self.lock();
            let advert = st
                .inventory
                .resources
                .get(&resource)
                .cloned()
                .ok_or_else(|| AllocateError::NotServed {
                    resource: resource.clone(),
                    node: self.node.clone(),
                })?;
            let spec: LanSpec = st
                .lans
                .as_ref()
                .and_then(|l| l.get(&advert.lan))
                .map(|l| l.spec.clone())
                .ok_or_else(|| AllocateError::NotServed {
                    resource: resource.clone(),
                    node: self.node.clone(),
                })?;
            if let Health::HeldElsewhere { node } = &advert.health {
                let pod = st
                    .claims
                    .as_ref()
                    .and_then(|c| c.get(spoke))
                    .and_then(|c| c.pod.clone());
                return Err(AllocateError::HeldElsewhere {
                    spoke: spoke.into(),
                    node: node.clone(),
                    pod,
                });
            }
            let reserved = st
                .members
                .reserve(spoke, kind, Instant::now())
                .map_err(|twin| AllocateError::TwinHeld {
                    spoke: spoke.into(),
                    kind: twin.0.kind,
                    pod: twin.0.pod,
                })?;
            (advert, spec, reserved)
        };
        if reserved == Reserved::New {
            // The twin turns unhealthy now, before the slow part.
            self.wake.notify_one();
        }
        let undo = |created: bool| async move {
            if reserved == Reserved::New {
                self.lock().members.cancel(spoke, kind);
                self.wake.notify_one();
            }
            if created && let Err(e) = self.backends.claims.release(spoke, None).await {
                warn!(error = %e, "cannot drop the claim of a failed allocation");
            }
        };
        let created = match self
            .backends
            .claims
            .acquire(spoke, &advert.lan, kind, &self.node)
            .await
        {
            Ok(Acquired::Created) => true,
            Ok(Acquired::AlreadyOurs) => false,
            Ok(Acquired::HeldElsewhere(c)) => {
                undo(false).await;
                return Err(AllocateError::HeldElsewhere {
                    spoke: spoke.into(),
                    node: c.node,
                    pod: c.pod,
                });
            }
            Err(source) => {
                undo(false).await;
                return Err(AllocateError::Claim {
                    spoke: spoke.into(),
                    source,
                });
            }
        };
        let req = SpokeRequest {
            lan: &advert.lan,
            spec: &spec,
            underlay: &advert.underlay,
            spoke,
            kind,
        };
        let generation = self
            .lock()
            .lans
            .as_ref()
            .and_then(|l| l.get(&advert.lan))
            .map_or(0, |l| l.generation);
        let prepared = self.backends.preparer.prepare(req).await.and_then(|p| {
            if kind == SpokeKind::Mac && p.tap.is_none() {
                Err(PrepareError::new(
                    "the datapath returned no tap device for a VM spoke",
                ))
            } else {
                Ok(p)
            }
        });
        match prepared {
            Ok(prepared) => {
                if self.lock().failures.remove(&advert.lan).is_some() {
                    self.wake.notify_one();
                }
                let mut resp = ContainerAllocateResponse::default();
                debug!(host_ifname = %prepared.host_ifname, "spoke prepared");
                if let Some(tap) = prepared.tap {
                    resp.devices.push(DeviceSpec {
                        container_path: tap.container_path,
                        host_path: tap.host_path.to_string_lossy().into_owned(),
                        permissions: "rw".into(),
                    });
                }
                Ok(resp)
            }
            Err(source) => {
                let err = AllocateError::Prepare {
                    spoke: spoke.into(),
                    lan: advert.lan.clone(),
                    kind,
                    source,
                };
                self.lock().failures.insert(
                    advert.lan.clone(),
                    Failure {
                        generation,
                        message: err.to_string(),
                    },
                );
                undo(created).await;
                Err(err)
            }
        }
    }
}

struct CoreAllocator(Arc<Core>);

#[async_trait]
impl Allocator for CoreAllocator {
    async fn allocate(
        &self,
        kind: SpokeKind,
        spoke: &str,
        device_ids: &[String],
    ) -> Result<ContainerAllocateResponse, Status> {
        self.0
            .do_allocate(kind, spoke, device_ids)
            .await
            .map_err(|e| {
                warn!(error = %e, "Allocate refused");
                Status::from(e)
            })
    }
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
    let dir = config.device_plugin_dir.clone();
    std::fs::create_dir_all(&dir).map_err(|source| PluginError::Dir {
        dir: dir.clone(),
        source,
    })?;
    let inotify = Inotify::init().map_err(|source| PluginError::Watch {
        dir: dir.clone(),
        source,
    })?;
    inotify
        .watches()
        .add(
            &dir,
            WatchMask::CREATE | WatchMask::DELETE | WatchMask::MOVED_TO | WatchMask::MOVED_FROM,
        )
        .map_err(|source| PluginError::Watch {
            dir: dir.clone(),
            source,
        })?;
    let mut dir_events =
        inotify
            .into_event_stream([0u8; 4096])
            .map_err(|source| PluginError::Watch {
                dir: dir.clone(),
                source,
            })?;

    let span = info_span!("deviceplugin", node = %config.node_name);
    let core = Arc::new(Core {
        node: config.node_name.clone(),
        backends,
        state: Mutex::new(State::default()),
        wake: Notify::new(),
        churn: Churn::default(),
    });
    let (holdings_tx, mut holdings_rx) = watch::channel(None);
    let (probe_tx, mut probe_rx) = mpsc::unbounded_channel();
    let poller = tokio::spawn(
        podresources::poll(
            PodResources::new(&config.pod_resources_socket),
            config.poll_interval,
            holdings_tx,
        )
        .instrument(span.clone()),
    );
    let mut runner = Runner {
        core: core.clone(),
        allocator: Arc::new(CoreAllocator(core)),
        registrar: Registrar::spawn(dir.clone()),
        endpoints: BTreeMap::new(),
        config,
        published: Arc::new(Mutex::new(None)),
        publishing: None,
        adopted: false,
        listing_lost: false,
        kubelet_socket: None,
        probe_tx,
        probing: false,
        trimmer: Trimmer::default(),
    };
    let Sources {
        mut lans,
        mut claims,
    } = sources;
    let mut tick = tokio::time::interval(runner.config.poll_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut lans_open, mut claims_open, mut holdings_open, mut dir_open) =
        (true, true, true, true);
    tokio::pin!(shutdown);
    info!(parent: &span, dir = %dir.display(), "device plugin running");
    // The initial values count as changes.
    lans.mark_changed();
    claims.mark_changed();
    loop {
        // Only input changes recompute the inventory; directory events (2,000 socket deletions
        // when the kubelet restarts) just rebind and register.
        let dirty = tokio::select! {
            _ = &mut shutdown => break,
            r = lans.changed(), if lans_open => match r {
                Ok(()) => { let v = lans.borrow_and_update().clone(); runner.core.lock().lans = v; true }
                Err(_) => { lans_open = false; false }
            },
            r = claims.changed(), if claims_open => match r {
                Ok(()) => { let v = claims.borrow_and_update().clone(); runner.claims_changed(v); true }
                Err(_) => { claims_open = false; false }
            },
            r = holdings_rx.changed(), if holdings_open => match r {
                Ok(()) => { let v = holdings_rx.borrow_and_update().clone(); runner.holdings_changed(v); true }
                Err(_) => { holdings_open = false; false }
            },
            _ = runner.core.wake.notified() => true,
            Some(probed) = probe_rx.recv() => { runner.probed(probed); true }
            _ = tick.tick() => { runner.tick(); true }
            ev = dir_events.next(), if dir_open => {
                match ev {
                    Some(Ok(ev)) => runner.dir_event(ev.mask, ev.name.as_deref()),
                    Some(Err(e)) => { warn!(parent: &span, error = %e, "reading device-plugin directory events failed"); dir_open = false; }
                    None => dir_open = false,
                }
                false
            }
        };
        if dirty {
            let _enter = span.enter();
            runner.reconcile();
        }
    }
    info!(parent: &span, "device plugin stopping");
    poller.abort();
    let stops: Vec<_> = std::mem::take(&mut runner.endpoints)
        .into_values()
        .map(Endpoint::stop)
        .collect();
    for s in stops {
        let _ = s.await;
    }
    Ok(())
}

struct Runner {
    core: Arc<Core>,
    allocator: Arc<dyn Allocator>,
    registrar: Registrar,
    endpoints: BTreeMap<String, Endpoint>,
    config: PluginConfig,
    published: Arc<Mutex<Option<NodeReport>>>,
    publishing: Option<tokio::task::JoinHandle<()>>,
    adopted: bool,
    /// pod-resources stopped answering after it had answered (the kubelet may be restarting).
    listing_lost: bool,
    /// Identity (device, inode) of `kubelet.sock` when last seen.
    kubelet_socket: Option<(u64, u64)>,
    probe_tx: mpsc::UnboundedSender<BTreeMap<String, bool>>,
    probing: bool,
    trimmer: Trimmer,
}

impl Runner {
    fn claims_changed(&mut self, claims: Option<ClaimSnapshot>) {
        let mut st = self.core.lock();
        if let (Some(snap), false) = (&claims, self.adopted) {
            // After an agent restart our own claims tell which spokes are held here, until
            // pod-resources confirms or the grace period ends.
            let now = Instant::now();
            for c in snap.values().filter(|c| c.node == self.core.node) {
                st.members.adopt(&c.spoke, c.kind, c.pod.clone(), now);
            }
            self.adopted = true;
        }
        st.claims = claims;
    }

    fn holdings_changed(&mut self, holdings: Option<Holdings>) {
        {
            let mut st = self.core.lock();
            if st.holdings.is_none() && holdings.is_some() && self.listing_lost {
                // pod-resources answers again after an outage: the kubelet may have restarted.
                self.listing_lost = false;
                st.members
                    .hold_releases(Instant::now() + self.config.release_grace);
            }
            if st.holdings.is_some() && holdings.is_none() {
                self.listing_lost = true;
            }
            st.holdings = holdings;
        }
        self.expire_members();
    }

    fn tick(&mut self) {
        self.expire_members();
        self.release_orphan_claims();
        self.probe_underlays();
        self.check_sockets();
        if self.trimmer.due(&self.core.churn) {
            debug!("quiet after a burst; returning free heap memory to the kernel");
            tokio::task::spawn_blocking(memory::return_free_memory);
        }
    }

    /// Safety net behind inotify (lost events, a directory recreated under us): a new
    /// `kubelet.sock` (other inode) means a kubelet restart; a missing socket of ours is served
    /// and registered again.
    fn check_sockets(&mut self) {
        let kubelet = self.current_kubelet_socket();
        if kubelet.is_some() && kubelet != self.kubelet_socket {
            let first = self.kubelet_socket.is_none();
            self.kubelet_socket = kubelet;
            if !first {
                self.kubelet_restarted();
                return;
            }
        }
        let mut again = Vec::new();
        for (resource, ep) in &mut self.endpoints {
            if !ep.socket_exists() {
                match ep.rebind() {
                    Ok(()) => again.push((resource.clone(), ep.file_name())),
                    Err(e) => warn!(resource, error = %e, "cannot serve the resource again"),
                }
            }
        }
        if !again.is_empty() {
            info!(
                resources = again.len(),
                "plugin sockets were missing; serving and registering again"
            );
            self.registrar.register(again);
        }
    }

    /// Drops claims of this node that no member backs any more (a release that failed, or a
    /// member that left while the agent was down). Only once the kubelet has answered and our
    /// claims were adopted, so nothing is dropped on partial knowledge.
    fn release_orphan_claims(&self) {
        if !self.adopted {
            return;
        }
        let st = self.core.lock();
        if st.holdings.is_none() {
            return;
        }
        let orphans: Vec<Claim> = st
            .claims
            .iter()
            .flat_map(|c| c.values())
            .filter(|c| c.node == self.core.node && st.members.get(&c.spoke).is_none())
            .cloned()
            .collect();
        drop(st);
        for claim in orphans {
            let claims = self.core.backends.claims.clone();
            tokio::spawn(async move {
                info!(spoke = %claim.spoke, "dropping a claim no member backs");
                if let Err(e) = claims.release(&claim.spoke, Some(&claim)).await {
                    warn!(spoke = %claim.spoke, error = %e, "cannot drop an orphan claim");
                }
            });
        }
    }

    /// Probes the underlay devices the LANs need, on the blocking pool (a `HostLinks` may ask
    /// the kernel and take its time); the result comes back through `probes`. One probe at a
    /// time.
    fn probe_underlays(&mut self) {
        if self.probing {
            return;
        }
        let lans = self.core.lock().lans.clone();
        let Some(lans) = lans else { return };
        let needed = inventory::underlays_needed(&self.core.node, lans.values());
        let links = self.core.backends.links.clone();
        let known = self.core.lock().underlays.clone();
        let tx = self.probe_tx.clone();
        self.probing = true;
        tokio::task::spawn_blocking(move || {
            let probed: BTreeMap<String, bool> = needed
                .into_iter()
                .filter_map(|d| match links.exists(&d) {
                    Ok(present) => Some((d, present)),
                    Err(e) => {
                        warn!(underlay = %d, error = %e, "cannot tell whether the underlay exists; keeping the last answer");
                        known.get(&d).map(|&present| (d, present))
                    }
                })
                .collect();
            let _ = tx.send(probed);
        });
    }

    fn probed(&mut self, underlays: BTreeMap<String, bool>) {
        self.probing = false;
        self.core.lock().underlays = underlays;
    }

    /// Applies the last pod-resources listing: releases members that are gone and records the
    /// pods on our claims.
    fn expire_members(&mut self) {
        let mut st = self.core.lock();
        let Some(holdings) = st.holdings.clone() else {
            return; // never learnt anything from the kubelet: release nothing
        };
        let gone = st
            .members
            .observe(&holdings, Instant::now(), self.config.release_grace);
        let mut record = Vec::new();
        for (spoke, m) in st.members.iter() {
            if let Some(pod) = &m.pod
                && st.pods_recorded.get(spoke) != Some(pod)
            {
                record.push((spoke.clone(), m.kind, pod.clone()));
            }
        }
        for (spoke, _, pod) in &record {
            st.pods_recorded.insert(spoke.clone(), pod.clone());
        }
        let mut releases = Vec::new();
        for (spoke, m) in gone {
            st.pods_recorded.remove(&spoke);
            let claim = st
                .claims
                .as_ref()
                .and_then(|c| c.get(&spoke))
                .filter(|c| c.node == self.core.node)
                .cloned();
            let lan = st
                .lans
                .as_ref()
                .and_then(|l| l.values().find(|v| v.spec.spokes.contains(&spoke)).cloned());
            releases.push((spoke, m, claim, lan));
        }
        drop(st);
        if !record.is_empty() {
            self.core.churn.record();
        }
        for (spoke, kind, pod) in record {
            let claims = self.core.backends.claims.clone();
            tokio::spawn(async move {
                if let Err(e) = claims.set_pod(&spoke, kind, &pod).await {
                    warn!(spoke, pod, error = %e, "cannot record the member pod on the claim");
                }
            });
        }
        for (spoke, member, claim, lan) in releases {
            self.release(spoke, member, claim, lan);
        }
    }

    fn release(
        &self,
        spoke: String,
        member: Member,
        claim: Option<Claim>,
        lan: Option<crate::lan::WatchedLan>,
    ) {
        info!(spoke, kind = %member.kind, pod = ?member.pod, "member gone; releasing the spoke");
        self.core.churn.record();
        let core = self.core.clone();
        tokio::spawn(async move {
            if let Err(e) = core.backends.claims.release(&spoke, claim.as_ref()).await {
                warn!(spoke, error = %e, "cannot release the claim");
            }
            let Some(lan) = lan else { return };
            let Some(underlay) = lan.spec.underlay_for(&core.node) else {
                return;
            };
            let req = SpokeRequest {
                lan: &lan.key,
                spec: &lan.spec,
                underlay,
                spoke: &spoke,
                kind: member.kind,
            };
            if let Err(e) = core.backends.preparer.release(req).await {
                warn!(spoke, lan = %lan.key, error = %e, "cannot release the spoke's host side");
            }
        });
    }

    fn dir_event(&mut self, mask: EventMask, name: Option<&OsStr>) {
        let name = name.and_then(OsStr::to_str);
        if mask.contains(EventMask::Q_OVERFLOW) {
            self.kubelet_restarted();
            return;
        }
        let created = mask.intersects(EventMask::CREATE | EventMask::MOVED_TO);
        let deleted = mask.intersects(EventMask::DELETE | EventMask::MOVED_FROM);
        match name {
            Some(KUBELET_SOCKET) if created => self.kubelet_restarted(),
            Some(file) if deleted => {
                let Some(resource) = file
                    .strip_suffix(".sock")
                    .and_then(parse_resource_name)
                    .map(|(k, s)| resource_name(k, s))
                else {
                    return;
                };
                // While the kubelet restarts (its socket gone or new) the coming `kubelet.sock`
                // event registers everything: do not register twice.
                let same_kubelet = self.kubelet_socket.is_some()
                    && self.kubelet_socket == self.current_kubelet_socket();
                if let Some(ep) = self.endpoints.get_mut(&resource)
                    && !ep.socket_exists()
                {
                    debug!(resource, "plugin socket removed; serving it again");
                    match ep.rebind() {
                        Ok(()) if same_kubelet => {
                            self.registrar.register(vec![(resource, ep.file_name())])
                        }
                        Ok(()) => {}
                        Err(e) => warn!(resource, error = %e, "cannot serve the resource again"),
                    }
                }
            }
            _ => {}
        }
    }

    /// `kubelet.sock` appeared: the kubelet (re)started. Bring back missing sockets and
    /// register every resource again.
    /// Identity (device, inode) of `kubelet.sock` now, if it exists.
    fn current_kubelet_socket(&self) -> Option<(u64, u64)> {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(self.config.device_plugin_dir.join(KUBELET_SOCKET))
            .ok()
            .map(|m| (m.dev(), m.ino()))
    }

    fn kubelet_restarted(&mut self) {
        self.kubelet_socket = self.current_kubelet_socket();
        // Its first pod-resources listings can miss live members: release nothing for a while.
        self.core
            .lock()
            .members
            .hold_releases(Instant::now() + self.config.release_grace);
        let mut rebound = 0;
        let mut all = Vec::with_capacity(self.endpoints.len());
        for (resource, ep) in &mut self.endpoints {
            if !ep.socket_exists() {
                if let Err(e) = ep.rebind() {
                    warn!(resource, error = %e, "cannot serve the resource again");
                    continue;
                }
                rebound += 1;
            }
            all.push((resource.clone(), ep.file_name()));
        }
        info!(
            resources = all.len(),
            rebound, "kubelet registration socket (re)created; registering again"
        );
        self.registrar.register(all);
    }

    /// Recomputes the inventory and brings endpoints, device lists and the report in line.
    fn reconcile(&mut self) {
        let inputs = {
            let st = self.core.lock();
            if st.lans.is_none() {
                return; // the LANs are not listed yet: advertise nothing, withdraw nothing
            }
            if let Some(lans) = &st.lans {
                let missing = inventory::underlays_needed(&self.core.node, lans.values())
                    .into_iter()
                    .any(|d| !st.underlays.contains_key(&d));
                if missing {
                    // A LAN names an underlay not probed yet: wait for the probe rather than
                    // report it missing for a moment.
                    drop(st);
                    self.probe_underlays();
                    return;
                }
            }
            // Compute outside the lock so that Allocate never waits for it: Allocate re-checks
            // the twin under the lock and wakes us again after changing the members.
            (
                st.lans.clone().expect("checked above"),
                st.claims.clone(),
                st.underlays.clone(),
                st.members.clone(),
                st.failures.clone(),
            )
        };
        let (lans, claims, underlays, members, failures) = inputs;
        let no_claims = BTreeMap::new();
        let inv = Arc::new(inventory::compute(Inputs {
            node: &self.core.node,
            lans: &lans,
            underlays: &underlays,
            members: &members,
            claims: claims.as_deref().unwrap_or(&no_claims),
            failures: &failures,
        }));
        self.core.lock().inventory = inv.clone();

        let gone: Vec<String> = self
            .endpoints
            .keys()
            .filter(|r| !inv.resources.contains_key(*r))
            .cloned()
            .collect();
        for resource in gone {
            if let Some(ep) = self.endpoints.remove(&resource) {
                info!(resource, "withdrawing resource");
                self.registrar.forget(resource);
                ep.withdraw();
            }
        }
        let mut new = Vec::new();
        for (resource, advert) in &inv.resources {
            match self.endpoints.get(resource) {
                Some(ep) => {
                    if ep.set_health(&advert.device_id, advert.health == Health::Healthy) {
                        debug!(resource, health = ?advert.health, "device health changed");
                    }
                }
                None => match Endpoint::start(
                    &self.config.device_plugin_dir,
                    advert.kind,
                    &advert.spoke,
                    advert.devices(),
                    self.allocator.clone(),
                ) {
                    Ok(ep) => {
                        new.push((resource.clone(), ep.file_name()));
                        self.endpoints.insert(resource.clone(), ep);
                    }
                    Err(e) => warn!(resource, error = %e, "cannot serve resource"),
                },
            }
        }
        if !new.is_empty() {
            info!(resources = new.len(), "serving new resources");
            self.registrar.register(new);
        }
        self.publish_report(&inv.report);
    }

    /// Writes the report when it differs from the last one written (one write at a time).
    fn publish_report(&mut self, report: &NodeReport) {
        if self.publishing.as_ref().is_some_and(|h| !h.is_finished()) {
            return; // the next event or tick retries
        }
        let published = self.published.lock().unwrap_or_else(|p| p.into_inner());
        if published.as_ref() == Some(report) {
            return;
        }
        drop(published);
        let sink = self.core.backends.reports.clone();
        let node = self.core.node.clone();
        let slot = self.published.clone();
        let report = report.clone();
        self.publishing = Some(tokio::spawn(async move {
            match sink.publish(&node, &report).await {
                Ok(()) => {
                    debug!(lans = report.lans.len(), "node report written");
                    *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(report);
                }
                Err(e) => warn!(error = %e, "cannot write the node report; will retry"),
            }
        }));
    }
}
