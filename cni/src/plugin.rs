//! One execution of a plugin binary: parse, dispatch, and the bytes to print on stdout.

use tracing::{error, info_span, warn};

use crate::attach;
use crate::config::{Attachment, Failure, PluginKind, Request, parse_request};
use crate::error::{CniError, ErrorCode};
use crate::invocation::Command;
use crate::ipam::{Delegate, Ipam};
use crate::link::Netlink;
use crate::netns::{Netns, NetnsError};

/// What the binary prints on stdout and whether it exits 0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub stdout: String,
    pub success: bool,
}

impl Outcome {
    fn failure(f: &Failure) -> Outcome {
        let obj = f.error.to_object(f.version);
        Outcome {
            stdout: serde_json::to_string(&obj).unwrap_or_default(),
            success: false,
        }
    }
}

/// Runs `plugin` with the environment `get` and configuration `stdin`, against the real kernel.
pub fn run(plugin: PluginKind, get: &dyn Fn(&str) -> Option<String>, stdin: &[u8]) -> Outcome {
    let span = info_span!("cni", plugin = plugin.cni_type());
    let _enter = span.enter();
    let request = match parse_request(plugin, get, stdin) {
        Ok(r) => r,
        Err(f) => {
            error!(code = f.error.code.code(), "{}", f.error);
            return Outcome::failure(&f);
        }
    };
    match request {
        Request::Version(v) => Outcome {
            stdout: serde_json::to_string(&v).unwrap_or_default(),
            success: true,
        },
        Request::Attachment(att) => match execute(&att) {
            Ok(stdout) => Outcome {
                stdout,
                success: true,
            },
            Err(error) => {
                error!(code = error.code.code(), "{error}");
                Outcome::failure(&Failure {
                    version: Some(att.version),
                    error,
                })
            }
        },
    }
}

fn execute(att: &Attachment) -> Result<String, CniError> {
    let mut delegate = att
        .ipam
        .as_deref()
        .map(|p| Delegate::new(p, &att.env.path, &att.raw_config));
    let ipam = delegate.as_mut().map(|d| d as &mut dyn Ipam);
    match att.env.command {
        Command::Add | Command::Check => {
            let path = att.env.netns.as_deref().unwrap_or_default();
            let ns = Netns::open(path).map_err(netns_error)?;
            let mut links = Netlink::open(Some(ns))
                .map_err(|e| CniError::new(ErrorCode::IoFailure, e.to_string()))?;
            if att.env.command == Command::Add {
                let result = attach::add(att, path, &mut links, ipam)?;
                Ok(result.to_value(att.version).to_string())
            } else {
                attach::check(att, path, &mut links, ipam).map(|()| String::new())
            }
        }
        Command::Del => {
            let ns = match att.env.netns.as_deref().map(Netns::open) {
                None => None,
                Some(Ok(ns)) => Some(ns),
                Some(Err(NetnsError::Missing { path })) => {
                    warn!(%path, "pod network namespace is gone; only releasing IPAM");
                    None
                }
                Some(Err(e)) => return Err(netns_error(e)),
            };
            let sandbox = ns.as_ref().map(|n| n.path().to_owned());
            let mut links = match ns {
                Some(ns) => Some(
                    Netlink::open(Some(ns))
                        .map_err(|e| CniError::new(ErrorCode::IoFailure, e.to_string()))?,
                ),
                None => None,
            };
            attach::del(
                att,
                sandbox.as_deref(),
                links.as_mut().map(|l| l as &mut dyn crate::link::LinkOps),
                ipam,
            )
            .map(|()| String::new())
        }
        Command::Version => unreachable!("VERSION is answered while parsing"),
    }
}

fn netns_error(e: NetnsError) -> CniError {
    let code = match e {
        NetnsError::Missing { .. } => ErrorCode::UnknownContainer,
        NetnsError::NotNetns { .. } => ErrorCode::InvalidEnvironment,
        NetnsError::Open { .. } => ErrorCode::IoFailure,
    };
    CniError::new(code, format!("CNI_NETNS: {e}"))
}
