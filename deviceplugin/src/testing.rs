//! Test doubles that speak the real kubelet protocols over unix sockets, and in-memory
//! stand-ins for the API server and the datapath. Enabled by the `testing` feature.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use k8slan_api::naming::{container_tap_path, tap_device_file};
use k8slan_api::{LAN, LanSpec, SpokeKind};
use tokio::net::UnixListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::UnixListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::Router;
use tonic::transport::{Channel, Server};
use tonic::{Request, Response, Status};

use crate::claim::{Acquired, Claim, ClaimError, ClaimSnapshot, ClaimStore, LeaseClaim};
use crate::lan::{LanSnapshot, snapshot};
use crate::plugin::{self, Backends, PluginConfig, PluginError, Sources};
use crate::pods::{PodRef, PodWarning, Pods, PodsError};
use crate::proto::podresources::pod_resources_lister_server::{
    PodResourcesLister, PodResourcesListerServer,
};
use crate::proto::podresources::{
    ContainerDevices, ContainerResources, ListPodResourcesRequest, ListPodResourcesResponse,
    PodResources,
};
use crate::proto::v1beta1::device_plugin_client::DevicePluginClient;
use crate::proto::v1beta1::registration_server::{Registration, RegistrationServer};
use crate::proto::v1beta1::{
    AllocateRequest, AllocateResponse, ContainerAllocateRequest, Device, DevicePluginOptions,
    Empty, RegisterRequest,
};
use crate::proto::{DEVICE_PLUGIN_API_VERSION, HEALTHY, KUBELET_SOCKET};
use crate::report::{NodeReport, ReportError, ReportSink};
use crate::spoke::{HostSide, PrepareError, SpokePreparer, SpokeRequest, TapDevice};
use crate::uds;
use crate::underlay::HostLinks;

/// Serves the stand-in kubelet's `router` on `listener` until `stop` is cancelled.
fn serve_until(router: Router, listener: UnixListener, stop: &CancellationToken) -> JoinHandle<()> {
    let stopped = stop.clone().cancelled_owned();
    tokio::spawn(async move {
        let _ = router
            .serve_with_incoming_shutdown(UnixListenerStream::new(listener), stopped)
            .await;
    })
}

// ---------------------------------------------------------------------------------------------
// Kubelet stand-in

/// What the stand-in kubelet knows of one registered resource.
#[derive(Debug, Clone, Default)]
pub struct ResourceView {
    /// Socket file named in the last `RegisterRequest`.
    pub endpoint: String,
    pub options: Option<DevicePluginOptions>,
    /// Options the plugin answered to `GetDevicePluginOptions`.
    pub served_options: Option<DevicePluginOptions>,
    /// `Register` calls accepted since the (stand-in) kubelet started.
    pub registrations: u32,
    /// Every ListAndWatch message received, oldest first.
    pub updates: Vec<Vec<Device>>,
    /// Whether the ListAndWatch stream is open.
    pub streaming: bool,
}

impl ResourceView {
    /// The last device list.
    pub fn devices(&self) -> Option<&[Device]> {
        self.updates.last().map(Vec::as_slice)
    }
    /// Healthy devices in the last list (the node's allocatable count).
    pub fn allocatable(&self) -> usize {
        self.devices()
            .map_or(0, |d| d.iter().filter(|d| d.health == HEALTHY).count())
    }
}

#[derive(Default)]
struct Entry {
    view: ResourceView,
    client: Option<DevicePluginClient<Channel>>,
    stream: Option<JoinHandle<()>>,
}

struct Shared {
    dir: PathBuf,
    resources: Mutex<BTreeMap<String, Entry>>,
    changes: watch::Sender<u64>,
}

impl Shared {
    fn bump(&self) {
        self.changes.send_modify(|n| *n += 1);
    }
}

struct RegistrationService(Arc<Shared>);

