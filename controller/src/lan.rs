//! The LAN reconcile loop: NADs (server-side applied, pruned, never stolen), acceptance against
//! the other LANs, and the status aggregated from the agents' node-report and claim Leases.
//!
//! Triggers: the LAN itself, its NADs (owner references), the report and claim Leases in the
//! release namespace (mapped to the LANs they mention, before and after the change), and any LAN
//! change for the LANs that clash with it or are currently rejected (so that deleting or fixing
//! the winner lets the loser in). A resync every [`RESYNC`] covers anything missed.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use k8slan_api::naming::{LEASE_ROLE_LABEL, MANAGED_BY, MANAGED_BY_LABEL};
use k8slan_api::report::{
    Claim, LanRef, NodeReport, REPORT_ANNOTATION, ROLE_CLAIM, ROLE_NODE_REPORT,
};
use k8slan_api::{LAN, LanStatus, validate_spec};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Config as ControllerConfig};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{Controller, WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use tracing::instrument;

use crate::conflict::{self, LanKeys};
use crate::metrics::Metrics;
use crate::nad::{self, NetworkAttachmentDefinition};
use crate::status::{self, ACCEPTED, Inputs, READY, Rejection};

/// Field manager of everything the controller applies.
pub const FIELD_MANAGER: &str = "k8slan-controller";
/// Periodic resync of every LAN.
pub const RESYNC: Duration = Duration::from_secs(600);
/// Retry delay after a failed reconcile.
pub const RETRY: Duration = Duration::from_secs(15);

/// A failed reconcile; the message names the LAN and the object.
#[derive(Debug, thiserror::Error)]
pub enum LanError {
    #[error("LAN {lan}: {source}")]
    Nad { lan: LanRef, source: nad::NadError },
    #[error(
        "LAN {lan}: listing NetworkAttachmentDefinitions in namespace {namespace} (is Multus' CRD installed?): {source}"
    )]
    ListNads {
        lan: LanRef,
        namespace: String,
        source: Box<kube::Error>,
    },
    #[error("LAN {lan}: {action} NetworkAttachmentDefinition {name}: {source}")]
    WriteNad {
        lan: LanRef,
        action: &'static str,
        name: String,
        source: Box<kube::Error>,
    },
    #[error("LAN {lan}: writing status: {source}")]
    Status {
        lan: LanRef,
        source: Box<kube::Error>,
    },
}

/// Shared by every reconcile.
pub struct Context {
    pub client: Client,
    pub lans: Store<LAN>,
    pub leases: Store<Lease>,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    pub cni: nad::CniSettings,
}

fn lan_ref(lan: &LAN) -> LanRef {
    LanRef::new(lan.namespace().unwrap_or_default(), lan.name_any())
}

fn view(lan: &LAN) -> LanKeys<'_> {
    LanKeys {
        lan: lan_ref(lan),
        created: lan.metadata.creation_timestamp.as_ref().map(|t| t.0),
        spec: &lan.spec,
    }
}

/// Why `lan` is not accepted, judged against every LAN in the cache, and how many LANs of the
/// cache are rejected for clashes.
pub fn rejection(lan: &LAN, all: &[Arc<LAN>]) -> (Option<Rejection>, usize) {
    let mut views: Vec<LanKeys<'_>> = all
        .iter()
        .filter(|l| l.metadata.deletion_timestamp.is_none())
        .map(|l| view(l))
        .collect();
    let me = lan_ref(lan);
    if !views.iter().any(|v| v.lan == me) {
        views.push(view(lan));
    }
    let mut rejected = conflict::acceptance(&views);
    let count = rejected.len();
    if let Err(e) = validate_spec(&lan.spec) {
        return (Some(Rejection::Invalid(e.to_string())), count);
    }
    let mine = rejected
        .remove(&me)
        .map(|c| Rejection::Conflict(conflict::describe(&c)));
    (mine, count)
}

