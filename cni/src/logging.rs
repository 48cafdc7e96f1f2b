//! Logs go to stderr or to the node's log file, never to stdout (which carries only the result).
//! The file and level come only from the node settings (`k8slan-cni.json`), never from a network
//! configuration; the file is opened without following symlinks, created with mode 0600, and
//! used only if it is a regular file.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Mutex;

use k8slan_api::prepared::CniNodeSettings;
use tracing_subscriber::EnvFilter;

/// Levels accepted in the settings' `logLevel`.
pub const LEVELS: [&str; 5] = ["trace", "debug", "info", "warn", "error"];

/// Opens (or creates, mode 0600) the log file for appending, refusing a symlink, FIFO, device
/// or directory.
pub fn open_log_file(path: &Path) -> io::Result<File> {
    let file = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOCTTY)
        .open(path)?;
    if !file.metadata()?.file_type().is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    Ok(file)
}

/// Installs the global subscriber from the node settings (stderr and `info` without them).
/// Falls back to stderr when the log file cannot be opened.
pub fn init(settings: Option<&CniNodeSettings>) {
    let level = settings
        .and_then(|s| s.log_level.as_deref())
        .filter(|l| LEVELS.contains(l))
        .unwrap_or("info");
    let builder = tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::new(level))
        .with_ansi(false)
        .with_target(false);
    let file = settings
        .and_then(|s| s.log_file.as_deref())
        .map(|path| (path, open_log_file(path)));
    match file {
        Some((_, Ok(f))) => {
            let _ = builder.with_writer(Mutex::new(f)).try_init();
        }
        Some((path, Err(e))) => {
            let _ = builder.with_writer(io::stderr).try_init();
            tracing::warn!(path = %path.display(), error = %e, "cannot open the log file; logging to stderr");
        }
        None => {
            let _ = builder.with_writer(io::stderr).try_init();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_log_file_is_created_0600_and_never_through_a_symlink_or_fifo() {
        let d = tempfile::tempdir().unwrap();
        let log = d.path().join("cni.log");
        open_log_file(&log).unwrap();
        let mode = std::fs::metadata(&log).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let victim = d.path().join("victim");
        std::fs::write(&victim, "keep").unwrap();
        let link = d.path().join("link.log");
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        assert!(open_log_file(&link).is_err());
        let dangling = d.path().join("dangling.log");
        std::os::unix::fs::symlink(d.path().join("nowhere"), &dangling).unwrap();
        assert!(open_log_file(&dangling).is_err());
        assert!(
            !d.path().join("nowhere").exists(),
            "no file created through the link"
        );
        let fifo = d.path().join("fifo.log");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        assert!(open_log_file(&fifo).is_err());
        assert!(open_log_file(d.path()).is_err());
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep");
    }
}
