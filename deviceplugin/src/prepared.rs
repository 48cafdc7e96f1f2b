//! The [`PreparedSpoke`] records of this node: one file per spoke the plugin prepared,
//! `<prepared-dir>/<spoke>.json`, which the CNI plugins read to learn which link they may bind
//! and for which namespaces.
//!
//! The directory belongs to root alone: it is created mode 0700, and refused when it is a
//! symlink, owned by another user or writable by group or others. A record is written to a
//! fresh temporary file (`O_CREAT|O_EXCL|O_NOFOLLOW`, mode 0600) in the same directory and renamed
//! over the old one, so a reader sees the old record or the new one, never a partial file;
//! rename and unlink act on the directory entry and never follow a symlink planted there.

use std::ffi::OsStr;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use k8slan_api::prepared::{MAX_NODE_FILE_BYTES, PreparedSpoke, prepared_file};
use k8slan_api::validate;

/// A record could not be written, read or removed.
#[derive(Debug, thiserror::Error)]
pub enum PreparedDirError {
    #[error("cannot create the prepared-spoke directory {dir}: {source}")]
    Create {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the prepared-spoke directory {dir} is unsafe: {why}; it must be a real directory owned by the agent's user with mode 0700 (set --prepared-dir / K8SLAN_PREPARED_DIR to another one or fix its owner and mode)"
    )]
    Unsafe { dir: PathBuf, why: String },
    #[error("spoke name {spoke:?} cannot name a record: {source}")]
    Name {
        spoke: String,
        source: k8slan_api::FieldError,
    },
    #[error("cannot {op} the prepared-spoke record {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The directory of this node's records.
#[derive(Debug, Clone)]
pub struct PreparedDir {
    dir: PathBuf,
}

/// One file found in the directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub spoke: String,
    /// The record, `None` when the file is no valid record (it is stale by definition).
    pub record: Option<PreparedSpoke>,
    pub modified: SystemTime,
}

static TEMP_SEQ: AtomicU64 = AtomicU64::new(0);

impl PreparedDir {
    /// Opens (creating it mode 0700 if missing) and checks the directory.
    pub fn open(dir: &Path) -> Result<Self, PreparedDirError> {
        if let Err(source) = fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
        {
            return Err(PreparedDirError::Create {
                dir: dir.to_owned(),
                source,
            });
        }
        let me = Self {
            dir: dir.to_owned(),
        };
        me.check()?;
        Ok(me)
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Refuses a directory that is a symlink, not ours, or writable by others.
    fn check(&self) -> Result<(), PreparedDirError> {
        let unsafe_dir = |why: String| PreparedDirError::Unsafe {
            dir: self.dir.clone(),
            why,
        };
        let meta = fs::symlink_metadata(&self.dir).map_err(|e| unsafe_dir(e.to_string()))?;
        if meta.file_type().is_symlink() {
            return Err(unsafe_dir("it is a symlink".into()));
        }
        if !meta.is_dir() {
            return Err(unsafe_dir("it is not a directory".into()));
        }
        // SAFETY: geteuid has no preconditions and cannot fail.
        let euid = unsafe { libc::geteuid() };
        if meta.uid() != euid {
            return Err(unsafe_dir(format!(
                "it is owned by uid {}, not {euid}",
                meta.uid()
            )));
        }
        if meta.permissions().mode() & 0o022 != 0 {
            return Err(unsafe_dir(format!(
                "its mode {:o} lets group or others write",
                meta.permissions().mode() & 0o7777
            )));
        }
        Ok(())
    }

    fn file(&self, spoke: &str) -> Result<PathBuf, PreparedDirError> {
        validate::spoke_name("spoke", spoke).map_err(|source| PreparedDirError::Name {
            spoke: spoke.to_string(),
            source,
        })?;
        Ok(self.dir.join(prepared_file(spoke)))
    }

    /// Writes (or replaces) the record of `record.spoke`, atomically.
    pub fn write(&self, record: &PreparedSpoke) -> Result<(), PreparedDirError> {
        let path = self.file(&record.spoke)?;
        self.check()?;
        let seq = TEMP_SEQ.fetch_add(1, Ordering::Relaxed);
        let temp = self.dir.join(format!(
            ".{}.{}-{seq}.tmp",
            record.spoke,
            std::process::id()
        ));
        let io = |op, path: &Path| {
            let path = path.to_owned();
            move |source| PreparedDirError::Io { op, path, source }
        };
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&temp)
            .map_err(io("create", &temp))?;
        let written = f
            .write_all(record.to_json().as_bytes())
            .and_then(|()| f.sync_all());
        drop(f);
        if let Err(e) = written.and_then(|()| fs::rename(&temp, &path)) {
            let _ = fs::remove_file(&temp);
            return Err(io("write", &path)(e));
        }
        Ok(())
    }

