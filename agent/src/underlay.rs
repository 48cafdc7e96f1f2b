//! The node's underlay seen through the datapath's kernel: whether a host interface exists and
//! its addresses (for the device plugin's node report, so that other nodes can flood unicast
//! LANs to this one), and the node's uplink, the host interface carrying its InternalIP.

use std::io;
use std::net::IpAddr;
use std::sync::Arc;

use k8slan_deviceplugin::underlay::HostLinks;
use k8slan_netagent::{Datapath, Kernel, KernelError, Ns};

/// [`HostLinks`] over the datapath's kernel (the host namespace it was opened on).
pub struct DatapathLinks<K>(pub Arc<Datapath<K>>);

fn io_error(e: KernelError) -> io::Error {
    io::Error::other(e.to_string())
}

impl<K: Kernel + 'static> HostLinks for DatapathLinks<K> {
    fn exists(&self, ifname: &str) -> io::Result<bool> {
        let link = self.0.kernel().link(&Ns::Host, ifname).map_err(io_error)?;
        Ok(link.is_some())
    }

    fn addresses(&self, ifname: &str) -> io::Result<Vec<IpAddr>> {
        let kernel = self.0.kernel();
        let Some(link) = kernel.link(&Ns::Host, ifname).map_err(io_error)? else {
            return Ok(Vec::new());
        };
        let all = kernel
            .addresses(&Ns::Host, link.ifindex)
            .map_err(io_error)?;
        Ok(all.into_iter().map(|a| a.addr).collect())
    }
}

/// The host interface that carries `ip` (the node's InternalIP), if any.
pub fn uplink<K: Kernel>(kernel: &K, ip: IpAddr) -> Result<Option<String>, KernelError> {
    for link in kernel.links(&Ns::Host)? {
        if kernel
            .addresses(&Ns::Host, link.ifindex)?
            .iter()
            .any(|a| a.addr == ip)
        {
            return Ok(Some(link.name));
        }
    }
    Ok(None)
}
