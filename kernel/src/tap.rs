//! Device numbers, a macvtap's tap device number, and a directory of tap device nodes.
//!
//! The agent makes `<dev-dir>/tap-<spoke>` with the macvtap's tap device number at `Allocate`;
//! the VM plugin re-points it at `ADD` when moving the macvtap changed the number. Both go
//! through [`TapDir`]: the directory is opened once with `O_DIRECTORY|O_NOFOLLOW`, every entry is
//! looked at and changed with `*at()` calls that never follow a symlink, and a node is replaced
//! by making a fresh one under a temporary name and renaming it over the old (so the path never
//! misses and never points anywhere else).

use std::fmt;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use nix::dir::Dir;
use nix::fcntl::{AT_FDCWD, AtFlags, OFlag, openat, renameat};
use nix::sys::stat::{
    FchmodatFlags, FileStat, Mode, SFlag, fchmodat, fstatat, major, makedev, minor, mknodat,
};
use nix::unistd::{Gid, Uid, UnlinkatFlags, fchownat, unlinkat};

use crate::name;

/// `MAJOR:MINOR` of a character device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DevNum {
    pub major: u32,
    pub minor: u32,
}

impl DevNum {
    fn of(st: &FileStat) -> DevNum {
        // Linux device numbers are 12 bits of major and 20 of minor: both fit.
        DevNum {
            major: major(st.st_rdev) as u32,
            minor: minor(st.st_rdev) as u32,
        }
    }

    fn dev_t(self) -> nix::libc::dev_t {
        makedev(u64::from(self.major), u64::from(self.minor))
    }
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
        let num = |x: &str| x.parse::<u32>().map_err(|e| format!("{x:?}: {e}"));
        Ok(DevNum {
            major: num(ma)?,
            minor: num(mi)?,
        })
    }
}

/// Owner of a tap device node, `UID:GID`. The container runtime gives the node inside the
/// container the host node's owner, so a VM's QEMU that runs as an unprivileged user (KubeVirt's
/// qemu, 107:107) can open the tap only when the host node is its. The directory holding the
/// nodes is 0700 root, so no user of the node itself reaches them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NodeOwner {
    pub uid: u32,
    pub gid: u32,
}

impl NodeOwner {
    /// root:root.
    pub const ROOT: NodeOwner = NodeOwner { uid: 0, gid: 0 };
    /// KubeVirt's qemu user and group (non-root VMs, the default since KubeVirt 1.0).
    pub const QEMU: NodeOwner = NodeOwner { uid: 107, gid: 107 };

    fn of(st: &FileStat) -> NodeOwner {
        NodeOwner {
            uid: st.st_uid,
            gid: st.st_gid,
        }
    }
}

impl fmt::Display for NodeOwner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.uid, self.gid)
    }
}

impl FromStr for NodeOwner {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (u, g) = s
            .split_once(':')
            .ok_or_else(|| format!("{s:?} is not UID:GID (numbers, e.g. 107:107)"))?;
        let num = |x: &str| {
            x.parse::<u32>()
                .map_err(|e| format!("{x:?} in {s:?} is not a numeric id: {e}"))
        };
        Ok(NodeOwner {
            uid: num(u)?,
            gid: num(g)?,
        })
    }
}

/// A tap device node as found or wanted: its device number and owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TapNode {
    pub dev: DevNum,
    pub owner: NodeOwner,
}

/// A failed tap operation, naming the file or link.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error(transparent)]
    Name(#[from] name::NameError),
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("{} exists but is not a character device (it is {what}); it is left alone", path.display())]
    NotDevice { path: PathBuf, what: &'static str },
    #[error("{}: {why}", path.display())]
    Invalid { path: PathBuf, why: String },
}

impl TapError {
    fn io(path: &Path, source: impl Into<io::Error>) -> TapError {
        TapError::Io {
            path: path.to_owned(),
            source: source.into(),
        }
    }

