//! Cluster-wide "one spoke, one member": a claim Lease per held spoke, created atomically by the
//! node whose kubelet allocated it, deleted once the member is gone.
//!
//! The Lease and its annotations are [`k8slan_api::report::Claim`]'s (the one encoder and
//! decoder, shared with the controller): Lease `spoke-<spoke>` in the agent's namespace,
//! labelled `k8slan.io/role=claim`, `spec.holderIdentity` = node name, annotations
//! `k8slan.io/lan`, `k8slan.io/kind` and, once the kubelet reports the member,
//! `k8slan.io/pod` and `k8slan.io/pod-uid`. This module adds what the plugin needs on top: the
//! Lease `uid` that guards a release ([`LeaseClaim`]) and the writes ([`ClaimStore`]).

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use k8s_openapi::api::coordination::v1::Lease;
use k8slan_api::naming::{LEASE_ROLE_LABEL, claim_lease_name};
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::watcher;
use tokio::sync::watch;
use tracing::debug;

use crate::reflect::publish_each_change;

pub use k8slan_api::report::{
    CLAIM_KIND_ANNOTATION, CLAIM_LAN_ANNOTATION, CLAIM_POD_ANNOTATION, CLAIM_POD_UID_ANNOTATION,
    Claim, ROLE_CLAIM,
};

/// A claim as observed in its Lease: the claim, and the Lease `uid` that guards a release
/// (it changes only when the Lease is deleted and created again, i.e. the spoke changed hands).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseClaim {
    pub claim: Claim,
    pub uid: Option<String>,
}

/// Every claim of the cluster, by spoke; `None` in a channel until the first full list arrived.
pub type ClaimSnapshot = Arc<BTreeMap<String, LeaseClaim>>;

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
    /// Claims `want.spoke` for `want.node` unless another node holds it. Idempotent for the
    /// holder; a holder's claim of another kind or LAN is rewritten (its old pod dropped).
    async fn acquire(&self, want: &Claim) -> Result<Acquired, ClaimError>;
    /// Writes the member (pod and pod UID) onto this node's claim: `claim` is the whole claim
    /// as it should read now.
    async fn record_member(&self, claim: &Claim) -> Result<(), ClaimError>;
    /// Drops this node's claim on `spoke`; `seen` (when given) is the claim as last observed,
    /// whose `uid` guards the delete. A missing claim is no error.
    async fn release(&self, spoke: &str, seen: Option<&LeaseClaim>) -> Result<(), ClaimError>;
}

/// Reads a claim out of a Lease; `None` (logged at debug) for Leases that are no valid claim.
pub fn claim_from_lease(lease: &Lease) -> Option<LeaseClaim> {
    match Claim::from_lease_object(lease) {
        Ok(claim) => Some(LeaseClaim {
            claim,
            uid: lease.metadata.uid.clone(),
        }),
        Err(e) => {
            debug!(error = %e, "ignoring a claim Lease");
            None
        }
    }
}

/// What a holder's claim Lease means for an acquire by `want.node`.
fn judge(existing: &Lease, want: &Claim) -> Judged {
    let holder = existing
        .spec
        .as_ref()
        .and_then(|s| s.holder_identity.as_deref());
    match Claim::from_lease_object(existing) {
        Ok(c) if c.node != want.node => Judged::Elsewhere(c),
        Ok(c) if c.kind == want.kind && c.lan == want.lan => Judged::Ours,
        // Ours (or unreadable and ownerless): rewrite it with this allocation.
        _ if holder == Some(want.node.as_str()) || holder.is_none() => Judged::Rewrite,
        _ => Judged::Elsewhere(Claim::new(
            &want.spoke,
            holder.unwrap_or_default(),
            want.lan.clone(),
            want.kind,
        )),
    }
}