/// Node reports and claims from the Leases in the release namespace; unreadable ones are skipped
/// with a warning naming the Lease.
pub fn read_leases(leases: &[Arc<Lease>]) -> (Vec<(String, NodeReport)>, Vec<Claim>) {
    let mut reports = Vec::new();
    let mut claims = Vec::new();
    for lease in leases {
        let role = lease.labels().get(LEASE_ROLE_LABEL).map(String::as_str);
        let holder = lease
            .spec
            .as_ref()
            .and_then(|s| s.holder_identity.as_deref());
        match role {
            Some(ROLE_NODE_REPORT) => {
                let Some(node) = holder else {
                    tracing::warn!(lease = %lease.name_any(), "node report has no holderIdentity (the node name); skipped");
                    continue;
                };
                let text = lease
                    .annotations()
                    .get(REPORT_ANNOTATION)
                    .map(String::as_str)
                    .unwrap_or("{}");
                match NodeReport::parse(text) {
                    Ok(r) => reports.push((node.to_string(), r)),
                    Err(e) => {
                        tracing::warn!(lease = %lease.name_any(), error = %e, "unreadable node report skipped")
                    }
                }
            }
            Some(ROLE_CLAIM) => {
                match Claim::from_lease(&lease.name_any(), holder, lease.annotations()) {
                    Ok(c) => claims.push(c),
                    Err(e) => {
                        tracing::warn!(error = %e, "unreadable spoke claim skipped")
                    }
                }
            }
            _ => {}
        }
    }
    (reports, claims)
}

/// Reconciles one LAN.
#[instrument(skip_all, fields(lan = %lan_ref(&lan), generation = lan.metadata.generation))]
pub async fn reconcile(lan: Arc<LAN>, ctx: Arc<Context>) -> Result<Action, LanError> {
    if lan.metadata.deletion_timestamp.is_some() {
        // NADs go with the LAN through their owner references; agents clean their nodes.
        return Ok(Action::await_change());
    }
    let me = lan_ref(&lan);
    let all = ctx.lans.state();
    ctx.metrics.lans.set(all.len() as i64);
    let (rejected, rejected_count) = rejection(&lan, &all);
    ctx.metrics.conflicting_lans.set(rejected_count as i64);
    let nad_conflicts = sync_nads(&lan, &ctx, &me, rejected.is_none()).await?;
    sync_status(&lan, &ctx, &me, rejected, nad_conflicts).await?;
    Ok(Action::requeue(RESYNC))
}

/// Brings the LAN's NADs in line: an accepted LAN has them, a rejected one loses those it had.
/// Returns the NADs it may not take over (`<name> (controlled by <owner>)`).
async fn sync_nads(
    lan: &LAN,
    ctx: &Context,
    me: &LanRef,
    accepted: bool,
) -> Result<Vec<String>, LanError> {
    let namespace = me.namespace.clone();
    let nads: Api<NetworkAttachmentDefinition> = Api::namespaced(ctx.client.clone(), &namespace);
    let existing =
        nads.list(&ListParams::default())
            .await
            .map_err(|source| LanError::ListNads {
                lan: me.clone(),
                namespace: namespace.clone(),
                source: Box::new(source),
            })?;
    let desired = if accepted {
        nad::desired(lan, &ctx.cni).map_err(|source| LanError::Nad {
            lan: me.clone(),
            source,
        })?
    } else {
        Vec::new()
    };
    let uid = lan.metadata.uid.clone().unwrap_or_default();
    let plan = nad::plan(&uid, desired, &existing.items);
    apply_nads(&nads, me, &plan).await?;
    ctx.metrics
        .nad_conflicts
        .get_or_create(&crate::metrics::LanLabel {
            lan: me.to_string(),
        })
        .set(plan.conflicts.len() as i64);
    Ok(plan
        .conflicts
        .iter()
        .map(|c| format!("{} (controlled by {})", c.name, c.owner))
        .collect())
}

/// Applies and prunes what the NAD plan says.
async fn apply_nads(
    nads: &Api<NetworkAttachmentDefinition>,
    me: &LanRef,
    plan: &nad::NadPlan,
) -> Result<(), LanError> {
    let write_err = |action, name: &str, source| LanError::WriteNad {
        lan: me.clone(),
        action,
        name: name.to_string(),
        source: Box::new(source),
    };
    let apply = PatchParams::apply(FIELD_MANAGER).force();
    for want in &plan.apply {
        let name = want.name_any();
        nads.patch(&name, &apply, &Patch::Apply(nad::with_type_meta(want)))
            .await
            .map_err(|e| write_err("applying", &name, e))?;
        tracing::info!(nad = %name, "applied NetworkAttachmentDefinition");
    }
    for name in &plan.prune {
        match nads.delete(name, &DeleteParams::default()).await {
            Ok(_) => tracing::info!(nad = %name, "pruned NetworkAttachmentDefinition"),
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(source) => return Err(write_err("deleting", name, source)),
        }
    }
    Ok(())
}

