//! Logs go to stderr or to a file, never to stdout (which carries only the result).

use std::fs::OpenOptions;
use std::sync::Mutex;

use tracing_subscriber::EnvFilter;

use crate::config::LogSettings;

/// Installs the global subscriber. Falls back to stderr when the log file cannot be opened.
pub fn init(settings: &LogSettings) {
    let filter = EnvFilter::try_new(settings.level.as_deref().unwrap_or("info"))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_target(false);
    let file = settings.file.as_ref().map(|path| {
        (
            path,
            OpenOptions::new().create(true).append(true).open(path),
        )
    });
    match file {
        Some((_, Ok(f))) => {
            let _ = builder.with_writer(Mutex::new(f)).try_init();
        }
        Some((path, Err(e))) => {
            let _ = builder.with_writer(std::io::stderr).try_init();
            tracing::warn!(path = %path.display(), error = %e, "cannot open the log file; logging to stderr");
        }
        None => {
            let _ = builder.with_writer(std::io::stderr).try_init();
        }
    }
}
