//! Cluster-wide uniqueness of a LAN's `ns`, `vni` and spoke names. The webhook rejects a create or
//! update that would clash ([`clashes`]); because a webhook can be down or bypassed, the
//! controller also decides which LANs are accepted ([`acceptance`]): LANs are taken oldest first
//! (creation time, then `namespace/name`), and a LAN is accepted when it clashes with no LAN
//! accepted before it. Pure functions, shared by both.

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap};
use std::fmt;

use k8s_openapi::jiff::Timestamp;
use k8slan_api::LanSpec;
use k8slan_api::report::LanRef;

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
}