/// Aggregates the agents' reports and claims into the LAN's status; writes it and publishes
/// condition transitions when it changed.
async fn sync_status(
    lan: &LAN,
    ctx: &Context,
    me: &LanRef,
    rejected: Option<Rejection>,
    nad_conflicts: Vec<String>,
) -> Result<(), LanError> {
    let (reports, claims) = read_leases(&ctx.leases.state());
    let previous = lan.status.clone().unwrap_or_default();
    let next = status::aggregate(Inputs {
        lan: me,
        spec: &lan.spec,
        generation: lan.metadata.generation.unwrap_or(0),
        spoke_count: lan.spec.spokes.len(),
        rejection: rejected,
        nad_conflicts,
        reports: reports.iter().map(|(n, r)| (n.as_str(), r)).collect(),
        claims: &claims,
        previous: &previous.conditions,
        now: Time(Timestamp::now()),
    });
    if next != previous {
        write_status(ctx, lan, &next)
            .await
            .map_err(|source| LanError::Status {
                lan: me.clone(),
                source: Box::new(source),
            })?;
        publish_transitions(ctx, lan, &previous, &next).await;
    }
    Ok(())
}

async fn write_status(ctx: &Context, lan: &LAN, status: &LanStatus) -> Result<(), kube::Error> {
    let api: Api<LAN> = Api::namespaced(ctx.client.clone(), &lan.namespace().unwrap_or_default());
    let body = serde_json::json!({
        "apiVersion": LAN::api_version(&()),
        "kind": LAN::kind(&()),
        "metadata": {"name": lan.name_any()},
        "status": status,
    });
    api.patch_status(
        &lan.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(body),
    )
    .await
    .map(|_| ())
}

fn reason<'a>(s: &'a LanStatus, type_: &str) -> Option<(&'a str, &'a str)> {
    s.conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.as_str(), c.reason.as_str()))
}

/// Events for condition changes a user should see in `kubectl describe lan`.
async fn publish_transitions(ctx: &Context, lan: &LAN, before: &LanStatus, after: &LanStatus) {
    let mut events = Vec::new();
    let message = |t: &str| {
        after
            .conditions
            .iter()
            .find(|c| c.type_ == t)
            .map(|c| c.message.clone())
    };
    if reason(before, ACCEPTED) != reason(after, ACCEPTED) {
        match reason(after, ACCEPTED) {
            Some(("False", why)) => {
                events.push((EventType::Warning, why.to_string(), message(ACCEPTED)))
            }
            Some(("True", _)) if before.conditions.iter().any(|c| c.type_ == ACCEPTED) => {
                events.push((EventType::Normal, "Accepted".into(), message(ACCEPTED)))
            }
            _ => {}
        }
    }
    if reason(before, READY) != reason(after, READY) {
        match reason(after, READY) {
            Some(("False", why @ ("NadConflict" | "NodeFailed"))) => {
                events.push((EventType::Warning, why.to_string(), message(READY)))
            }
            Some(("True", _)) => events.push((EventType::Normal, "Ready".into(), message(READY))),
            _ => {}
        }
    }
    let reference = lan.object_ref(&());
    for (type_, reason, note) in events {
        let ev = Event {
            type_,
            reason,
            note: note.map(|n| n.chars().take(1000).collect()),
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(e) = ctx.recorder.publish(&ev, &reference).await {
            tracing::warn!(error = %e, reason = %ev.reason, "publishing an event on the LAN failed");
        }
    }
}

fn error_policy(lan: Arc<LAN>, error: &LanError, ctx: Arc<Context>) -> Action {
    ctx.metrics.reconciled(false);
    tracing::warn!(lan = %lan_ref(&lan), error = %error, "reconcile failed; retrying");
    Action::requeue(RETRY)
}

/// LANs a Lease talks about.
fn lease_lans(lease: &Lease) -> BTreeSet<LanRef> {
    let (reports, claims) = read_leases(&[Arc::new(lease.clone())]);
    reports
        .iter()
        .flat_map(|(_, r)| r.lans.keys().filter_map(|k| LanRef::parse(k)))
        .chain(claims.into_iter().map(|c| c.lan))
        .collect()
}

fn obj_ref(l: &LanRef) -> ObjectRef<LAN> {
    ObjectRef::new(&l.name).within(&l.namespace)
}

/// Settings of [`run`].
pub struct Settings {
    /// Namespace of the node-report and claim Leases (the release namespace).
    pub lease_namespace: String,
    /// Name of this controller instance in events (the pod name).
    pub instance: Option<String>,
    /// What the generated NADs tell the CNI plugins.
    pub cni: nad::CniSettings,
}

/// The running controller's caches (LANs for the webhook, Leases for the claim sweeper).
pub struct Running {
    pub lans: Store<LAN>,
    pub leases: Store<Lease>,
    pub task: futures::future::BoxFuture<'static, ()>,
}

/// Builds the controller; the returned future runs it until SIGTERM.
/// A Lease change reconciles the LANs it mentions now and those it mentioned before.
fn lease_mapper() -> impl Fn(Lease) -> Vec<ObjectRef<LAN>> + Send + Sync + 'static {
    let seen: Arc<Mutex<HashMap<String, BTreeSet<LanRef>>>> = Arc::default();
    move |lease: Lease| {
        let now = lease_lans(&lease);
        let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
        let before = seen
            .insert(lease.name_any(), now.clone())
            .unwrap_or_default();
        before.union(&now).map(obj_ref).collect::<Vec<_>>()
    }
}

