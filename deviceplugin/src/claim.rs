//! Cluster-wide "one spoke, one member": a claim Lease per held spoke, created atomically by the
//! node whose kubelet allocated it, deleted once the member is gone.
//!
//! Lease `spoke-<spoke>` (see `k8slan_api::naming::claim_lease_name`) in the agent's namespace,
//! labelled `k8slan.io/role=claim`, `spec.holderIdentity` = node name, annotations
//! `k8slan.io/lan` (`<ns>/<name>`), `k8slan.io/kind` (`veth`|`mac`) and `k8slan.io/pod`
//! (`<ns>/<name>`, once the kubelet reports the pod).

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use futures::StreamExt;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8slan_api::SpokeKind;
use k8slan_api::naming::{LEASE_ROLE_LABEL, MANAGED_BY, MANAGED_BY_LABEL, claim_lease_name};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Api, ResourceExt};
use tokio::sync::watch;
use tracing::{debug, warn};

pub use k8slan_api::report::{
    CLAIM_KIND_ANNOTATION, CLAIM_LAN_ANNOTATION, CLAIM_POD_ANNOTATION, ROLE_CLAIM,
};

/// A spoke held by a member on some node, as observed: the fields of
/// `k8slan_api::report::Claim` plus the Lease identity that guards a release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub spoke: String,
    /// Node holding the spoke.
    pub node: String,
    /// `<namespace>/<name>` of the LAN.
    pub lan: String,
    pub kind: SpokeKind,
    /// `<namespace>/<name>` of the member pod, once known.
    pub pod: Option<String>,
    /// Lease `resourceVersion` and `uid`, the preconditions of a release.
    pub resource_version: Option<String>,
    pub uid: Option<String>,
}

/// Every claim of the cluster, by spoke; `None` in a channel until the first full list arrived.
pub type ClaimSnapshot = Arc<BTreeMap<String, Claim>>;

/// What [`ClaimStore::acquire`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acquired {
    /// This call created the claim.
    Created,
    /// This node already held the claim (an earlier Allocate, or before an agent restart).
    AlreadyOurs,
    /// Another node holds the spoke.
    HeldElsewhere(Claim),
}

/// Recording a claim in the API failed.
#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    #[error("cannot create claim Lease {lease} for spoke {spoke}: {source}")]
    Create {
        spoke: String,
        lease: String,
        source: kube::Error,
    },
    #[error("cannot read claim Lease {lease} for spoke {spoke}: {source}")]
    Read {
        spoke: String,
        lease: String,
        source: kube::Error,
    },
    #[error("cannot update claim Lease {lease} for spoke {spoke}: {source}")]
    Update {
        spoke: String,
        lease: String,
        source: kube::Error,
    },
    #[error("cannot delete claim Lease {lease} for spoke {spoke}: {source}")]
    Delete {
        spoke: String,
        lease: String,
        source: kube::Error,
    },
    #[error("claim Lease {lease} for spoke {spoke} keeps changing under us; giving up")]
    Contended { spoke: String, lease: String },
}

/// Writes claims. Snapshots come separately (a channel fed by [`watch_claims`] or a fake).
#[async_trait]
pub trait ClaimStore: Send + Sync + 'static {
    /// Claims `spoke` for `node` unless another node holds it. Idempotent for the holder.
    async fn acquire(
        &self,
        spoke: &str,
        lan: &str,
        kind: SpokeKind,
        node: &str,
    ) -> Result<Acquired, ClaimError>;
    /// Records the member pod on this node's claim.
    async fn set_pod(&self, spoke: &str, kind: SpokeKind, pod: &str) -> Result<(), ClaimError>;
    /// Drops this node's claim on `spoke`; `seen` (when given) is the claim as last observed,
    /// whose `uid` guards the delete. A missing claim is no error.
    async fn release(&self, spoke: &str, seen: Option<&Claim>) -> Result<(), ClaimError>;
}