    /// The errno behind the failure, when there is one.
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            TapError::Io { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

/// The tap device number of macvtap `link` as the calling thread's sysfs shows it: from
/// `macvtap/tap<index>/dev` when the ifindex is known, else from the one `tap*` entry there.
/// `None` when the link has no tap (it is not a macvtap, or it is gone).
pub fn sysfs_devnum(link: &str, index: Option<u32>) -> Result<Option<DevNum>, TapError> {
    name::link_name(link)?;
    let dir = PathBuf::from(format!("/sys/class/net/{link}/macvtap"));
    let tap = match index {
        Some(i) => format!("tap{i}"),
        None => match first_tap(&dir)? {
            Some(t) => t,
            None => return Ok(None),
        },
    };
    let path = dir.join(tap).join("dev");
    match std::fs::read_to_string(&path) {
        Ok(text) => text.parse().map(Some).map_err(|why| TapError::Invalid {
            path: path.clone(),
            why,
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(TapError::io(&path, e)),
    }
}

fn first_tap(dir: &Path) -> Result<Option<String>, TapError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(TapError::io(dir, e)),
    };
    Ok(entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().into_string().ok())
        .find(|n| n.starts_with("tap")))
}

/// A node-private directory of tap device nodes (see the module docs).
#[derive(Debug)]
pub struct TapDir {
    fd: OwnedFd,
    path: PathBuf,
}

impl TapDir {
    /// Opens `path` (never through a symlink in its last component); with `create`, makes it
    /// first (mode 0700 for new directories). `None`: it does not exist and `create` is off.
    pub fn open(path: &Path, create: bool) -> Result<Option<TapDir>, TapError> {
        if create {
            std::fs::create_dir_all(path).map_err(|e| TapError::io(path, e))?;
        }
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        match openat(AT_FDCWD, path, flags, Mode::empty()) {
            Ok(fd) => Ok(Some(TapDir {
                fd,
                path: path.to_owned(),
            })),
            Err(nix::Error::ENOENT) if !create => Ok(None),
            Err(nix::Error::ELOOP) | Err(nix::Error::ENOTDIR) => Err(TapError::Invalid {
                path: path.to_owned(),
                why: "is a symlink or not a directory; the tap device directory must be a real directory".into(),
            }),
            Err(e) => Err(TapError::io(path, e)),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn stat(&self, file: &str) -> Result<Option<FileStat>, TapError> {
        name::file_name(file)?;
        match fstatat(self.fd.as_fd(), file, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => Ok(Some(st)),
            Err(nix::Error::ENOENT) => Ok(None),
            Err(e) => Err(TapError::io(&self.path.join(file), e)),
        }
    }

    /// The device number of node `file`, `None` when there is none; anything else there
    /// (a symlink, a regular file, ...) is an error.
    pub fn node(&self, file: &str) -> Result<Option<DevNum>, TapError> {
        Ok(self.entry(file)?.map(|n| n.dev))
    }

    /// Node `file` with its owner, `None` when there is none; anything else there is an error.
    pub fn entry(&self, file: &str) -> Result<Option<TapNode>, TapError> {
        match self.stat(file)? {
            None => Ok(None),
            Some(st) if is_char_device(&st) => Ok(Some(TapNode {
                dev: DevNum::of(&st),
                owner: NodeOwner::of(&st),
            })),
            Some(st) => Err(TapError::NotDevice {
                path: self.path.join(file),
                what: kind_of(&st),
            }),
        }
    }

    /// Makes (or atomically replaces) character device node `file` with `dev`, `mode` and
    /// `owner` (set before the node takes the name). Whatever else is at `file` (not a character
    /// device) is refused and left alone.
    pub fn make(
        &self,
        file: &str,
        dev: DevNum,
        mode: u32,
        owner: NodeOwner,
    ) -> Result<(), TapError> {
        if let Some(st) = self.stat(file)?
            && !is_char_device(&st)
        {
            return Err(TapError::NotDevice {
                path: self.path.join(file),
                what: kind_of(&st),
            });
        }
        let tmp = format!(".{file}.new");
        name::file_name(&tmp)?;
        let tmp_path = self.path.join(&tmp);
        match unlinkat(self.fd.as_fd(), tmp.as_str(), UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(nix::Error::ENOENT) => {}
            Err(e) => return Err(TapError::io(&tmp_path, e)),
        }
        mknodat(
            self.fd.as_fd(),
            tmp.as_str(),
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(mode & 0o7777),
            dev.dev_t(),
        )
        .map_err(|e| TapError::io(&tmp_path, e))?;
        let (uid, gid) = (Uid::from_raw(owner.uid), Gid::from_raw(owner.gid));
        if let Err(e) = fchownat(
            self.fd.as_fd(),
            tmp.as_str(),
            Some(uid),
            Some(gid),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        ) {
            let _ = unlinkat(self.fd.as_fd(), tmp.as_str(), UnlinkatFlags::NoRemoveDir);
            return Err(TapError::io(&tmp_path, e));
        }
        // mknod applies the umask: set the mode itself (the fresh node is ours; nothing to follow).
        let mode = Mode::from_bits_truncate(mode & 0o7777);
        if let Err(e) = fchmodat(
            self.fd.as_fd(),
            tmp.as_str(),
            mode,
            FchmodatFlags::FollowSymlink,
        ) {
            let _ = unlinkat(self.fd.as_fd(), tmp.as_str(), UnlinkatFlags::NoRemoveDir);
            return Err(TapError::io(&tmp_path, e));
        }
        renameat(self.fd.as_fd(), tmp.as_str(), self.fd.as_fd(), file).map_err(|e| {
            let _ = unlinkat(self.fd.as_fd(), tmp.as_str(), UnlinkatFlags::NoRemoveDir);
            TapError::io(&self.path.join(file), e)
        })
    }

    /// Removes character device node `file`; absent is fine, anything else is refused.
    pub fn remove(&self, file: &str) -> Result<(), TapError> {
        if self.node(file)?.is_none() {
            return Ok(());
        }
        match unlinkat(self.fd.as_fd(), file, UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(nix::Error::ENOENT) => Ok(()),
            Err(e) => Err(TapError::io(&self.path.join(file), e)),
        }
    }

    /// Names of the entries, sorted (`.` and `..` left out).
    pub fn names(&self) -> Result<Vec<String>, TapError> {
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
        let mut dir = Dir::openat(self.fd.as_fd(), ".", flags, Mode::empty())
            .map_err(|e| TapError::io(&self.path, e))?;
        let mut names: Vec<String> = dir
            .iter()
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().to_str().ok().map(str::to_owned))
            .filter(|n| n != "." && n != "..")
            .collect();
        names.sort();
        Ok(names)
    }

    /// Re-points every character device node carrying `old` to `new`, keeping its mode and
    /// owner.
    /// Returns the names changed.
    pub fn repoint(&self, old: DevNum, new: DevNum) -> Result<Vec<String>, TapError> {
        let mut changed = Vec::new();
        for file in self.names()? {
            if file.starts_with('.') {
                continue;
            }
            let Some(st) = self.stat(&file)? else {
                continue;
            };
            if !is_char_device(&st) || DevNum::of(&st) != old {
                continue;
            }
            self.make(&file, new, st.st_mode, NodeOwner::of(&st))?;
            changed.push(file);
        }
        Ok(changed)
    }
}

fn is_char_device(st: &FileStat) -> bool {
    st.st_mode & SFlag::S_IFMT.bits() == SFlag::S_IFCHR.bits()
}

fn kind_of(st: &FileStat) -> &'static str {
    match SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) {
        SFlag::S_IFLNK => "a symlink",
        SFlag::S_IFREG => "a regular file",
        SFlag::S_IFDIR => "a directory",
        SFlag::S_IFIFO => "a FIFO",
        SFlag::S_IFSOCK => "a socket",
        SFlag::S_IFBLK => "a block device",
        _ => "an unknown kind of file",
    }
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
        for bad in ["246", "a:1", "1:-1", "99999999999:1"] {
            assert!(bad.parse::<DevNum>().is_err(), "{bad}");
        }
    }

    #[test]
    fn link_names_that_would_leave_sysfs_are_refused() {
        for bad in ["", "..", "a/b"] {
            assert!(sysfs_devnum(bad, Some(1)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn entries_that_are_not_device_nodes_are_refused_and_left_alone() {
        let path = std::env::temp_dir().join(format!("k8slan-tapdir-{}", std::process::id()));
        let dir = TapDir::open(&path, true).unwrap().unwrap();
        std::fs::write(path.join("tap-file"), "x").unwrap();
        std::os::unix::fs::symlink("/dev/null", path.join("tap-link")).unwrap();
        for f in ["tap-file", "tap-link"] {
            assert!(
                matches!(dir.node(f), Err(TapError::NotDevice { .. })),
                "{f}"
            );
            assert!(dir.remove(f).is_err(), "{f}");
            let null = DevNum { major: 1, minor: 3 };
            assert!(dir.make(f, null, 0o600, NodeOwner::ROOT).is_err());
        }
        assert_eq!(std::fs::read_to_string(path.join("tap-file")).unwrap(), "x");
        assert!(path.join("tap-link").is_symlink());
        assert_eq!(dir.node("absent").unwrap(), None);
        assert!(dir.node("../etc").is_err());
        assert_eq!(dir.names().unwrap(), vec!["tap-file", "tap-link"]);
        std::fs::remove_dir_all(&path).unwrap();
        // A symlink as the directory itself is refused.
        let link = std::env::temp_dir().join(format!("k8slan-tapdir-l{}", std::process::id()));
        std::os::unix::fs::symlink("/dev", &link).unwrap();
        assert!(TapDir::open(&link, false).is_err());
        std::fs::remove_file(&link).unwrap();
    }

    #[test]
    fn owners_parse_as_numeric_uid_and_gid() {
        assert_eq!("107:107".parse::<NodeOwner>(), Ok(NodeOwner::QEMU));
        assert_eq!(NodeOwner { uid: 0, gid: 5 }.to_string(), "0:5");
        for bad in [
            "",
            "107",
            "qemu:qemu",
            "107:",
            "-1:0",
            "1:2:3",
            "4294967296:0",
        ] {
            let err = bad.parse::<NodeOwner>().unwrap_err();
            assert!(
                err.contains("UID:GID") || err.contains("numeric id"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    #[ignore = "privileged"]
    fn nodes_get_their_owner_and_a_repoint_keeps_it() {
        let path = std::env::temp_dir().join(format!("k8slan-tapown-{}", std::process::id()));
        let dir = TapDir::open(&path, true).unwrap().unwrap();
        let (null, zero) = (DevNum { major: 1, minor: 3 }, DevNum { major: 1, minor: 5 });
        dir.make("tap-vm", null, 0o660, NodeOwner::QEMU).unwrap();
        let want = TapNode {
            dev: null,
            owner: NodeOwner::QEMU,
        };
        assert_eq!(dir.entry("tap-vm").unwrap(), Some(want));
        assert_eq!(dir.repoint(null, zero).unwrap(), vec!["tap-vm"]);
        let got = dir.entry("tap-vm").unwrap().unwrap();
        assert_eq!(
            got,
            TapNode {
                dev: zero,
                owner: NodeOwner::QEMU
            }
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path.join("tap-vm"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o660);
        std::fs::remove_dir_all(&path).unwrap();
    }
}
