//! Prometheus metrics of the controller, served as text on `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LanLabel {
    /// `namespace/name` of the LAN.
    pub lan: String,
}

/// Every metric the controller exports (all prefixed `k8slan_controller_`).
#[derive(Debug, Default)]
pub struct Metrics {
    /// Reconciles by result (`ok`, `error`).
    pub reconciles: Family<ResultLabel, Counter>,
    /// LANs in the cache.
    pub lans: Gauge,
    /// LANs that are not accepted because they clash with an older LAN.
    pub conflicting_lans: Gauge,
    /// NADs that a LAN wants but somebody else owns.
    pub nad_conflicts: Family<LanLabel, Gauge>,
    /// Admission reviews by verdict (`allowed`, `denied`, `error`).
    pub admissions: Family<ResultLabel, Counter>,
    /// Serving certificates issued or reloaded.
    pub cert_rotations: Counter,
}

impl Metrics {
    /// Registers every metric; the registry is what `/metrics` encodes.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "reconciles",
            "LAN reconciles by result",
            self.reconciles.clone(),
        );
        registry.register("lans", "LANs known to the controller", self.lans.clone());
        registry.register(
            "conflicting_lans",
            "LANs not accepted because ns, vni or a spoke is used by an older LAN",
            self.conflicting_lans.clone(),
        );
        registry.register(
            "nad_conflicts",
            "NetworkAttachmentDefinition names wanted by a LAN but owned by somebody else",
            self.nad_conflicts.clone(),
        );
        registry.register(
            "admissions",
            "LAN admission reviews by verdict",
            self.admissions.clone(),
        );
        registry.register(
            "cert_rotations",
            "webhook serving certificates issued or reloaded",
            self.cert_rotations.clone(),
        );
    }

    pub fn reconciled(&self, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.reconciles.get_or_create(&ResultLabel { result }).inc();
    }

    pub fn admitted(&self, result: &'static str) {
        self.admissions.get_or_create(&ResultLabel { result }).inc();
    }
}

/// The text exposition of a registry.
pub fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, registry);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_show_in_the_text_format() {
        let m = Metrics::default();
        let mut r = Registry::with_prefix("k8slan_controller");
        m.register(&mut r);
        m.reconciled(true);
        m.reconciled(true);
        m.reconciled(false);
        m.conflicting_lans.set(1);
        m.admitted("denied");
        let text = encode(&r);
        assert!(
            text.contains("k8slan_controller_reconciles_total{result=\"ok\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("k8slan_controller_reconciles_total{result=\"error\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("k8slan_controller_conflicting_lans 1"),
            "{text}"
        );
        assert!(
            text.contains("k8slan_controller_admissions_total{result=\"denied\"} 1"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
