//! LAN namespaces in the netns directory: which entries are k8slan's, and how they are made.
//!
//! The directory (`--netns-dir`) is a [`NsDir`]: entries are opened without following symlinks,
//! the directory can never be the container runtime's. On top of that, k8slan *marks* every
//! namespace it creates: before the namespace is bind-mounted (so before anyone can see it), its
//! `lo` gets the alias `k8slan:<lan>/netns` ([`mark`]). An entry is k8slan's LAN namespace only if
//! it is a network namespace, is not the node's own, and carries the mark of its own name
//! ([`check_mark`]). Everything else — a symlink, a bind mount of a namespace k8slan did not
//! create (or of another LAN's), a regular file, a FIFO — is *foreign*: reported, never torn
//! down or unmounted. (A root user could forge a mark; the mark defends against mistakes and
//! against writers who are not root in the node's namespaces, which is who could otherwise plant
//! entries there.)
//!
//! Namespaces made before marks existed are recognised by their k8slan bridge (alias
//! `k8slan:<lan>/bridge`) and marked on first sight.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use k8slan_api::naming::link_alias;
use k8slan_kernel::route::{link_alias_of, set_alias_and_up};
use k8slan_kernel::{NetNs, NsDir, NsDirError, NsEntry, NsError, NsId, RouteSocket, name};

/// The setting the directory comes from, for messages.
pub const NETNS_DIR_FLAG: &str = "--netns-dir";

/// Alias role of the mark on a LAN namespace's `lo`.
const MARK_ROLE: &str = "netns";
/// Alias role of a LAN's bridge (namespaces from before marks).
const BRIDGE_ROLE: &str = "bridge";

/// The mark k8slan puts on the `lo` of LAN namespace `lan`.
pub fn mark(lan: &str) -> String {
    link_alias(lan, MARK_ROLE)
}

/// Why a namespace operation failed.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error(transparent)]
    Dir(#[from] NsDirError),
    #[error(transparent)]
    Ns(#[from] NsError),
    #[error("{} is {what}, not a LAN namespace k8slan created; it is left alone", path.display())]
    Foreign { path: PathBuf, what: String },
    #[error("cannot read the links of network namespace {}: {reason}", path.display())]
    Netlink { path: PathBuf, reason: String },
}

/// An entry of the netns directory that is not a LAN namespace of k8slan's.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct ForeignEntry {
    pub name: String,
    /// What it is, e.g. "a symlink (to \"/proc/1/ns/net\")".
    pub what: String,
}

/// The entries of the netns directory: network namespaces (named; their marks still to be
/// checked with [`check_mark`]) and foreign entries.
pub type Entries = (Vec<(String, NetNs)>, Vec<ForeignEntry>);

/// The netns directory.
#[derive(Debug, Clone)]
pub struct LanDir {
    dir: NsDir,
}

