//! Tap device numbers of macvtaps, and the node agent's tap device nodes.
//!
//! The device plugin hands a VM pod `<dev-dir>/tap-<spoke>`, a node made at `Allocate` with the
//! macvtap's tap device number. Moving a macvtap into another namespace unregisters and
//! re-registers it, and the kernel then gives its tap the lowest free minor number: when another
//! macvtap went away meanwhile, the number changes and the node handed to the pod opens nothing
//! (`ENODEV`). The container is created after `ADD`, so `ADD` re-points the node (see
//! [`repoint_nodes`]) and the runtime then sees the right number.

use std::fmt;
use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use nix::sys::stat::{Mode, SFlag, major, makedev, minor, mknod};

/// `MAJOR:MINOR` of a character device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DevNum {
    pub major: u64,
    pub minor: u64,
}

impl fmt::Display for DevNum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.major, self.minor)
    }
}

impl FromStr for DevNum {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (ma, mi) = s
            .trim()
            .split_once(':')
            .ok_or_else(|| format!("{s:?} is not MAJOR:MINOR"))?;
        let num = |x: &str| x.parse::<u64>().map_err(|e| format!("{x:?}: {e}"));
        Ok(DevNum {
            major: num(ma)?,
            minor: num(mi)?,
        })
    }
}

/// The tap device number of macvtap `name` (ifindex `index`) as the calling thread's sysfs
/// shows it; `None` when the link has no tap (not a macvtap).
pub fn devnum_from_sysfs(name: &str, index: u32) -> io::Result<Option<DevNum>> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{name:?} is not a link name"),
        ));
    }
    let path = PathBuf::from(format!("/sys/class/net/{name}/macvtap/tap{index}/dev"));
    match fs::read_to_string(&path) {
        Ok(text) => text.parse().map(Some).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: {e}", path.display()),
            )
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io::Error::new(e.kind(), format!("{}: {e}", path.display()))),
    }
}

/// Gives the calling thread a private mount namespace with a fresh sysfs at `/sys`, which then
/// shows the links of the thread's network namespace. Nothing is mounted outside the thread.
pub fn mount_private_sysfs() -> Result<(), String> {
    use nix::mount::{MsFlags, mount};
    use nix::sched::{CloneFlags, unshare};
    unshare(CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_FS)
        .map_err(|e| format!("cannot get a private mount namespace: {e}"))?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_SLAVE,
        None::<&str>,
    )
    .map_err(|e| format!("cannot make mounts private: {e}"))?;
    mount(
        Some("sysfs"),
        "/sys",
        Some("sysfs"),
        MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|e| format!("cannot mount the namespace's sysfs: {e}"))
}

/// Re-points every character device node in `dir` that carries `old` to `new` (a fresh node
/// renamed over the old one, so the path never misses). Returns the nodes changed; a missing
/// directory has none.
pub fn repoint_nodes(dir: &Path, old: DevNum, new: DevNum) -> io::Result<Vec<PathBuf>> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", dir.display()))),
    };
    let mut changed = Vec::new();
    for entry in entries {
        let entry = entry?;
        let path = entry.path();
        let Ok(meta) = fs::symlink_metadata(&path) else {
            continue;
        };
        let rdev = meta.rdev();
        if !meta.file_type().is_char_device()
            || (major(rdev), minor(rdev)) != (old.major, old.minor)
        {
            continue;
        }
        let name = entry.file_name();
        let tmp = dir.join(format!(".{}.repoint", name.to_string_lossy()));
        let _ = fs::remove_file(&tmp);
        mknod(
            &tmp,
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(meta.mode() & 0o7777),
            makedev(new.major, new.minor),
        )
        .map_err(|e| io::Error::other(format!("mknod {}: {e}", tmp.display())))?;
        fs::rename(&tmp, &path).map_err(|e| {
            let _ = fs::remove_file(&tmp);
            io::Error::new(
                e.kind(),
                format!("rename {} to {}: {e}", tmp.display(), path.display()),
            )
        })?;
        changed.push(path);
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devnum_parses_sysfs_text() {
        assert_eq!(
            "246:3\n".parse::<DevNum>(),
            Ok(DevNum {
                major: 246,
                minor: 3
            })
        );
        assert!("246".parse::<DevNum>().is_err());
        assert!("a:1".parse::<DevNum>().is_err());
    }

    #[test]
    fn link_names_that_would_leave_sysfs_are_refused() {
        for bad in ["", "..", "a/b"] {
            assert!(devnum_from_sysfs(bad, 1).is_err(), "{bad:?}");
        }
    }
}
