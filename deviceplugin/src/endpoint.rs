//! One advertised resource: its unix socket in the kubelet's device-plugin directory and the
//! `DevicePlugin` gRPC service behind it.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::Stream;
use hyper::server::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use k8slan_api::SpokeKind;
use k8slan_api::naming::nad_name;
use tokio::net::UnixListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use tracing::{debug, warn};

use crate::proto::v1beta1::device_plugin_server::{DevicePlugin, DevicePluginServer};
use crate::proto::v1beta1::{
    AllocateRequest, AllocateResponse, ContainerAllocateResponse,
    ContainerPreferredAllocationResponse, Device, DevicePluginOptions, Empty, ListAndWatchResponse,
    PreStartContainerRequest, PreStartContainerResponse, PreferredAllocationRequest,
    PreferredAllocationResponse,
};
use crate::proto::{HEALTHY, UNHEALTHY};
use crate::uds::{self, UdsError};

/// How long a withdrawn endpoint waits for the kubelet to read its empty device list.
const WITHDRAW_GRACE: Duration = Duration::from_secs(2);

/// Serves `Allocate` for the endpoints (implemented by the plugin core).
#[async_trait]
pub(crate) trait Allocator: Send + Sync + 'static {
    async fn allocate(
        &self,
        kind: SpokeKind,
        spoke: &str,
        device_ids: &[String],
    ) -> Result<ContainerAllocateResponse, Status>;
}

/// The options every k8slan endpoint registers with.
pub fn plugin_options() -> DevicePluginOptions {
    DevicePluginOptions {
        pre_start_required: false,
        get_preferred_allocation_available: true,
    }
}

/// File name of a resource's socket: `k8slan-veth-<spoke>.sock` or `k8slan-mac-<spoke>.sock`.
pub fn socket_file(kind: SpokeKind, spoke: &str) -> String {
    format!("{}.sock", nad_name(kind, spoke))
}

/// The preferred allocation for one container: the devices that must be included, then the
/// other available ones in the kubelet's order, up to the requested size.
pub fn preferred(available: &[String], must_include: &[String], size: i32) -> Vec<String> {
    // The size comes from the kubelet: it never sizes an allocation beyond the IDs at hand.
    let size = usize::try_from(size)
        .unwrap_or(0)
        .min(available.len() + must_include.len());
    let mut out: Vec<String> = Vec::with_capacity(size);
    for id in must_include.iter().chain(available) {
        if out.len() >= size {
            break;
        }
        if !out.contains(id) {
            out.push(id.clone());
        }
    }
    out
}

struct SpokeService {
    kind: SpokeKind,
    spoke: Arc<str>,
    devices: watch::Receiver<Vec<Device>>,
    hard_stop: CancellationToken,
    allocator: Arc<dyn Allocator>,
}

type DeviceStream = Pin<Box<dyn Stream<Item = Result<ListAndWatchResponse, Status>> + Send>>;

#[async_trait]
impl DevicePlugin for SpokeService {
    async fn get_device_plugin_options(
        &self,
        _: Request<Empty>,
    ) -> Result<Response<DevicePluginOptions>, Status> {
        Ok(Response::new(plugin_options()))
    }

    type ListAndWatchStream = DeviceStream;