/// A LAN change re-judges the LANs it clashes with and those currently rejected.
fn lan_mapper(lans: Store<LAN>) -> impl Fn(LAN) -> Vec<ObjectRef<LAN>> + Send + Sync + 'static {
    move |changed: LAN| {
        let me = lan_ref(&changed);
        let all = lans.state();
        let views: Vec<LanKeys<'_>> = all.iter().map(|l| view(l)).collect();
        let clashing = conflict::clashes(&view(&changed), &views);
        let rejected = all.iter().filter(|l| {
            l.status
                .as_ref()
                .and_then(|s| status::condition_status(&s.conditions, ACCEPTED))
                == Some("False")
        });
        let mut out: BTreeSet<LanRef> = clashing.into_iter().map(|c| c.other).collect();
        out.extend(rejected.map(|l| lan_ref(l)));
        out.remove(&me);
        out.iter().map(obj_ref).collect::<Vec<_>>()
    }
}

/// Counts a finished reconcile (its errors are counted and logged by `error_policy`).
fn count_reconcile<E: std::fmt::Display>(
    metrics: &Metrics,
    res: Result<(ObjectRef<LAN>, Action), kube::runtime::controller::Error<LanError, E>>,
) {
    match res {
        Ok((obj, _)) => {
            metrics.reconciled(true);
            tracing::debug!(lan = %obj, "reconciled");
        }
        Err(kube::runtime::controller::Error::ReconcilerFailed(..)) => {}
        Err(e) => tracing::warn!(error = %e, "controller"),
    }
}

