//! A LAN's status from what the agents report: [`aggregate`] is pure, fed with the node-report
//! and claim Leases, the acceptance decision and the NAD conflicts.
//!
//! Rules:
//! - `nodes[]`: every node whose report mentions the LAN, by node name.
//! - `readyNodes`: nodes reporting `Ready` at the LAN's current generation.
//! - `holders[]`: every claim naming the LAN, by spoke.
//! - `Accepted`: `False` (reason `Conflict`) when an older LAN holds one of its `ns`, `vni` or
//!   spokes, `False` (reason `Invalid`) when the spec breaks a rule the CRD schema cannot check.
//! - `Ready`: `True` when the LAN is accepted, its NADs are in place, at least one node takes part
//!   and every node taking part reports `Ready` at the current generation. Nodes reporting
//!   `NoUnderlay` do not take part (the LAN names no underlay device for them) and neither block
//!   nor count. Otherwise `False` with reason `NotAccepted`, `NadConflict`, `NodeFailed`,
//!   `Progressing` (a node is still at an older generation) or `NoNodeReports`.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8slan_api::peer;
use k8slan_api::report::{Claim, LanRef, NodeReport, NodeState};
use k8slan_api::{LanSpec, LanStatus, NodeLanState, SpokeHolder, VxlanMode};

/// Condition type: no conflict with other LANs and a valid spec.
pub use k8slan_api::lan::CONDITION_ACCEPTED as ACCEPTED;
/// Condition type: every node taking part has programmed the current generation.
pub use k8slan_api::lan::CONDITION_READY as READY;

/// Why a LAN is not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// Clashes with older LANs; the message names them.
    Conflict(String),
    /// Breaks a validation rule; the message says which.
    Invalid(String),
}

/// Everything the status depends on.
#[derive(Debug)]
pub struct Inputs<'a> {
    pub lan: &'a LanRef,
    pub spec: &'a LanSpec,
    pub generation: i64,
    pub spoke_count: usize,
    pub rejection: Option<Rejection>,
    /// NAD names held by somebody else, with their owner, already formatted.
    pub nad_conflicts: Vec<String>,
    /// `(node, report)` for every node-report Lease.
    pub reports: Vec<(&'a str, &'a NodeReport)>,
    /// Every spoke claim in the cluster (filtered here).
    pub claims: &'a [Claim],
    /// The conditions currently stored, to keep their transition times.
    pub previous: &'a [Condition],
    pub now: Time,
}

/// `eth1 fe80::1`: the node's underlay device for the LAN and its address of the LAN's family,
/// as its report gives them.
fn underlay_text(spec: &LanSpec, node: &str, report: &NodeReport) -> Option<String> {
    let (dev, addr) = report.underlay_of(spec, node)?;
    Some(match addr {
        Some(a) => format!("{dev} {a}"),
        None => format!("{dev} (no {} address)", spec.vxlan_family),
    })
}

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Computes the LAN's status.
pub fn aggregate(input: Inputs<'_>) -> LanStatus {
    let generation = input.generation;
    let members = peer::members(
        input.lan,
        input.spec,
        input.reports.iter().copied(),
        input.claims,
    );
    let mut nodes: Vec<NodeLanState> = input
        .reports
        .iter()
        .filter_map(|(node, report)| {
            report.lan(input.lan).map(|r| NodeLanState {
                node: (*node).to_string(),
                state: r.state.as_str().to_string(),
                message: (!r.message.is_empty()).then(|| r.message.clone()),
                generation: Some(r.generation),
                underlay: underlay_text(input.spec, node, report),
                peers: (input.spec.vxlan_mode == VxlanMode::Unicast)
                    .then(|| count(peer::peers_of(node, &members).len())),
            })
        })
        .collect();
    nodes.sort_by(|a, b| a.node.cmp(&b.node));
    let ready_at_gen =
        |n: &NodeLanState| n.state == NodeState::Ready.as_str() && n.generation == Some(generation);
    let ready_nodes = nodes.iter().filter(|n| ready_at_gen(n)).count();

    let mut holders: Vec<SpokeHolder> = input
        .claims
        .iter()
        .filter(|c| &c.lan == input.lan)
        .map(|c| SpokeHolder {
            spoke: c.spoke.clone(),
            kind: c.kind.to_string(),
            node: c.node.clone(),
            pod: c.pod.clone(),
        })
        .collect();
    holders.sort_by(|a, b| (&a.spoke, &a.node).cmp(&(&b.spoke, &b.node)));

    let accepted = match &input.rejection {
        None => (
            "True",
            "Accepted",
            "no conflict with other LANs".to_string(),
        ),
        Some(Rejection::Conflict(m)) => ("False", "Conflict", m.clone()),
        Some(Rejection::Invalid(m)) => ("False", "Invalid", m.clone()),
    };
    let ready = ready_condition(&input, &nodes, ready_nodes);

    let conditions = vec![
        condition(ACCEPTED, accepted, generation, input.previous, &input.now),
        condition(READY, ready, generation, input.previous, &input.now),
    ];
    LanStatus {
        conditions,
        observed_generation: Some(generation),
        spoke_count: Some(u32::try_from(input.spoke_count).unwrap_or(u32::MAX)),
        ready_nodes: Some(u32::try_from(ready_nodes).unwrap_or(u32::MAX)),
        nodes,
        holders,
    }
}

