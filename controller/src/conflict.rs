//! Cluster-wide uniqueness of a LAN's `ns`, `vni` and spoke names. The webhook rejects a create or
//! update that would clash ([`clashes`]); because a webhook can be down or bypassed, the
//! controller also decides which LANs are accepted ([`acceptance`]): LANs are taken oldest first
//! (creation time, then `namespace/name`), and a LAN is accepted when it clashes with no LAN
//! accepted before it. Pure functions, shared by both.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

use k8s_openapi::jiff::Timestamp;
use k8slan_api::LanSpec;
use k8slan_api::report::LanRef;
use k8slan_api::validate::underlays;

/// What the conflict rules need to know about a LAN.
#[derive(Debug, Clone)]
pub struct LanKeys<'a> {
    pub lan: LanRef,
    /// `metadata.creationTimestamp`; `None` for a LAN being created (it is the newest).
    pub created: Option<Timestamp>,
    pub spec: &'a LanSpec,
}

/// Which field clashes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Field {
    Ns,
    Vni,
    Spoke,
}

impl Field {
    /// The JSON path of the field in a LAN.
    pub fn path(&self) -> &'static str {
        match self {
            Field::Ns => "spec.ns",
            Field::Vni => "spec.vni",
            Field::Spoke => "spec.spokes",
        }
    }
}

/// One field value that a LAN shares with another LAN.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Conflict {
    pub field: Field,
    /// The shared value (`knlvrf`, `222`, `srl`).
    pub value: String,
    /// The other LAN.
    pub other: LanRef,
}

impl fmt::Display for Conflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.field {
            Field::Ns => format!("ns {:?}", self.value),
            Field::Vni => format!("vni {}", self.value),
            Field::Spoke => format!("spoke {:?}", self.value),
        };
        write!(
            f,
            "{}: {what} is already used by LAN {}",
            self.field.path(),
            self.other
        )
    }
}

/// Joins conflicts into one message, e.g. for a condition or a webhook denial.
pub fn describe(conflicts: &[Conflict]) -> String {
    conflicts
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Which of two LANs wins a clash: the older one, then the smaller `namespace/name`.
/// A LAN without a creation time (being created) is newer than every stored LAN.
pub fn precedence(a: &LanKeys<'_>, b: &LanKeys<'_>) -> Ordering {
    match (a.created, b.created) {
        (Some(x), Some(y)) => x.cmp(&y),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => Ordering::Equal,
    }
    .then_with(|| a.lan.cmp(&b.lan))
}

/// The keys a LAN claims cluster-wide.
fn keys(spec: &LanSpec) -> impl Iterator<Item = (Field, String)> + '_ {
    [
        (Field::Ns, spec.ns.clone()),
        (Field::Vni, spec.vni.to_string()),
    ]
    .into_iter()
    .chain(spec.spokes.iter().map(|s| (Field::Spoke, s.clone())))
}

