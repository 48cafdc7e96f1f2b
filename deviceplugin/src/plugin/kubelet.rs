//! The kubelet side: one endpoint (socket and gRPC server) per advertised resource, their
//! registration, and the kubelet's restarts. A restarted kubelet deletes every socket of the
//! device-plugin directory and creates `kubelet.sock` anew; inotify tells us at once, and a
//! periodic check of the sockets is the safety net behind it (lost events, a directory
//! recreated under us).

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use futures::stream::BoxStream;
use inotify::{EventMask, Inotify, WatchMask};
use k8slan_api::naming::{parse_resource_name, resource_name};
use tracing::{debug, info, warn};

use super::PluginError;
use super::allocate::CoreAllocator;
use super::state::Core;
use crate::endpoint::{Allocator, Endpoint};
use crate::inventory::{Health, Inventory};
use crate::proto::KUBELET_SOCKET;
use crate::registration::Registrar;

/// What one directory event means.
#[derive(Debug, Clone, PartialEq, Eq)]
enum DirEvent {
    /// `kubelet.sock` was created, or events were lost: the kubelet (re)started.
    KubeletStarted,
    /// The socket of one of our resources was deleted.
    SocketGone(String),
    Other,
}

fn classify(mask: EventMask, name: Option<&OsStr>) -> DirEvent {
    if mask.contains(EventMask::Q_OVERFLOW) {
        return DirEvent::KubeletStarted;
    }
    let created = mask.intersects(EventMask::CREATE | EventMask::MOVED_TO);
    let deleted = mask.intersects(EventMask::DELETE | EventMask::MOVED_FROM);
    match name.and_then(OsStr::to_str) {
        Some(KUBELET_SOCKET) if created => DirEvent::KubeletStarted,
        Some(file) if deleted => file
            .strip_suffix(".sock")
            .and_then(parse_resource_name)
            .map_or(DirEvent::Other, |(k, s)| {
                DirEvent::SocketGone(resource_name(k, s))
            }),
        _ => DirEvent::Other,
    }
}

/// Events of the device-plugin directory. Once the stream fails or ends, [`DirEvents::next`]
/// never resolves again (the periodic socket check carries on alone).
pub(super) struct DirEvents {
    stream: Option<BoxStream<'static, std::io::Result<DirEventItem>>>,
}

/// One inotify event: its mask and the file name it concerns.
type DirEventItem = (EventMask, Option<OsString>);

impl DirEvents {
    /// Creates the directory if needed and watches it.
    pub fn watch(dir: &Path) -> Result<Self, PluginError> {
        std::fs::create_dir_all(dir).map_err(|source| PluginError::Dir {
            dir: dir.to_owned(),
            source,
        })?;
        let watch_err = |source| PluginError::Watch {
            dir: dir.to_owned(),
            source,
        };
        let inotify = Inotify::init().map_err(watch_err)?;
        inotify
            .watches()
            .add(
                dir,
                WatchMask::CREATE | WatchMask::DELETE | WatchMask::MOVED_TO | WatchMask::MOVED_FROM,
            )
            .map_err(watch_err)?;
        let stream = inotify
            .into_event_stream([0u8; 4096])
            .map_err(watch_err)?
            .map(|ev| ev.map(|e| (e.mask, e.name)))
            .boxed();
        Ok(Self {
            stream: Some(stream),
        })
    }

    pub async fn next(&mut self) -> Option<DirEventItem> {
        let Some(stream) = self.stream.as_mut() else {
            return std::future::pending().await;
        };
        match stream.next().await {
            Some(Ok(ev)) => Some(ev),
            Some(Err(e)) => {
                warn!(error = %e, "reading device-plugin directory events failed");
                self.stream = None;
                None
            }
            None => {
                self.stream = None;
                None
            }
        }
    }
}

/// Identity (device, inode) of `kubelet.sock` in `dir` now, if it exists.
fn kubelet_socket_in(dir: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(dir.join(KUBELET_SOCKET))
        .ok()
        .map(|m| (m.dev(), m.ino()))
}

/// The endpoints and their registration with the kubelet.
pub(super) struct KubeletSide {
    dir: PathBuf,
    core: Arc<Core>,
    allocator: Arc<dyn Allocator>,
    registrar: Registrar,
    endpoints: BTreeMap<String, Endpoint>,
    /// Identity of `kubelet.sock` when last seen.
    kubelet_socket: Option<(u64, u64)>,
}

impl KubeletSide {
    pub fn new(dir: &Path, core: Arc<Core>) -> Self {
        Self {
            dir: dir.to_owned(),
            allocator: Arc::new(CoreAllocator(core.clone())),
            core,
            registrar: Registrar::spawn(dir.to_owned()),
            endpoints: BTreeMap::new(),
            kubelet_socket: None,
        }
    }

