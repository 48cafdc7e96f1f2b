//! Members held on this node: which spoke is allocated here, as which kind, to which pod.
//!
//! The kubelet has no deallocate call. An allocation enters on `Allocate` (or from this node's
//! own claims after an agent restart) as *unconfirmed*; the pod-resources `List` confirms it and
//! names the pod; it leaves when a confirmed member disappears from `List`, or when an
//! unconfirmed one has not shown up within a grace period (the pod never started).
//!
//! A kubelet that just (re)started lists only the pods it has synced so far, so its first
//! listings can miss members that are alive: after a restart, releases are held for a while
//! ([`Members::hold_releases`]) and a member that shows up again meanwhile simply stays.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8slan_api::SpokeKind;

/// One allocation on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub kind: SpokeKind,
    /// `<namespace>/<name>` of the pod, once the kubelet reported it.
    pub pod: Option<String>,
    /// When the allocation entered.
    pub since: Instant,
    /// Whether pod-resources has listed it.
    pub confirmed: bool,
}

/// A spoke device the kubelet reports as held by a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holding {
    pub kind: SpokeKind,
    /// `<namespace>/<name>`.
    pub pod: String,
}

/// Everything pod-resources reports for our resources, by spoke.
pub type Holdings = BTreeMap<String, Holding>;

/// How [`Members::reserve`] went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reserved {
    /// A new member entered.
    New,
    /// The same spoke and kind was already held here: Allocate is repeated (idempotent).
    Again,
}

/// The twin kind of the spoke is held here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TwinHeld(pub Member);

/// The members of this node, by spoke.
#[derive(Debug, Default, Clone)]
pub struct Members {
    map: BTreeMap<String, Member>,
    /// No member is released before this instant (the kubelet restarted).
    hold_until: Option<Instant>,
}

