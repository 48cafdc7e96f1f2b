//! Shared code of the k8slanveth and macvtap CNI plugins (CNI specification 1.0.0, accepting
//! configurations of 0.3.0, 0.3.1 and 0.4.0 too).
//!
//! Layers: [`invocation`] and [`config`] parse and validate everything without touching the
//! system ([`config::parse_request`] is the single entry point); [`attach`] holds the ADD, DEL
//! and CHECK logic over the [`link::LinkOps`] and [`ipam::Ipam`] traits; [`link::Netlink`],
//! [`netns`] and [`ipam::Delegate`] are the real kernel and process side; [`plugin::run`] ties
//! them together for the binaries.

pub mod attach;
pub mod config;
pub mod error;
pub mod fuzzing;
pub mod invocation;
pub mod ipam;
pub mod link;
pub mod logging;
pub mod mac;
pub mod netns;
pub mod plugin;
pub mod result;
pub mod tap;
pub mod version;

pub use config::{PluginKind, parse_request};
pub use error::{CniError, ErrorCode};
pub use version::CniVersion;

use std::io::{Read, Write};

/// Entry point of both binaries: reads stdin (bounded), sets up logging, runs, prints the result
/// or the error object on stdout and returns the process exit code.
pub fn main_for(plugin: PluginKind) -> std::process::ExitCode {
    let get = |k: &str| std::env::var(k).ok();
    let mut stdin = Vec::new();
    let read = std::io::stdin()
        .lock()
        .take(config::MAX_CONFIG_BYTES as u64 + 1)
        .read_to_end(&mut stdin);
    logging::init(&config::log_settings(&get, &stdin));
    let outcome = match read {
        Ok(_) => plugin::run(plugin, &get, &stdin),
        Err(e) => {
            let err = CniError::new(
                ErrorCode::IoFailure,
                format!("cannot read the network configuration from stdin: {e}"),
            );
            tracing::error!("{err}");
            plugin::Outcome {
                stdout: serde_json::to_string(&err.to_object(None)).unwrap_or_default(),
                success: false,
            }
        }
    };
    let mut out = std::io::stdout().lock();
    let _ = out
        .write_all(outcome.stdout.as_bytes())
        .and_then(|()| out.flush());
    if outcome.success {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}