impl LanDir {
    /// Checks and makes `path` (never the runtime's directory; errors name `--netns-dir`).
    pub fn open(path: &Path) -> Result<LanDir, NetnsError> {
        Ok(LanDir {
            dir: NsDir::open(path, NETNS_DIR_FLAG)?,
        })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Path of LAN namespace `lan`.
    pub fn lan_path(&self, lan: &str) -> PathBuf {
        self.dir.path().join(lan)
    }

    /// Every entry: network namespaces (to be checked with [`check_mark`]) and foreign ones.
    pub fn entries(&self, host: NsId) -> Result<Entries, NetnsError> {
        let mut namespaces = Vec::new();
        let mut foreign = Vec::new();
        for e in self.dir.entries()? {
            match e {
                NsEntry::Netns { name, ns } => match node_own(&ns, host) {
                    Some(what) => foreign.push(ForeignEntry { name, what }),
                    None => namespaces.push((name, ns)),
                },
                NsEntry::Foreign { name, what } => foreign.push(ForeignEntry { name, what }),
            }
        }
        Ok((namespaces, foreign))
    }

    /// The namespace mounted for `lan`, if it is a network namespace other than the node's
    /// (its mark is checked by the caller, on the socket it opens there). `None`: no entry.
    pub fn open_lan(&self, lan: &str, host: NsId) -> Result<Option<NetNs>, NetnsError> {
        match self.dir.open_entry(lan) {
            Ok(ns) => match node_own(&ns, host) {
                Some(what) => Err(NetnsError::Foreign {
                    path: self.lan_path(lan),
                    what,
                }),
                None => Ok(Some(ns)),
            },
            Err(NsDirError::Ns(NsError::Missing { .. })) => Ok(None),
            Err(NsDirError::Ns(NsError::NotNetns { path, found })) => Err(NetnsError::Foreign {
                path,
                what: found.to_string(),
            }),
            Err(e) => Err(e.into()),
        }
    }

    /// Creates LAN namespace `lan`: a new namespace with IPv6 off, `lo` up and marked, then
    /// mounted race-free (see [`NsDir::create`]).
    pub fn create(&self, lan: &str) -> Result<NetNs, NetnsError> {
        self.dir.make_shared()?;
        let alias = mark(lan);
        Ok(self.dir.create(lan, move || {
            silence_ipv6()?;
            let mut socket = RouteSocket::open().map_err(|e| format!("netlink socket: {e}"))?;
            set_alias_and_up(&mut socket, "lo", &alias).map_err(|e| format!("mark lo: {e}"))
        })?)
    }

    /// Unmounts and removes LAN namespace `lan`, which must still be namespace `expect` (which
    /// the caller verified is marked). Absent is fine; anything foreign is refused.
    pub fn delete(&self, lan: &str, expect: Option<NsId>) -> Result<(), NetnsError> {
        Ok(self.dir.remove(lan, expect)?)
    }
}

/// Why `ns` counts as the node's own namespace (`host` is the datapath's host namespace).
fn node_own(ns: &NetNs, host: NsId) -> Option<String> {
    (ns.id() == host || ns.is_node_own()).then(|| "the node's own network namespace".to_string())
}

/// Checks, on a socket opened inside it, that the namespace at entry `lan` is k8slan's LAN
/// namespace `lan`: its `lo` carries [`mark`]`(lan)`. A namespace from before marks (no alias on
/// `lo`, a bridge with this LAN's k8slan alias) is marked now. Returns what it is otherwise.
pub fn check_mark(socket: &mut RouteSocket, lan: &str) -> Result<(), String> {
    let lo = socket
        .link_by_name("lo")
        .map_err(|e| format!("a network namespace whose lo cannot be read ({e})"))?;
    let alias = lo.as_ref().and_then(link_alias_of);
    let want = mark(lan);
    match alias.as_deref() {
        Some(a) if a == want => Ok(()),
        None | Some("") if has_lan_bridge(socket, lan) => set_alias_and_up(socket, "lo", &want)
            .map_err(|e| {
                format!("a k8slan namespace from before marks that cannot be marked ({e})")
            }),
        Some(other) if other.starts_with(k8slan_api::naming::LINK_ALIAS_PREFIX) => Err(format!(
            "a k8slan network namespace of another name (its lo says {other:?}, not {want:?})"
        )),
        _ => {
            Err("a network namespace k8slan did not create (its lo carries no k8slan mark)".into())
        }
    }
}

fn has_lan_bridge(socket: &mut RouteSocket, lan: &str) -> bool {
    let want = link_alias(lan, BRIDGE_ROLE);
    socket.links().is_ok_and(|links| {
        links
            .iter()
            .any(|l| link_alias_of(l).as_deref() == Some(want.as_str()))
    })
}

/// Turn IPv6 off for every link of the calling thread's (new) namespace. A LAN namespace is a
/// wire, not a host: without this its bridge, VXLAN and ports would send their own router
/// solicitations, neighbour and MLD frames onto the LAN, where the members would see them.
/// Links moved in later (the VXLAN) take the namespace defaults. A kernel without IPv6 has
/// nothing to silence.
fn silence_ipv6() -> Result<(), String> {
    for conf in ["default", "all"] {
        let knob = format!("/proc/sys/net/ipv6/conf/{conf}/disable_ipv6");
        match fs::write(&knob, "1") {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(format!("cannot set {knob}: {e}")),
        }
    }
    Ok(())
}

/// Set a per-link IPv6 sysctl (`/proc/sys/net/ipv6/conf/<link>/<knob>`) of the calling thread's
/// namespace. A kernel without IPv6 has nothing to set.
pub fn set_link_ipv6_sysctl(link: &str, knob: &str, value: &str) -> io::Result<()> {
    name::link_name(link).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    name::file_name(knob).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    if !Path::new("/proc/sys/net/ipv6").exists() {
        return Ok(());
    }
    fs::write(format!("/proc/sys/net/ipv6/conf/{link}/{knob}"), value)
}
