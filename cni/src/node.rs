//! The files the k8slan agent leaves for the plugins on a node: the node settings
//! ([`CniNodeSettings`], `k8slan-cni.json` beside the plugin binaries) and the records of the
//! spokes it prepared ([`PreparedSpoke`], `<preparedDir>/<spoke>.json`).
//!
//! Both are read the same careful way, since they decide what a root process touches: opened
//! without following a symlink and without blocking (a FIFO is refused, not waited on), accepted
//! only as a regular file owned by the user the plugin runs as (root on a node) that nobody else
//! may write, and read up to [`MAX_NODE_FILE_BYTES`].

use std::fs::OpenOptions;
use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use k8slan_api::prepared::{
    CNI_SETTINGS_FILE, CniNodeSettings, MAX_NODE_FILE_BYTES, PreparedSpoke, prepared_file,
};
use tracing::warn;

use crate::config::Target;
use crate::error::{CniError, ErrorCode};

/// Most entries of the prepared directory looked at when a spoke is found by its device only.
pub const MAX_RECORDS_SCANNED: usize = 16 * 1024;

/// Why a node file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum NodeFileError {
    #[error("{path}: cannot open it without following symlinks: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error("{path}: is not a regular file (a symlink, FIFO, directory or device is refused)")]
    NotRegular { path: PathBuf },
    #[error("{path}: is owned by uid {uid}, not by the user the plugin runs as (uid {euid})")]
    Owner { path: PathBuf, uid: u32, euid: u32 },
    #[error("{path}: is writable by group or others (mode {mode:o}); only its owner may write it")]
    Writable { path: PathBuf, mode: u32 },
    #[error("{path}: is larger than {MAX_NODE_FILE_BYTES} bytes")]
    TooLarge { path: PathBuf },
    #[error("{path}: cannot read it: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path}: {source}")]
    Parse {
        path: PathBuf,
        source: k8slan_api::prepared::NodeFileError,
    },
}

/// Reads a node file; `Ok(None)` when it does not exist.
pub fn read_node_file(path: &Path) -> Result<Option<Vec<u8>>, NodeFileError> {
    let p = || path.to_owned();
    let file = match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(NodeFileError::NotRegular { path: p() });
        }
        Err(source) => return Err(NodeFileError::Open { path: p(), source }),
    };
    let meta = file
        .metadata()
        .map_err(|source| NodeFileError::Read { path: p(), source })?;
    check_meta(path, &meta)?;
    let mut bytes = Vec::new();
    file.take(MAX_NODE_FILE_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|source| NodeFileError::Read { path: p(), source })?;
    if bytes.len() > MAX_NODE_FILE_BYTES {
        return Err(NodeFileError::TooLarge { path: p() });
    }
    Ok(Some(bytes))
}

fn check_meta(path: &Path, meta: &std::fs::Metadata) -> Result<(), NodeFileError> {
    let euid = nix::unistd::geteuid().as_raw();
    if !meta.file_type().is_file() {
        return Err(NodeFileError::NotRegular {
            path: path.to_owned(),
        });
    }
    if meta.uid() != euid {
        return Err(NodeFileError::Owner {
            path: path.to_owned(),
            uid: meta.uid(),
            euid,
        });
    }
    if meta.mode() & 0o022 != 0 {
        return Err(NodeFileError::Writable {
            path: path.to_owned(),
            mode: meta.mode() & 0o7777,
        });
    }
    Ok(())
}

/// Path of the node settings: [`CNI_SETTINGS_FILE`] in the directory of this executable.
pub fn settings_path() -> io::Result<PathBuf> {
    let exe = std::fs::read_link("/proc/self/exe")?;
    Ok(exe
        .parent()
        .unwrap_or(Path::new("/"))
        .join(CNI_SETTINGS_FILE))
}

/// The node settings at `path`; their defaults when the file does not exist.
pub fn load_settings(path: &Path) -> Result<CniNodeSettings, NodeFileError> {
    match read_node_file(path)? {
        None => Ok(CniNodeSettings::default()),
        Some(bytes) => CniNodeSettings::parse(&bytes).map_err(|source| NodeFileError::Parse {
            path: path.to_owned(),
            source,
        }),
    }
}

/// The node settings of this executable, or why they cannot be used (as a CNI error).
pub fn settings_of_this_plugin() -> Result<CniNodeSettings, CniError> {
    let path = settings_path().map_err(|e| {
        CniError::new(
            ErrorCode::IoFailure,
            format!("cannot find this plugin's own directory (/proc/self/exe) to read {CNI_SETTINGS_FILE}: {e}"),
        )
    })?;
    load_settings(&path).map_err(|e| {
        CniError::new(
            ErrorCode::IoFailure,
            format!("node settings: {e}; k8slan-agent install-cni rewrites the file"),
        )
    })
}

