//! The device plugin's [`SpokePreparer`] implemented with the node datapath.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use k8slan_api::SpokeKind;
use k8slan_deviceplugin::{HostSide, PrepareError, SpokePreparer, SpokeRequest, TapDevice};
use k8slan_netagent::{Datapath, Kernel};
use tokio::sync::Notify;

use crate::metrics::{Metrics, PrepareLabels};

/// Prepares spokes through [`Datapath`]; every call runs on the blocking pool because the
/// datapath blocks on netlink and the filesystem.
pub struct DatapathPreparer<K> {
    dp: Arc<Datapath<K>>,
    node: String,
    metrics: Arc<Metrics>,
    /// Woken after every prepared spoke: the first one may have made the LAN's VXLAN, which
    /// the peer loop then gives its peers at once.
    prepared: Arc<Notify>,
}

impl<K> DatapathPreparer<K> {
    pub fn new(
        dp: Arc<Datapath<K>>,
        node: impl Into<String>,
        metrics: Arc<Metrics>,
        prepared: Arc<Notify>,
    ) -> Self {
        Self {
            dp,
            node: node.into(),
            metrics,
            prepared,
        }
    }
}

fn labels<T>(kind: SpokeKind, result: &Result<T, PrepareError>) -> PrepareLabels {
    PrepareLabels {
        kind: kind.as_str(),
        result: if result.is_ok() { "ok" } else { "error" },
    }
}

/// Runs a blocking datapath call off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, PrepareError> + Send + 'static,
) -> Result<T, PrepareError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(PrepareError::new)
        .and_then(|r| r)
}

#[async_trait]
impl<K: Kernel + 'static> SpokePreparer for DatapathPreparer<K> {
    async fn prepare(&self, req: SpokeRequest<'_>) -> Result<HostSide, PrepareError> {
        let (dp, node) = (self.dp.clone(), self.node.clone());
        let (spec, spoke, kind) = (req.spec.clone(), req.spoke.to_owned(), req.kind);
        let started = Instant::now();
        let result = blocking(move || {
            dp.spoke_up(&spec, &node, &spoke, kind)
                .map_err(PrepareError::new)
        })
        .await;
        self.metrics
            .prepare_seconds
            .observe(started.elapsed().as_secs_f64());
        self.metrics
            .prepares
            .get_or_create(&labels(kind, &result))
            .inc();
        let attached = result?;
        self.prepared.notify_one();
        Ok(match attached.mac {
            Some(mac) => HostSide {
                link: mac.macvtap,
                ifindex: mac.macvtap_ifindex,
                tap: Some(TapDevice {
                    host_path: mac.tap_host_path,
                    container_path: mac.tap_container_path,
                }),
            },
            None => HostSide {
                link: attached.host_ifname,
                ifindex: attached.host_ifindex,
                tap: None,
            },
        })
    }

    async fn release(&self, req: SpokeRequest<'_>) -> Result<(), PrepareError> {
        let dp = self.dp.clone();
        let (spec, spoke) = (req.spec.clone(), req.spoke.to_owned());
        let result =
            blocking(move || dp.spoke_down(&spec, &spoke).map_err(PrepareError::new)).await;
        self.metrics
            .releases
            .get_or_create(&labels(req.kind, &result))
            .inc();
        result.map(|_| ())
    }
}