pub fn start(client: Client, settings: Settings, metrics: Arc<Metrics>) -> Running {
    let lans_api: Api<LAN> = Api::all(client.clone());
    let controller = Controller::new(lans_api.clone(), watcher::Config::default())
        .with_config(ControllerConfig::default().debounce(Duration::from_millis(500)))
        .trigger_backoff(crate::reconnect());
    let lans = controller.store();

    // Leases in the release namespace, cached for reading and mapped to the LANs they mention.
    let (leases, lease_writer) = reflector::store();
    let lease_cfg = watcher::Config::default().labels(&format!(
        "{LEASE_ROLE_LABEL} in ({ROLE_CLAIM},{ROLE_NODE_REPORT})"
    ));
    let lease_stream = reflector::reflector(
        lease_writer,
        watcher(
            Api::<Lease>::namespaced(client.clone(), &settings.lease_namespace),
            lease_cfg,
        ),
    )
    .backoff(crate::reconnect())
    .touched_objects();
    let lease_mapper = lease_mapper();
    let lan_mapper = lan_mapper(lans.clone());

    let reporter = Reporter {
        controller: FIELD_MANAGER.into(),
        instance: settings.instance.clone(),
    };
    let ctx = Arc::new(Context {
        client: client.clone(),
        lans: lans.clone(),
        leases: leases.clone(),
        recorder: Recorder::new(client.clone(), reporter),
        metrics: metrics.clone(),
        cni: settings.cni.clone(),
    });
    let nad_cfg = watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY}"));
    let task = controller
        .owns(
            Api::<NetworkAttachmentDefinition>::all(client.clone()),
            nad_cfg,
        )
        .watches_stream(lease_stream, lease_mapper)
        .watches(lans_api, watcher::Config::default(), lan_mapper)
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(move |res| {
            count_reconcile(&metrics, res);
            async {}
        });
    Running {
        lans,
        leases,
        task: Box::pin(task),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::lan;
    use k8s_openapi::api::coordination::v1::LeaseSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use k8slan_api::naming::{claim_lease_name, node_report_lease_name};
    use std::collections::BTreeMap;

    fn lease(name: &str, role: &str, holder: &str, ann: &[(&str, &str)]) -> Lease {
        Lease {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some(BTreeMap::from([(
                    LEASE_ROLE_LABEL.to_string(),
                    role.to_string(),
                )])),
                annotations: Some(
                    ann.iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(holder.into()),
                ..LeaseSpec::default()
            }),
        }
    }

    #[test]
    fn leases_become_reports_and_claims_and_map_to_their_lans() {
        let report = lease(
            &node_report_lease_name("w1"),
            ROLE_NODE_REPORT,
            "w1",
            &[(
                REPORT_ANNOTATION,
                r#"{"lans":{"default/a":{"state":"Ready","generation":1},"x/b":{"state":"Failed","generation":2}}}"#,
            )],
        );
        let claim = lease(
            &claim_lease_name("srl"),
            ROLE_CLAIM,
            "w2",
            &[("k8slan.io/lan", "default/a"), ("k8slan.io/kind", "veth")],
        );
        let broken = lease("spoke-x", ROLE_CLAIM, "w2", &[]);
        let garbage = lease(
            "node-w3",
            ROLE_NODE_REPORT,
            "w3",
            &[(REPORT_ANNOTATION, "{")],
        );
        let (reports, claims) = read_leases(&[
            Arc::new(report.clone()),
            Arc::new(claim.clone()),
            Arc::new(broken),
            Arc::new(garbage),
        ]);
        assert_eq!(reports.len(), 1);
        assert_eq!(reports[0].0, "w1");
        assert_eq!(claims.len(), 1);
        assert_eq!(claims[0].spoke, "srl");
        assert_eq!(
            lease_lans(&report).into_iter().collect::<Vec<_>>(),
            [LanRef::new("default", "a"), LanRef::new("x", "b")]
        );
        assert_eq!(
            lease_lans(&claim).into_iter().collect::<Vec<_>>(),
            [LanRef::new("default", "a")]
        );
    }

    #[test]
    fn rejection_uses_the_cache_and_validation() {
        let mut a = lan("default", "a", "ua", &["s1"]);
        a.metadata.creation_timestamp = Some(Time(Timestamp::from_second(1).unwrap()));
        let mut b = lan("default", "b", "ub", &["s1"]);
        b.metadata.creation_timestamp = Some(Time(Timestamp::from_second(2).unwrap()));
        let all = [Arc::new(a.clone()), Arc::new(b.clone())];
        assert_eq!(rejection(&a, &all), (None, 1));
        match rejection(&b, &all).0 {
            Some(Rejection::Conflict(m)) => assert!(m.contains("LAN default/a"), "{m}"),
            other => panic!("{other:?}"),
        }
        // Once a is being deleted, b wins.
        let mut gone = a.clone();
        gone.metadata.deletion_timestamp = Some(Time(Timestamp::from_second(3).unwrap()));
        assert_eq!(
            rejection(&b, &[Arc::new(gone), Arc::new(b.clone())]),
            (None, 0)
        );
        let mut bad = b.clone();
        bad.spec.ns = "..".into();
        assert!(matches!(
            rejection(&bad, &[]).0,
            Some(Rejection::Invalid(_))
        ));
    }
}
