//! Whether a LAN's underlay device exists in the node's host namespace.

use std::path::PathBuf;

use k8slan_api::validate;

/// Answers "does this interface exist in the host namespace?". Called on the blocking pool,
/// so an implementation may ask the kernel.
pub trait HostLinks: Send + Sync + 'static {
    /// `Ok(false)` only when the interface is known to be absent; an error (the lookup itself
    /// failed) keeps the previous answer, so that a hiccup never withdraws a LAN's resources.
    fn exists(&self, ifname: &str) -> std::io::Result<bool>;

    /// Every IP address of the interface (what the node floods a unicast LAN from and is
    /// reached at). The default knows none: unicast LANs then get no peers through this node.
    fn addresses(&self, _ifname: &str) -> std::io::Result<Vec<std::net::IpAddr>> {
        Ok(Vec::new())
    }
}

/// Looks interfaces up in sysfs (`<dir>/<ifname>`, default `/sys/class/net`).
#[derive(Debug, Clone)]
pub struct SysfsLinks {
    dir: PathBuf,
}

/// Default sysfs directory listing the host namespace's interfaces.
pub const DEFAULT_SYS_CLASS_NET: &str = "/sys/class/net";

impl SysfsLinks {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }
}

impl Default for SysfsLinks {
    fn default() -> Self {
        Self::new(DEFAULT_SYS_CLASS_NET)
    }
}

impl HostLinks for SysfsLinks {
    fn exists(&self, ifname: &str) -> std::io::Result<bool> {
        // A name that is no interface name (e.g. "..") must never reach the path.
        if validate::interface_name("underlay", ifname).is_err() {
            return Ok(false);
        }
        self.dir.join(ifname).try_exists()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn looks_names_up_in_the_configured_directory_and_rejects_bad_names() {
        let dir = tempfile::TempDir::new().unwrap();
        std::fs::create_dir(dir.path().join("eth1")).unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        let links = SysfsLinks::new(dir.path().join("sub"));
        // "../eth1" exists as a path but is no interface name.
        assert!(!links.exists("../eth1").unwrap());
        let links = SysfsLinks::new(dir.path());
        assert!(links.exists("eth1").unwrap());
        assert!(!links.exists("eth2").unwrap());
        assert!(!links.exists("..").unwrap());
    }
}