    async fn list_and_watch(
        &self,
        _: Request<Empty>,
    ) -> Result<Response<Self::ListAndWatchStream>, Status> {
        let rx = self.devices.clone();
        let stop = self.hard_stop.clone();
        // The current list at once, then one message per real change (the sender only bumps
        // the version when the list differs). The stream ends when the endpoint is withdrawn
        // (sender dropped, after the empty list was delivered) or stopped.
        let stream =
            futures::stream::unfold((rx, stop, true), |(mut rx, stop, first)| async move {
                if !first {
                    tokio::select! {
                        biased;
                        changed = rx.changed() => changed.ok()?,
                        _ = stop.cancelled() => return None,
                    }
                }
                let devices = rx.borrow_and_update().clone();
                Some((Ok(ListAndWatchResponse { devices }), (rx, stop, false)))
            });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn get_preferred_allocation(
        &self,
        req: Request<PreferredAllocationRequest>,
    ) -> Result<Response<PreferredAllocationResponse>, Status> {
        let container_responses = req
            .into_inner()
            .container_requests
            .iter()
            .map(|c| ContainerPreferredAllocationResponse {
                device_i_ds: preferred(
                    &c.available_device_i_ds,
                    &c.must_include_device_i_ds,
                    c.allocation_size,
                ),
            })
            .collect();
        Ok(Response::new(PreferredAllocationResponse {
            container_responses,
        }))
    }

    async fn allocate(
        &self,
        req: Request<AllocateRequest>,
    ) -> Result<Response<AllocateResponse>, Status> {
        let mut container_responses = Vec::new();
        for c in &req.get_ref().container_requests {
            container_responses.push(
                self.allocator
                    .allocate(self.kind, &self.spoke, &c.devices_ids)
                    .await?,
            );
        }
        Ok(Response::new(AllocateResponse {
            container_responses,
        }))
    }

    async fn pre_start_container(
        &self,
        _: Request<PreStartContainerRequest>,
    ) -> Result<Response<PreStartContainerResponse>, Status> {
        Ok(Response::new(PreStartContainerResponse {}))
    }
}

/// The running gRPC server of an endpoint.
struct Server {
    /// Stops accepting and ends the server once the open streams are done.
    graceful: CancellationToken,
    /// Ends the ListAndWatch streams too.
    hard: CancellationToken,
    task: JoinHandle<()>,
}

impl Server {
    fn stop_now(self) -> JoinHandle<()> {
        self.hard.cancel();
        self.graceful.cancel();
        self.task
    }
}

/// A resource served on its own socket.
pub(crate) struct Endpoint {
    pub kind: SpokeKind,
    pub spoke: Arc<str>,
    pub socket: PathBuf,
    devices: watch::Sender<Vec<Device>>,
    allocator: Arc<dyn Allocator>,
    server: Server,
}

impl Endpoint {
    /// Binds the resource's socket in `dir` and starts serving `devices`.
    pub fn start(
        dir: &Path,
        kind: SpokeKind,
        spoke: &str,
        devices: Vec<Device>,
        allocator: Arc<dyn Allocator>,
    ) -> Result<Self, UdsError> {
        let socket = dir.join(socket_file(kind, spoke));
        let (tx, _) = watch::channel(devices);
        let spoke: Arc<str> = spoke.into();
        let server = spawn_server(&socket, kind, &spoke, &tx, &allocator)?;
        Ok(Endpoint {
            kind,
            spoke,
            socket,
            devices: tx,
            allocator,
            server,
        })
    }

    /// The socket's file name, as sent in `RegisterRequest.endpoint`.
    pub fn file_name(&self) -> String {
        socket_file(self.kind, &self.spoke)
    }

    /// Publishes the endpoint's one device with this health; returns whether the list
    /// differed (and so was sent). Allocates nothing when it did not.
    pub fn set_health(&self, id: &str, healthy: bool) -> bool {
        let health = if healthy { HEALTHY } else { UNHEALTHY };
        self.devices.send_if_modified(|cur| {
            if matches!(cur.as_slice(), [d] if d.id == id && d.health == health) {
                false
            } else {
                *cur = vec![Device {
                    id: id.to_string(),
                    health: health.to_string(),
                    topology: None,
                }];
                true
            }
        })
    }

    /// Whether the socket file is still there (the kubelet deletes them all when it restarts).
    pub fn socket_exists(&self) -> bool {
        self.socket.exists()
    }

    /// Serves again on a fresh socket, dropping the old server and its connections.
    pub fn rebind(&mut self) -> Result<(), UdsError> {
        let server = spawn_server(
            &self.socket,
            self.kind,
            &self.spoke,
            &self.devices,
            &self.allocator,
        )?;
        let old = std::mem::replace(&mut self.server, server);
        old.stop_now();
        Ok(())
    }

    /// Stops serving (agent shutdown) and removes the socket; the advertised devices stay
    /// with the kubelet until we come back.
    pub fn stop(self) -> JoinHandle<()> {
        let task = self.server.stop_now();
        let socket = self.socket;
        tokio::spawn(async move {
            let _ = task.await;
            remove_socket(&socket);
        })
    }

