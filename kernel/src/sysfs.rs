//! A sysfs that shows the calling thread's network namespace.
//!
//! `/sys/class/net` lists the links of the network namespace sysfs was *mounted* in, not of the
//! reading thread's. A thread that entered another namespace therefore mounts its own sysfs in a
//! private mount namespace: nothing becomes visible to the rest of the process or the node.

use nix::mount::{MsFlags, mount};
use nix::sched::{CloneFlags, unshare};

/// Why the private sysfs could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("cannot {step} for a private sysfs: {source}")]
pub struct SysfsError {
    pub step: &'static str,
    pub source: nix::Error,
}

/// Gives the calling thread a private mount namespace (mounts made slave, so nothing propagates
/// back to the node) with a fresh sysfs at `/sys`, which then shows the links of the thread's
/// network namespace.
pub fn mount_private() -> Result<(), SysfsError> {
    let step = |step| move |source| SysfsError { step, source };
    unshare(CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_FS)
        .map_err(step("get a private mount namespace"))?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_SLAVE,
        None::<&str>,
    )
    .map_err(step("make the mounts private"))?;
    mount(
        Some("sysfs"),
        "/sys",
        Some("sysfs"),
        MsFlags::empty(),
        None::<&str>,
    )
    .map_err(step("mount sysfs"))
}
