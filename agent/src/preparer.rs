//! The device plugin's [`SpokePreparer`] implemented with the node datapath.

use std::sync::Arc;

use async_trait::async_trait;
use k8slan_deviceplugin::{PrepareError, PreparedSpoke, SpokePreparer, SpokeRequest, TapDevice};
use k8slan_netagent::{Datapath, Kernel};

/// Prepares spokes through [`Datapath`]; every call runs on the blocking pool because the
/// datapath moves threads between network namespaces.
pub struct DatapathPreparer<K> {
    dp: Arc<Datapath<K>>,
    node: String,
}

impl<K> DatapathPreparer<K> {
    pub fn new(dp: Arc<Datapath<K>>, node: impl Into<String>) -> Self {
        Self {
            dp,
            node: node.into(),
        }
    }
}

#[async_trait]
impl<K: Kernel + 'static> SpokePreparer for DatapathPreparer<K> {
    async fn prepare(&self, req: SpokeRequest<'_>) -> Result<PreparedSpoke, PrepareError> {
        let (dp, node) = (self.dp.clone(), self.node.clone());
        let (spec, spoke, kind) = (req.spec.clone(), req.spoke.to_owned(), req.kind);
        let attached = tokio::task::spawn_blocking(move || {
            dp.spoke_up(&spec, &node, &spoke, kind)
                .map_err(PrepareError::new)
        })
        .await
        .map_err(PrepareError::new)?
        .map_err(PrepareError::new)?;
        Ok(match attached.mac {
            Some(mac) => PreparedSpoke {
                host_ifname: mac.macvtap,
                tap: Some(TapDevice {
                    host_path: mac.tap_host_path,
                    container_path: mac.tap_container_path,
                }),
            },
            None => PreparedSpoke {
                host_ifname: attached.host_ifname,
                tap: None,
            },
        })
    }

    async fn release(&self, req: SpokeRequest<'_>) -> Result<(), PrepareError> {
        let dp = self.dp.clone();
        let (spec, spoke) = (req.spec.clone(), req.spoke.to_owned());
        tokio::task::spawn_blocking(move || {
            dp.spoke_down(&spec, &spoke).map_err(PrepareError::new)
        })
        .await
        .map_err(PrepareError::new)??;
        Ok(())
    }
}
