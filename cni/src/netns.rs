//! The pod's network namespace (`CNI_NETNS`), opened through the kernel layer and checked.
//!
//! [`Netns::open`] refuses at once, without blocking and before anything is moved, whatever is
//! not a pod's network namespace: a FIFO (opening one for reading would hang the plugin), a
//! directory, a regular file, a dangling symlink, a namespace of another type, and the node's
//! own network namespace (the plugin's, or PID 1's), in which "moving" the prepared link would
//! only rename it in place. A symlink to a namespace (as `/proc/<pid>/ns/net` is) is followed.

use std::os::fd::BorrowedFd;

use k8slan_kernel::{NetNs, NsError};

/// An open network namespace.
#[derive(Debug)]
pub struct Netns {
    inner: NetNs,
    path: String,
}

/// Why a namespace path cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error(
        "network namespace {path:?} does not exist (the pod sandbox is gone or the path is wrong)"
    )]
    Missing { path: String },
    #[error(
        "{path:?} cannot be the pod's network namespace: {why}; pass the path of the pod's network namespace"
    )]
    NotNetns { path: String, why: String },
    #[error("cannot open network namespace {path:?}: {source}")]
    Open {
        path: String,
        source: std::io::Error,
    },
}

impl Netns {
    /// Opens the pod's namespace at `path` and checks that it is a network namespace other
    /// than the node's own.
    pub fn open(path: &str) -> Result<Netns, NetnsError> {
        let ns = Self::open_any(path)?;
        if ns.inner.is_node_own() {
            return Err(NetnsError::NotNetns {
                path: path.to_owned(),
                why: "it is the node's own network namespace".into(),
            });
        }
        Ok(ns)
    }

    fn open_any(path: &str) -> Result<Netns, NetnsError> {
        let inner = NetNs::open(path).map_err(|e| match e {
            NsError::Missing { .. } => NetnsError::Missing {
                path: path.to_owned(),
            },
            NsError::NotNetns { found, .. } => NetnsError::NotNetns {
                path: path.to_owned(),
                why: format!("it is {found}, not a network namespace"),
            },
            NsError::Open { source, .. } => NetnsError::Open {
                path: path.to_owned(),
                source,
            },
            other => NetnsError::Open {
                path: path.to_owned(),
                source: std::io::Error::other(other.to_string()),
            },
        })?;
        Ok(Netns {
            inner,
            path: path.to_owned(),
        })
    }

    /// The network namespace of the calling thread (the node's, for a CNI plugin).
    pub fn current() -> Result<Netns, NetnsError> {
        Self::open_any("/proc/thread-self/ns/net")
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.inner.fd()
    }

    /// The kernel layer's handle (to run code inside the namespace).
    pub fn inner(&self) -> &NetNs {
        &self.inner
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_non_namespaces_and_the_nodes_own() {
        assert!(matches!(
            Netns::open("/nonexistent/k8slan/ns"),
            Err(NetnsError::Missing { .. })
        ));
        for (path, says) in [
            ("/proc/self/status", "a regular file"),
            ("/proc/self/ns/uts", "a uts namespace"),
            ("/", "a directory"),
            ("/proc/self/ns/net", "the node's own"),
            ("/proc/thread-self/ns/net", "the node's own"),
        ] {
            match Netns::open(path) {
                Err(e @ NetnsError::NotNetns { .. }) => {
                    assert!(e.to_string().contains(says), "{path}: {e}")
                }
                other => panic!("{path}: {other:?}"),
            }
        }
        assert!(Netns::current().is_ok());
    }
}