#[async_trait]
impl Registration for RegistrationService {
    async fn register(&self, req: Request<RegisterRequest>) -> Result<Response<Empty>, Status> {
        let req = req.into_inner();
        if req.version != DEVICE_PLUGIN_API_VERSION {
            return Err(Status::invalid_argument(format!(
                "unsupported version {}",
                req.version
            )));
        }
        if req.endpoint.contains('/') {
            return Err(Status::invalid_argument("endpoint must be a file name"));
        }
        // Like the kubelet: dial the endpoint now, then follow ListAndWatch.
        let path = self.0.dir.join(&req.endpoint);
        let channel = uds::connect(&path)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let mut client = DevicePluginClient::new(channel);
        let served = client
            .get_device_plugin_options(Empty {})
            .await?
            .into_inner();
        let mut stream = client.list_and_watch(Empty {}).await?.into_inner();
        let shared = self.0.clone();
        let resource = req.resource_name.clone();
        let task = tokio::spawn(async move {
            while let Some(Ok(msg)) = stream.next().await {
                if let Some(e) = shared.resources.lock().unwrap().get_mut(&resource) {
                    e.view.updates.push(msg.devices);
                }
                shared.bump();
            }
            if let Some(e) = shared.resources.lock().unwrap().get_mut(&resource) {
                e.view.streaming = false;
            }
            shared.bump();
        });
        {
            let mut map = self.0.resources.lock().unwrap();
            let e = map.entry(req.resource_name.clone()).or_default();
            if let Some(old) = e.stream.replace(task) {
                old.abort();
            }
            e.client = Some(client);
            e.view.endpoint = req.endpoint;
            e.view.options = req.options;
            e.view.served_options = Some(served);
            e.view.registrations += 1;
            e.view.streaming = true;
        }
        self.0.bump();
        Ok(Response::new(Empty {}))
    }
}

/// A kubelet stand-in: serves `Registration` on `<dir>/kubelet.sock`, then dials each
/// registered endpoint and follows its ListAndWatch stream, as the kubelet does.
pub struct KubeletStandIn {
    shared: Arc<Shared>,
    server: Option<(CancellationToken, JoinHandle<()>)>,
}

impl KubeletStandIn {
    /// Starts serving in `dir` (created if needed).
    pub fn start(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let shared = Arc::new(Shared {
            dir: dir.to_owned(),
            resources: Mutex::new(BTreeMap::new()),
            changes: watch::channel(0).0,
        });
        let mut me = KubeletStandIn {
            shared,
            server: None,
        };
        me.serve()?;
        Ok(me)
    }

    fn serve(&mut self) -> std::io::Result<()> {
        let listener =
            uds::bind(&self.shared.dir.join(KUBELET_SOCKET)).map_err(std::io::Error::other)?;
        let stop = CancellationToken::new();
        let svc = RegistrationServer::new(RegistrationService(self.shared.clone()));
        let task = serve_until(Server::builder().add_service(svc), listener, &stop);
        self.server = Some((stop, task));
        Ok(())
    }

    fn stop_all(&mut self) {
        if let Some((stop, task)) = self.server.take() {
            stop.cancel();
            task.abort();
        }
        let mut map = self.shared.resources.lock().unwrap();
        for e in map.values_mut() {
            if let Some(t) = e.stream.take() {
                t.abort();
            }
        }
        map.clear();
    }

    /// Simulates a kubelet restart: forgets every plugin, deletes every file of the directory
    /// (plugin sockets included), then serves `kubelet.sock` anew.
    pub fn restart(&mut self) -> std::io::Result<()> {
        self.stop_all();
        for entry in std::fs::read_dir(&self.shared.dir)? {
            let path = entry?.path();
            if path.is_file() || !path.is_dir() {
                std::fs::remove_file(&path)?;
            }
        }
        self.shared.bump();
        self.serve()
    }

    /// What is known of `resource`.
    pub fn resource(&self, resource: &str) -> Option<ResourceView> {
        self.shared
            .resources
            .lock()
            .unwrap()
            .get(resource)
            .map(|e| e.view.clone())
    }

    /// Every registered resource.
    pub fn resources(&self) -> BTreeMap<String, ResourceView> {
        self.shared
            .resources
            .lock()
            .unwrap()
            .iter()
            .map(|(k, e)| (k.clone(), e.view.clone()))
            .collect()
    }

