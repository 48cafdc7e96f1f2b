//! The LANs the plugin serves: a snapshot type fed by a kube watcher (or directly by tests).

use std::collections::BTreeMap;
use std::sync::Arc;

use k8slan_api::{LAN, LanSpec};
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use tokio::sync::watch;
use tracing::debug;

use crate::reflect::publish_each_change;

pub use k8slan_api::lan::CONDITION_ACCEPTED as ACCEPTED_CONDITION;

/// What the plugin needs of one LAN.
#[derive(Debug, Clone, PartialEq)]
pub struct WatchedLan {
    /// `<namespace>/<name>`.
    pub key: String,
    /// `metadata.generation` (0 when unknown).
    pub generation: i64,
    pub spec: LanSpec,
    /// The `Accepted` condition: `None` while the controller has not judged the LAN yet.
    pub accepted: Option<bool>,
}

impl WatchedLan {
    /// Whether the node should serve the LAN: anything but an explicit `Accepted=False`, so that
    /// nodes keep working while the controller is down or has not seen the LAN yet.
    pub fn served(&self) -> bool {
        self.accepted != Some(false)
    }

    /// Whether a pod of `namespace` may hold the LAN's spokes: the LAN's own namespace, or one
    /// of `spec.allowedNamespaces` (the rule `k8slan_api::prepared::PreparedSpoke::admits`
    /// applies to the same fields in the CNI plugins).
    pub fn admits(&self, namespace: &str) -> bool {
        self.key
            .split_once('/')
            .is_some_and(|(ns, _)| ns == namespace)
            || self.spec.allowed_namespaces.iter().any(|n| n == namespace)
    }
}

impl From<&LAN> for WatchedLan {
    fn from(lan: &LAN) -> Self {
        let accepted = lan.status.as_ref().and_then(|s| {
            s.conditions
                .iter()
                .find(|c| c.type_ == ACCEPTED_CONDITION)
                .and_then(|c| match c.status.as_str() {
                    "True" => Some(true),
                    "False" => Some(false),
                    _ => None,
                })
        });
        WatchedLan {
            key: lan_key(lan),
            generation: lan.metadata.generation.unwrap_or(0),
            spec: lan.spec.clone(),
            accepted,
        }
    }
}

/// `<namespace>/<name>` of a LAN.
pub fn lan_key(lan: &LAN) -> String {
    format!("{}/{}", lan.namespace().unwrap_or_default(), lan.name_any())
}

/// Every LAN the cluster has, by key; `None` in a channel until the first full list arrived.
pub type LanSnapshot = Arc<BTreeMap<String, WatchedLan>>;

/// Builds a snapshot from LAN objects.
pub fn snapshot<'a>(lans: impl IntoIterator<Item = &'a LAN>) -> LanSnapshot {
    Arc::new(
        lans.into_iter()
            .map(|l| {
                let v = WatchedLan::from(l);
                (v.key.clone(), v)
            })
            .collect(),
    )
}

/// Watches every LAN of the cluster and publishes a snapshot after the initial list and after
/// each change. Runs until the receiver side is gone; watch errors are retried with backoff.
pub async fn watch_lans(api: Api<LAN>, tx: watch::Sender<Option<LanSnapshot>>) {
    publish_each_change(api, watcher::Config::default(), "LANs", &tx, |lans| {
        let snap = snapshot(lans.state().iter().map(|l| l.as_ref()));
        debug!(lans = snap.len(), "LAN snapshot");
        tx.send_if_modified(|cur| {
            if cur.as_ref() == Some(&snap) {
                false
            } else {
                *cur = Some(snap);
                true
            }
        });
    })
    .await
}