fn io_error(e: NodeFileError) -> CniError {
    CniError::new(ErrorCode::IoFailure, format!("prepared-spoke record: {e}"))
}

fn no_record(dir: &Path, target: &Target) -> CniError {
    CniError::new(
        ErrorCode::TryAgainLater,
        format!(
            "the k8slan agent has no record of having prepared {} on this node (none in {}): the pod did not request resource {} (add it to the container's resources.limits), or the agent has not prepared it yet; nothing was moved",
            target.shown(),
            dir.display(),
            target.resource_hint()
        ),
    )
}

/// The record of the spoke `target` binds, from the prepared directory `dir`. A spoke known by
/// name is read from its own file; a VM spoke known only by its device (`mvh-<hash>`) is looked
/// for among the records (at most [`MAX_RECORDS_SCANNED`]).
pub fn load_record(dir: &Path, target: &Target) -> Result<PreparedSpoke, CniError> {
    match &target.spoke {
        Some(spoke) => read_record(&dir.join(prepared_file(spoke)))?,
        None => find_record(dir, &target.host_link)?,
    }
    .ok_or_else(|| no_record(dir, target))
}

/// A record read from `path`, or `None` if there is none. Oversized or foreign files are errors.
pub fn read_record(path: &Path) -> Result<Option<PreparedSpoke>, CniError> {
    let Some(bytes) = read_node_file(path).map_err(io_error)? else {
        return Ok(None);
    };
    PreparedSpoke::parse(&bytes).map(Some).map_err(|source| {
        io_error(NodeFileError::Parse {
            path: path.to_owned(),
            source,
        })
    })
}

fn find_record(dir: &Path, link: &str) -> Result<Option<PreparedSpoke>, CniError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(CniError::new(
                ErrorCode::IoFailure,
                format!(
                    "cannot list the prepared-spoke records in {}: {e}",
                    dir.display()
                ),
            ));
        }
    };
    for entry in entries.take(MAX_RECORDS_SCANNED).flatten() {
        let path = entry.path();
        if path.extension().is_none_or(|x| x != "json") {
            continue;
        }
        match read_record(&path) {
            Ok(Some(r)) if r.link == link => return Ok(Some(r)),
            Ok(_) => {}
            Err(e) => warn!(path = %path.display(), error = %e, "skipping an unreadable record"),
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn write(dir: &Path, name: &str, body: &str, mode: u32) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, body).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    #[test]
    fn settings_default_when_absent_and_are_read_when_present() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join(CNI_SETTINGS_FILE);
        assert_eq!(load_settings(&path).unwrap(), CniNodeSettings::default());
        write(
            d.path(),
            CNI_SETTINGS_FILE,
            r#"{"logFile":"/var/log/k.log","devDir":"/d","preparedDir":"/p"}"#,
            0o644,
        );
        let s = load_settings(&path).unwrap();
        assert_eq!(s.prepared_dir, PathBuf::from("/p"));
        assert_eq!(s.log_file, Some(PathBuf::from("/var/log/k.log")));
    }

    #[test]
    fn foreign_node_files_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let target = write(d.path(), "real.json", "{}", 0o644);
        let link = d.path().join("link.json");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(matches!(
            read_node_file(&link),
            Err(NodeFileError::NotRegular { .. })
        ));
        let fifo = d.path().join("fifo.json");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        assert!(matches!(
            read_node_file(&fifo),
            Err(NodeFileError::NotRegular { .. })
        ));
        assert!(matches!(
            read_node_file(d.path()),
            Err(NodeFileError::NotRegular { .. })
        ));
        let writable = write(d.path(), "w.json", "{}", 0o666);
        assert!(matches!(
            read_node_file(&writable),
            Err(NodeFileError::Writable { .. })
        ));
        let big = write(
            d.path(),
            "big.json",
            &" ".repeat(MAX_NODE_FILE_BYTES + 1),
            0o600,
        );
        assert!(matches!(
            read_node_file(&big),
            Err(NodeFileError::TooLarge { .. })
        ));
        if nix::unistd::geteuid().is_root() {
            let other = write(d.path(), "o.json", "{}", 0o644);
            nix::unistd::chown(&other, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
            assert!(matches!(
                read_node_file(&other),
                Err(NodeFileError::Owner { .. })
            ));
        }
    }
}