    /// Waits until `pred` holds over the registered resources; false on timeout.
    pub async fn wait_until(
        &self,
        timeout: Duration,
        pred: impl Fn(&BTreeMap<String, ResourceView>) -> bool,
    ) -> bool {
        let mut rx = self.shared.changes.subscribe();
        let check = || pred(&self.resources());
        tokio::time::timeout(timeout, async {
            loop {
                if check() {
                    return;
                }
                if rx.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        })
        .await
        .is_ok()
    }

    /// Waits until `resource` has received `n` ListAndWatch messages; returns the last one.
    pub async fn wait_updates(
        &self,
        resource: &str,
        n: usize,
        timeout: Duration,
    ) -> Option<Vec<Device>> {
        let ok = self
            .wait_until(timeout, |m| {
                m.get(resource).is_some_and(|r| r.updates.len() >= n)
            })
            .await;
        ok.then(|| self.resource(resource)?.updates.get(n - 1).cloned())
            .flatten()
    }

    /// Calls `Allocate` on the resource's endpoint, one container asking for `device_ids`.
    pub async fn allocate(
        &self,
        resource: &str,
        device_ids: &[&str],
    ) -> Result<AllocateResponse, Status> {
        let mut client = self
            .shared
            .resources
            .lock()
            .unwrap()
            .get(resource)
            .and_then(|e| e.client.clone())
            .ok_or_else(|| Status::not_found(format!("{resource} is not registered")))?;
        client
            .allocate(AllocateRequest {
                container_requests: vec![ContainerAllocateRequest {
                    devices_ids: device_ids.iter().map(|s| s.to_string()).collect(),
                }],
            })
            .await
            .map(Response::into_inner)
    }

    /// A client of the resource's endpoint, for other calls.
    pub fn client(&self, resource: &str) -> Option<DevicePluginClient<Channel>> {
        self.shared
            .resources
            .lock()
            .unwrap()
            .get(resource)
            .and_then(|e| e.client.clone())
    }
}

impl Drop for KubeletStandIn {
    fn drop(&mut self) {
        self.stop_all();
    }
}

// ---------------------------------------------------------------------------------------------
// Pod-resources stand-in

#[derive(Clone, Default)]
struct PodList(Arc<Mutex<Vec<PodResources>>>);

#[async_trait]
impl PodResourcesLister for PodList {
    async fn list(
        &self,
        _: Request<ListPodResourcesRequest>,
    ) -> Result<Response<ListPodResourcesResponse>, Status> {
        Ok(Response::new(ListPodResourcesResponse {
            pod_resources: self.0.lock().unwrap().clone(),
        }))
    }
}

/// Serves the pod-resources `List` call on a socket with a list the test sets.
pub struct FakePodResources {
    path: PathBuf,
    pods: PodList,
    stop: CancellationToken,
}

impl FakePodResources {
    pub fn start(path: &Path) -> std::io::Result<Self> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let pods = PodList::default();
        let stop = Self::serve(path, &pods)?;
        Ok(FakePodResources {
            path: path.to_owned(),
            pods,
            stop,
        })
    }

    fn serve(path: &Path, pods: &PodList) -> std::io::Result<CancellationToken> {
        let listener = uds::bind(path).map_err(std::io::Error::other)?;
        let stop = CancellationToken::new();
        let svc = PodResourcesListerServer::new(pods.clone());
        serve_until(Server::builder().add_service(svc), listener, &stop);
        Ok(stop)
    }

    /// Simulates the pod-resources side of a kubelet restart: the server stops and a new one
    /// binds a new socket file at the same path, listing what the test set last.
    pub fn restart(&mut self) -> std::io::Result<()> {
        self.stop.cancel();
        self.stop = Self::serve(&self.path, &self.pods)?;
        Ok(())
    }

    /// Replaces the listing: `(namespace/name, resource, device id)` per held device.
    pub fn set(&self, held: &[(&str, &str, &str)]) {
        let pods = held
            .iter()
            .map(|(pod, resource, id)| {
                let (ns, name) = pod.split_once('/').unwrap_or(("default", pod));
                PodResources {
                    name: name.into(),
                    namespace: ns.into(),
                    containers: vec![ContainerResources {
                        name: "main".into(),
                        devices: vec![ContainerDevices {
                            resource_name: resource.to_string(),
                            device_ids: vec![id.to_string()],
                        }],
                    }],
                }
            })
            .collect();
        *self.pods.0.lock().unwrap() = pods;
    }
}

