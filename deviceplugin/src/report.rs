//! The node report: one Lease per node whose annotation tells, per LAN, whether this node serves
//! it (`Ready`), cannot (`NoUnderlay`) or failed to prepare it (`Failed`). The controller
//! aggregates the reports into `LAN.status`.
//!
//! Lease `node-<node>` (see `k8slan_api::naming::node_report_lease_name`), labelled
//! `k8slan.io/role=node-report`, annotation `k8slan.io/report` =
//! `{"lans":{"<ns>/<name>":{"state":"NoUnderlay","message":"...","generation":3}}}` — the types
//! are `k8slan_api::report`'s, shared with the controller.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8slan_api::naming::{LEASE_ROLE_LABEL, MANAGED_BY, MANAGED_BY_LABEL, node_report_lease_name};
use kube::Api;
use kube::api::{Patch, PatchParams};
use kube::runtime::watcher;
use tokio::sync::watch;
use tracing::debug;

use crate::reflect::publish_each_change;

pub use k8slan_api::report::{
    LanNodeReport, NodeReport, NodeState, REPORT_ANNOTATION, ROLE_NODE_REPORT, UnderlayAddresses,
};

/// Publishing the report failed.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("cannot write node-report Lease {lease}: {source}")]
    Write { lease: String, source: kube::Error },
}

/// Where the report goes.
#[async_trait]
pub trait ReportSink: Send + Sync + 'static {
    async fn publish(&self, node: &str, report: &NodeReport) -> Result<(), ReportError>;
}

/// Writes the report into the node's Lease with server-side apply.
#[derive(Clone)]
pub struct LeaseReports {
    api: Api<Lease>,
    namespace: String,
}

impl LeaseReports {
    pub fn new(client: kube::Client, namespace: &str) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            namespace: namespace.to_string(),
        }
    }
}

/// Builds the node-report Lease.
pub fn report_lease(node: &str, namespace: &str, report: &NodeReport) -> Lease {
    let json = report.to_annotation();
    Lease {
        metadata: ObjectMeta {
            name: Some(node_report_lease_name(node)),
            namespace: Some(namespace.to_string()),
            labels: Some(BTreeMap::from([
                (LEASE_ROLE_LABEL.to_string(), ROLE_NODE_REPORT.to_string()),
                (MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string()),
            ])),
            annotations: Some(BTreeMap::from([(REPORT_ANNOTATION.to_string(), json)])),
            ..Default::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(node.to_string()),
            renew_time: Some(MicroTime(k8s_openapi::jiff::Timestamp::now())),
            ..Default::default()
        }),
    }
}

/// Every node's report, by node name (the Lease's `holderIdentity`).
pub type ReportSnapshot = Arc<BTreeMap<String, NodeReport>>;

/// The node and report a node-report Lease holds; `None` for a Lease without a holder or with a
/// report this version cannot read (that node then counts as having reported nothing).
pub fn report_of(lease: &Lease) -> Option<(String, NodeReport)> {
    let node = lease.spec.as_ref()?.holder_identity.clone()?;
    let json = lease
        .metadata
        .annotations
        .as_ref()?
        .get(REPORT_ANNOTATION)?;
    match NodeReport::parse(json) {
        Ok(report) => Some((node, report)),
        Err(e) => {
            debug!(%node, error = %e, "skipping an unreadable node report");
            None
        }
    }
}

/// Watches the node-report Leases of `api`'s namespace and publishes every node's report after
/// each change (`None` until the first list), until the receivers are gone.
pub async fn watch_reports(api: Api<Lease>, tx: watch::Sender<Option<ReportSnapshot>>) {
    let cfg = watcher::Config::default().labels(&format!("{LEASE_ROLE_LABEL}={ROLE_NODE_REPORT}"));
    publish_each_change(api, cfg, "node-report Leases", &tx, |leases| {
        let snap: BTreeMap<String, NodeReport> =
            leases.state().iter().filter_map(|l| report_of(l)).collect();
        tx.send_replace(Some(Arc::new(snap)));
    })
    .await
}

#[async_trait]
impl ReportSink for LeaseReports {
    async fn publish(&self, node: &str, report: &NodeReport) -> Result<(), ReportError> {
        let lease = report_lease(node, &self.namespace, report);
        let name = node_report_lease_name(node);
        self.api
            .patch(
                &name,
                &PatchParams::apply("k8slan-agent").force(),
                &Patch::Apply(&lease),
            )
            .await
            .map(|_| ())
            .map_err(|source| ReportError::Write {
                lease: name,
                source,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_json_has_the_agreed_shape() {
        let report = NodeReport {
            lans: BTreeMap::from([(
                "default/lan1".to_string(),
                LanNodeReport {
                    state: NodeState::NoUnderlay,
                    message: "no eth9".into(),
                    generation: 4,
                },
            )]),
            ..NodeReport::default()
        };
        let lease = report_lease("node-a", "k8slan-system", &report);
        let ann = &lease.metadata.annotations.unwrap()[REPORT_ANNOTATION];
        let v: serde_json::Value = serde_json::from_str(ann).unwrap();
        assert_eq!(v["lans"]["default/lan1"]["state"], "NoUnderlay");
        assert_eq!(v["lans"]["default/lan1"]["generation"], 4);
        assert_eq!(v["lans"]["default/lan1"]["message"], "no eth9");
        assert_eq!(lease.metadata.name.as_deref(), Some("node-node-a"));
        assert_eq!(
            lease.metadata.labels.unwrap()[LEASE_ROLE_LABEL],
            ROLE_NODE_REPORT
        );
    }
}