impl Members {
    pub fn get(&self, spoke: &str) -> Option<&Member> {
        self.map.get(spoke)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &Member)> {
        self.map.iter()
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Enters an allocation of `spoke` as `kind`, unless its twin is held here.
    pub fn reserve(
        &mut self,
        spoke: &str,
        kind: SpokeKind,
        now: Instant,
    ) -> Result<Reserved, TwinHeld> {
        match self.map.get(spoke) {
            Some(m) if m.kind == kind => Ok(Reserved::Again),
            Some(m) => Err(TwinHeld(m.clone())),
            None => {
                self.map.insert(
                    spoke.to_string(),
                    Member {
                        kind,
                        pod: None,
                        since: now,
                        confirmed: false,
                    },
                );
                Ok(Reserved::New)
            }
        }
    }

    /// Takes back a reservation that failed (only an unconfirmed one of that kind).
    pub fn cancel(&mut self, spoke: &str, kind: SpokeKind) {
        if self
            .map
            .get(spoke)
            .is_some_and(|m| m.kind == kind && !m.confirmed)
        {
            self.map.remove(spoke);
        }
    }

    /// Enters an allocation known from this node's claim (agent restart), unless present.
    pub fn adopt(&mut self, spoke: &str, kind: SpokeKind, pod: Option<String>, now: Instant) {
        self.map.entry(spoke.to_string()).or_insert(Member {
            kind,
            pod,
            since: now,
            confirmed: false,
        });
    }

    /// Releases nothing before `until` (later holds extend earlier ones).
    pub fn hold_releases(&mut self, until: Instant) {
        self.hold_until = Some(self.hold_until.map_or(until, |t| t.max(until)));
    }

    /// Applies a pod-resources listing taken at `now`; returns the members that are gone.
    pub fn observe(
        &mut self,
        holdings: &Holdings,
        now: Instant,
        grace: Duration,
    ) -> Vec<(String, Member)> {
        for (spoke, h) in holdings {
            let m = self.map.entry(spoke.clone()).or_insert(Member {
                kind: h.kind,
                pod: None,
                since: now,
                confirmed: true,
            });
            // The kubelet's accounting is the truth about which kind is held.
            m.kind = h.kind;
            m.pod = Some(h.pod.clone());
            m.confirmed = true;
        }
        self.expire(holdings, now, grace)
    }

    /// Removes members absent from `holdings`: confirmed ones at once, unconfirmed ones after
    /// `grace`; none while releases are held.
    fn expire(
        &mut self,
        holdings: &Holdings,
        now: Instant,
        grace: Duration,
    ) -> Vec<(String, Member)> {
        if self.hold_until.is_some_and(|t| now < t) {
            return Vec::new();
        }
        let gone: Vec<String> = self
            .map
            .iter()
            .filter(|(spoke, m)| {
                !holdings.contains_key(*spoke)
                    && (m.confirmed || now.saturating_duration_since(m.since) >= grace)
            })
            .map(|(s, _)| s.clone())
            .collect();
        gone.into_iter()
            .filter_map(|s| self.map.remove(&s).map(|m| (s, m)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRACE: Duration = Duration::from_secs(60);

    fn holding(kind: SpokeKind, pod: &str) -> Holding {
        Holding {
            kind,
            pod: pod.into(),
        }
    }

    #[test]
    fn twin_is_refused_and_same_kind_is_idempotent() {
        let mut m = Members::default();
        let t0 = Instant::now();
        assert_eq!(m.reserve("s1", SpokeKind::Veth, t0), Ok(Reserved::New));
        assert_eq!(m.reserve("s1", SpokeKind::Veth, t0), Ok(Reserved::Again));
        let err = m.reserve("s1", SpokeKind::Mac, t0).unwrap_err();
        assert_eq!(err.0.kind, SpokeKind::Veth);
        assert_eq!(m.reserve("s2", SpokeKind::Mac, t0), Ok(Reserved::New));
    }

    #[test]
    fn confirmed_member_leaves_when_pod_is_gone() {
        let mut m = Members::default();
        let t0 = Instant::now();
        m.reserve("s1", SpokeKind::Mac, t0).unwrap();
        let h = Holdings::from([("s1".into(), holding(SpokeKind::Mac, "ns/vm"))]);
        assert!(m.observe(&h, t0, GRACE).is_empty());
        assert_eq!(m.get("s1").unwrap().pod.as_deref(), Some("ns/vm"));
        let gone = m.observe(&Holdings::new(), t0 + Duration::from_secs(1), GRACE);
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].0, "s1");
        assert!(m.is_empty());
    }

    #[test]
    fn nothing_is_released_while_held_and_a_member_listed_again_stays() {
        let t0 = Instant::now();
        let mut m = Members::default();
        let h = Holdings::from([
            ("a".into(), holding(SpokeKind::Veth, "ns/p1")),
            ("b".into(), holding(SpokeKind::Mac, "ns/p2")),
        ]);
        assert!(m.observe(&h, t0, GRACE).is_empty());
        // The kubelet restarts: its first listings miss both members.
        m.hold_releases(t0 + GRACE);
        assert!(
            m.observe(&Holdings::new(), t0 + GRACE / 2, GRACE)
                .is_empty()
        );
        assert_eq!(m.len(), 2);
        // It has synced `a` again; `b`'s pod really went away meanwhile.
        let only_a = Holdings::from([("a".into(), holding(SpokeKind::Veth, "ns/p1"))]);
        assert!(
            m.observe(&only_a, t0 + GRACE - Duration::from_secs(1), GRACE)
                .is_empty()
        );
        let gone = m.observe(&only_a, t0 + GRACE, GRACE);
        assert_eq!(
            gone.iter().map(|(s, _)| s.as_str()).collect::<Vec<_>>(),
            ["b"]
        );
        assert!(m.get("a").is_some_and(|x| x.confirmed));
    }

    #[test]
    fn unconfirmed_member_survives_the_grace_period_only() {
        let mut m = Members::default();
        let t0 = Instant::now();
        m.reserve("s1", SpokeKind::Veth, t0).unwrap();
        assert!(
            m.observe(&Holdings::new(), t0 + GRACE / 2, GRACE)
                .is_empty()
        );
        assert_eq!(m.len(), 1);
        let gone = m.observe(&Holdings::new(), t0 + GRACE, GRACE);
        assert_eq!(gone.len(), 1);
    }

    #[test]
    fn listing_alone_rebuilds_members_after_restart() {
        let mut m = Members::default();
        let h = Holdings::from([("s9".into(), holding(SpokeKind::Veth, "ns/p"))]);
        m.observe(&h, Instant::now(), GRACE);
        let got = m.get("s9").unwrap();
        assert!(got.confirmed);
        assert_eq!(got.kind, SpokeKind::Veth);
    }

    #[test]
    fn cancel_drops_only_an_unconfirmed_reservation_of_that_kind() {
        let mut m = Members::default();
        let t0 = Instant::now();
        m.reserve("s1", SpokeKind::Veth, t0).unwrap();
        m.cancel("s1", SpokeKind::Mac);
        assert_eq!(m.len(), 1);
        m.cancel("s1", SpokeKind::Veth);
        assert!(m.is_empty());
        m.observe(
            &Holdings::from([("s1".into(), holding(SpokeKind::Veth, "a/b"))]),
            t0,
            GRACE,
        );
        m.cancel("s1", SpokeKind::Veth);
        assert_eq!(m.len(), 1);
    }
}
