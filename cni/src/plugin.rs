//! One execution of a plugin binary: parse, dispatch, and the bytes to print on stdout.
//!
//! [`run_on`] does the work over a [`Host`] (the pod's links and the IPAM delegate) and the
//! node settings; [`run`] is the same against the real kernel ([`KernelHost`]). The property
//! tests drive [`run_on`] with recording doubles.

use k8slan_api::prepared::CniNodeSettings;
use tracing::{error, info_span, warn};

use crate::attach::{self, Binding};
use crate::config::{Attachment, Failure, PluginKind, Request, parse_request};
use crate::error::{CniError, ErrorCode};
use crate::invocation::Command;
use crate::ipam::{Delegate, Ipam};
use crate::link::{LinkOps, Netlink};
use crate::netns::{Netns, NetnsError};
use crate::node;

/// What the binary prints on stdout and whether it exits 0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub stdout: String,
    pub success: bool,
}

impl Outcome {
    pub fn failure(f: &Failure) -> Outcome {
        let obj = f.error.to_object(f.version);
        Outcome {
            stdout: serde_json::to_string(&obj).unwrap_or_default(),
            success: false,
        }
    }
}

/// The system side of one execution.
pub trait Host {
    /// Link operations in the node's namespace and the pod's namespace at `sandbox`; `Ok(None)`
    /// when that namespace does not exist (any more).
    fn links(&mut self, sandbox: &str) -> Result<Option<Box<dyn LinkOps>>, CniError>;
    /// The delegated IPAM plugin `plugin` of `att`.
    fn ipam(&mut self, att: &Attachment, plugin: &str) -> Box<dyn Ipam>;
}

/// [`Host`] of the real kernel and IPAM plugins from `CNI_PATH`.
pub struct KernelHost;

impl Host for KernelHost {
    fn links(&mut self, sandbox: &str) -> Result<Option<Box<dyn LinkOps>>, CniError> {
        let ns = match Netns::open(sandbox) {
            Ok(ns) => ns,
            Err(NetnsError::Missing { .. }) => return Ok(None),
            Err(e) => return Err(netns_error(e)),
        };
        let links = Netlink::open(Some(ns))
            .map_err(|e| CniError::new(ErrorCode::IoFailure, e.to_string()))?;
        Ok(Some(Box::new(links)))
    }

    fn ipam(&mut self, att: &Attachment, plugin: &str) -> Box<dyn Ipam> {
        Box::new(Delegate::new(plugin, &att.env.path, &att.raw_config))
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

/// Runs `plugin` with the environment `get` and configuration `stdin`, against the real kernel.
pub fn run(
    plugin: PluginKind,
    get: &dyn Fn(&str) -> Option<String>,
    stdin: &[u8],
    settings: &Result<CniNodeSettings, CniError>,
) -> Outcome {
    run_on(plugin, get, stdin, settings, &mut KernelHost)
}

/// Runs `plugin` over `host`. `settings` are the node settings, or why they cannot be read
/// (then only `VERSION` and `DEL` run, `DEL` with the default paths, so that cleanup works).
pub fn run_on(
    plugin: PluginKind,
    get: &dyn Fn(&str) -> Option<String>,
    stdin: &[u8],
    settings: &Result<CniNodeSettings, CniError>,
    host: &mut dyn Host,
) -> Outcome {
    let span = info_span!("cni", plugin = plugin.cni_type());
    let _enter = span.enter();
    let att = match parse_request(plugin, get, stdin) {
        Ok(Request::Version(v)) => {
            return Outcome {
                stdout: serde_json::to_string(&v).unwrap_or_default(),
                success: true,
            };
        }
        Ok(Request::Attachment(att)) => att,
        Err(f) => {
            error!(code = f.error.code.code(), "{}", f.error);
            return Outcome::failure(&f);
        }
    };
    match execute(&att, settings, host) {
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
    }
}

fn execute(
    att: &Attachment,
    settings: &Result<CniNodeSettings, CniError>,
    host: &mut dyn Host,
) -> Result<String, CniError> {
    for key in &att.ignored_keys {
        warn!(
            key,
            "ignored on DEL: this key now comes from the node's settings"
        );
    }
    let mut ipam = att.ipam.as_deref().map(|p| host.ipam(att, p));
    let ipam = ipam.as_mut().map(|i| i.as_mut() as &mut dyn Ipam);
    match att.env.command {
        Command::Add => add(att, settings.as_ref().map_err(Clone::clone)?, host, ipam),
        Command::Check => {
            settings.as_ref().map_err(Clone::clone)?;
            let sandbox = att.env.netns.as_deref().unwrap_or_default();
            let mut links = pod_links(host, sandbox)?;
            attach::check(att, sandbox, links.as_mut(), ipam).map(|()| String::new())
        }
        Command::Del => del(att, host, ipam),
        Command::Version => Ok(String::new()),
    }
}

fn pod_links(host: &mut dyn Host, sandbox: &str) -> Result<Box<dyn LinkOps>, CniError> {
    host.links(sandbox)?.ok_or_else(|| {
        CniError::new(
            ErrorCode::UnknownContainer,
            format!(
                "CNI_NETNS: network namespace {sandbox:?} does not exist (the pod sandbox is gone or the path is wrong)"
            ),
        )
    })
}

/// ADD: the spoke's record first (nothing is opened for a spoke the agent did not prepare),
/// then the pod's namespace.
fn add(
    att: &Attachment,
    settings: &CniNodeSettings,
    host: &mut dyn Host,
    ipam: Option<&mut dyn Ipam>,
) -> Result<String, CniError> {
    let record = node::load_record(&settings.prepared_dir, &att.target)?;
    let binding = Binding::authorize(att, &record, &settings.dev_dir)?;
    let sandbox = att.env.netns.as_deref().unwrap_or_default();
    let mut links = pod_links(host, sandbox)?;
    let result = attach::add(att, &binding, sandbox, links.as_mut(), ipam)?;
    Ok(result.to_value(att.version).to_string())
}

fn del(
    att: &Attachment,
    host: &mut dyn Host,
    ipam: Option<&mut dyn Ipam>,
) -> Result<String, CniError> {
    let links = match att.env.netns.as_deref() {
        None => None,
        Some(sandbox) => {
            let links = host.links(sandbox)?;
            if links.is_none() {
                warn!(%sandbox, "pod network namespace is gone; only releasing IPAM");
            }
            links
        }
    };
    let mut links = links;
    attach::del(
        att,
        att.env.netns.as_deref(),
        links.as_deref_mut().map(|l| l as &mut dyn LinkOps),
        ipam,
    )
    .map(|()| String::new())
}
