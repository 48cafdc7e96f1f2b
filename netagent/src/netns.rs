//! Persistent network namespaces and running code inside one.
//!
//! `setns(2)` moves only the calling thread, so everything that must happen inside a namespace
//! runs on a dedicated OS thread: a short-lived one ([`in_netns`]) that enters the namespace,
//! does its work (for example opens a netlink socket, which stays bound to that namespace) and
//! exits, or a long-lived one ([`NsThread`]) for repeated sysfs and sysctl work in a namespace
//! the process is not in. The caller's thread, and every other thread of the process, never
//! changes namespace.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread::JoinHandle;

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, setns, unshare};
use nix::sys::statfs::{NSFS_MAGIC, statfs};

/// Why a namespace operation failed.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("cannot prepare netns directory {dir}: {source}")]
    Dir { dir: PathBuf, source: io::Error },
    #[error("cannot create network namespace file {path}: {source}")]
    File { path: PathBuf, source: io::Error },
    #[error("cannot set {knob} in network namespace {path}: {source}")]
    Sysctl {
        knob: String,
        path: PathBuf,
        source: io::Error,
    },
    #[error("cannot {what} for network namespace {path}: {source}")]
    Sys {
        what: &'static str,
        path: PathBuf,
        source: nix::Error,
    },
    #[error("cannot open network namespace {path}: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error("cannot enter network namespace: setns failed: {0}")]
    Enter(nix::Error),
    #[error("cannot start a thread for namespace work: {0}")]
    Thread(io::Error),
    #[error("the thread doing namespace work panicked")]
    Panicked,
}

/// Run `f` on a fresh OS thread that first enters the network namespace `ns`.
/// The thread ends when `f` returns, so no thread is ever left in a foreign namespace.
pub fn in_netns<F, T>(ns: &File, f: F) -> Result<T, NetnsError>
where
    F: FnOnce() -> T + Send,
    T: Send,
{
    std::thread::scope(|s| {
        let handle = std::thread::Builder::new()
            .name("k8slan-netns".into())
            .spawn_scoped(s, || {
                setns(ns.as_fd(), CloneFlags::CLONE_NEWNET).map_err(NetnsError::Enter)?;
                Ok(f())
            })
            .map_err(NetnsError::Thread)?;
        handle.join().map_err(|_| NetnsError::Panicked)?
    })
}

/// Open a namespace file (`/proc/<pid>/ns/net` or a bind mount of one).
pub fn open(path: &Path) -> Result<File, NetnsError> {
    File::open(path).map_err(|source| NetnsError::Open {
        path: path.to_owned(),
        source,
    })
}

/// Whether `path` is a mounted network namespace (not just a leftover file).
pub fn is_mounted(path: &Path) -> bool {
    statfs(path).is_ok_and(|s| s.filesystem_type() == NSFS_MAGIC)
}

/// Make `dir` exist and be a shared mount point, as `ip netns add` does, so that namespace
/// mounts below it propagate into mount namespaces that bind `dir` with rslave/rshared.
pub fn prepare_dir(dir: &Path) -> Result<(), NetnsError> {
    fs::create_dir_all(dir).map_err(|source| NetnsError::Dir {
        dir: dir.to_owned(),
        source,
    })?;
    let shared = || {
        mount(
            None::<&str>,
            dir,
            None::<&str>,
            MsFlags::MS_SHARED | MsFlags::MS_REC,
            None::<&str>,
        )
    };
    match shared() {
        Ok(()) => Ok(()),
        // Not a mount point yet: bind it onto itself, then share it.
        Err(nix::Error::EINVAL) => mount(
            Some(dir),
            dir,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .and_then(|()| shared())
        .map_err(|source| NetnsError::Sys {
            what: "make the netns directory a shared mount point",
            path: dir.to_owned(),
            source,
        }),
        Err(source) => Err(NetnsError::Sys {
            what: "make the netns directory a shared mount point",
            path: dir.to_owned(),
            source,
        }),
    }
}

/// Create a new network namespace and bind-mount it at `path` (whose directory must exist):
/// a thread unshares its network namespace and its `/proc/thread-self/ns/net` is bind-mounted.
/// A leftover file that is not a mount is replaced. On failure nothing is left behind.
pub fn create(path: &Path) -> Result<(), NetnsError> {
    if path.exists() && !is_mounted(path) {
        let _ = fs::remove_file(path);
    }
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|source| NetnsError::File {
            path: path.to_owned(),
            source,
        })?;
    let result = std::thread::scope(|s| {
        let handle = std::thread::Builder::new()
            .name("k8slan-netns-new".into())
            .spawn_scoped(s, || {
                unshare(CloneFlags::CLONE_NEWNET).map_err(|source| NetnsError::Sys {
                    what: "unshare a new network namespace",
                    path: path.to_owned(),
                    source,
                })?;
                silence_ipv6(path)?;
                mount(
                    Some("/proc/thread-self/ns/net"),
                    path,
                    None::<&str>,
                    MsFlags::MS_BIND,
                    None::<&str>,
                )
                .map_err(|source| NetnsError::Sys {
                    what: "bind-mount",
                    path: path.to_owned(),
                    source,
                })
            })
            .map_err(NetnsError::Thread)?;
        handle.join().map_err(|_| NetnsError::Panicked)?
    });
    if result.is_err() {
        let _ = fs::remove_file(path);
    }
    result
}