/// Status, reason and message of the Ready condition.
fn ready_condition(
    input: &Inputs<'_>,
    nodes: &[NodeLanState],
    ready_nodes: usize,
) -> (&'static str, &'static str, String) {
    if input.rejection.is_some() {
        return (
            "False",
            "NotAccepted",
            "the LAN is not accepted; agents do not program it (see the Accepted condition)".into(),
        );
    }
    if !input.nad_conflicts.is_empty() {
        return (
            "False",
            "NadConflict",
            format!(
                "NetworkAttachmentDefinitions with the LAN's names belong to somebody else: {}; delete them to let the LAN own them",
                input.nad_conflicts.join(", ")
            ),
        );
    }
    nodes_condition(input.generation, nodes, ready_nodes)
}

/// `; without an underlay device: <nodes>`, or nothing.
fn skipped_note(nodes: &[NodeLanState]) -> String {
    let no_underlay: Vec<&str> = nodes
        .iter()
        .filter(|n| n.state == NodeState::NoUnderlay.as_str())
        .map(|n| n.node.as_str())
        .collect();
    if no_underlay.is_empty() {
        String::new()
    } else {
        format!("; without an underlay device: {}", no_underlay.join(", "))
    }
}

/// `<node> (<state>: <message>)` of every taking part node that is not ready.
fn failed_nodes(taking_part: &[&NodeLanState]) -> Vec<String> {
    taking_part
        .iter()
        .filter(|n| n.state != NodeState::Ready.as_str())
        .map(|n| {
            let why = n.message.as_deref().unwrap_or("no message");
            format!("{} ({}: {why})", n.node, n.state)
        })
        .collect()
}

/// The Ready condition of an accepted LAN that owns its NADs: what the nodes report.
fn nodes_condition(
    generation: i64,
    nodes: &[NodeLanState],
    ready_nodes: usize,
) -> (&'static str, &'static str, String) {
    let taking_part: Vec<&NodeLanState> = nodes
        .iter()
        .filter(|n| n.state != NodeState::NoUnderlay.as_str())
        .collect();
    let skipped = skipped_note(nodes);
    let failed = failed_nodes(&taking_part);
    if !failed.is_empty() {
        return (
            "False",
            "NodeFailed",
            format!(
                "nodes failed to program the LAN: {}{skipped}",
                failed.join("; ")
            ),
        );
    }
    if taking_part.is_empty() {
        return (
            "False",
            "NoNodeReports",
            format!("no node has programmed the LAN yet{skipped}"),
        );
    }
    if ready_nodes < taking_part.len() {
        let behind: Vec<&str> = taking_part
            .iter()
            .filter(|n| n.generation != Some(generation))
            .map(|n| n.node.as_str())
            .collect();
        return (
            "False",
            "Progressing",
            format!(
                "{ready_nodes} of {} nodes programmed generation {generation}; still at an older one: {}{skipped}",
                taking_part.len(),
                behind.join(", ")
            ),
        );
    }
    (
        "True",
        "Ready",
        format!("{ready_nodes} nodes programmed generation {generation}{skipped}"),
    )
}

fn condition(
    type_: &str,
    (status, reason, message): (&str, &str, String),
    generation: i64,
    previous: &[Condition],
    now: &Time,
) -> Condition {
    let last_transition_time = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| now.clone());
    Condition {
        type_: type_.to_string(),
        status: status.to_string(),
        reason: reason.to_string(),
        message,
        observed_generation: Some(generation),
        last_transition_time,
    }
}

