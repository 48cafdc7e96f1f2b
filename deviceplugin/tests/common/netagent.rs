//! The netagent datapath behind the plugin's traits, as the agent binary wires it; shared by the
//! privileged tests and the benchmark's real-datapath mode.
#![allow(dead_code)]

use std::sync::Arc;

use async_trait::async_trait;
use k8slan_deviceplugin::underlay::HostLinks;
use k8slan_deviceplugin::{HostSide, PrepareError, SpokePreparer, SpokeRequest, TapDevice};
use k8slan_netagent::{Datapath, Kernel, Ns, RtnlKernel};

/// The netagent datapath as a `SpokePreparer` (blocking netlink work on the blocking pool).
pub struct NetagentPreparer {
    pub dp: Arc<Datapath<RtnlKernel>>,
    pub node: String,
}

#[async_trait]
impl SpokePreparer for NetagentPreparer {
    async fn prepare(&self, req: SpokeRequest<'_>) -> Result<HostSide, PrepareError> {
        let (dp, node, spec, spoke, kind) = (
            self.dp.clone(),
            self.node.clone(),
            req.spec.clone(),
            req.spoke.to_string(),
            req.kind,
        );
        let att = tokio::task::spawn_blocking(move || {
            dp.spoke_up(&spec, &node, &spoke, kind).map_err(Box::new)
        })
        .await
        .map_err(PrepareError::new)?
        .map_err(PrepareError::new)?;
        Ok(HostSide {
            link: att
                .mac
                .as_ref()
                .map_or(att.host_ifname.clone(), |m| m.macvtap.clone()),
            ifindex: att
                .mac
                .as_ref()
                .map_or(att.host_ifindex, |m| m.macvtap_ifindex),
            tap: att.mac.map(|m| TapDevice {
                host_path: m.tap_host_path,
                container_path: m.tap_container_path,
            }),
        })
    }

    async fn release(&self, req: SpokeRequest<'_>) -> Result<(), PrepareError> {
        let (dp, spec, spoke) = (self.dp.clone(), req.spec.clone(), req.spoke.to_string());
        tokio::task::spawn_blocking(move || dp.spoke_down(&spec, &spoke).map_err(Box::new))
            .await
            .map_err(PrepareError::new)?
            .map(|_| ())
            .map_err(PrepareError::new)
    }
}

/// Underlay presence seen through the datapath's own host namespace.
pub struct KernelLinks(pub Arc<Datapath<RtnlKernel>>);

impl HostLinks for KernelLinks {
    fn exists(&self, ifname: &str) -> std::io::Result<bool> {
        self.0
            .kernel()
            .link(&Ns::Host, ifname)
            .map(|l| l.is_some())
            .map_err(std::io::Error::other)
    }
}