enum Judged {
    Ours,
    Rewrite,
    Elsewhere(Claim),
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

impl LeaseClaims {
    /// Rewrites our own claim Lease (seen at `resource_version`) as `want`.
    async fn rewrite(
        &self,
        want: &Claim,
        resource_version: Option<String>,
    ) -> Result<(), ClaimError> {
        let lease = claim_lease_name(&want.spoke);
        let patch = serde_json::json!({
            "metadata": {
                "resourceVersion": resource_version,
                "annotations": want.annotation_patch(),
            },
            "spec": { "holderIdentity": want.node }
        });
        self.api
            .patch(&lease, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map(|_| ())
            .map_err(|source| ClaimError::Update {
                spoke: want.spoke.clone(),
                lease,
                source,
            })
    }
}

#[async_trait]
impl ClaimStore for LeaseClaims {
    async fn acquire(&self, want: &Claim) -> Result<Acquired, ClaimError> {
        let spoke = want.spoke.as_str();
        let lease = claim_lease_name(spoke);
        let object = want.to_lease(&self.namespace);
        // Create is the atomic claim; on conflict read the holder. A claim deleted between the
        // two calls is retried a few times.
        for _ in 0..3 {
            match self.api.create(&PostParams::default(), &object).await {
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
            return match judge(&existing, want) {
                Judged::Elsewhere(c) => Ok(Acquired::HeldElsewhere(c)),
                Judged::Ours => Ok(Acquired::AlreadyOurs),
                Judged::Rewrite => {
                    self.rewrite(want, existing.metadata.resource_version.clone())
                        .await?;
                    Ok(Acquired::AlreadyOurs)
                }
            };
        }
        Err(ClaimError::Contended {
            spoke: spoke.into(),
            lease,
        })
    }

    async fn record_member(&self, claim: &Claim) -> Result<(), ClaimError> {
        let lease = claim_lease_name(&claim.spoke);
        let patch = serde_json::json!({ "metadata": { "annotations": claim.annotation_patch() } });
        self.api
            .patch(&lease, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map(|_| ())
            .map_err(|source| ClaimError::Update {
                spoke: claim.spoke.clone(),
                lease,
                source,
            })
    }

    async fn release(&self, spoke: &str, seen: Option<&LeaseClaim>) -> Result<(), ClaimError> {
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
    let cfg = watcher::Config::default().labels(&format!("{LEASE_ROLE_LABEL}={ROLE_CLAIM}"));
    publish_each_change(api, cfg, "claim Leases", &tx, |leases| {
        let snap: BTreeMap<String, LeaseClaim> = leases
            .state()
            .iter()
            .filter_map(|l| claim_from_lease(l))
            .map(|c| (c.claim.spoke.clone(), c))
            .collect();
        debug!(claims = snap.len(), "claim snapshot");
        tx.send_replace(Some(Arc::new(snap)));
    })
    .await
}

#[cfg(test)]
mod tests {
    use k8slan_api::SpokeKind;
    use k8slan_api::report::LanRef;

    use super::*;

    fn claim(node: &str, kind: SpokeKind) -> Claim {
        Claim::new("s1", node, LanRef::new("default", "lan1"), kind)
    }

    #[test]
    fn a_lease_reads_back_with_its_uid() {
        let mut lease = claim("node-a", SpokeKind::Mac).to_lease("k8slan-system");
        lease.metadata.uid = Some("u1".into());
        let seen = claim_from_lease(&lease).unwrap();
        assert_eq!(seen.claim, claim("node-a", SpokeKind::Mac));
        assert_eq!(seen.uid.as_deref(), Some("u1"));
        lease
            .metadata
            .annotations
            .as_mut()
            .unwrap()
            .remove(CLAIM_KIND_ANNOTATION);
        assert_eq!(claim_from_lease(&lease), None);
    }

    #[test]
    fn an_acquire_judges_the_existing_lease() {
        let want = claim("node-a", SpokeKind::Veth);
        let theirs = claim("node-b", SpokeKind::Veth).to_lease("ns");
        assert!(matches!(judge(&theirs, &want), Judged::Elsewhere(c) if c.node == "node-b"));
        let ours = want.to_lease("ns");
        assert!(matches!(judge(&ours, &want), Judged::Ours));
        let other_kind = claim("node-a", SpokeKind::Mac).to_lease("ns");
        assert!(matches!(judge(&other_kind, &want), Judged::Rewrite));
        // A foreign holder whose annotations are broken is still someone else's claim.
        let mut broken = theirs.clone();
        broken.metadata.annotations = None;
        assert!(matches!(judge(&broken, &want), Judged::Elsewhere(c) if c.node == "node-b"));
        let mut ownerless = broken;
        ownerless.spec = None;
        assert!(matches!(judge(&ownerless, &want), Judged::Rewrite));
    }
}