    /// Withdraws the resource: sends an empty device list so that capacity drops to 0, lets the
    /// kubelet read it on its open connection, then stops serving. The socket file goes at once,
    /// so that the same resource can come back right away on a fresh socket.
    pub fn withdraw(self) -> JoinHandle<()> {
        remove_socket(&self.socket);
        self.devices.send_replace(Vec::new());
        // Dropping the sender ends each ListAndWatch stream right after the empty list.
        drop(self.devices);
        let Server {
            graceful,
            hard,
            task,
        } = self.server;
        graceful.cancel();
        tokio::spawn(async move {
            let abort = task.abort_handle();
            if tokio::time::timeout(WITHDRAW_GRACE, task).await.is_err() {
                hard.cancel();
                abort.abort();
            }
        })
    }
}

fn remove_socket(path: &Path) {
    match std::fs::remove_file(path) {
        Ok(()) => debug!(socket = %path.display(), "removed plugin socket"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => warn!(socket = %path.display(), error = %e, "cannot remove plugin socket"),
    }
}

fn spawn_server(
    socket: &Path,
    kind: SpokeKind,
    spoke: &Arc<str>,
    devices: &watch::Sender<Vec<Device>>,
    allocator: &Arc<dyn Allocator>,
) -> Result<Server, UdsError> {
    let listener = uds::bind(socket)?;
    let graceful = CancellationToken::new();
    let hard = CancellationToken::new();
    let svc = DevicePluginServer::new(SpokeService {
        kind,
        spoke: spoke.clone(),
        devices: devices.subscribe(),
        hard_stop: hard.clone(),
        allocator: allocator.clone(),
    });
    let task = tokio::spawn(accept_loop(
        listener,
        svc,
        graceful.clone(),
        socket.to_owned(),
    ));
    Ok(Server {
        graceful,
        hard,
        task,
    })
}

/// HTTP/2 settings of a kubelet connection. There is one connection per resource (thousands per
/// node), so what each keeps matters more than throughput; all of this is per connection:
/// - no `date` header: gRPC does not use it, and a new date every second is a new entry in the
///   connection's HPACK encoder table (and more bytes of header block) per response;
/// - a header table size of 0: the kubelet sends literal headers instead of keeping a dynamic
///   table of its requests' headers on our side of every connection (a few hundred bytes more
///   per request, on a local socket).
fn http2_settings() -> http2::Builder<TokioExecutor> {
    let mut builder = http2::Builder::new(TokioExecutor::new());
    builder.auto_date_header(false).header_table_size(0);
    builder
}

/// Serves HTTP/2 (gRPC) on every connection of `listener` until `stop`, then lets the open
/// connections finish (GOAWAY, open streams drain). Deliberately bare (hyper, no tonic `Server`
/// stack): a node serves thousands of these endpoints.
async fn accept_loop(
    listener: UnixListener,
    svc: DevicePluginServer<SpokeService>,
    stop: CancellationToken,
    path: PathBuf,
) {
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let stream = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    warn!(socket = %path.display(), error = %e, "accepting a kubelet connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        while conns.try_join_next().is_some() {}
        let svc = TowerToHyperService::new(svc.clone());
        let stop = stop.clone();
        conns.spawn(async move {
            let conn = http2_settings().serve_connection(TokioIo::new(stream), svc);
            tokio::pin!(conn);
            let result = tokio::select! {
                r = conn.as_mut() => r,
                _ = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                debug!(error = %e, "kubelet connection ended with an error");
            }
        });
    }
    drop(listener);
    while conns.join_next().await.is_some() {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_huge_or_negative_size_allocates_nothing_unbounded() {
        assert_eq!(
            preferred(&ids(&["a", "b"]), &[], i32::MAX),
            ids(&["a", "b"])
        );
        assert!(preferred(&ids(&["a"]), &[], -5).is_empty());
        assert!(preferred(&[], &[], i32::MAX).is_empty());
    }

    #[test]
    fn preferred_puts_must_include_first_and_respects_size() {
        assert_eq!(
            preferred(&ids(&["a", "b", "c"]), &ids(&["c"]), 2),
            ids(&["c", "a"])
        );
        assert_eq!(preferred(&ids(&["s1"]), &[], 1), ids(&["s1"]));
        assert_eq!(preferred(&ids(&["s1"]), &[], 0), Vec::<String>::new());
        assert_eq!(preferred(&ids(&["a"]), &ids(&["a"]), 5), ids(&["a"]));
    }

    #[test]
    fn socket_names_follow_the_resource() {
        assert_eq!(socket_file(SpokeKind::Veth, "s1"), "k8slan-veth-s1.sock");
        assert_eq!(socket_file(SpokeKind::Mac, "s1"), "k8slan-mac-s1.sock");
    }
}
