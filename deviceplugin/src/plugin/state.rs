//! What the serving loop and `Allocate` share: the plugin's inputs and derived state behind one
//! lock, the backends, and the wake-up of the loop.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;

use super::{Backends, PluginConfig};
use k8slan_api::report::UnderlayAddresses;

use crate::claim::{ClaimSnapshot, LeaseClaim};
use crate::inventory::{Failure, Inventory};
use crate::lan::{LanSnapshot, WatchedLan};
use crate::member::{Holdings, Members};
use crate::memory::Churn;
use crate::prepared::PreparedDir;

/// A member held from a namespace its LAN does not admit: its spoke is torn down here and
/// stays unallocatable until that pod is gone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Denial {
    /// `<namespace>/<name>` of the pod.
    pub pod: String,
    /// `<namespace>/<name>` of the LAN.
    pub lan: String,
}

#[derive(Default)]
pub(crate) struct State {
    pub lans: Option<LanSnapshot>,
    pub claims: Option<ClaimSnapshot>,
    pub holdings: Option<Holdings>,
    pub members: Members,
    pub underlays: BTreeMap<String, bool>,
    pub addresses: BTreeMap<String, UnderlayAddresses>,
    pub failures: BTreeMap<String, Failure>,
    /// Spokes whose member is a pod of a namespace the LAN does not admit, by spoke.
    pub denied: BTreeMap<String, Denial>,
    pub inventory: Arc<Inventory>,
    /// Pods already written onto our claims.
    pub pods_recorded: BTreeMap<String, String>,
}

impl State {
    /// Any LAN that lists `spoke`, served or not (to tear its host side down).
    pub fn any_lan_of(&self, spoke: &str) -> Option<&WatchedLan> {
        self.lans
            .as_ref()?
            .values()
            .find(|l| l.spec.spokes.iter().any(|s| s == spoke))
    }

    /// This node's claim on `spoke`, as last observed.
    pub fn own_claim(&self, spoke: &str, node: &str) -> Option<&LeaseClaim> {
        self.claims
            .as_ref()?
            .get(spoke)
            .filter(|c| c.claim.node == node)
    }
}

/// A copy of the inventory's inputs, taken under the lock and computed on outside it.
pub(crate) struct Snapshot {
    pub lans: LanSnapshot,
    pub claims: Option<ClaimSnapshot>,
    pub underlays: BTreeMap<String, bool>,
    pub addresses: BTreeMap<String, UnderlayAddresses>,
    pub members: Members,
    pub failures: BTreeMap<String, Failure>,
    pub denied: BTreeMap<String, String>,
}

impl Snapshot {
    pub fn of(st: &State, lans: LanSnapshot) -> Self {
        Self {
            lans,
            claims: st.claims.clone(),
            underlays: st.underlays.clone(),
            addresses: st.addresses.clone(),
            members: st.members.clone(),
            failures: st.failures.clone(),
            denied: st
                .denied
                .iter()
                .map(|(s, d)| (s.clone(), d.pod.clone()))
                .collect(),
        }
    }
}

pub(crate) struct Core {
    pub node: String,
    uplink: Option<String>,
    pub backends: Backends,
    pub records: PreparedDir,
    pub claim_timeout: Duration,
    pub release_grace: Duration,
    state: Mutex<State>,
    /// Wakes the main loop after an `Allocate` changed the members.
    pub wake: Notify,
    /// Allocates, releases and pod recordings since start (heap churn), for returning freed
    /// memory.
    pub churn: Churn,
}

impl Core {
    pub fn new(config: &PluginConfig, backends: Backends, records: PreparedDir) -> Self {
        Self {
            node: config.node_name.clone(),
            uplink: config.uplink.clone(),
            backends,
            records,
            claim_timeout: config.claim_timeout,
            release_grace: config.release_grace,
            state: Mutex::new(State::default()),
            wake: Notify::new(),
            churn: Churn::default(),
        }
    }

    /// This node's uplink, the underlay of LANs that name none.
    pub fn uplink(&self) -> Option<&str> {
        self.uplink.as_deref()
    }

    pub fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data behind: keep going with it.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Removes the record of `spoke` on the blocking pool (logged, never fatal).
    pub async fn remove_record(&self, spoke: &str) {
        let (records, s) = (self.records.clone(), spoke.to_string());
        match tokio::task::spawn_blocking(move || records.remove(&s)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::warn!(spoke, error = %e, "cannot remove the prepared-spoke record")
            }
            Err(e) => {
                tracing::warn!(spoke, error = %e, "removing the prepared-spoke record panicked")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use k8slan_api::LanSpec;

    use super::*;

    fn lan(key: &str, spokes: &[&str], accepted: Option<bool>) -> WatchedLan {
        let spec: LanSpec = serde_json::from_value(serde_json::json!({
            "ns": "n", "bridge": "br0", "vxlan": "vx0", "vni": 1,
            "defaultVxlanDev": "eth1", "spokes": spokes,
        }))
        .unwrap();
        WatchedLan {
            key: key.into(),
            generation: 1,
            spec,
            accepted,
        }
    }

    #[test]
    fn any_lan_that_lists_a_spoke_is_found_served_or_not() {
        let st = State {
            lans: Some(Arc::new(BTreeMap::from([
                (
                    "a/rejected".to_string(),
                    lan("a/rejected", &["s"], Some(false)),
                ),
                ("b/served".to_string(), lan("b/served", &["s"], None)),
                ("c/late".to_string(), lan("c/late", &["s"], Some(true))),
            ]))),
            ..State::default()
        };
        assert_eq!(st.any_lan_of("s").unwrap().key, "a/rejected");
        assert!(st.any_lan_of("t").is_none());
        assert!(State::default().any_lan_of("s").is_none());
    }
}
