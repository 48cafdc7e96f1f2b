//! Releases, learnt from the kubelet's pod-resources `List` (there is no deallocate call and no
//! watch: the plugin polls).
//!
//! Every listing also says which kubelet gave it: a kubelet that starts replaces its socket
//! file, so the file's identity changing between two listings means the kubelet restarted, even
//! when no `List` call failed in between. A restarted kubelet lists only the pods it has synced
//! so far; the plugin must not take its first listings for releases.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8slan_api::naming::parse_resource_name;
use tokio::sync::watch;
use tonic::transport::Channel;
use tracing::{debug, warn};

use crate::inventory::device_id;
use crate::member::{Holding, Holdings};
use crate::proto::podresources::pod_resources_lister_client::PodResourcesListerClient;
use crate::proto::podresources::{ListPodResourcesRequest, ListPodResourcesResponse};
use crate::uds;

/// Longest wait for one `List` answer.
const LIST_TIMEOUT: Duration = Duration::from_secs(10);

/// A `List` call failed.
#[derive(Debug, thiserror::Error)]
pub enum PodResourcesError {
    #[error("pod-resources List on {path} failed: {source}")]
    List {
        path: PathBuf,
        source: Box<tonic::Status>,
    },
    #[error("pod-resources List on {path} did not answer within {LIST_TIMEOUT:?}")]
    Timeout { path: PathBuf },
}

/// Which kubelet serves the socket: the socket file's device, inode and change time (a new
/// kubelet binds a new file; the time tells apart an inode number the filesystem reused).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KubeletId {
    dev: u64,
    ino: u64,
    ctime: (i64, i64),
}

impl KubeletId {
    /// The identity of the socket file at `path`, if it can be read.
    pub fn of(path: &Path) -> Option<Self> {
        let meta = std::fs::symlink_metadata(path).ok()?;
        Some(KubeletId {
            dev: meta.dev(),
            ino: meta.ino(),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        })
    }
}

/// One successful `List`: the spokes held, and which kubelet answered (read right after the
/// answer, so that a listing of a new kubelet never carries the old one's identity).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listing {
    pub holdings: Holdings,
    pub kubelet: Option<KubeletId>,
}

/// Client of the kubelet's pod-resources socket.
#[derive(Clone)]
pub struct PodResources {
    path: PathBuf,
    client: PodResourcesListerClient<Channel>,
}

impl PodResources {
    /// A client that connects on first use and reconnects after kubelet restarts.
    pub fn new(path: &Path) -> Self {
        Self {
            path: path.to_owned(),
            client: PodResourcesListerClient::new(uds::connect_lazy(path)),
        }
    }

    /// The spokes held by pods on this node, and which kubelet said so.
    pub async fn list(&mut self) -> Result<Listing, PodResourcesError> {
        let call = self.client.list(ListPodResourcesRequest {});
        match tokio::time::timeout(LIST_TIMEOUT, call).await {
            Ok(Ok(resp)) => Ok(Listing {
                holdings: holdings_from(resp.get_ref()),
                kubelet: KubeletId::of(&self.path),
            }),
            Ok(Err(status)) => Err(PodResourcesError::List {
                path: self.path.clone(),
                source: Box::new(status),
            }),
            Err(_) => Err(PodResourcesError::Timeout {
                path: self.path.clone(),
            }),
        }
    }
}

/// Extracts our spokes from a listing: resources of our domain whose device ID is the one we
/// advertise for that spoke.
pub fn holdings_from(resp: &ListPodResourcesResponse) -> Holdings {
    let mut out = Holdings::new();
    for pod in &resp.pod_resources {
        for container in &pod.containers {
            for dev in &container.devices {
                let Some((kind, spoke)) = parse_resource_name(&dev.resource_name) else {
                    continue;
                };
                if dev
                    .device_ids
                    .iter()
                    .any(|id| *id == device_id(kind, spoke))
                {
                    out.insert(
                        spoke.to_string(),
                        Holding {
                            kind,
                            pod: format!("{}/{}", pod.namespace, pod.name),
                        },
                    );
                }
            }
        }
    }
    out
}

/// Polls `List` every `interval` and publishes the listing when it changes (its holdings or
/// its kubelet). Failures are logged when the state flips (not at every attempt) and publish
/// `None`: releases are only ever learnt from a successful listing, and the plugin learns that
/// the kubelet was away.
pub async fn poll(
    mut client: PodResources,
    interval: Duration,
    tx: watch::Sender<Option<Listing>>,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = tx.closed() => return,
        }
        match client.list().await {
            Ok(h) => {
                if failing {
                    debug!("pod-resources List works again");
                    failing = false;
                }
                tx.send_if_modified(|cur| {
                    if cur.as_ref() == Some(&h) {
                        false
                    } else {
                        *cur = Some(h);
                        true
                    }
                });
            }
            Err(e) => {
                if !failing {
                    warn!(error = %e, "cannot learn releases from the kubelet; will keep trying");
                    failing = true;
                    tx.send_if_modified(|cur| cur.take().is_some());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use k8slan_api::SpokeKind;

    use super::*;
    use crate::proto::podresources::{ContainerDevices, ContainerResources, PodResources as Pod};

    #[test]
    fn only_our_resources_with_our_device_ids_count() {
        let resp = ListPodResourcesResponse {
            pod_resources: vec![Pod {
                name: "vm1".into(),
                namespace: "ns".into(),
                containers: vec![ContainerResources {
                    name: "compute".into(),
                    devices: vec![
                        ContainerDevices {
                            resource_name: "macvtap.k8slan.io/k8slan-mac-s1".into(),
                            device_ids: vec!["mvt-s1".into()],
                        },
                        ContainerDevices {
                            resource_name: "example.com/gpu".into(),
                            device_ids: vec!["gpu0".into()],
                        },
                        ContainerDevices {
                            resource_name: "macvtap.k8slan.io/k8slan-veth-s2".into(),
                            device_ids: vec!["other".into()],
                        },
                    ],
                }],
            }],
        };
        let h = holdings_from(&resp);
        assert_eq!(h.len(), 1);
        assert_eq!(h["s1"].kind, SpokeKind::Mac);
        assert_eq!(h["s1"].pod, "ns/vm1");
    }
}
