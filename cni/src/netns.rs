//! Opening network namespaces by path, with checks that the path really is one.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;

use nix::sys::statfs::{NSFS_MAGIC, fstatfs};

/// An open network namespace.
#[derive(Debug)]
pub struct Netns {
    fd: OwnedFd,
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
        "{path:?} is not a network namespace ({why}); pass the path of the pod's network namespace"
    )]
    NotNetns { path: String, why: String },
    #[error("cannot open network namespace {path:?}: {source}")]
    Open { path: String, source: io::Error },
}

// NS_GET_NSTYPE: _IO(0xb7, 0x3), answers the CLONE_NEW* type of a namespace file.
nix::ioctl_none!(ns_get_nstype, 0xb7, 0x3);

impl Netns {
    /// Opens `path` and checks that it is a network namespace (nsfs, type CLONE_NEWNET).
    pub fn open(path: &str) -> Result<Netns, NetnsError> {
        let file = File::open(Path::new(path)).map_err(|source| match source.kind() {
            io::ErrorKind::NotFound => NetnsError::Missing {
                path: path.to_owned(),
            },
            _ => NetnsError::Open {
                path: path.to_owned(),
                source,
            },
        })?;
        let fd: OwnedFd = file.into();
        let not_netns = |why: String| NetnsError::NotNetns {
            path: path.to_owned(),
            why,
        };
        let fs = fstatfs(&fd).map_err(|e| not_netns(format!("statfs failed: {e}")))?;
        if fs.filesystem_type() != NSFS_MAGIC {
            return Err(not_netns("not a namespace file".into()));
        }
        // SAFETY: the ioctl takes no argument and only reads the namespace type of a valid fd.
        let kind = unsafe { ns_get_nstype(fd.as_raw_fd()) }
            .map_err(|e| not_netns(format!("NS_GET_NSTYPE failed: {e}")))?;
        if kind != libc_clone_newnet() {
            return Err(not_netns(format!(
                "namespace type {kind:#x} is not a network namespace"
            )));
        }
        Ok(Netns {
            fd,
            path: path.to_owned(),
        })
    }

    /// The network namespace of the calling thread (the node's, for a CNI plugin).
    pub fn current() -> Result<Netns, NetnsError> {
        Self::open("/proc/thread-self/ns/net")
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

fn libc_clone_newnet() -> i32 {
    nix::sched::CloneFlags::CLONE_NEWNET.bits()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_non_namespaces() {
        assert!(matches!(
            Netns::open("/nonexistent/k8slan/ns"),
            Err(NetnsError::Missing { .. })
        ));
        assert!(matches!(
            Netns::open("/proc/self/status"),
            Err(NetnsError::NotNetns { .. })
        ));
        // A namespace of another type is refused too.
        assert!(matches!(
            Netns::open("/proc/self/ns/uts"),
            Err(NetnsError::NotNetns { .. })
        ));
        assert!(Netns::current().is_ok());
    }
}