    /// Brings the endpoints in line with the inventory: withdraws resources that are gone,
    /// updates device health, serves and registers new resources.
    pub fn advertise(&mut self, inv: &Inventory) {
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
            if let Some(ep) = self.endpoints.get(resource) {
                if ep.set_health(&advert.device_id, advert.health == Health::Healthy) {
                    debug!(resource, health = ?advert.health, "device health changed");
                }
                continue;
            }
            match Endpoint::start(
                &self.dir,
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
            }
        }
        if !new.is_empty() {
            info!(resources = new.len(), "serving new resources");
            self.registrar.register(new);
        }
    }

    pub fn dir_event(&mut self, mask: EventMask, name: Option<&OsStr>) {
        match classify(mask, name) {
            DirEvent::KubeletStarted => self.kubelet_restarted(),
            DirEvent::SocketGone(resource) => self.socket_gone(resource),
            DirEvent::Other => {}
        }
    }

    fn socket_gone(&mut self, resource: String) {
        // While the kubelet restarts (its socket gone or new) the coming `kubelet.sock` event
        // registers everything: do not register twice.
        let same_kubelet =
            self.kubelet_socket.is_some() && self.kubelet_socket == kubelet_socket_in(&self.dir);
        let Some(ep) = self.endpoints.get_mut(&resource) else {
            return;
        };
        if ep.socket_exists() {
            return;
        }
        debug!(resource, "plugin socket removed; serving it again");
        match ep.rebind() {
            Ok(()) if same_kubelet => self.registrar.register(vec![(resource, ep.file_name())]),
            Ok(()) => {}
            Err(e) => warn!(resource, error = %e, "cannot serve the resource again"),
        }
    }

    /// Safety net behind inotify: a new `kubelet.sock` (other inode) means a kubelet restart;
    /// a missing socket of ours is served and registered again.
    pub fn check_sockets(&mut self) {
        let kubelet = kubelet_socket_in(&self.dir);
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

    /// `kubelet.sock` appeared: the kubelet (re)started. Bring back missing sockets and
    /// register every resource again.
    fn kubelet_restarted(&mut self) {
        self.kubelet_socket = kubelet_socket_in(&self.dir);
        // Its first pod-resources listings can miss live members: release nothing for a while.
        let grace = self.core.release_grace;
        self.core
            .lock()
            .members
            .hold_releases(Instant::now() + grace);
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

    /// Stops every endpoint and removes its socket.
    pub async fn stop(&mut self) {
        let stops: Vec<_> = std::mem::take(&mut self.endpoints)
            .into_values()
            .map(Endpoint::stop)
            .collect();
        for s in stops {
            let _ = s.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directory_events_are_classified_by_name_and_mask() {
        let sock = OsStr::new(KUBELET_SOCKET);
        assert_eq!(
            classify(EventMask::CREATE, Some(sock)),
            DirEvent::KubeletStarted
        );
        assert_eq!(
            classify(EventMask::MOVED_TO, Some(sock)),
            DirEvent::KubeletStarted
        );
        assert_eq!(
            classify(EventMask::Q_OVERFLOW, None),
            DirEvent::KubeletStarted
        );
        assert_eq!(classify(EventMask::DELETE, Some(sock)), DirEvent::Other);
        assert_eq!(
            classify(EventMask::DELETE, Some(OsStr::new("k8slan-mac-s1.sock"))),
            DirEvent::SocketGone("macvtap.k8slan.io/k8slan-mac-s1".into())
        );
        assert_eq!(
            classify(
                EventMask::MOVED_FROM,
                Some(OsStr::new("k8slan-veth-s1.sock"))
            ),
            DirEvent::SocketGone("macvtap.k8slan.io/k8slan-veth-s1".into())
        );
        for other in ["k8slan-veth-s1", "nvidia.sock", "k8slan-tap-s1.sock"] {
            assert_eq!(
                classify(EventMask::DELETE, Some(OsStr::new(other))),
                DirEvent::Other
            );
        }
        assert_eq!(
            classify(EventMask::CREATE, Some(OsStr::new("k8slan-veth-s1.sock"))),
            DirEvent::Other
        );
    }

    #[test]
    fn the_kubelet_socket_identity_follows_its_inode() {
        let tmp = tempfile::tempdir().unwrap();
        assert_eq!(kubelet_socket_in(tmp.path()), None);
        std::fs::write(tmp.path().join(KUBELET_SOCKET), "").unwrap();
        let first = kubelet_socket_in(tmp.path()).unwrap();
        std::fs::write(tmp.path().join("new"), "").unwrap();
        std::fs::rename(tmp.path().join("new"), tmp.path().join(KUBELET_SOCKET)).unwrap();
        assert_ne!(kubelet_socket_in(tmp.path()), Some(first));
    }
}