impl Drop for FakePodResources {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

// ---------------------------------------------------------------------------------------------
// API-server stand-ins

/// Claims of a whole (simulated) cluster in memory; share one between several nodes.
pub struct MemoryClaims {
    map: Mutex<BTreeMap<String, LeaseClaim>>,
    tx: watch::Sender<Option<ClaimSnapshot>>,
    version: AtomicU64,
    stalled: std::sync::atomic::AtomicBool,
}

impl MemoryClaims {
    pub fn new() -> Arc<Self> {
        Arc::new(MemoryClaims {
            map: Mutex::new(BTreeMap::new()),
            tx: watch::channel(Some(Arc::new(BTreeMap::new()))).0,
            version: AtomicU64::new(1),
            stalled: Default::default(),
        })
    }

    /// Claim snapshots, as the Lease watcher would publish them.
    pub fn subscribe(&self) -> watch::Receiver<Option<ClaimSnapshot>> {
        self.tx.subscribe()
    }

    pub fn get(&self, spoke: &str) -> Option<Claim> {
        self.map.lock().unwrap().get(spoke).map(|c| c.claim.clone())
    }

    /// Records a claim directly (another node's, for example), with a fresh Lease uid.
    pub fn put(&self, claim: Claim) {
        let mut map = self.map.lock().unwrap();
        let uid = Some(format!(
            "uid-{}",
            self.version.fetch_add(1, Ordering::SeqCst)
        ));
        map.insert(claim.spoke.clone(), LeaseClaim { claim, uid });
        self.publish(&map);
    }

    pub fn remove(&self, spoke: &str) {
        let mut map = self.map.lock().unwrap();
        map.remove(spoke);
        self.publish(&map);
    }

    /// Makes every write hang (an API server that accepts connections but never answers), or
    /// answer again.
    pub fn set_stalled(&self, stalled: bool) {
        self.stalled.store(stalled, Ordering::SeqCst);
    }

    async fn wait_if_stalled(&self) {
        if self.stalled.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
    }

    fn publish(&self, map: &BTreeMap<String, LeaseClaim>) {
        self.tx.send_replace(Some(Arc::new(map.clone())));
    }
}

#[async_trait]
impl ClaimStore for MemoryClaims {
    async fn acquire(&self, want: &Claim) -> Result<Acquired, ClaimError> {
        self.wait_if_stalled().await;
        let mut map = self.map.lock().unwrap();
        let out = match map.get(&want.spoke).map(|c| &c.claim) {
            Some(c) if c.node != want.node => return Ok(Acquired::HeldElsewhere(c.clone())),
            Some(c) if c.kind == want.kind && c.lan == want.lan => {
                return Ok(Acquired::AlreadyOurs);
            }
            Some(_) => Acquired::AlreadyOurs,
            None => Acquired::Created,
        };
        let uid = Some(format!(
            "uid-{}",
            self.version.fetch_add(1, Ordering::SeqCst)
        ));
        map.insert(
            want.spoke.clone(),
            LeaseClaim {
                claim: want.clone(),
                uid,
            },
        );
        self.publish(&map);
        Ok(out)
    }

    async fn record_member(&self, claim: &Claim) -> Result<(), ClaimError> {
        self.wait_if_stalled().await;
        let mut map = self.map.lock().unwrap();
        if let Some(c) = map.get_mut(&claim.spoke) {
            c.claim = claim.clone();
        }
        self.publish(&map);
        Ok(())
    }

