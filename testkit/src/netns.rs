//! Throwaway network namespaces and mount directories for privileged tests.
//!
//! Every name is unique per process and call (`<tag><pid><counter>`), and every guard removes
//! what it made when dropped, also while a failing test unwinds.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

use k8slan_kernel::NetNs;
use nix::mount::{MntFlags, umount2};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A name unique to this process and call, at most 15 bytes when `tag` has at most 4:
/// `<tag><pid % 100000><counter>`. Fits an interface name.
pub fn unique_name(tag: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{tag}{}x{n}", std::process::id() % 100_000)
}

fn run(cmd: &mut Command) -> io::Result<Output> {
    let out = cmd.output()?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(io::Error::other(format!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )))
    }
}

/// A named network namespace (`ip netns add`), deleted on drop.
#[derive(Debug)]
pub struct TestNs {
    name: String,
}

impl TestNs {
    /// Create `/run/netns/<unique name>`.
    pub fn new(tag: &str) -> io::Result<Self> {
        netns_dir_ready()?;
        let name = unique_name(tag);
        run(Command::new("ip").args(["netns", "add", &name]))?;
        let ns = Self { name };
        ns.sh("ip link set lo up")?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/<name>`.
    pub fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    /// Run a shell command inside the namespace (`ip netns exec <ns> sh -c CMD`); error when it
    /// exits non-zero, with its output in the message.
    pub fn sh(&self, cmd: &str) -> io::Result<String> {
        run(Command::new("ip").args(["netns", "exec", &self.name, "sh", "-c", cmd]))
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
    }

    /// Like [`TestNs::sh`] but returns the raw output whatever the exit status.
    pub fn sh_output(&self, cmd: &str) -> io::Result<Output> {
        Command::new("ip")
            .args(["netns", "exec", &self.name, "sh", "-c", cmd])
            .output()
    }

    /// Run a closure on a fresh thread inside the namespace.
    pub fn run<F, T>(&self, f: F) -> io::Result<T>
    where
        F: FnOnce() -> T + Send,
        T: Send,
    {
        in_netns(&self.path(), f)
    }
}

impl Drop for TestNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Run a closure on a fresh thread that entered the network namespace at `path` (verified to
/// be one, by the kernel layer).
pub fn in_netns<F, T>(path: &Path, f: F) -> io::Result<T>
where
    F: FnOnce() -> T + Send,
    T: Send,
{
    NetNs::open(path)
        .and_then(|ns| ns.run(f))
        .map_err(io::Error::other)
}

/// A scratch directory (under `/run/k8slan-test`) whose mounts are all detached and which is
/// removed on drop: for netns and device directories of simulated nodes.
#[derive(Debug)]
pub struct TestDir {
    path: PathBuf,
}

impl TestDir {
    pub fn new(tag: &str) -> io::Result<Self> {
        let path = Path::new("/run/k8slan-test").join(unique_name(tag));
        fs::create_dir_all(&path)?;
        Ok(Self { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Mount points at or below this directory, deepest first.
    pub fn mounts(&self) -> Vec<PathBuf> {
        mounts_under(&self.path)
    }
}

/// Mount points at or below `dir` (from /proc/self/mountinfo), deepest first.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut v: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(PathBuf::from)
        .filter(|p| p.starts_with(dir))
        .collect();
    v.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    v
}

impl Drop for TestDir {
    fn drop(&mut self) {
        for _ in 0..4 {
            let m = self.mounts();
            if m.is_empty() {
                break;
            }
            for p in m {
                let _ = umount2(&p, MntFlags::MNT_DETACH);
            }
        }
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// `ip netns add` makes `/run/netns` a shared bind mount of itself the first time; two first
/// calls at once (parallel tests on a fresh boot, or after the e2e cluster removed that mount)
/// can mount it over a namespace file the other just bound, which then fails `setns` with
/// EINVAL. One namespace added and deleted alone, once per process, sets the mount up first.
fn netns_dir_ready() -> io::Result<()> {
    static READY: std::sync::Mutex<bool> = std::sync::Mutex::new(false);
    let mut ready = READY.lock().unwrap_or_else(|p| p.into_inner());
    if !*ready {
        let name = unique_name("warmup");
        run(Command::new("ip").args(["netns", "add", &name]))?;
        run(Command::new("ip").args(["netns", "delete", &name]))?;
        *ready = true;
    }
    Ok(())
}
