//! Prometheus metrics of the node agent, served as text on `/metrics` (all prefixed
//! `k8slan_agent_`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// A spoke preparation: the attachment kind and how it ended.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PrepareLabels {
    /// `veth` or `mac`.
    pub kind: &'static str,
    /// `ok` or `error`.
    pub result: &'static str,
}

/// One action of the LAN reconciler and how it ended.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionLabels {
    /// `refresh`, `remove_spoke` or `remove_orphan`.
    pub action: &'static str,
    /// `ok`, `changed` or `error`.
    pub result: &'static str,
}

#[derive(Debug)]
pub struct Metrics {
    /// Spoke preparations (`Allocate`) and releases by kind and result.
    pub prepares: Family<PrepareLabels, Counter>,
    pub releases: Family<PrepareLabels, Counter>,
    /// Time the datapath took to prepare a spoke.
    pub prepare_seconds: Histogram,
    /// LAN reconciler actions by result.
    pub actions: Family<ActionLabels, Counter>,
    /// LAN namespaces on this node at the last reconcile.
    pub lan_namespaces: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            prepares: Family::default(),
            releases: Family::default(),
            // 0.5 ms .. ~4 s
            prepare_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 14)),
            actions: Family::default(),
            lan_namespaces: Gauge::default(),
        }
    }
}

impl Metrics {
    /// Registers every metric under `k8slan_agent_`.
    pub fn registry(&self) -> Registry {
        let mut registry = Registry::with_prefix("k8slan_agent");
        registry.register(
            "spoke_prepares",
            "spoke host sides prepared for Allocate, by kind and result",
            self.prepares.clone(),
        );
        registry.register(
            "spoke_releases",
            "spoke host sides removed after their member left, by kind and result",
            self.releases.clone(),
        );
        registry.register(
            "spoke_prepare_seconds",
            "time the datapath took to prepare a spoke",
            self.prepare_seconds.clone(),
        );
        registry.register(
            "lan_actions",
            "LAN reconciler actions (refresh, remove_spoke, remove_orphan) by result",
            self.actions.clone(),
        );
        registry.register(
            "lan_namespaces",
            "LAN network namespaces on this node",
            self.lan_namespaces.clone(),
        );
        registry
    }

    pub fn action(&self, action: &'static str, result: &'static str) {
        self.actions
            .get_or_create(&ActionLabels { action, result })
            .inc();
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
    fn exposition_names_every_metric_with_the_prefix() {
        let m = Metrics::default();
        m.prepares
            .get_or_create(&PrepareLabels {
                kind: "veth",
                result: "ok",
            })
            .inc();
        m.action("remove_orphan", "ok");
        m.prepare_seconds.observe(0.004);
        m.lan_namespaces.set(3);
        let text = encode(&m.registry());
        for line in [
            "k8slan_agent_spoke_prepares_total{kind=\"veth\",result=\"ok\"} 1",
            "k8slan_agent_lan_actions_total{action=\"remove_orphan\",result=\"ok\"} 1",
            "k8slan_agent_lan_namespaces 3",
            "k8slan_agent_spoke_prepare_seconds_count 1",
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
    }
}
