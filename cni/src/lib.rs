//! Shared code of the k8slanveth and k8slanmacvtap CNI plugins (CNI specification 1.0.0,
//! accepting configurations of 0.3.0, 0.3.1 and 0.4.0 too).
//!
//! Layers: [`invocation`] and [`config`] parse and validate everything without touching the
//! system ([`config::parse_request`] is the single entry point); [`prepared`] holds the rules of
//! what may be bound (the agent's record, the pod's namespace); [`attach`] holds the ADD, DEL
//! and CHECK logic over the [`link::LinkOps`] and [`ipam::Ipam`] traits; [`node`] reads the
//! agent's files on the node; [`link::Netlink`], [`netns`] and [`ipam::Delegate`] are the real
//! kernel and process side; [`plugin::run`] ties them together for the binaries. Test doubles
//! ([`testing`]) and the fuzz harness ([`fuzzing`]) are built only with the `testing` feature.

pub mod attach;
pub mod config;
pub mod error;
#[cfg(any(test, feature = "testing"))]
pub mod fuzzing;
pub mod invocation;
pub mod ipam;
pub mod link;
pub mod logging;
pub mod mac;
pub mod netns;
pub mod node;
pub mod plugin;
pub mod prepared;
pub mod result;
pub mod tap;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod version;

/// Marker compiled into both plugin binaries (and, through [`k8slan_api::naming::RESOURCE_DOMAIN`],
/// into every k8slan CNI build before it): `k8slan-agent install-cni` tells a k8slan build from a
/// foreign binary of the same name by it.
#[used]
pub static BUILD_MARKER: &str = k8slan_api::naming::RESOURCE_DOMAIN;

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
    let settings = node::settings_of_this_plugin();
    logging::init(settings.as_ref().ok());
    if let Err(e) = &settings {
        tracing::warn!(error = %e, "node settings unusable: only VERSION and DEL will run");
    }
    let outcome = match read {
        Ok(_) => plugin::run(plugin, &get, &stdin, &settings),
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
