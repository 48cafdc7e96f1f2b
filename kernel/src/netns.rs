//! Network namespaces opened by path and verified, and work done inside one.
//!
//! A path handed to a root process (the CNI runtime's `CNI_NETNS`, an entry of the agent's netns
//! directory) may be anything: a FIFO (opening it for reading blocks forever), a directory, a
//! regular file, a symlink to the node's own namespace, a namespace of another type. [`NetNs`]
//! opens it with `O_PATH` first (which never blocks and has no side effect on devices), looks at
//! what it is with `fstat`/`fstatfs`, and only then opens the namespace itself and asks the
//! kernel its type (`NS_GET_NSTYPE`). Every refusal names the path and says what is there instead
//! ([`Found`]).
//!
//! `setns(2)` moves only the calling thread, so everything that must happen inside a namespace
//! runs on a dedicated OS thread: a short-lived one ([`NetNs::run`]) that enters the namespace,
//! does its work (for example opens a netlink socket, which stays bound to that namespace) and
//! exits, or a long-lived one ([`NsThread`]) with a private sysfs for repeated sysfs and sysctl
//! work in a namespace the process is not in. The caller's thread, and every other thread of the
//! process, never changes namespace.

use std::fmt;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread::JoinHandle;

use nix::fcntl::{AT_FDCWD, OFlag, openat, readlinkat};
use nix::sched::{CloneFlags, setns};
use nix::sys::stat::{Mode, SFlag, fstat};
use nix::sys::statfs::{NSFS_MAGIC, fstatfs};

/// The identity of a namespace: device and inode of its nsfs file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NsId {
    pub dev: u64,
    pub ino: u64,
}

impl NsId {
    /// The identity of the namespace behind `path` (following symlinks, as `/proc/*/ns/*` are).
    pub fn of_path(path: &Path) -> io::Result<NsId> {
        let m = std::fs::metadata(path)?;
        Ok(NsId {
            dev: m.dev(),
            ino: m.ino(),
        })
    }
}

/// What was found at a path that should have been a network namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    Fifo,
    Directory,
    RegularFile,
    Socket,
    CharDevice,
    BlockDevice,
    /// A symlink (refused where symlinks are not followed).
    Symlink {
        target: String,
    },
    /// A symlink whose target does not exist.
    DanglingSymlink {
        target: String,
    },
    /// A namespace of another type (`mnt`, `uts`, ...).
    Namespace {
        kind: &'static str,
    },
    /// A file on a namespace filesystem that the kernel would not type.
    Unknown,
}

impl fmt::Display for Found {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Found::Fifo => f.write_str("a FIFO"),
            Found::Directory => f.write_str("a directory"),
            Found::RegularFile => f.write_str("a regular file"),
            Found::Socket => f.write_str("a socket"),
            Found::CharDevice => f.write_str("a character device"),
            Found::BlockDevice => f.write_str("a block device"),
            Found::Symlink { target } => write!(f, "a symlink (to {target:?})"),
            Found::DanglingSymlink { target } => {
                write!(
                    f,
                    "a dangling symlink (to {target:?}, which does not exist)"
                )
            }
            Found::Namespace { kind } => {
                let article = if *kind == "ipc" { "an" } else { "a" };
                write!(f, "{article} {kind} namespace")
            }
            Found::Unknown => f.write_str("a namespace file of unknown type"),
        }
    }
}

/// Why a namespace could not be opened or used.
#[derive(Debug, thiserror::Error)]
pub enum NsError {
    #[error("{} does not exist", path.display())]
    Missing { path: PathBuf },
    #[error("{} is not a network namespace: it is {found}", path.display())]
    NotNetns { path: PathBuf, found: Found },
    #[error("cannot open {}: {source}", path.display())]
    Open { path: PathBuf, source: io::Error },
    #[error("cannot enter network namespace {}: setns failed: {source}", path.display())]
    Enter { path: PathBuf, source: nix::Error },
    #[error("cannot start a thread for work in network namespace {}: {source}", path.display())]
    Thread { path: PathBuf, source: io::Error },
    #[error("the thread working in network namespace {} panicked", path.display())]
    Panicked { path: PathBuf },
}

