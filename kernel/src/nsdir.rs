//! A directory of network namespace mounts that one owner keeps (the agent's netns directory).
//!
//! Anyone who can write into the directory can put anything there: a symlink to the node's own
//! namespace, a bind mount of some other namespace, a regular file, a FIFO. [`NsDir`] therefore
//! opens every entry relative to the directory with `O_NOFOLLOW` ([`NsDir::entries`]); what is
//! not a network namespace is reported as [`NsEntry::Foreign`] and never unmounted or removed.
//! Which namespaces are the owner's is the owner's decision (k8slan marks its own, see
//! `netagent::netns`): [`NsDir::remove`] only unmounts an entry that still is the namespace the
//! caller verified. [`NsDir::create`] is race-free against another writer: the mount point is
//! created exclusively (`O_CREAT|O_EXCL|O_NOFOLLOW`), the namespace is bind-mounted onto that very
//! file (through its descriptor, never through a path a writer could swap for a symlink), and the
//! entry is verified after mounting.
//!
//! The directory can never be the container runtime's (`/run/netns`, `/var/run/netns`, also
//! through symlinks, `..` or a bind mount of it): [`NsDir::open`] refuses it, naming the setting.

use std::fs;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use nix::dir::Dir;
use nix::fcntl::{AT_FDCWD, AtFlags, OFlag, openat};
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, unshare};
use nix::sys::stat::{Mode, SFlag, fstatat};
use nix::unistd::{UnlinkatFlags, geteuid, unlinkat};

use crate::name;
use crate::netns::{NetNs, NsError, NsId};

/// The container runtime's namespace directories, which k8slan must never manage.
pub const RUNTIME_NETNS_DIRS: [&str; 2] = ["/run/netns", "/var/run/netns"];

/// Mode of the mount points k8slan creates; an unmounted, empty, 0400 regular file owned by this
/// process's user is a leftover mount point of ours (a crash between creating and mounting).
const MOUNT_POINT_MODE: u32 = 0o400;

/// One entry of the directory.
#[derive(Debug)]
pub enum NsEntry {
    /// A network namespace mounted at `<dir>/<name>` (not yet known to be the owner's).
    Netns { name: String, ns: NetNs },
    /// Anything else: reported, never touched.
    Foreign { name: String, what: String },
}

impl NsEntry {
    pub fn name(&self) -> &str {
        match self {
            NsEntry::Netns { name, .. } | NsEntry::Foreign { name, .. } => name,
        }
    }
}

/// Why a directory operation failed.
#[derive(Debug, thiserror::Error)]
pub enum NsDirError {
    #[error(
        "{flag} {} is the container runtime's network namespace directory {runtime}: k8slan keeps its LAN namespaces in a directory of its own (e.g. /run/k8slan/netns); choose another {flag}",
        path.display()
    )]
    RuntimeDir {
        flag: String,
        path: PathBuf,
        runtime: String,
    },
    #[error("{flag} {}: {why}", path.display())]
    BadDir {
        flag: String,
        path: PathBuf,
        why: String,
    },
    #[error(transparent)]
    Name(#[from] name::NameError),
    #[error("cannot {what} {}: {source}", path.display())]
    Sys {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error(transparent)]
    Ns(#[from] NsError),
    #[error("{} is taken by {what}, which k8slan did not create; it is left alone (remove it by hand if it is stale)", path.display())]
    Foreign { path: PathBuf, what: String },
    #[error("{} changed while k8slan was mounting a namespace there (another writer in the directory?); it is left alone", path.display())]
    Raced { path: PathBuf },
}

fn sys<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(nix::Error) -> NsDirError + 'a {
    move |e| NsDirError::Sys {
        what,
        path: path.to_owned(),
        source: e.into(),
    }
}