    async fn release(&self, spoke: &str, seen: Option<&LeaseClaim>) -> Result<(), ClaimError> {
        self.wait_if_stalled().await;
        let mut map = self.map.lock().unwrap();
        let matches = match (map.get(spoke), seen) {
            (None, _) => false,
            (Some(_), None) => true,
            // A precondition on the uid (resourceVersion changes with every pod annotation).
            (Some(c), Some(s)) => s.uid.is_none() || c.uid == s.uid,
        };
        if matches {
            map.remove(spoke);
            self.publish(&map);
        }
        Ok(())
    }
}

/// Pods of a (simulated) API server: every pod exists with UID `uid-<namespace>-<name>`;
/// events are kept.
#[derive(Default)]
pub struct MemoryPods {
    events: Mutex<Vec<(PodRef, Option<String>, PodWarning)>>,
}

impl MemoryPods {
    /// The UID this stand-in gives a pod.
    pub fn uid_of(pod: &str) -> String {
        format!("uid-{}", pod.replace('/', "-"))
    }

    /// Events written so far: `(pod, uid, warning)`.
    pub fn events(&self) -> Vec<(PodRef, Option<String>, PodWarning)> {
        self.events.lock().unwrap().clone()
    }
}

#[async_trait]
impl Pods for MemoryPods {
    async fn uid(&self, pod: &PodRef) -> Result<Option<String>, PodsError> {
        Ok(Some(Self::uid_of(&pod.to_string())))
    }