// NS_GET_NSTYPE: _IO(0xb7, 0x3), answers the CLONE_NEW* type of a namespace file.
nix::ioctl_none!(ns_get_nstype, 0xb7, 0x3);

/// An open, verified network namespace.
#[derive(Debug)]
pub struct NetNs {
    fd: OwnedFd,
    path: PathBuf,
    id: NsId,
}

impl NetNs {
    /// Opens `path`, following a symlink in its last component (as `/proc/<pid>/ns/net` is one),
    /// and verifies it is a network namespace. A dangling symlink is reported as such.
    pub fn open(path: impl AsRef<Path>) -> Result<NetNs, NsError> {
        Self::open_at(AT_FDCWD, path.as_ref(), path.as_ref(), true)
    }

    /// Opens `path` without following a symlink in its last component.
    pub fn open_nofollow(path: impl AsRef<Path>) -> Result<NetNs, NsError> {
        Self::open_at(AT_FDCWD, path.as_ref(), path.as_ref(), false)
    }

    /// The network namespace of the calling thread.
    pub fn current() -> Result<NetNs, NsError> {
        Self::open("/proc/thread-self/ns/net")
    }

    /// Opens `name` relative to the directory `dir` (`shown` is the path for messages).
    pub fn open_at(
        dir: BorrowedFd<'_>,
        name: &Path,
        shown: &Path,
        follow: bool,
    ) -> Result<NetNs, NsError> {
        let mut flags = OFlag::O_PATH | OFlag::O_CLOEXEC;
        if !follow {
            flags |= OFlag::O_NOFOLLOW;
        }
        let open_err = |source: io::Error| NsError::Open {
            path: shown.to_owned(),
            source,
        };
        let not_netns = |found| NsError::NotNetns {
            path: shown.to_owned(),
            found,
        };
        let handle = match openat(dir, name, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(nix::Error::ENOENT) => return Err(absent(dir, name, shown)),
            Err(e) => return Err(open_err(e.into())),
        };
        let st = fstat(&handle).map_err(|e| open_err(e.into()))?;
        if let Some(found) = non_regular(st.st_mode) {
            return Err(not_netns(match found {
                Found::Symlink { .. } => symlink_found(dir, name),
                other => other,
            }));
        }
        let fs = fstatfs(&handle).map_err(|e| open_err(e.into()))?;
        if fs.filesystem_type() != NSFS_MAGIC {
            return Err(not_netns(Found::RegularFile));
        }
        let fd = reopen_netns(&handle, shown)?;
        let id = NsId {
            dev: st.st_dev,
            ino: st.st_ino,
        };
        Ok(NetNs {
            fd,
            path: shown.to_owned(),
            id,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    pub fn id(&self) -> NsId {
        self.id
    }

    /// Whether this is the namespace of the calling thread.
    pub fn is_current(&self) -> bool {
        NsId::of_path(Path::new("/proc/thread-self/ns/net")).is_ok_and(|id| id == self.id)
    }

    /// Whether this is the node's own network namespace: the namespace of this process's
    /// calling thread, of the process (its main thread) or of PID 1 (the node's init).
    pub fn is_node_own(&self) -> bool {
        [
            "/proc/thread-self/ns/net",
            "/proc/self/ns/net",
            "/proc/1/ns/net",
        ]
        .iter()
        .any(|p| NsId::of_path(Path::new(p)).is_ok_and(|id| id == self.id))
    }

    pub fn try_clone(&self) -> Result<NetNs, NsError> {
        let fd = self.fd.try_clone().map_err(|source| NsError::Open {
            path: self.path.clone(),
            source,
        })?;
        Ok(NetNs {
            fd,
            path: self.path.clone(),
            id: self.id,
        })
    }

    /// Runs `f` on a fresh OS thread that first enters this namespace. The thread ends when `f`
    /// returns, so no thread is ever left in a foreign namespace.
    pub fn run<F, T>(&self, f: F) -> Result<T, NsError>
    where
        F: FnOnce() -> T + Send,
        T: Send,
    {
        let path = &self.path;
        std::thread::scope(|s| {
            let handle = std::thread::Builder::new()
                .name("k8slan-netns".into())
                .spawn_scoped(s, || {
                    setns(self.fd.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|source| {
                        NsError::Enter {
                            path: path.clone(),
                            source,
                        }
                    })?;
                    Ok(f())
                })
                .map_err(|source| NsError::Thread {
                    path: path.clone(),
                    source,
                })?;
            handle
                .join()
                .map_err(|_| NsError::Panicked { path: path.clone() })?
        })
    }
}

/// What a missing `name` in `dir` is: a dangling symlink (named with its target) or nothing.
fn absent(dir: BorrowedFd<'_>, name: &Path, shown: &Path) -> NsError {
    match readlinkat(dir, name) {
        Ok(target) => NsError::NotNetns {
            path: shown.to_owned(),
            found: Found::DanglingSymlink {
                target: target.to_string_lossy().into_owned(),
            },
        },
        Err(_) => NsError::Missing {
            path: shown.to_owned(),
        },
    }
}

/// The O_PATH `handle` cannot enter the namespace: opens the very same file for real and
/// verifies that it is a network namespace.
fn reopen_netns(handle: &OwnedFd, shown: &Path) -> Result<OwnedFd, NsError> {
    let not_netns = |found| NsError::NotNetns {
        path: shown.to_owned(),
        found,
    };
    let fd: OwnedFd = File::open(format!("/proc/self/fd/{}", handle.as_raw_fd()))
        .map_err(|source| NsError::Open {
            path: shown.to_owned(),
            source,
        })?
        .into();
    // SAFETY: the ioctl takes no argument and only reads the namespace type of a valid fd.
    let kind = unsafe { ns_get_nstype(fd.as_raw_fd()) }.map_err(|_| not_netns(Found::Unknown))?;
    if kind != CloneFlags::CLONE_NEWNET.bits() {
        return Err(not_netns(Found::Namespace {
            kind: ns_kind(kind),
        }));
    }
    Ok(fd)
}

/// What a file of mode `mode` is, when it is not a regular file.
fn non_regular(mode: u32) -> Option<Found> {
    let kind = SFlag::from_bits_truncate(mode & SFlag::S_IFMT.bits());
    Some(match kind {
        SFlag::S_IFREG => return None,
        SFlag::S_IFDIR => Found::Directory,
        SFlag::S_IFIFO => Found::Fifo,
        SFlag::S_IFSOCK => Found::Socket,
        SFlag::S_IFCHR => Found::CharDevice,
        SFlag::S_IFBLK => Found::BlockDevice,
        SFlag::S_IFLNK => Found::Symlink {
            target: String::new(),
        },
        _ => Found::Unknown,
    })
}

/// A symlink found where none is followed: with its target, and whether that exists.
fn symlink_found(dir: BorrowedFd<'_>, name: &Path) -> Found {
    let target = readlinkat(dir, name)
        .map(|t| t.to_string_lossy().into_owned())
        .unwrap_or_default();
    let exists = openat(dir, name, OFlag::O_PATH | OFlag::O_CLOEXEC, Mode::empty()).is_ok();
    if exists {
        Found::Symlink { target }
    } else {
        Found::DanglingSymlink { target }
    }
}

fn ns_kind(clone_flag: i32) -> &'static str {
    const TIME: i32 = 0x80;
    match CloneFlags::from_bits_truncate(clone_flag) {
        CloneFlags::CLONE_NEWNS => "mount",
        CloneFlags::CLONE_NEWUTS => "uts",
        CloneFlags::CLONE_NEWIPC => "ipc",
        CloneFlags::CLONE_NEWUSER => "user",
        CloneFlags::CLONE_NEWPID => "pid",
        CloneFlags::CLONE_NEWCGROUP => "cgroup",
        _ if clone_flag == TIME => "time",
        _ => "non-network",
    }
}

/// A long-lived thread inside a network namespace, with a private mount namespace in which
/// `/sys` is that namespace's sysfs (see [`crate::sysfs`]): the place to read `/sys/class/net`
/// and write `/proc/sys/net` sysctls of a namespace the process itself is not in, without a
/// thread and a sysfs mount per call. The thread ends when this is dropped.
#[derive(Debug)]
pub struct NsThread {
    path: PathBuf,
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
}

type Job = Box<dyn FnOnce() + Send>;

impl NsThread {
    /// Starts the thread inside `ns`.
    pub fn start(ns: &NetNs) -> Result<Self, NsError> {
        let ns = ns.try_clone()?;
        let path = ns.path.clone();
        let (jobs, rx) = mpsc::channel::<Job>();
        let (ready_tx, ready) = mpsc::channel();
        let thread_path = path.clone();
        let thread = std::thread::Builder::new()
            .name("k8slan-nsthread".into())
            .spawn(move || {
                let entered = setns(ns.fd(), CloneFlags::CLONE_NEWNET)
                    .map_err(|source| NsError::Enter {
                        path: thread_path.clone(),
                        source,
                    })
                    .and_then(|()| {
                        crate::sysfs::mount_private().map_err(|e| NsError::Open {
                            path: thread_path.clone(),
                            source: io::Error::other(e),
                        })
                    });
                drop(ns);
                let ok = entered.is_ok();
                let _ = ready_tx.send(entered);
                if ok {
                    while let Ok(job) = rx.recv() {
                        job();
                    }
                }
            })
            .map_err(|source| NsError::Thread {
                path: path.clone(),
                source,
            })?;
        let panicked = || NsError::Panicked { path: path.clone() };
        ready.recv().map_err(|_| panicked())??;
        Ok(Self {
            path,
            jobs: Some(jobs),
            thread: Some(thread),
        })
    }

    /// Runs `f` on the thread and waits for its result.
    pub fn run<F, T>(&self, f: F) -> Result<T, NsError>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let panicked = || NsError::Panicked {
            path: self.path.clone(),
        };
        let (tx, rx) = mpsc::channel();
        let job: Job = Box::new(move || {
            let _ = tx.send(f());
        });
        self.jobs
            .as_ref()
            .ok_or_else(panicked)?
            .send(job)
            .map_err(|_| panicked())?;
        rx.recv().map_err(|_| panicked())
    }
}

impl Drop for NsThread {
    fn drop(&mut self) {
        self.jobs.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(path: &str) -> Found {
        match NetNs::open(path) {
            Err(NsError::NotNetns { found, .. }) => found,
            other => panic!("{path}: {other:?}"),
        }
    }

    #[test]
    fn non_namespaces_are_named_for_what_they_are() {
        assert!(matches!(
            NetNs::open("/nonexistent/k8slan/ns"),
            Err(NsError::Missing { .. })
        ));
        assert_eq!(found("/proc/self/status"), Found::RegularFile);
        assert_eq!(found("/"), Found::Directory);
        assert_eq!(found("/dev/null"), Found::CharDevice);
        assert_eq!(found("/proc/self/ns/uts"), Found::Namespace { kind: "uts" });
    }

    #[test]
    fn the_callers_namespace_is_the_node_own() {
        let ns = NetNs::current().unwrap();
        assert!(ns.is_current());
        assert!(ns.is_node_own());
        // The magic symlink is followed by `open`, refused by `open_nofollow`.
        assert!(NetNs::open("/proc/self/ns/net").is_ok());
        assert!(matches!(
            NetNs::open_nofollow("/proc/self/ns/net"),
            Err(NsError::NotNetns {
                found: Found::Symlink { .. },
                ..
            })
        ));
    }

    #[test]
    fn fifos_and_dangling_symlinks_are_refused_without_blocking() {
        let dir = std::env::temp_dir().join(format!("k8slan-kernel-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fifo = dir.join("fifo");
        let _ = std::fs::remove_file(&fifo);
        nix::unistd::mkfifo(&fifo, Mode::from_bits_truncate(0o600)).unwrap();
        assert_eq!(found(fifo.to_str().unwrap()), Found::Fifo);
        let link = dir.join("dangling");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(dir.join("nothing"), &link).unwrap();
        assert!(matches!(
            found(link.to_str().unwrap()),
            Found::DanglingSymlink { .. }
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn run_happens_on_another_thread_in_the_namespace() {
        let ns = NetNs::current().unwrap();
        let me = std::thread::current().id();
        let (other, same) = ns
            .run(|| (std::thread::current().id(), ns.is_current()))
            .unwrap();
        assert_ne!(other, me);
        assert!(same);
    }
}