/// Turn IPv6 off for every link of the calling thread's (new) namespace. A LAN namespace is a
/// wire, not a host: without this its bridge, VXLAN and ports would send their own router
/// solicitations, neighbour and MLD frames onto the LAN, where the members would see them.
/// Links moved in later (the VXLAN) take the namespace defaults. A kernel without IPv6 has
/// nothing to silence.
fn silence_ipv6(path: &Path) -> Result<(), NetnsError> {
    for conf in ["default", "all"] {
        let knob = format!("/proc/sys/net/ipv6/conf/{conf}/disable_ipv6");
        match fs::write(&knob, "1") {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(source) => {
                return Err(NetnsError::Sysctl {
                    knob,
                    path: path.to_owned(),
                    source,
                });
            }
        }
    }
    Ok(())
}

/// Unmount the namespace at `path` and remove the file. Absent or unmounted is fine.
pub fn delete(path: &Path) -> Result<(), NetnsError> {
    match umount2(path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => {}
        Err(source) => {
            return Err(NetnsError::Sys {
                what: "unmount",
                path: path.to_owned(),
                source,
            });
        }
    }
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(NetnsError::File {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Names of the mounted namespaces in `dir` (an absent directory has none).
pub fn list(dir: &Path) -> Result<Vec<String>, NetnsError> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(NetnsError::Dir {
                dir: dir.to_owned(),
                source,
            });
        }
    };
    let mut names: Vec<String> = entries
        .filter_map(Result::ok)
        .filter(|e| is_mounted(&e.path()))
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    names.sort();
    Ok(names)
}

/// A long-lived thread inside a network namespace, with a private mount namespace in which
/// `/sys` is that namespace's sysfs: the place to read `/sys/class/net` and write
/// `/proc/sys/net` sysctls of a namespace the process itself is not in, without a thread and a
/// sysfs mount per call. Used when the node's host namespace is a namespace file (tests that
/// simulate several nodes on one machine); the thread ends when this is dropped.
#[derive(Debug)]
pub struct NsThread {
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
}

type Job = Box<dyn FnOnce() + Send>;

impl NsThread {
    /// Start the thread inside `ns` (the file is only used during the start).
    pub fn start(ns: &File) -> Result<Self, NetnsError> {
        let ns = ns.try_clone().map_err(|source| NetnsError::Open {
            path: PathBuf::from("(namespace handle)"),
            source,
        })?;
        let (jobs, rx) = mpsc::channel::<Job>();
        let (ready_tx, ready) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("k8slan-hostns".into())
            .spawn(move || {
                let entered = setns(ns.as_fd(), CloneFlags::CLONE_NEWNET)
                    .map_err(NetnsError::Enter)
                    .and_then(|()| private_sysfs());
                drop(ns);
                let ok = entered.is_ok();
                let _ = ready_tx.send(entered);
                if ok {
                    while let Ok(job) = rx.recv() {
                        job();
                    }
                }
            })
            .map_err(NetnsError::Thread)?;
        ready.recv().map_err(|_| NetnsError::Panicked)??;
        Ok(Self {
            jobs: Some(jobs),
            thread: Some(thread),
        })
    }

    /// Run `f` on the thread and wait for its result.
    pub fn run<F, T>(&self, f: F) -> Result<T, NetnsError>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let (tx, rx) = mpsc::channel();
        let job: Job = Box::new(move || {
            let _ = tx.send(f());
        });
        self.jobs
            .as_ref()
            .ok_or(NetnsError::Panicked)?
            .send(job)
            .map_err(|_| NetnsError::Panicked)?;
        rx.recv().map_err(|_| NetnsError::Panicked)
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

/// Give the calling thread a private mount namespace with a fresh sysfs at `/sys`, which then
/// shows the links of the thread's network namespace.
fn private_sysfs() -> Result<(), NetnsError> {
    let sys = || -> Result<(), nix::Error> {
        unshare(CloneFlags::CLONE_NEWNS)?;
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REC | MsFlags::MS_SLAVE,
            None::<&str>,
        )?;
        mount(
            Some("sysfs"),
            "/sys",
            Some("sysfs"),
            MsFlags::empty(),
            None::<&str>,
        )
    };
    sys().map_err(|source| NetnsError::Sys {
        what: "mount a private sysfs",
        path: PathBuf::from("/sys"),
        source,
    })
}

/// Set a per-link IPv6 sysctl (`/proc/sys/net/ipv6/conf/<link>/<knob>`) of the calling thread's
/// namespace. A kernel without IPv6 has nothing to set.
pub fn set_link_ipv6_sysctl(link: &str, knob: &str, value: &str) -> io::Result<()> {
    if link.is_empty() || link.contains('/') || link == "." || link == ".." {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{link:?} is not a link name"),
        ));
    }
    if !Path::new("/proc/sys/net/ipv6").exists() {
        return Ok(());
    }
    fs::write(format!("/proc/sys/net/ipv6/conf/{link}/{knob}"), value)
}
