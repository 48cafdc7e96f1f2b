//! Delegation of address management to an IPAM plugin (CNI 1.0.0, section 4): the plugin is
//! looked up in `CNI_PATH`, run with this process's environment (only `CNI_COMMAND` may differ)
//! and the complete network configuration on stdin; its stderr goes to ours. Its answer is
//! bounded: at most [`MAX_IPAM_OUTPUT`] bytes within [`IPAM_TIMEOUT`], else it is killed and the
//! command fails with a message saying which bound it broke.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command as Process, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::error::{CniError, ErrorCode, ErrorObject};
use crate::invocation::Command;
use crate::result::CniResult;

/// The IPAM operations an attachment needs; [`Delegate`] runs a real plugin.
pub trait Ipam {
    fn add(&mut self) -> Result<CniResult, CniError>;
    fn del(&mut self) -> Result<(), CniError>;
    fn check(&mut self) -> Result<(), CniError>;
}

/// Largest answer read from an IPAM plugin.
pub const MAX_IPAM_OUTPUT: usize = 1024 * 1024;
/// Longest an IPAM plugin may take for one command.
pub const IPAM_TIMEOUT: Duration = Duration::from_secs(60);

/// An IPAM plugin executable from `CNI_PATH`.
pub struct Delegate {
    plugin: String,
    search: Vec<PathBuf>,
    config: Vec<u8>,
    timeout: Duration,
    max_output: usize,
}

impl Delegate {
    /// `plugin` must already be validated as a bare file name (see `config`).
    pub fn new(plugin: &str, search: &[PathBuf], config: &[u8]) -> Delegate {
        Delegate {
            plugin: plugin.to_owned(),
            search: search.to_vec(),
            config: config.to_vec(),
            timeout: IPAM_TIMEOUT,
            max_output: MAX_IPAM_OUTPUT,
        }
    }

    /// The same with other bounds (tests).
    pub fn with_bounds(mut self, timeout: Duration, max_output: usize) -> Delegate {
        self.timeout = timeout;
        self.max_output = max_output;
        self
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
        let child = Process::new(&exe)
            .env("CNI_COMMAND", command.as_str())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| io("cannot start it", e))?;
        let out = bounded(child, &self.config, self.timeout, self.max_output).map_err(|e| {
            CniError::new(
                ErrorCode::IoFailure,
                format!("IPAM plugin {} {}: {e}", exe.display(), command.as_str()),
            )
        })?;
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

/// What a delegated plugin answered: its exit status and stdout.
struct Answer {
    status: ExitStatus,
    stdout: Vec<u8>,
}

/// Why a delegated plugin's answer was not taken.
#[derive(Debug, thiserror::Error)]
pub enum BoundedError {
    #[error("gave no answer within {0:?}; it was killed")]
    Timeout(Duration),
    #[error("answered more than {0} bytes; it was killed")]
    TooLarge(usize),
    #[error("cannot read its answer: {0}")]
    Io(std::io::Error),
}

/// Feeds `input` to `child`, reads at most `limit` bytes of its stdout and waits for it to exit,
/// all within `timeout`; kills it when it breaks either bound.
fn bounded(
    mut child: Child,
    input: &[u8],
    timeout: Duration,
    limit: usize,
) -> Result<Answer, BoundedError> {
    let deadline = Instant::now() + timeout;
    if let Some(mut stdin) = child.stdin.take() {
        let input = input.to_vec();
        // A plugin that does not read its stdin must not block us: write from a thread.
        std::thread::spawn(move || stdin.write_all(&input));
    }
    let (tx, rx) = mpsc::channel();
    if let Some(stdout) = child.stdout.take() {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let read = stdout.take(limit as u64 + 1).read_to_end(&mut buf);
            let _ = tx.send(read.map(|_| buf));
        });
    }
    let stdout = match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        Ok(Ok(buf)) if buf.len() > limit => Err(BoundedError::TooLarge(limit)),
        Ok(Ok(buf)) => Ok(buf),
        Ok(Err(e)) => Err(BoundedError::Io(e)),
        Err(_) => Err(BoundedError::Timeout(timeout)),
    };
    let stdout = stdout.inspect_err(|_| kill(&mut child))?;
    let status = wait_until(&mut child, deadline, timeout)?;
    Ok(Answer { status, stdout })
}

fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

fn wait_until(
    child: &mut Child,
    deadline: Instant,
    timeout: Duration,
) -> Result<ExitStatus, BoundedError> {
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Ok(status),
            Ok(None) if Instant::now() >= deadline => {
                kill(child);
                return Err(BoundedError::Timeout(timeout));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => return Err(BoundedError::Io(e)),
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn plugin(dir: &Path, script: &str) -> Delegate {
        let path = dir.join("ipam-test");
        std::fs::write(&path, format!("#!/bin/sh\n{script}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        Delegate::new("ipam-test", &[dir.to_owned()], b"{}")
            .with_bounds(Duration::from_millis(500), 4096)
    }

    fn run_retrying(d: &mut Delegate) -> Result<CniResult, CniError> {
        // ETXTBSY while another test thread forks: retry (the script was just written).
        for _ in 0..50 {
            match d.add() {
                Err(e) if e.details.contains("Text file busy") => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                other => return other,
            }
        }
        d.add()
    }

    #[test]
    fn a_plugin_that_never_answers_is_killed_at_the_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let mut d = plugin(dir.path(), "exec sleep 30");
        let start = Instant::now();
        let e = run_retrying(&mut d).unwrap_err();
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{:?}",
            start.elapsed()
        );
        assert_eq!(e.code, ErrorCode::IoFailure);
        assert!(e.details.contains("no answer within"), "{e}");
    }

    #[test]
    fn a_plugin_that_answers_too_much_or_leaves_stdout_open_in_a_child_is_refused() {
        for (script, says) in [
            ("head -c 100000 /dev/zero; sleep 30", "more than 4096 bytes"),
            ("echo '{}'; (sleep 30 &)", "no answer within"),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let mut d = plugin(dir.path(), script);
            let e = run_retrying(&mut d).unwrap_err();
            assert!(e.details.contains(says), "{script}: {e}");
        }
    }

    #[test]
    fn a_prompt_answer_is_taken() {
        let dir = tempfile::tempdir().unwrap();
        let mut d = plugin(
            dir.path(),
            r#"cat >/dev/null; echo '{"cniVersion":"1.0.0","ips":[{"address":"198.18.0.2/24"}]}'"#,
        );
        let r = run_retrying(&mut d).unwrap();
        assert_eq!(r.ips.len(), 1);
    }
}