/// `path` without `.`, `..` and repeated separators (lexically, as a human reads it).
fn lexical(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

/// Refuses a directory that is, or lies below, the container runtime's namespace directory,
/// however it is spelled (symlinks, `..`, a bind mount of it).
pub fn check_not_runtime_dir(path: &Path, flag: &str) -> Result<(), NsDirError> {
    if !path.is_absolute() {
        return Err(NsDirError::BadDir {
            flag: flag.into(),
            path: path.to_owned(),
            why: "must be an absolute path".into(),
        });
    }
    let mut spellings = vec![lexical(path)];
    spellings.extend(fs::canonicalize(path).ok());
    let here = fs::metadata(path).ok().map(|m| (m.dev(), m.ino()));
    for runtime in RUNTIME_NETNS_DIRS {
        let mut theirs = vec![PathBuf::from(runtime)];
        theirs.extend(fs::canonicalize(runtime).ok());
        let below = spellings
            .iter()
            .any(|s| theirs.iter().any(|t| s.starts_with(t)));
        let same_dir =
            here.is_some() && fs::metadata(runtime).ok().map(|m| (m.dev(), m.ino())) == here;
        if below || same_dir {
            return Err(NsDirError::RuntimeDir {
                flag: flag.into(),
                path: path.to_owned(),
                runtime: runtime.into(),
            });
        }
    }
    Ok(())
}

/// A directory of namespace mounts (see the module docs).
#[derive(Debug, Clone)]
pub struct NsDir {
    path: PathBuf,
    flag: String,
}

impl NsDir {
    /// Checks `path` (the setting `flag`, for messages) and makes it exist. The directory itself
    /// must not be a symlink.
    pub fn open(path: &Path, flag: &str) -> Result<NsDir, NsDirError> {
        check_not_runtime_dir(path, flag)?;
        fs::create_dir_all(path).map_err(|e| NsDirError::BadDir {
            flag: flag.into(),
            path: path.to_owned(),
            why: format!("cannot create it: {e}"),
        })?;
        let dir = NsDir {
            path: path.to_owned(),
            flag: flag.into(),
        };
        dir.fd()?;
        Ok(dir)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The directory, opened afresh (a bind mount onto itself changes what the path shows).
    fn fd(&self) -> Result<OwnedFd, NsDirError> {
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        openat(AT_FDCWD, &self.path, flags, Mode::empty()).map_err(|e| match e {
            nix::Error::ELOOP | nix::Error::ENOTDIR => NsDirError::BadDir {
                flag: self.flag.clone(),
                path: self.path.clone(),
                why: "is a symlink or not a directory; it must be a real directory".into(),
            },
            e => sys("open", &self.path)(e),
        })
    }

    /// Makes the directory a shared mount point, as `ip netns add` does, so that namespace
    /// mounts below it propagate into mount namespaces that bind it with rslave/rshared.
    pub fn make_shared(&self) -> Result<(), NsDirError> {
        self.fd()?;
        let shared = || {
            mount(
                None::<&str>,
                &self.path,
                None::<&str>,
                MsFlags::MS_SHARED | MsFlags::MS_REC,
                None::<&str>,
            )
        };
        let what = "make a shared mount point of";
        match shared() {
            Ok(()) => Ok(()),
            // Not a mount point yet: bind it onto itself, then share it.
            Err(nix::Error::EINVAL) => mount(
                Some(&self.path),
                &self.path,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .and_then(|()| shared())
            .map_err(sys(what, &self.path)),
            Err(e) => Err(sys(what, &self.path)(e)),
        }
    }

    /// Every entry, each opened without following symlinks and classified; sorted by name.
    pub fn entries(&self) -> Result<Vec<NsEntry>, NsDirError> {
        let fd = self.fd()?;
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
        let mut dir =
            Dir::openat(fd.as_fd(), ".", flags, Mode::empty()).map_err(sys("list", &self.path))?;
        let mut names: Vec<String> = Vec::new();
        let mut entries = Vec::new();
        for e in dir.iter().filter_map(Result::ok) {
            match e.file_name().to_str() {
                Ok("." | "..") => {}
                Ok(n) => names.push(n.to_owned()),
                Err(_) => entries.push(NsEntry::Foreign {
                    name: e.file_name().to_string_lossy().into_owned(),
                    what: "an entry whose name is not UTF-8".into(),
                }),
            }
        }
        names.sort();
        for name in names {
            match self.open_at(&fd, &name) {
                Ok(ns) => entries.push(NsEntry::Netns { name, ns }),
                // Gone since it was listed.
                Err(NsError::Missing { .. }) => {}
                Err(e) => entries.push(NsEntry::Foreign {
                    what: what_is(&e),
                    name,
                }),
            }
        }
        Ok(entries)
    }

    fn open_at(&self, fd: &OwnedFd, name: &str) -> Result<NetNs, NsError> {
        let shown = self.path.join(name);
        NetNs::open_at(fd.as_fd(), Path::new(name), &shown, false)
    }

    /// The network namespace mounted at entry `name` (never through a symlink).
    pub fn open_entry(&self, name: &str) -> Result<NetNs, NsDirError> {
        name::file_name(name)?;
        let fd = self.fd()?;
        Ok(self.open_at(&fd, name)?)
    }

    /// Creates a new network namespace, runs `mark` inside it (on the creating thread, before
    /// anything can see it) and bind-mounts it at entry `name`, which must not exist (a leftover
    /// mount point of ours is replaced). Returns the mounted namespace; on failure nothing of it
    /// is left behind.
    pub fn create<F>(&self, name: &str, mark: F) -> Result<NetNs, NsDirError>
    where
        F: FnOnce() -> Result<(), String> + Send,
    {
        name::file_name(name)?;
        let dir = self.fd()?;
        let path = self.path.join(name);
        self.remove_leftover(&dir, name)?;
        let flags = OFlag::O_RDONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW;
        let mount_point = match openat(
            dir.as_fd(),
            name,
            flags | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(MOUNT_POINT_MODE),
        ) {
            Ok(fd) => fd,
            Err(nix::Error::EEXIST) => {
                return Err(NsDirError::Foreign {
                    what: self.describe(&dir, name),
                    path,
                });
            }
            Err(e) => return Err(sys("create the mount point", &path)(e)),
        };
        let made = mount_new_netns(&mount_point, &path, mark);
        let made = made.and_then(|id| self.verify(&dir, name, id));
        match made {
            Ok(ns) => Ok(ns),
            Err(e) => {
                // Only our own mount point, still empty and unmounted, is removed.
                let _ = self.remove_leftover(&dir, name);
                Err(e)
            }
        }
    }

    fn verify(&self, dir: &OwnedFd, name: &str, id: NsId) -> Result<NetNs, NsDirError> {
        let path = self.path.join(name);
        match self.open_at(dir, name) {
            Ok(ns) if ns.id() == id => Ok(ns),
            _ => Err(NsDirError::Raced { path }),
        }
    }

    /// What entry `name` is, for messages.
    fn describe(&self, dir: &OwnedFd, name: &str) -> String {
        match self.open_at(dir, name) {
            Ok(_) => "a network namespace".into(),
            Err(e) => what_is(&e),
        }
    }

    /// Removes entry `name` if it is a leftover mount point of ours (see [`MOUNT_POINT_MODE`]).
    fn remove_leftover(&self, dir: &OwnedFd, name: &str) -> Result<bool, NsDirError> {
        let Ok(st) = fstatat(dir.as_fd(), name, AtFlags::AT_SYMLINK_NOFOLLOW) else {
            return Ok(false);
        };
        let regular = st.st_mode & SFlag::S_IFMT.bits() == SFlag::S_IFREG.bits();
        let ours = regular
            && st.st_size == 0
            && st.st_mode & 0o7777 == MOUNT_POINT_MODE
            && st.st_uid == geteuid().as_raw()
            && st.st_nlink == 1;
        if !ours || self.open_at(dir, name).is_ok() {
            return Ok(false);
        }
        unlinkat(dir.as_fd(), name, UnlinkatFlags::NoRemoveDir).map_err(sys(
            "remove the leftover mount point",
            &self.path.join(name),
        ))?;
        Ok(true)
    }

    /// Unmounts and removes entry `name`, but only if it is still the namespace `expect` (which
    /// the caller verified is its own). Absent is fine; a leftover mount point of ours is
    /// removed; anything else is refused ([`NsDirError::Foreign`]) and left alone.
    pub fn remove(&self, name: &str, expect: Option<NsId>) -> Result<(), NsDirError> {
        name::file_name(name)?;
        let dir = self.fd()?;
        let path = self.path.join(name);
        match self.open_at(&dir, name) {
            Err(NsError::Missing { .. }) => return Ok(()),
            Err(_) if self.remove_leftover(&dir, name)? => return Ok(()),
            Err(e) => {
                return Err(NsDirError::Foreign {
                    path,
                    what: what_is(&e),
                });
            }
            Ok(ns) if expect.is_some_and(|id| id != ns.id()) => {
                return Err(NsDirError::Foreign {
                    path,
                    what: "another network namespace than the one k8slan verified".into(),
                });
            }
            Ok(_) => {}
        }
        umount2(&path, MntFlags::MNT_DETACH | MntFlags::UMOUNT_NOFOLLOW)
            .map_err(sys("unmount", &path))?;
        self.remove_leftover(&dir, name)?;
        Ok(())
    }
}

fn what_is(e: &NsError) -> String {
    match e {
        NsError::NotNetns { found, .. } => found.to_string(),
        other => format!("an entry that cannot be opened ({other})"),
    }
}

/// On a fresh thread: unshare a new network namespace, run `mark` in it, and bind-mount it onto
/// the file `mount_point` (through `/proc/self/fd`, so no path is looked up again). Returns the
/// namespace's identity.
fn mount_new_netns<F>(mount_point: &OwnedFd, path: &Path, mark: F) -> Result<NsId, NsDirError>
where
    F: FnOnce() -> Result<(), String> + Send,
{
    let target = format!("/proc/self/fd/{}", mount_point.as_raw_fd());
    std::thread::scope(|s| {
        let handle = std::thread::Builder::new()
            .name("k8slan-netns-new".into())
            .spawn_scoped(s, || {
                unshare(CloneFlags::CLONE_NEWNET)
                    .map_err(sys("unshare a new network namespace for", path))?;
                mark().map_err(|why| NsDirError::Sys {
                    what: "prepare the new network namespace for",
                    path: path.to_owned(),
                    source: io::Error::other(why),
                })?;
                let own = Path::new("/proc/thread-self/ns/net");
                let id = NsId::of_path(own).map_err(|source| NsDirError::Sys {
                    what: "identify the new network namespace for",
                    path: path.to_owned(),
                    source,
                })?;
                mount(
                    Some(own),
                    target.as_str(),
                    None::<&str>,
                    MsFlags::MS_BIND,
                    None::<&str>,
                )
                .map_err(sys("bind-mount the new network namespace at", path))?;
                Ok(id)
            })
            .map_err(|source| NsDirError::Sys {
                what: "start a thread to create",
                path: path.to_owned(),
                source,
            })?;
        handle.join().map_err(|_| NsDirError::Sys {
            what: "create (the thread panicked)",
            path: path.to_owned(),
            source: io::Error::other("panicked"),
        })?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_runtime_directories_are_refused_however_spelled() {
        for bad in [
            "/run/netns",
            "/var/run/netns",
            "/run/netns/",
            "/run//netns",
            "/run/./netns",
            "/run/k8slan/../netns",
            "/run/netns/k8slan",
        ] {
            let e = check_not_runtime_dir(Path::new(bad), "--netns-dir").unwrap_err();
            assert!(e.to_string().contains("--netns-dir"), "{bad}: {e}");
            assert!(matches!(e, NsDirError::RuntimeDir { .. }), "{bad}: {e}");
        }
        assert!(check_not_runtime_dir(Path::new("run/k8slan"), "--netns-dir").is_err());
        for good in ["/run/k8slan/netns", "/run/netnsx", "/run"] {
            assert!(
                check_not_runtime_dir(Path::new(good), "--netns-dir").is_ok(),
                "{good}"
            );
        }
    }

    #[test]
    fn a_symlink_to_the_runtime_directory_is_refused() {
        let link = std::env::temp_dir().join(format!("k8slan-nsdir-{}", std::process::id()));
        let _ = fs::remove_file(&link);
        fs::create_dir_all("/run/netns").ok();
        if !Path::new("/run/netns").is_dir() {
            return; // cannot set the scene without root
        }
        std::os::unix::fs::symlink("/run/netns", &link).unwrap();
        let e = check_not_runtime_dir(&link, "--netns-dir").unwrap_err();
        fs::remove_file(&link).unwrap();
        assert!(matches!(e, NsDirError::RuntimeDir { .. }), "{e}");
    }
}