    /// Removes the record of `spoke`; true if there was one.
    pub fn remove(&self, spoke: &str) -> Result<bool, PreparedDirError> {
        let path = self.file(spoke)?;
        match fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(source) => Err(PreparedDirError::Io {
                op: "remove",
                path,
                source,
            }),
        }
    }

    /// Reads the record of `spoke`, if any (`None` also for an invalid file).
    pub fn read(&self, spoke: &str) -> Result<Option<PreparedSpoke>, PreparedDirError> {
        let path = self.file(spoke)?;
        Ok(read_record(&path).and_then(|(r, _)| r))
    }

    /// Every `<spoke>.json` of the directory (temporary files and other names are skipped).
    pub fn list(&self) -> Result<Vec<Listed>, PreparedDirError> {
        let io = |source| PreparedDirError::Io {
            op: "list",
            path: self.dir.clone(),
            source,
        };
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(io)? {
            let entry = entry.map_err(io)?;
            let name = entry.file_name();
            let Some(spoke) = spoke_of_file(&name) else {
                continue;
            };
            if let Some((record, modified)) = read_record(&entry.path()) {
                out.push(Listed {
                    spoke: spoke.to_string(),
                    record,
                    modified,
                });
            }
        }
        out.sort_by(|a, b| a.spoke.cmp(&b.spoke));
        Ok(out)
    }
}

/// The spoke of a record file name, if it is one.
fn spoke_of_file(name: &OsStr) -> Option<&str> {
    let spoke = name.to_str()?.strip_suffix(".json")?;
    validate::spoke_name("spoke", spoke).ok().map(|()| spoke)
}

/// Reads a record file without following a symlink, bounded in size; `None` when the file is
/// gone, `Some((None, _))` when it is no valid record.
fn read_record(path: &Path) -> Option<(Option<PreparedSpoke>, SystemTime)> {
    use std::io::Read;
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(path);
    let f = match f {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(_) => return Some((None, SystemTime::UNIX_EPOCH)),
    };
    let modified = f
        .metadata()
        .and_then(|m| m.modified())
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let mut buf = Vec::new();
    let limit = u64::try_from(MAX_NODE_FILE_BYTES).unwrap_or(u64::MAX) + 1;
    let ok = f.take(limit).read_to_end(&mut buf).is_ok();
    let record = ok.then(|| PreparedSpoke::parse(&buf).ok()).flatten();
    Some((record, modified))
}

#[cfg(test)]
mod tests {
    use k8slan_api::SpokeKind;

    use super::*;

    fn record(spoke: &str) -> PreparedSpoke {
        PreparedSpoke {
            lan_namespace: "lab".into(),
            lan_name: "lan1".into(),
            netns: "knl".into(),
            spoke: spoke.into(),
            kind: SpokeKind::Veth,
            link: spoke.into(),
            ifindex: 42,
            allowed_namespaces: vec![],
        }
    }

    #[test]
    fn records_are_written_0600_replaced_listed_and_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = PreparedDir::open(&tmp.path().join("prepared")).unwrap();
        let mode = fs::metadata(dir.path()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        dir.write(&record("srl")).unwrap();
        let mut again = record("srl");
        again.ifindex = 43;
        dir.write(&again).unwrap();
        let file = dir.path().join("srl.json");
        assert_eq!(
            fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(dir.read("srl").unwrap(), Some(again.clone()));
        fs::write(dir.path().join("junk.json"), "{").unwrap();
        fs::write(dir.path().join(".x.tmp"), "").unwrap();
        let listed = dir.list().unwrap();
        assert_eq!(listed.len(), 2, "{listed:?}");
        assert_eq!(listed[0].spoke, "junk");
        assert_eq!(listed[0].record, None);
        assert_eq!(listed[1].record, Some(again));
        assert!(dir.remove("srl").unwrap());
        assert!(!dir.remove("srl").unwrap());
    }

    #[test]
    fn a_symlink_is_never_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = PreparedDir::open(&tmp.path().join("prepared")).unwrap();
        let victim = tmp.path().join("victim");
        fs::write(&victim, "keep").unwrap();
        std::os::unix::fs::symlink(&victim, dir.path().join("srl.json")).unwrap();
        assert_eq!(dir.read("srl").unwrap(), None);
        dir.write(&record("srl")).unwrap();
        assert_eq!(fs::read_to_string(&victim).unwrap(), "keep");
        assert!(
            !fs::symlink_metadata(dir.path().join("srl.json"))
                .unwrap()
                .file_type()
                .is_symlink()
        );
        // The directory itself as a symlink, or open to others, is refused.
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(dir.path(), &link).unwrap();
        assert!(matches!(
            PreparedDir::open(&link),
            Err(PreparedDirError::Unsafe { .. })
        ));
        let open = tmp.path().join("open");
        fs::create_dir(&open).unwrap();
        fs::set_permissions(&open, fs::Permissions::from_mode(0o777)).unwrap();
        let e = PreparedDir::open(&open).unwrap_err().to_string();
        assert!(e.contains("group or others write"), "{e}");
    }

    #[test]
    fn spoke_names_cannot_escape_the_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = PreparedDir::open(tmp.path()).unwrap_or_else(|_| {
            fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o700)).unwrap();
            PreparedDir::open(tmp.path()).unwrap()
        });
        for bad in ["../x", "a/b", "", "x.json"] {
            assert!(dir.write(&record(bad)).is_err(), "{bad}");
            assert!(dir.remove(bad).is_err(), "{bad}");
        }
    }
}