/// Every value `candidate` shares with one of `others` (the candidate itself, matched by
/// `namespace/name`, is skipped). Sorted by field, value and other LAN.
pub fn clashes(candidate: &LanKeys<'_>, others: &[LanKeys<'_>]) -> Vec<Conflict> {
    let mine: HashMap<(Field, String), ()> = keys(candidate.spec).map(|k| (k, ())).collect();
    let mut out: Vec<Conflict> = others
        .iter()
        .filter(|o| o.lan != candidate.lan)
        .flat_map(|o| {
            keys(o.spec)
                .filter(|k| mine.contains_key(k))
                .map(|(field, value)| Conflict {
                    field,
                    value,
                    other: o.lan.clone(),
                })
                .collect::<Vec<_>>()
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Decides which LANs are accepted: oldest first, each one accepted unless it clashes with a LAN
/// accepted before it. Returns, for every rejected LAN, the accepted LANs' values it clashes with.
/// A LAN not in the map is accepted.
pub fn acceptance(lans: &[LanKeys<'_>]) -> BTreeMap<LanRef, Vec<Conflict>> {
    let mut order: Vec<&LanKeys<'_>> = lans.iter().collect();
    order.sort_by(|a, b| precedence(a, b));
    let mut taken: HashMap<(Field, String), &LanRef> = HashMap::new();
    let mut rejected = BTreeMap::new();
    for view in order {
        let mut lost: Vec<Conflict> = keys(view.spec)
            .filter_map(|k| {
                taken.get(&k).map(|owner| Conflict {
                    field: k.0.clone(),
                    value: k.1.clone(),
                    other: (*owner).clone(),
                })
            })
            .collect();
        if lost.is_empty() {
            for k in keys(view.spec) {
                taken.insert(k, &view.lan);
            }
        } else {
            lost.sort();
            lost.dedup();
            rejected.insert(view.lan.clone(), lost);
        }
    }
    rejected
}

/// A spoke of one LAN named like an underlay device of another: the spoke's host end would be
/// created under the underlay's name on the nodes that use it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UnderlayClash {
    /// `true`: the candidate's spoke is the other LAN's underlay; `false`: the candidate's
    /// underlay is the other LAN's spoke.
    pub spoke_is_mine: bool,
    pub name: String,
    pub other: LanRef,
}

impl fmt::Display for UnderlayClash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.spoke_is_mine {
            write!(
                f,
                "spec.spokes: spoke {:?} is an underlay device of LAN {}; rename the spoke",
                self.name, self.other
            )
        } else {
            write!(
                f,
                "spec.defaultVxlanDev/vxlanDevMap: underlay {:?} is a spoke of LAN {} (a link k8slan creates); name the node's underlay interface",
                self.name, self.other
            )
        }
    }
}

/// Every spoke of `candidate` that is an underlay of one of `others`, and every underlay of
/// `candidate` that is a spoke of one of them (the candidate itself is skipped).
pub fn underlay_clashes(candidate: &LanKeys<'_>, others: &[LanKeys<'_>]) -> Vec<UnderlayClash> {
    let my_spokes: BTreeSet<&str> = candidate.spec.spokes.iter().map(String::as_str).collect();
    let my_devs = underlays(candidate.spec);
    let mut out = BTreeSet::new();
    for o in others.iter().filter(|o| o.lan != candidate.lan) {
        for dev in underlays(o.spec).intersection(&my_spokes) {
            out.insert(UnderlayClash {
                spoke_is_mine: true,
                name: dev.to_string(),
                other: o.lan.clone(),
            });
        }
        for spoke in o
            .spec
            .spokes
            .iter()
            .filter(|s| my_devs.contains(s.as_str()))
        {
            out.insert(UnderlayClash {
                spoke_is_mine: false,
                name: spoke.clone(),
                other: o.lan.clone(),
            });
        }
    }
    out.into_iter().collect()
}