/// The status of one condition type, if present.
pub fn condition_status<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a str> {
    conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| c.status.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;
    use k8slan_api::SpokeKind;

    fn at(s: i64) -> Time {
        Time(Timestamp::from_second(s).unwrap())
    }

    fn report(entries: &[(&str, &str, i64, &str)]) -> NodeReport {
        let lans = entries
            .iter()
            .map(|(lan, state, generation, msg)| {
                serde_json::json!([lan, {"state": state, "generation": generation, "message": msg}])
            })
            .map(|v| {
                (
                    v[0].as_str().unwrap().to_string(),
                    serde_json::from_value(v[1].clone()).unwrap(),
                )
            })
            .collect();
        NodeReport {
            lans,
            ..NodeReport::default()
        }
    }

    static SPEC: std::sync::LazyLock<LanSpec> =
        std::sync::LazyLock::new(|| crate::testutil::spec("lan-a", 10, &["srl", "vm"]));

    fn inputs<'a>(
        lan: &'a LanRef,
        reports: Vec<(&'a str, &'a NodeReport)>,
        claims: &'a [Claim],
        previous: &'a [Condition],
    ) -> Inputs<'a> {
        Inputs {
            lan,
            spec: &SPEC,
            generation: 3,
            spoke_count: 2,
            rejection: None,
            nad_conflicts: vec![],
            reports,
            claims,
            previous,
            now: at(100),
        }
    }

    fn cond<'a>(s: &'a LanStatus, t: &str) -> &'a Condition {
        s.conditions.iter().find(|c| c.type_ == t).unwrap()
    }

    #[test]
    fn ready_when_every_node_taking_part_is_at_the_current_generation() {
        let lan = LanRef::new("default", "a");
        let w1 = report(&[
            ("default/a", "Ready", 3, ""),
            ("default/other", "Failed", 1, "x"),
        ]);
        let w2 = report(&[("default/a", "Ready", 3, "")]);
        let w3 = report(&[("default/a", "NoUnderlay", 3, "no eth1")]);
        let w4 = report(&[]);
        let claims = [
            Claim {
                spoke: "vm".into(),
                node: "w2".into(),
                lan: lan.clone(),
                kind: SpokeKind::Mac,
                pod: Some("default/vm-1".into()),
                pod_uid: None,
            },
            Claim {
                spoke: "srl".into(),
                node: "w1".into(),
                lan: lan.clone(),
                kind: SpokeKind::Veth,
                pod: None,
                pod_uid: None,
            },
            Claim {
                spoke: "zz".into(),
                node: "w1".into(),
                lan: LanRef::new("default", "other"),
                kind: SpokeKind::Veth,
                pod: None,
                pod_uid: None,
            },
        ];
        let s = aggregate(inputs(
            &lan,
            vec![("w3", &w3), ("w1", &w1), ("w2", &w2), ("w4", &w4)],
            &claims,
            &[],
        ));
        assert_eq!(s.ready_nodes, Some(2));
        assert_eq!(s.spoke_count, Some(2));
        assert_eq!(s.observed_generation, Some(3));
        let nodes: Vec<_> = s
            .nodes
            .iter()
            .map(|n| (n.node.as_str(), n.state.as_str()))
            .collect();
        assert_eq!(
            nodes,
            [("w1", "Ready"), ("w2", "Ready"), ("w3", "NoUnderlay")]
        );
        assert_eq!(s.nodes[2].message.as_deref(), Some("no eth1"));
        let held: Vec<_> = s
            .holders
            .iter()
            .map(|h| {
                (
                    h.spoke.as_str(),
                    h.kind.as_str(),
                    h.node.as_str(),
                    h.pod.as_deref(),
                )
            })
            .collect();
        assert_eq!(
            held,
            [
                ("srl", "veth", "w1", None),
                ("vm", "mac", "w2", Some("default/vm-1"))
            ]
        );
        let r = cond(&s, READY);
        assert_eq!((r.status.as_str(), r.reason.as_str()), ("True", "Ready"));
        assert!(
            r.message.contains("without an underlay device: w3"),
            "{}",
            r.message
        );
        assert_eq!(cond(&s, ACCEPTED).status, "True");
    }

    #[test]
    fn each_node_shows_its_underlay_address_and_a_unicast_lan_its_peers() {
        use k8slan_api::report::UnderlayAddresses;
        let lan = LanRef::new("default", "a");
        let with_address = |entries, v6: Option<&str>| NodeReport {
            underlays: v6
                .map(|a| {
                    let addrs = UnderlayAddresses {
                        ipv6: Some(a.parse().unwrap()),
                        ipv4: None,
                    };
                    std::collections::BTreeMap::from([("eth1".to_string(), addrs)])
                })
                .unwrap_or_default(),
            ..report(entries)
        };
        let w1 = with_address(&[("default/a", "Ready", 3, "")], Some("fe80::1"));
        let w2 = with_address(&[("default/a", "Ready", 3, "")], Some("fe80::2"));
        let w3 = with_address(&[("default/a", "Ready", 3, "")], None);
        let claims = [
            Claim::new("srl", "w1", lan.clone(), SpokeKind::Veth),
            Claim::new("vm", "w2", lan.clone(), SpokeKind::Mac),
        ];
        let mut unicast = SPEC.clone();
        unicast.vxlan_mode = VxlanMode::Unicast;
        unicast.vxlan_grp = None;
        let reports = vec![("w1", &w1), ("w2", &w2), ("w3", &w3)];
        let s = aggregate(Inputs {
            spec: &unicast,
            ..inputs(&lan, reports.clone(), &claims, &[])
        });
        let shown: Vec<_> = s
            .nodes
            .iter()
            .map(|n| (n.node.as_str(), n.underlay.as_deref(), n.peers))
            .collect();
        assert_eq!(
            shown,
            [
                ("w1", Some("eth1 fe80::1"), Some(1)),
                ("w2", Some("eth1 fe80::2"), Some(1)),
                // Holds no spoke: nobody's peer, but it would flood to both members.
                ("w3", Some("eth1 (no ipv6 address)"), Some(2)),
            ]
        );
        let s = aggregate(inputs(&lan, reports, &claims, &[]));
        assert!(
            s.nodes.iter().all(|n| n.peers.is_none()),
            "multicast: no peers"
        );
    }

    #[test]
    fn a_stale_node_means_progressing_and_a_failed_node_wins() {
        let lan = LanRef::new("default", "a");
        let w1 = report(&[("default/a", "Ready", 3, "")]);
        let w2 = report(&[("default/a", "Ready", 2, "")]);
        let s = aggregate(inputs(&lan, vec![("w1", &w1), ("w2", &w2)], &[], &[]));
        let r = cond(&s, READY);
        assert_eq!(
            (r.status.as_str(), r.reason.as_str()),
            ("False", "Progressing")
        );
        assert!(r.message.contains("1 of 2 nodes"), "{}", r.message);
        assert!(r.message.contains("w2"), "{}", r.message);
        assert_eq!(s.ready_nodes, Some(1));

        let w2 = report(&[("default/a", "Failed", 3, "vxlan: device busy")]);
        let s = aggregate(inputs(&lan, vec![("w1", &w1), ("w2", &w2)], &[], &[]));
        let r = cond(&s, READY);
        assert_eq!(r.reason, "NodeFailed");
        assert!(
            r.message.contains("w2 (Failed: vxlan: device busy)"),
            "{}",
            r.message
        );
    }

    #[test]
    fn no_reports_or_only_nodes_without_underlay_is_not_ready() {
        let lan = LanRef::new("default", "a");
        let s = aggregate(inputs(&lan, vec![], &[], &[]));
        assert_eq!(cond(&s, READY).reason, "NoNodeReports");
        assert_eq!(s.ready_nodes, Some(0));
        let w = report(&[("default/a", "NoUnderlay", 3, "")]);
        let s = aggregate(inputs(&lan, vec![("w", &w)], &[], &[]));
        assert_eq!(cond(&s, READY).status, "False");
    }

    #[test]
    fn rejection_and_nad_conflicts_show_in_the_conditions() {
        let lan = LanRef::new("default", "b");
        let w = report(&[("default/b", "Ready", 3, "")]);
        let mut i = inputs(&lan, vec![("w", &w)], &[], &[]);
        i.rejection = Some(Rejection::Conflict(
            "spec.vni: vni 222 is already used by LAN default/a".into(),
        ));
        let s = aggregate(i);
        let a = cond(&s, ACCEPTED);
        assert_eq!(
            (a.status.as_str(), a.reason.as_str()),
            ("False", "Conflict")
        );
        assert!(a.message.contains("default/a"));
        assert_eq!(cond(&s, READY).reason, "NotAccepted");

        let mut i = inputs(&lan, vec![("w", &w)], &[], &[]);
        i.nad_conflicts = vec!["k8slan-veth-x (owned by nobody)".into()];
        let s = aggregate(i);
        assert_eq!(cond(&s, ACCEPTED).status, "True");
        let r = cond(&s, READY);
        assert_eq!(r.reason, "NadConflict");
        assert!(r.message.contains("k8slan-veth-x"));
    }

    #[test]
    fn transition_time_changes_only_when_the_status_does() {
        let lan = LanRef::new("default", "a");
        let w = report(&[("default/a", "Ready", 3, "")]);
        let first = aggregate(inputs(&lan, vec![("w", &w)], &[], &[]));
        let mut again = inputs(&lan, vec![("w", &w)], &[], &first.conditions);
        again.now = at(500);
        let second = aggregate(again);
        assert_eq!(second, first);
        let mut flipped = inputs(&lan, vec![], &[], &first.conditions);
        flipped.now = at(900);
        let third = aggregate(flipped);
        assert_eq!(cond(&third, READY).last_transition_time, at(900));
        assert_eq!(cond(&third, ACCEPTED).last_transition_time, at(100));
    }
}