/// Reads a claim out of a Lease (with `k8slan_api::report::Claim::from_lease`); `None` for
/// Leases that are no valid claim.
pub fn claim_from_lease(lease: &Lease) -> Option<Claim> {
    let empty = BTreeMap::new();
    let holder = lease
        .spec
        .as_ref()
        .and_then(|s| s.holder_identity.as_deref());
    let parsed = k8slan_api::report::Claim::from_lease(
        &lease.name_any(),
        holder,
        lease.metadata.annotations.as_ref().unwrap_or(&empty),
    );
    match parsed {
        Ok(c) => Some(Claim {
            spoke: c.spoke,
            node: c.node,
            lan: c.lan.to_string(),
            kind: c.kind,
            pod: c.pod,
            resource_version: lease.metadata.resource_version.clone(),
            uid: lease.metadata.uid.clone(),
        }),
        Err(e) => {
            debug!(error = %e, "ignoring a claim Lease");
            None
        }
    }
}

/// Builds the Lease recording `claim`.
pub fn lease_for_claim(claim: &Claim, namespace: &str) -> Lease {
    let mut ann = BTreeMap::from([
        (CLAIM_LAN_ANNOTATION.to_string(), claim.lan.clone()),
        (
            CLAIM_KIND_ANNOTATION.to_string(),
            claim.kind.as_str().to_string(),
        ),
    ]);
    if let Some(pod) = &claim.pod {
        ann.insert(CLAIM_POD_ANNOTATION.to_string(), pod.clone());
    }
    Lease {
        metadata: ObjectMeta {
            name: Some(claim_lease_name(&claim.spoke)),
            namespace: Some(namespace.to_string()),
            labels: Some(BTreeMap::from([
                (LEASE_ROLE_LABEL.to_string(), ROLE_CLAIM.to_string()),
                (MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string()),
            ])),
            annotations: Some(ann),
            ..Default::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(claim.node.clone()),
            acquire_time: Some(MicroTime(k8s_openapi::jiff::Timestamp::now())),
            ..Default::default()
        }),
    }
}

/// Claims kept as Leases in one namespace.
#[derive(Clone)]
pub struct LeaseClaims {
    api: Api<Lease>,
    namespace: String,
}

impl LeaseClaims {
    pub fn new(client: kube::Client, namespace: &str) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            namespace: namespace.to_string(),
        }
    }
}

#[async_trait]
impl ClaimStore for LeaseClaims {
    async fn acquire(
        &self,
        spoke: &str,
        lan: &str,
        kind: SpokeKind,
        node: &str,
    ) -> Result<Acquired, ClaimError> {
        let lease = claim_lease_name(spoke);
        let want = Claim {
            spoke: spoke.to_string(),
            node: node.to_string(),
            lan: lan.to_string(),
            kind,
            pod: None,
            resource_version: None,
            uid: None,
        };
        // Create is the atomic claim; on conflict read the holder. A claim deleted between the
        // two calls is retried a few times.
        for _ in 0..3 {
            match self
                .api
                .create(
                    &PostParams::default(),
                    &lease_for_claim(&want, &self.namespace),
                )
                .await
            {
                Ok(_) => return Ok(Acquired::Created),
                Err(kube::Error::Api(s)) if s.code == 409 => {}
                Err(source) => {
                    return Err(ClaimError::Create {
                        spoke: spoke.into(),
                        lease,
                        source,
                    });
                }
            }
            let existing = match self.api.get_opt(&lease).await {
                Ok(Some(l)) => l,
                Ok(None) => continue,
                Err(source) => {
                    return Err(ClaimError::Read {
                        spoke: spoke.into(),
                        lease,
                        source,
                    });
                }
            };
            let holder = existing
                .spec
                .as_ref()
                .and_then(|s| s.holder_identity.clone());
            return match claim_from_lease(&existing) {
                Some(c) if c.node != node => Ok(Acquired::HeldElsewhere(c)),
                Some(c) if c.kind == kind && c.lan == lan => Ok(Acquired::AlreadyOurs),
                _ if holder.as_deref() == Some(node) || holder.is_none() => {
                    // Ours (or unreadable): rewrite it with the kind and LAN of this allocation.
                    let patch = serde_json::json!({
                        "metadata": {
                            "resourceVersion": existing.metadata.resource_version,
                            "annotations": {
                                CLAIM_LAN_ANNOTATION: lan,
                                CLAIM_KIND_ANNOTATION: kind.as_str(),
                                CLAIM_POD_ANNOTATION: serde_json::Value::Null,
                            }
                        },
                        "spec": { "holderIdentity": node }
                    });
                    self.api
                        .patch(&lease, &PatchParams::default(), &Patch::Merge(&patch))
                        .await
                        .map_err(|source| ClaimError::Update {
                            spoke: spoke.into(),
                            lease: lease.clone(),
                            source,
                        })?;
                    Ok(Acquired::AlreadyOurs)
                }
                _ => Ok(Acquired::HeldElsewhere(Claim {
                    spoke: spoke.into(),
                    node: holder.unwrap_or_default(),
                    lan: String::new(),
                    kind,
                    pod: None,
                    resource_version: None,
                    uid: None,
                })),
            };
        }
        Err(ClaimError::Contended {
            spoke: spoke.into(),
            lease,
        })
    }