/// The node that carries the most spokes when every LAN in `specs` is programmed wherever it
/// has an underlay (its `vxlanDevMap` entry, else `defaultVxlanDev`): a description of that node
/// (`node worker1`, or every node listed in no `vxlanDevMap`) and its spoke count. A node's agent
/// advertises two extended resources per spoke in the Node object.
pub fn busiest_node(specs: &[&LanSpec]) -> (String, usize) {
    let load = |node: Option<&str>| -> usize {
        specs
            .iter()
            .filter(|s| match node {
                Some(n) => s.underlay_for(n, Some("uplink")).is_some(),
                None => s.default_vxlan_dev.is_some(),
            })
            .map(|s| s.spokes.len())
            .sum()
    };
    let named: BTreeSet<&str> = specs
        .iter()
        .flat_map(|s| s.vxlan_dev_map.keys().map(String::as_str))
        .collect();
    let mut busiest = (
        "every node listed in no vxlanDevMap".to_string(),
        load(None),
    );
    for node in named {
        let n = load(Some(node));
        if n > busiest.1 {
            busiest = (format!("node {node}"), n);
        }
    }
    busiest
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::spec;

    fn view<'a>(ns: &str, name: &str, secs: Option<i64>, spec: &'a LanSpec) -> LanKeys<'a> {
        LanKeys {
            lan: LanRef::new(ns, name),
            created: secs.map(|s| Timestamp::from_second(s).unwrap()),
            spec,
        }
    }

    #[test]
    fn clashes_name_the_field_the_value_and_the_other_lan() {
        let a = spec("knlvrf", 222, &["srl", "vm"]);
        let b = spec("other", 222, &["vm", "x"]);
        let c = spec("knlvrf", 5, &["y"]);
        let clean = spec("free", 7, &["z"]);
        let others = [
            view("default", "a", Some(10), &a),
            view("team", "c", Some(11), &c),
            view("default", "clean", Some(12), &clean),
        ];
        let got = clashes(&view("default", "b", None, &b), &others);
        assert_eq!(
            got.iter().map(ToString::to_string).collect::<Vec<_>>(),
            [
                "spec.vni: vni 222 is already used by LAN default/a",
                "spec.spokes: spoke \"vm\" is already used by LAN default/a",
            ]
        );
        let got = clashes(&view("x", "new", None, &a), &others[1..]);
        assert_eq!(
            describe(&got),
            "spec.ns: ns \"knlvrf\" is already used by LAN team/c"
        );
        // A LAN never clashes with itself (an update compares against the stored copy).
        assert!(clashes(&view("default", "a", Some(10), &a), &others[..1]).is_empty());
    }

    #[test]
    fn the_older_lan_wins_then_the_smaller_name() {
        let a = spec("n1", 1, &["s"]);
        let b = spec("n2", 2, &["s"]);
        // b is older: b is accepted, a is rejected, whatever the list order.
        let lans = [view("z", "a", Some(20), &a), view("z", "b", Some(10), &b)];
        let r = acceptance(&lans);
        assert_eq!(r.keys().collect::<Vec<_>>(), [&LanRef::new("z", "a")]);
        assert_eq!(
            describe(&r[&LanRef::new("z", "a")]),
            "spec.spokes: spoke \"s\" is already used by LAN z/b"
        );
        // Same creation second: namespace/name decides.
        let lans = [view("z", "b", Some(10), &b), view("z", "a", Some(10), &a)];
        let r = acceptance(&lans);
        assert_eq!(r.keys().collect::<Vec<_>>(), [&LanRef::new("z", "b")]);
    }

    #[test]
    fn a_rejected_lan_blocks_nobody() {
        // a (oldest) and b share vni 1; b and c share spoke "t". b is rejected, so c is accepted.
        let a = spec("na", 1, &["s"]);
        let b = spec("nb", 1, &["t"]);
        let c = spec("nc", 3, &["t"]);
        let lans = [
            view("d", "c", Some(3), &c),
            view("d", "b", Some(2), &b),
            view("d", "a", Some(1), &a),
        ];
        let r = acceptance(&lans);
        assert_eq!(r.len(), 1);
        assert_eq!(r[&LanRef::new("d", "b")][0].field, Field::Vni);
    }

    #[test]
    fn unique_lans_are_all_accepted() {
        let a = spec("na", 1, &["s1", "s2"]);
        let b = spec("nb", 2, &["s3"]);
        let lans = [view("d", "a", Some(1), &a), view("e", "a", Some(1), &b)];
        assert!(acceptance(&lans).is_empty());
    }

    #[test]
    fn spokes_and_underlays_of_other_lans_clash() {
        let mut a = spec("na", 1, &["eth2", "s1"]);
        a.vxlan_dev_map.insert("w1".into(), "ens5".into());
        let b = spec("nb", 2, &["ens5", "s2"]);
        let mut c = spec("nc", 3, &["s3"]);
        c.default_vxlan_dev = Some("eth2".into());
        let others = [view("d", "a", Some(1), &a), view("d", "c", Some(2), &c)];
        let got = underlay_clashes(&view("d", "b", None, &b), &others);
        assert_eq!(got.len(), 1);
        assert!(
            got[0]
                .to_string()
                .contains("spoke \"ens5\" is an underlay device of LAN d/a")
        );
        let got = underlay_clashes(&view("d", "c", None, &c), &others[..1]);
        assert_eq!(got.len(), 1);
        assert!(
            got[0]
                .to_string()
                .contains("underlay \"eth2\" is a spoke of LAN d/a")
        );
        // eth1 (everybody's underlay) is nobody's spoke: no clash.
        assert!(
            underlay_clashes(&view("d", "x", None, &spec("nx", 9, &["s9"])), &others).is_empty()
        );
    }

    #[test]
    fn the_busiest_node_counts_every_lan_it_has_an_underlay_for() {
        let everywhere = spec("n1", 1, &["a", "b", "c"]);
        let mut only_w1 = spec("n2", 2, &["d", "e"]);
        only_w1.default_vxlan_dev = None;
        only_w1.vxlan_dev_map.insert("w1".into(), "eth2".into());
        let mut w2_too = spec("n3", 3, &["f"]);
        w2_too.vxlan_dev_map.insert("w2".into(), "eth3".into());
        assert_eq!(
            busiest_node(&[&everywhere]),
            ("every node listed in no vxlanDevMap".into(), 3)
        );
        assert_eq!(
            busiest_node(&[&everywhere, &only_w1, &w2_too]),
            ("node w1".into(), 6)
        );
        assert_eq!(busiest_node(&[&only_w1]), ("node w1".into(), 2));
        assert_eq!(busiest_node(&[]).1, 0);
    }
}