    async fn warn(
        &self,
        pod: &PodRef,
        uid: Option<&str>,
        warning: &PodWarning,
    ) -> Result<(), PodsError> {
        self.events
            .lock()
            .unwrap()
            .push((pod.clone(), uid.map(str::to_string), warning.clone()));
        Ok(())
    }
}

/// Keeps the last published node report.
#[derive(Default)]
pub struct MemoryReports {
    last: Mutex<Option<NodeReport>>,
    writes: AtomicU64,
}

impl MemoryReports {
    pub fn last(&self) -> Option<NodeReport> {
        self.last.lock().unwrap().clone()
    }
    /// How many times the report was written.
    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl ReportSink for MemoryReports {
    async fn publish(&self, _node: &str, report: &NodeReport) -> Result<(), ReportError> {
        *self.last.lock().unwrap() = Some(report.clone());
        self.writes.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

/// A host namespace whose interfaces the test decides.
#[derive(Default)]
pub struct FakeLinks {
    names: Mutex<BTreeSet<String>>,
    broken: std::sync::atomic::AtomicBool,
}

impl FakeLinks {
    pub fn with(names: &[&str]) -> Arc<Self> {
        Arc::new(FakeLinks {
            names: Mutex::new(names.iter().map(|s| s.to_string()).collect()),
            broken: Default::default(),
        })
    }
    pub fn add(&self, name: &str) {
        self.names.lock().unwrap().insert(name.into());
    }
    pub fn remove(&self, name: &str) {
        self.names.lock().unwrap().remove(name);
    }
    /// Makes every lookup fail (or work again).
    pub fn set_broken(&self, broken: bool) {
        self.broken.store(broken, Ordering::SeqCst);
    }
}

impl HostLinks for FakeLinks {
    fn exists(&self, ifname: &str) -> std::io::Result<bool> {
        if self.broken.load(Ordering::SeqCst) {
            return Err(std::io::Error::other("netlink: injected failure"));
        }
        Ok(self.names.lock().unwrap().contains(ifname))
    }
}

// ---------------------------------------------------------------------------------------------
// Datapath stand-in

/// One call the plugin made on the preparer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreparerCall {
    /// `prepare` or `release`.
    pub op: &'static str,
    pub lan: String,
    pub netns: String,
    pub underlay: String,
    pub spoke: String,
    pub kind: SpokeKind,
}

/// Records calls and answers like the datapath would, without touching the kernel: a tap
/// device path under `dev_dir` for VM spokes, with a made-up ifindex.
pub struct RecordingPreparer {
    dev_dir: PathBuf,
    calls: Mutex<Vec<PreparerCall>>,
    failing: Mutex<BTreeSet<String>>,
    record: bool,
}

impl RecordingPreparer {
    pub fn new(dev_dir: &Path) -> Arc<Self> {
        Arc::new(RecordingPreparer {
            dev_dir: dev_dir.to_owned(),
            calls: Mutex::new(Vec::new()),
            failing: Mutex::new(BTreeSet::new()),
            record: true,
        })
    }

    /// Answers without recording (benchmarks).
    pub fn quiet(dev_dir: &Path) -> Arc<Self> {
        Arc::new(RecordingPreparer {
            record: false,
            ..Arc::into_inner(Self::new(dev_dir)).expect("fresh")
        })
    }

    pub fn calls(&self) -> Vec<PreparerCall> {
        self.calls.lock().unwrap().clone()
    }

    /// Makes `prepare` of `spoke` fail.
    pub fn fail(&self, spoke: &str) {
        self.failing.lock().unwrap().insert(spoke.into());
    }

    /// The ifindex the fake reports for a spoke's macvtap.
    pub fn ifindex(spoke: &str) -> u32 {
        1000 + spoke.bytes().map(u32::from).sum::<u32>()
    }

    fn note(&self, op: &'static str, req: &SpokeRequest<'_>) {
        if self.record {
            self.calls.lock().unwrap().push(PreparerCall {
                op,
                lan: req.lan.into(),
                netns: req.spec.ns.clone(),
                underlay: req.underlay.into(),
                spoke: req.spoke.into(),
                kind: req.kind,
            });
        }
    }
}

#[async_trait]
impl SpokePreparer for RecordingPreparer {
    async fn prepare(&self, req: SpokeRequest<'_>) -> Result<HostSide, PrepareError> {
        self.note("prepare", &req);
        if self.failing.lock().unwrap().contains(req.spoke) {
            return Err(PrepareError::new(format!(
                "bridge {} in netns {}: injected failure",
                req.spec.bridge, req.spec.ns
            )));
        }
        Ok(match req.kind {
            SpokeKind::Veth => HostSide {
                link: req.spoke.into(),
                ifindex: Self::ifindex(req.spoke) + 1,
                tap: None,
            },
            SpokeKind::Mac => HostSide {
                link: k8slan_api::naming::macvtap_name(req.spoke),
                ifindex: Self::ifindex(req.spoke),
                tap: Some(TapDevice {
                    host_path: self.dev_dir.join(tap_device_file(req.spoke)),
                    container_path: container_tap_path(Self::ifindex(req.spoke)),
                }),
            },
        })
    }

    async fn release(&self, req: SpokeRequest<'_>) -> Result<(), PrepareError> {
        self.note("release", &req);
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Building blocks

/// A LAN object in `namespace` named `name`, LAN netns `netns`, default underlay `underlay`.
pub fn lan(namespace: &str, name: &str, netns: &str, spokes: &[&str], underlay: &str) -> LAN {
    let spec: LanSpec = serde_json::from_value(serde_json::json!({
        "ns": netns, "bridge": "br0", "vxlan": "vx0", "vni": 4242,
        "defaultVxlanDev": underlay, "spokes": spokes,
    }))
    .expect("valid LAN spec");
    let mut lan = LAN::new(name, spec);
    lan.metadata.namespace = Some(namespace.into());
    lan.metadata.generation = Some(1);
    lan
}

/// One plugin ("node") wired to stand-ins, running in the background.
pub struct TestNode {
    pub name: String,
    pub dir: PathBuf,
    pub kubelet: KubeletStandIn,
    pub pod_resources: FakePodResources,
    pub preparer: Arc<RecordingPreparer>,
    pub claims: Arc<MemoryClaims>,
    pub reports: Arc<MemoryReports>,
    pub links: Arc<FakeLinks>,
    pub pods: Arc<MemoryPods>,
    /// The prepared-spoke records directory, `<root>/prepared`.
    pub prepared: PathBuf,
    pub lans: watch::Sender<Option<LanSnapshot>>,
    /// What the plugin's claim watch delivers (the shared store's snapshots by default).
    claim_watch: watch::Receiver<Option<ClaimSnapshot>>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), PluginError>>>,
}

/// Settings of a [`TestNode`].
pub struct TestNodeOptions {
    pub poll_interval: Duration,
    pub release_grace: Duration,
    pub claim_timeout: Duration,
    pub record_calls: bool,
}

impl Default for TestNodeOptions {
    fn default() -> Self {
        TestNodeOptions {
            poll_interval: Duration::from_millis(100),
            release_grace: Duration::from_secs(2),
            claim_timeout: Duration::from_secs(1),
            record_calls: true,
        }
    }
}

impl TestNode {
    /// Starts a node named `name` under `root` (its kubelet dir), sharing `claims` with the
    /// other nodes of the test; underlay `eth1` exists.
    pub fn start(
        name: &str,
        root: &Path,
        claims: Arc<MemoryClaims>,
        opts: TestNodeOptions,
    ) -> Self {
        let watch = claims.subscribe();
        Self::start_with_claim_watch(name, root, claims, opts, watch)
    }

    /// As [`TestNode::start`], with the plugin's claim watch fed by `claim_watch` instead of
    /// the store (a watch that lags or never delivers).
    pub fn start_with_claim_watch(
        name: &str,
        root: &Path,
        claims: Arc<MemoryClaims>,
        opts: TestNodeOptions,
        claim_watch: watch::Receiver<Option<ClaimSnapshot>>,
    ) -> Self {
        let dir = root.join("device-plugins");
        let kubelet = KubeletStandIn::start(&dir).expect("kubelet stand-in");
        let pr_socket = root.join("pod-resources").join("kubelet.sock");
        let pod_resources = FakePodResources::start(&pr_socket).expect("pod-resources stand-in");
        let preparer = if opts.record_calls {
            RecordingPreparer::new(&root.join("dev"))
        } else {
            RecordingPreparer::quiet(&root.join("dev"))
        };
        let mut node = TestNode {
            name: name.into(),
            dir,
            kubelet,
            pod_resources,
            preparer,
            claims,
            reports: Arc::new(MemoryReports::default()),
            links: FakeLinks::with(&["eth1"]),
            pods: Arc::new(MemoryPods::default()),
            prepared: root.join("prepared"),
            lans: watch::channel(None).0,
            claim_watch,
            shutdown: None,
            task: None,
        };
        node.start_plugin(&pr_socket, &opts);
        node
    }

    fn start_plugin(&mut self, pr_socket: &Path, opts: &TestNodeOptions) {
        let config = PluginConfig {
            node_name: self.name.clone(),
            uplink: None,
            device_plugin_dir: self.dir.clone(),
            pod_resources_socket: pr_socket.to_owned(),
            prepared_dir: self.prepared.clone(),
            poll_interval: opts.poll_interval,
            release_grace: opts.release_grace,
            claim_timeout: opts.claim_timeout,
        };
        let backends = Backends {
            preparer: self.preparer.clone(),
            claims: self.claims.clone(),
            reports: self.reports.clone(),
            links: self.links.clone(),
            pods: self.pods.clone(),
        };
        let sources = Sources {
            lans: self.lans.subscribe(),
            claims: self.claim_watch.clone(),
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.shutdown = Some(tx);
        self.task = Some(tokio::spawn(plugin::serve(
            config,
            backends,
            sources,
            async move {
                let _ = rx.await;
            },
        )));
    }

    /// The record of `spoke` in this node's prepared directory, if any.
    pub fn record(&self, spoke: &str) -> Option<k8slan_api::prepared::PreparedSpoke> {
        let bytes = std::fs::read(
            self.prepared
                .join(k8slan_api::prepared::prepared_file(spoke)),
        );
        bytes
            .ok()
            .map(|b| k8slan_api::prepared::PreparedSpoke::parse(&b).expect("a valid record"))
    }

    /// Feeds a LAN snapshot, as the LAN watcher would.
    pub fn set_lans(&self, lans: &[LAN]) {
        self.lans.send_replace(Some(snapshot(lans)));
    }

    /// Stops the plugin (as on SIGTERM) and waits for it.
    pub async fn stop_plugin(&mut self) -> Result<(), PluginError> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        match self.task.take() {
            Some(t) => t.await.expect("plugin task panicked"),
            None => Ok(()),
        }
    }

    /// Starts the plugin again (agent restart) with the same stand-ins.
    pub fn restart_plugin(&mut self, root: &Path, opts: &TestNodeOptions) {
        self.start_plugin(&root.join("pod-resources").join("kubelet.sock"), opts);
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}