    async fn set_pod(&self, spoke: &str, kind: SpokeKind, pod: &str) -> Result<(), ClaimError> {
        let lease = claim_lease_name(spoke);
        let patch = serde_json::json!({
            "metadata": { "annotations": { CLAIM_POD_ANNOTATION: pod, CLAIM_KIND_ANNOTATION: kind.as_str() } }
        });
        self.api
            .patch(&lease, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map(|_| ())
            .map_err(|source| ClaimError::Update {
                spoke: spoke.into(),
                lease,
                source,
            })
    }

    async fn release(&self, spoke: &str, seen: Option<&Claim>) -> Result<(), ClaimError> {
        let lease = claim_lease_name(spoke);
        let dp = DeleteParams {
            // The uid alone: it changes only when the Lease is deleted and created again (another
            // node took the spoke meanwhile). Our own pod annotations change the resourceVersion,
            // and a release must not fail because the watch lagged behind them.
            preconditions: seen.map(|c| Preconditions {
                resource_version: None,
                uid: c.uid.clone(),
            }),
            ..Default::default()
        };
        match self.api.delete(&lease, &dp).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(source) => Err(ClaimError::Delete {
                spoke: spoke.into(),
                lease,
                source,
            }),
        }
    }
}

/// Watches the claim Leases of `api`'s namespace and publishes a snapshot after the initial list
/// and after each change. Runs until the receiver side is gone.
pub async fn watch_claims(api: Api<Lease>, tx: watch::Sender<Option<ClaimSnapshot>>) {
    let (reader, writer) = reflector::store::<Lease>();
    let cfg = watcher::Config::default().labels(&format!("{LEASE_ROLE_LABEL}={ROLE_CLAIM}"));
    let stream = reflector(writer, watcher(api, cfg))
        .default_backoff()
        .boxed();
    futures::pin_mut!(stream);
    while let Some(event) = stream.next().await {
        match event {
            Ok(watcher::Event::InitDone | watcher::Event::Apply(_) | watcher::Event::Delete(_)) => {
                let snap: BTreeMap<String, Claim> = reader
                    .state()
                    .iter()
                    .filter_map(|l| claim_from_lease(l))
                    .map(|c| (c.spoke.clone(), c))
                    .collect();
                debug!(claims = snap.len(), "claim snapshot");
                tx.send_replace(Some(Arc::new(snap)));
            }
            Ok(_) => {}
            Err(e) => warn!(error = %e, "watching claim Leases failed; retrying"),
        }
        if tx.is_closed() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_round_trips_a_claim() {
        let claim = Claim {
            spoke: "srl1".into(),
            node: "node-a".into(),
            lan: "default/lan1".into(),
            kind: SpokeKind::Mac,
            pod: Some("default/vm1".into()),
            resource_version: None,
            uid: None,
        };
        let lease = lease_for_claim(&claim, "k8slan-system");
        assert_eq!(lease.metadata.name.as_deref(), Some("spoke-srl1"));
        assert_eq!(
            lease.metadata.labels.as_ref().unwrap()[LEASE_ROLE_LABEL],
            "claim"
        );
        assert_eq!(claim_from_lease(&lease), Some(claim));
    }

    #[test]
    fn lease_without_kind_is_no_claim() {
        let mut lease = lease_for_claim(
            &Claim {
                spoke: "a".into(),
                node: "n".into(),
                lan: "x/y".into(),
                kind: SpokeKind::Veth,
                pod: None,
                resource_version: None,
                uid: None,
            },
            "ns",
        );
        lease
            .metadata
            .annotations
            .as_mut()
            .unwrap()
            .remove(CLAIM_KIND_ANNOTATION);
        assert_eq!(claim_from_lease(&lease), None);
    }
}
