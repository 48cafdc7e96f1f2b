//! Delegation of address management to an IPAM plugin (CNI 1.0.0, section 4): the plugin is
//! looked up in `CNI_PATH`, run with this process's environment (only `CNI_COMMAND` may differ)
//! and the complete network configuration on stdin; its stderr goes to ours.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command as Process, Stdio};

use crate::error::{CniError, ErrorCode, ErrorObject};
use crate::invocation::Command;
use crate::result::CniResult;

/// The IPAM operations an attachment needs; [`Delegate`] runs a real plugin.
pub trait Ipam {
    fn add(&mut self) -> Result<CniResult, CniError>;
    fn del(&mut self) -> Result<(), CniError>;
    fn check(&mut self) -> Result<(), CniError>;
}

/// An IPAM plugin executable from `CNI_PATH`.
pub struct Delegate {
    plugin: String,
    search: Vec<PathBuf>,
    config: Vec<u8>,
}

impl Delegate {
    /// `plugin` must already be validated as a bare file name (see `config`).
    pub fn new(plugin: &str, search: &[PathBuf], config: &[u8]) -> Delegate {
        Delegate {
            plugin: plugin.to_owned(),
            search: search.to_vec(),
            config: config.to_vec(),
        }
    }

    fn find(&self) -> Result<PathBuf, CniError> {
        if self.search.is_empty() {
            return Err(CniError::new(
                ErrorCode::InvalidEnvironment,
                format!(
                    "CNI_PATH: is empty, so IPAM plugin {:?} cannot be found; the runtime must pass its plugin directories",
                    self.plugin
                ),
            ));
        }
        self.search
            .iter()
            .map(|dir| dir.join(&self.plugin))
            .find(|p| is_executable(p))
            .ok_or_else(|| {
                CniError::new(
                    ErrorCode::InvalidConfig,
                    format!(
                        "ipam.type {:?}: no executable of that name in CNI_PATH ({}); install the IPAM plugin there or fix ipam.type",
                        self.plugin,
                        self.search.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(":")
                    ),
                )
            })
    }

    #[tracing::instrument(skip(self), fields(plugin = %self.plugin))]
    fn run(&self, command: Command) -> Result<Vec<u8>, CniError> {
        let exe = self.find()?;
        let io = |what: &str, e: std::io::Error| {
            CniError::new(
                ErrorCode::IoFailure,
                format!(
                    "IPAM plugin {} {}: {what}: {e}",
                    exe.display(),
                    command.as_str()
                ),
            )
        };
        let mut child = Process::new(&exe)
            .env("CNI_COMMAND", command.as_str())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| io("cannot start it", e))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(&self.config)
                .map_err(|e| io("cannot write the configuration to it", e))?;
        }
        let out = child
            .wait_with_output()
            .map_err(|e| io("cannot read its answer", e))?;
        if out.status.success() {
            tracing::debug!(status = %out.status, "IPAM plugin succeeded");
            return Ok(out.stdout);
        }
        // Pass the delegated plugin's own error on, with its code.
        match serde_json::from_slice::<ErrorObject>(&out.stdout) {
            Ok(obj) => Err(CniError::new(
                ErrorCode::from_code(obj.code),
                format!(
                    "IPAM plugin {} {} failed: {}{}{}",
                    self.plugin,
                    command.as_str(),
                    obj.msg,
                    if obj.details.is_empty() { "" } else { ": " },
                    obj.details
                ),
            )),
            Err(_) => Err(CniError::new(
                ErrorCode::IoFailure,
                format!(
                    "IPAM plugin {} {} failed with {} and no error object: {}",
                    self.plugin,
                    command.as_str(),
                    out.status,
                    String::from_utf8_lossy(&out.stdout)
                        .chars()
                        .take(512)
                        .collect::<String>()
                ),
            )),
        }
    }
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

impl Ipam for Delegate {
    fn add(&mut self) -> Result<CniResult, CniError> {
        let out = self.run(Command::Add)?;
        let value: serde_json::Value = serde_json::from_slice(&out).map_err(|e| {
            CniError::new(
                ErrorCode::DecodeFailure,
                format!(
                    "IPAM plugin {} ADD answered something that is not JSON: {e}",
                    self.plugin
                ),
            )
        })?;
        let result =
            CniResult::from_value(&format!("IPAM plugin {} ADD result", self.plugin), &value)
                .map_err(|e| CniError::new(ErrorCode::DecodeFailure, e.to_string()))?;
        if result.ips.is_empty() {
            return Err(CniError::new(
                ErrorCode::InvalidConfig,
                format!(
                    "IPAM plugin {} ADD returned no address; check the ipam section",
                    self.plugin
                ),
            ));
        }
        Ok(result)
    }

    fn del(&mut self) -> Result<(), CniError> {
        self.run(Command::Del).map(drop)
    }

    fn check(&mut self) -> Result<(), CniError> {
        self.run(Command::Check).map(drop)
    }
}
