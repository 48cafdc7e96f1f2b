//! The network configuration on stdin and its validation into an [`Attachment`]: everything the
//! plugins need, checked before any system call. [`parse_request`] is the single parse entry
//! point (also driven by the fuzz target and the property tests).

use std::path::PathBuf;

use k8slan_api::naming::{self, SpokeKind};
use k8slan_api::validate;
use serde::Deserialize;
use serde_json::Value;

use crate::error::{CniError, ErrorCode};
use crate::invocation::{self, Command, Environment};
use crate::mac::MacAddr;
use crate::result::CniResult;
use crate::version::{CniVersion, VersionInfo};

/// Largest accepted configuration on stdin.
pub const MAX_CONFIG_BYTES: usize = 1024 * 1024;
/// Accepted MTU range (IPv4 minimum to the largest 16-bit value).
pub const MTU_RANGE: std::ops::RangeInclusive<u32> = 68..=65535;

/// Which of the two plugins is running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PluginKind {
    /// `k8slanveth`: moves the spoke's host veth end into a pod.
    Veth,
    /// `macvtap`: moves the spoke's macvtap into a (KubeVirt virt-launcher) pod.
    Macvtap,
}

impl PluginKind {
    /// The CNI `type`, which is also the binary's name.
    pub fn cni_type(self) -> &'static str {
        self.spoke_kind().cni_type()
    }

    pub fn spoke_kind(self) -> SpokeKind {
        match self {
            PluginKind::Veth => SpokeKind::Veth,
            PluginKind::Macvtap => SpokeKind::Mac,
        }
    }

    /// The kernel link kind of the prepared link.
    pub fn link_kind(self) -> &'static str {
        match self {
            PluginKind::Veth => "veth",
            PluginKind::Macvtap => "macvtap",
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct NetConf {
    name: Option<String>,
    #[serde(rename = "type")]
    plugin_type: Option<String>,
    #[serde(default)]
    veth: Option<String>,
    #[serde(rename = "deviceID", default)]
    device_id: Option<String>,
    #[serde(default)]
    mtu: Option<u32>,
    #[serde(default)]
    mac: Option<String>,
    #[serde(default)]
    ipam: Option<IpamConf>,
    #[serde(default)]
    runtime_config: Option<RuntimeConfig>,
    #[serde(default)]
    prev_result: Option<Value>,
    #[serde(default)]
    log_file: Option<String>,
    #[serde(default)]
    log_level: Option<String>,
    #[serde(default)]
    dev_dir: Option<String>,
}

#[derive(Debug, Deserialize)]
struct IpamConf {
    #[serde(rename = "type")]
    plugin_type: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct RuntimeConfig {
    #[serde(default)]
    mac: Option<String>,
}

/// Which prepared link an attachment binds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub plugin: PluginKind,
    /// Name of the prepared link in the host (node) namespace.
    pub host_link: String,
    /// The spoke, when known (always for `k8slanveth`; for `macvtap` when the network name is
    /// `k8slan-mac-<spoke>`). Used in messages.
    pub spoke: Option<String>,
}

impl Target {
    /// The extended resource a pod must request to get this link prepared, for messages.
    pub fn resource_hint(&self) -> String {
        match &self.spoke {
            Some(s) => naming::resource_name(self.plugin.spoke_kind(), s),
            None => format!(
                "{}/{}<spoke>",
                naming::RESOURCE_DOMAIN,
                naming::nad_name(self.plugin.spoke_kind(), "")
            ),
        }
    }
}

/// Where a MAC address came from (for logs and the README's precedence rule).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MacSource {
    RuntimeConfig,
    CniArgs,
    Config,
}

/// Log destination and level chosen by the configuration or the environment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogSettings {
    pub file: Option<PathBuf>,
    pub level: Option<String>,
}

/// A validated `ADD`, `DEL` or `CHECK`.
#[derive(Debug, Clone)]
pub struct Attachment {
    pub version: CniVersion,
    pub env: Environment,
    pub network: String,
    pub target: Target,
    /// MTU to set; `None` keeps the prepared link's MTU.
    pub mtu: Option<u32>,
    pub mac: Option<(MacAddr, MacSource)>,
    /// The IPAM plugin's binary name, when the configuration delegates addresses.
    pub ipam: Option<String>,
    pub prev_result: Option<CniResult>,
    /// The configuration exactly as received, handed to the IPAM plugin.
    pub raw_config: Vec<u8>,
    /// The node agent's directory of VM spokes' tap device nodes (config `devDir`, default
    /// `/run/k8slan/dev`): `macvtap` refreshes the node there when moving the macvtap into the
    /// pod gave its tap device another number.
    pub dev_dir: PathBuf,
}

/// A parsed invocation.
#[derive(Debug, Clone)]
pub enum Request {
    Version(VersionInfo),
    Attachment(Box<Attachment>),
}

/// A rejected invocation: the error and the version to write the error object in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub version: Option<CniVersion>,
    pub error: CniError,
}

impl Failure {
    fn new(version: Option<CniVersion>, code: ErrorCode, details: impl Into<String>) -> Self {
        Failure {
            version,
            error: CniError::new(code, details),
        }
    }
}

fn shown(s: &str) -> String {
    s.chars().take(64).collect()
}

/// Parses the environment and the configuration of one execution of `plugin`. Pure: no file,
/// network or namespace is touched.
pub fn parse_request(
    plugin: PluginKind,
    get: &dyn Fn(&str) -> Option<String>,
    stdin: &[u8],
) -> Result<Request, Failure> {
    let command = invocation::command(get).map_err(|error| Failure {
        version: None,
        error,
    })?;
    if stdin.len() > MAX_CONFIG_BYTES {
        return Err(Failure::new(
            None,
            ErrorCode::DecodeFailure,
            format!("the network configuration on stdin is larger than {MAX_CONFIG_BYTES} bytes"),
        ));
    }
    if command == Command::Version {
        // VERSION may come with `{"cniVersion": ...}` or nothing at all.
        let requested = serde_json::from_slice::<Value>(stdin).ok().and_then(|v| {
            v.get("cniVersion")
                .and_then(Value::as_str)
                .map(str::to_owned)
        });
        return Ok(Request::Version(VersionInfo::answer(requested.as_deref())));
    }
    let value: Value = serde_json::from_slice(stdin).map_err(|e| {
        Failure::new(
            None,
            ErrorCode::DecodeFailure,
            format!("the network configuration on stdin is not JSON: {e}"),
        )
    })?;
    let Some(obj) = value.as_object() else {
        return Err(Failure::new(
            None,
            ErrorCode::DecodeFailure,
            "the network configuration on stdin is not a JSON object",
        ));
    };
    let version = match obj.get("cniVersion") {
        Some(Value::String(v)) => CniVersion::parse(v).ok_or_else(|| {
            Failure::new(
                None,
                ErrorCode::IncompatibleVersion,
                format!(
                    "cniVersion {:?} is not supported; use one of {}",
                    shown(v),
                    CniVersion::supported_list()
                ),
            )
        })?,
        Some(_) => {
            return Err(Failure::new(
                None,
                ErrorCode::IncompatibleVersion,
                "cniVersion must be a string such as \"1.0.0\"",
            ));
        }
        None => {
            return Err(Failure::new(
                None,
                ErrorCode::IncompatibleVersion,
                format!(
                    "cniVersion is missing; set one of {}",
                    CniVersion::supported_list()
                ),
            ));
        }
    };
    let v = Some(version);
    let env = Environment::parse(command, get).map_err(|error| Failure { version: v, error })?;
    if command == Command::Check && !version.has_check() {
        return Err(Failure::new(
            v,
            ErrorCode::IncompatibleVersion,
            format!("CHECK is not part of CNI {version}; it needs cniVersion 0.4.0 or later"),
        ));
    }
    let conf: NetConf = serde_json::from_value(value.clone()).map_err(|e| {
        Failure::new(
            v,
            ErrorCode::InvalidConfig,
            format!("network configuration: {e}"),
        )
    })?;
    let invalid = |details: String| Failure::new(v, ErrorCode::InvalidConfig, details);

    let network = conf.name.clone().ok_or_else(|| {
        invalid("name is missing; the network needs a name such as k8slan-veth-<spoke>".into())
    })?;
    network_name_rule(&network).map_err(invalid)?;
    match &conf.plugin_type {
        Some(t) if !t.is_empty() && !t.contains('/') && t != "." && t != ".." => {}
        other => {
            return Err(invalid(format!(
                "type {:?} must be the plugin's binary name, here {:?}",
                other.as_deref().map(shown),
                plugin.cni_type()
            )));
        }
    }
    let target =
        resolve_target(plugin, &conf, &network).map_err(|(code, d)| Failure::new(v, code, d))?;
    if let Some(mtu) = conf.mtu
        && !MTU_RANGE.contains(&mtu)
    {
        return Err(invalid(format!(
            "mtu {mtu} is out of range {}-{}; omit it to keep the prepared link's MTU",
            MTU_RANGE.start(),
            MTU_RANGE.end()
        )));
    }
    let ipam = match &conf.ipam {
        None => None,
        Some(_) if plugin == PluginKind::Macvtap => {
            let shown_ipam = obj
                .get("ipam")
                .map(|i| shown(&i.to_string()))
                .unwrap_or_default();
            return Err(Failure::new(
                v,
                ErrorCode::UnsupportedField,
                format!(
                    "ipam = {shown_ipam}: the macvtap plugin hands a layer-2 link to a VM and configures no addresses; remove ipam (configure addresses inside the VM)"
                ),
            ));
        }
        Some(ipam) => match ipam.plugin_type.as_deref() {
            Some(t) if plugin_name_ok(t) => Some(t.to_owned()),
            other => {
                return Err(invalid(format!(
                    "ipam.type {:?} must be the name of an IPAM plugin binary in CNI_PATH, e.g. \"host-local\"",
                    other.map(shown)
                )));
            }
        },
    };
    let mac = resolve_mac(&conf, &env).map_err(|(code, d)| Failure::new(v, code, d))?;
    let prev_result = conf
        .prev_result
        .as_ref()
        .filter(|p| !p.is_null())
        .map(|p| CniResult::from_value("prevResult", p))
        .transpose()
        .map_err(|e| Failure::new(v, ErrorCode::DecodeFailure, e.to_string()))?;
    if command == Command::Check && prev_result.is_none() {
        return Err(invalid("prevResult is missing; CHECK compares the attachment with the result of the preceding ADD".into()));
    }
    log_settings_of(conf.log_file.as_deref(), conf.log_level.as_deref()).map_err(invalid)?;
    let dev_dir = match conf.dev_dir.as_deref() {
        None => PathBuf::from(naming::DEFAULT_DEV_DIR),
        Some(d) if absolute_clean(d) => PathBuf::from(d),
        Some(d) => {
            return Err(invalid(format!(
                "devDir {:?} must be an absolute path without '..' (the node agent's --dev-dir, default {})",
                shown(d),
                naming::DEFAULT_DEV_DIR
            )));
        }
    };
    Ok(Request::Attachment(Box::new(Attachment {
        version,
        env,
        network,
        target,
        mtu: conf.mtu,
        mac,
        ipam,
        prev_result,
        raw_config: stdin.to_vec(),
        dev_dir,
    })))
}

/// An absolute path without `..` components or control characters.
fn absolute_clean(p: &str) -> bool {
    p.starts_with('/') && !p.split('/').any(|c| c == "..") && !p.chars().any(|c| c.is_control())
}

/// Network names: a letter or digit, then letters, digits, `_`, `.`, `-` (CNI 1.0.0).
fn network_name_rule(name: &str) -> Result<(), String> {
    let ok = name.len() <= 253
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "name {:?} must start with a letter or digit and contain only letters, digits, '_', '.' or '-'",
            shown(name)
        ))
    }
}

fn plugin_name_ok(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name != "."
        && name != ".."
        && !name.contains('/')
        && !name.chars().any(|c| c.is_control())
}

fn resolve_target(
    plugin: PluginKind,
    conf: &NetConf,
    network: &str,
) -> Result<Target, (ErrorCode, String)> {
    let invalid = |d: String| (ErrorCode::InvalidConfig, d);
    let from_name = naming::parse_resource_name(network)
        .filter(|(kind, spoke)| {
            *kind == plugin.spoke_kind() && validate::spoke_name("name", spoke).is_ok()
        })
        .map(|(_, spoke)| spoke.to_owned());
    match plugin {
        PluginKind::Veth => {
            if let Some(v) = &conf.veth {
                validate::spoke_name("veth", v).map_err(|e| invalid(e.to_string()))?;
            }
            if let Some(d) = &conf.device_id {
                validate::spoke_name("deviceID", d).map_err(|e| {
                    invalid(format!(
                        "{e} (for k8slanveth, Multus passes the spoke name as deviceID)"
                    ))
                })?;
            }
            let spoke = match (&conf.veth, &conf.device_id) {
                (Some(v), Some(d)) if v != d => {
                    return Err(invalid(format!(
                        "veth {v:?} and deviceID {d:?} differ: the pod was allocated spoke {d:?} but the network binds {v:?}; fix the NetworkAttachmentDefinition's resourceName annotation or its veth key"
                    )));
                }
                (Some(v), _) => v.clone(),
                (None, Some(d)) => d.clone(),
                (None, None) => from_name.ok_or_else(|| invalid(format!(
                    "veth is missing: set \"veth\": \"<spoke>\" (network {network:?} is not named k8slan-veth-<spoke> either)"
                )))?,
            };
            Ok(Target {
                plugin,
                host_link: naming::host_veth_name(&spoke).to_owned(),
                spoke: Some(spoke),
            })
        }
        PluginKind::Macvtap => {
            let expected = from_name.as_deref().map(naming::macvtap_name);
            let host_link = match (&conf.device_id, &expected) {
                (Some(d), _) => {
                    validate::interface_name("deviceID", d).map_err(|e| invalid(e.to_string()))?;
                    if let Some(exp) = &expected
                        && exp != d
                    {
                        return Err(invalid(format!(
                            "deviceID {d:?} is not the macvtap of network {network:?} (expected {exp:?}): the pod was allocated another spoke's device; check the NetworkAttachmentDefinition's resourceName annotation"
                        )));
                    }
                    d.clone()
                }
                (None, Some(exp)) => exp.clone(),
                (None, None) => {
                    return Err(invalid(format!(
                        "deviceID is missing: Multus adds it when the NetworkAttachmentDefinition is annotated {}: {}/k8slan-mac-<spoke> and the pod requests that resource (network {network:?} is not named k8slan-mac-<spoke> either)",
                        naming::RESOURCE_NAME_ANNOTATION,
                        naming::RESOURCE_DOMAIN
                    )));
                }
            };
            Ok(Target {
                plugin,
                host_link,
                spoke: from_name,
            })
        }
    }
}

/// MAC precedence: `runtimeConfig.mac` > `CNI_ARGS` `MAC` > config `mac`. Every given value must
/// be valid, even one that loses.
fn resolve_mac(
    conf: &NetConf,
    env: &Environment,
) -> Result<Option<(MacAddr, MacSource)>, (ErrorCode, String)> {
    let rc = conf
        .runtime_config
        .as_ref()
        .and_then(|r| r.mac.as_deref())
        .map(|m| {
            MacAddr::parse_unicast(m)
                .map_err(|e| (ErrorCode::InvalidConfig, format!("runtimeConfig.mac: {e}")))
        })
        .transpose()?;
    let args = env
        .arg("MAC")
        .map(|m| {
            MacAddr::parse_unicast(m)
                .map_err(|e| (ErrorCode::InvalidEnvironment, format!("CNI_ARGS: MAC: {e}")))
        })
        .transpose()?;
    let cfg = conf
        .mac
        .as_deref()
        .map(|m| {
            MacAddr::parse_unicast(m).map_err(|e| (ErrorCode::InvalidConfig, format!("mac: {e}")))
        })
        .transpose()?;
    Ok(rc
        .map(|m| (m, MacSource::RuntimeConfig))
        .or(args.map(|m| (m, MacSource::CniArgs)))
        .or(cfg.map(|m| (m, MacSource::Config))))
}

fn log_settings_of(file: Option<&str>, level: Option<&str>) -> Result<LogSettings, String> {
    if let Some(f) = file
        && !absolute_clean(f)
    {
        return Err(format!(
            "logFile {:?} must be an absolute path without '..'",
            shown(f)
        ));
    }
    if let Some(l) = level
        && !matches!(l, "trace" | "debug" | "info" | "warn" | "error")
    {
        return Err(format!(
            "logLevel {:?} must be one of trace, debug, info, warn, error",
            shown(l)
        ));
    }
    Ok(LogSettings {
        file: file.map(PathBuf::from),
        level: level.map(str::to_owned),
    })
}

/// Log settings for this execution, read leniently (before validation, so that a rejected
/// configuration is still logged where the operator looks): config keys `logFile`/`logLevel`
/// win over the environment's `K8SLAN_CNI_LOG`/`K8SLAN_CNI_LOG_LEVEL`; invalid values are ignored.
pub fn log_settings(get: &dyn Fn(&str) -> Option<String>, stdin: &[u8]) -> LogSettings {
    let conf = serde_json::from_slice::<Value>(stdin).ok();
    let key = |k: &str| {
        conf.as_ref()
            .and_then(|c| c.get(k))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let file = key("logFile").or_else(|| get("K8SLAN_CNI_LOG").filter(|s| !s.is_empty()));
    let level = key("logLevel").or_else(|| get("K8SLAN_CNI_LOG_LEVEL").filter(|s| !s.is_empty()));
    let file_ok = file
        .as_deref()
        .filter(|f| log_settings_of(Some(f), None).is_ok());
    let level_ok = level
        .as_deref()
        .filter(|l| log_settings_of(None, Some(l)).is_ok());
    LogSettings {
        file: file_ok.map(PathBuf::from),
        level: level_ok.map(str::to_owned),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const POD: &str = "/var/run/netns/cni-0001";

    fn base_env(command: &str) -> HashMap<String, String> {
        [
            ("CNI_COMMAND", command),
            ("CNI_CONTAINERID", "c0ffee"),
            ("CNI_NETNS", POD),
            ("CNI_IFNAME", "e1-1"),
            ("CNI_PATH", "/opt/cni/bin"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }

    fn parse(
        plugin: PluginKind,
        env: &HashMap<String, String>,
        stdin: &str,
    ) -> Result<Request, Failure> {
        parse_request(plugin, &|k| env.get(k).cloned(), stdin.as_bytes())
    }

    fn attachment(plugin: PluginKind, env: &HashMap<String, String>, stdin: &str) -> Attachment {
        match parse(plugin, env, stdin) {
            Ok(Request::Attachment(a)) => *a,
            other => panic!("expected an attachment, got {other:?}"),
        }
    }

    const VETH: &str =
        r#"{"cniVersion":"1.0.0","name":"k8slan-veth-srl","type":"k8slanveth","veth":"srl"}"#;
    const MAC: &str =
        r#"{"cniVersion":"1.0.0","name":"k8slan-mac-vm","type":"macvtap","deviceID":"mvt-vm"}"#;

    /// Malformed inputs and the error code each must get: (case, plugin, env changes, stdin, code).
    #[test]
    fn malformed_inputs_get_the_right_code() {
        let long = "a".repeat(300);
        let big = format!(
            r#"{{"cniVersion":"1.0.0","pad":"{}"}}"#,
            "x".repeat(MAX_CONFIG_BYTES)
        );
        type Case<'a> = (
            &'a str,
            PluginKind,
            Vec<(&'a str, Option<&'a str>)>,
            String,
            u32,
        );
        let v = PluginKind::Veth;
        let m = PluginKind::Macvtap;
        let cases: Vec<Case> = vec![
            ("not json", v, vec![], "{".into(), 6),
            ("json array", v, vec![], "[1,2]".into(), 6),
            ("not utf8/json", v, vec![], "\u{fffd}\u{0}".into(), 6),
            ("empty stdin", v, vec![], "".into(), 6),
            ("oversized stdin", v, vec![], big, 6),
            (
                "unknown version",
                v,
                vec![],
                VETH.replace("1.0.0", "9.9.9"),
                1,
            ),
            (
                "0.2.0 result format",
                v,
                vec![],
                VETH.replace("1.0.0", "0.2.0"),
                1,
            ),
            (
                "1.1.0 not claimed",
                v,
                vec![],
                VETH.replace("1.0.0", "1.1.0"),
                1,
            ),
            (
                "version not a string",
                v,
                vec![],
                VETH.replace("\"1.0.0\"", "100"),
                1,
            ),
            (
                "missing version",
                v,
                vec![],
                VETH.replace("\"cniVersion\":\"1.0.0\",", ""),
                1,
            ),
            (
                "CHECK on 0.3.1",
                v,
                vec![("CNI_COMMAND", Some("CHECK"))],
                VETH.replace("1.0.0", "0.3.1"),
                1,
            ),
            (
                "missing command",
                v,
                vec![("CNI_COMMAND", None)],
                VETH.into(),
                4,
            ),
            (
                "unknown command",
                v,
                vec![("CNI_COMMAND", Some("GC"))],
                VETH.into(),
                4,
            ),
            (
                "missing ifname",
                v,
                vec![("CNI_IFNAME", None)],
                VETH.into(),
                4,
            ),
            (
                "ifname with slash",
                v,
                vec![("CNI_IFNAME", Some("e1/1"))],
                VETH.into(),
                4,
            ),
            (
                "ifname dotdot",
                v,
                vec![("CNI_IFNAME", Some(".."))],
                VETH.into(),
                4,
            ),
            (
                "ifname too long",
                v,
                vec![("CNI_IFNAME", Some("abcdefghijklmnop"))],
                VETH.into(),
                4,
            ),
            (
                "missing container id",
                v,
                vec![("CNI_CONTAINERID", None)],
                VETH.into(),
                4,
            ),
            (
                "container id with slash",
                v,
                vec![("CNI_CONTAINERID", Some("../x"))],
                VETH.into(),
                4,
            ),
            (
                "missing netns on ADD",
                v,
                vec![("CNI_NETNS", None)],
                VETH.into(),
                4,
            ),
            (
                "relative netns",
                v,
                vec![("CNI_NETNS", Some("run/netns/x"))],
                VETH.into(),
                4,
            ),
            (
                "netns with dotdot",
                v,
                vec![("CNI_NETNS", Some("/run/netns/../../etc/shadow"))],
                VETH.into(),
                4,
            ),
            (
                "bad CNI_ARGS",
                v,
                vec![("CNI_ARGS", Some("MAC"))],
                VETH.into(),
                4,
            ),
            (
                "bad MAC in CNI_ARGS",
                v,
                vec![("CNI_ARGS", Some("MAC=zz:00:00:00:00:01"))],
                VETH.into(),
                4,
            ),
            (
                "relative CNI_PATH",
                v,
                vec![("CNI_PATH", Some("bin"))],
                VETH.into(),
                4,
            ),
            (
                "missing name",
                v,
                vec![],
                VETH.replace("\"name\":\"k8slan-veth-srl\",", ""),
                7,
            ),
            (
                "bad network name",
                v,
                vec![],
                VETH.replace("k8slan-veth-srl", "-x y"),
                7,
            ),
            (
                "type with slash",
                v,
                vec![],
                VETH.replace("\"k8slanveth\"", "\"../k8slanveth\""),
                7,
            ),
            (
                "missing spoke",
                v,
                vec![],
                r#"{"cniVersion":"1.0.0","name":"net","type":"k8slanveth"}"#.into(),
                7,
            ),
            (
                "spoke with slash",
                v,
                vec![],
                VETH.replace("\"veth\":\"srl\"", "\"veth\":\"a/b\""),
                7,
            ),
            (
                "spoke dotdot",
                v,
                vec![],
                VETH.replace("\"veth\":\"srl\"", "\"veth\":\"..\""),
                7,
            ),
            (
                "spoke oversized",
                v,
                vec![],
                VETH.replace("\"veth\":\"srl\"", &format!("\"veth\":\"{long}\"")),
                7,
            ),
            (
                "spoke uppercase",
                v,
                vec![],
                VETH.replace("\"veth\":\"srl\"", "\"veth\":\"SRL\""),
                7,
            ),
            (
                "veth not a string",
                v,
                vec![],
                VETH.replace("\"veth\":\"srl\"", "\"veth\":5"),
                7,
            ),
            (
                "deviceID differs",
                v,
                vec![],
                VETH.replace("}", ",\"deviceID\":\"other\"}"),
                7,
            ),
            (
                "mtu too small",
                v,
                vec![],
                VETH.replace("}", ",\"mtu\":20}"),
                7,
            ),
            (
                "mtu negative",
                v,
                vec![],
                VETH.replace("}", ",\"mtu\":-1}"),
                7,
            ),
            (
                "multicast mac",
                v,
                vec![],
                VETH.replace("}", ",\"mac\":\"01:00:5e:00:00:01\"}"),
                7,
            ),
            (
                "bad runtimeConfig mac",
                v,
                vec![],
                VETH.replace("}", ",\"runtimeConfig\":{\"mac\":\"x\"}}"),
                7,
            ),
            (
                "ipam type with slash",
                v,
                vec![],
                VETH.replace("}", ",\"ipam\":{\"type\":\"../../bin/sh\"}}"),
                7,
            ),
            (
                "ipam without type",
                v,
                vec![],
                VETH.replace("}", ",\"ipam\":{}}"),
                7,
            ),
            (
                "relative logFile",
                v,
                vec![],
                VETH.replace("}", ",\"logFile\":\"x.log\"}"),
                7,
            ),
            (
                "relative devDir",
                m,
                vec![],
                MAC.replace("}", ",\"devDir\":\"run/k8slan/dev\"}"),
                7,
            ),
            (
                "devDir with ..",
                m,
                vec![],
                MAC.replace("}", ",\"devDir\":\"/run/../etc\"}"),
                7,
            ),
            (
                "bad prevResult",
                v,
                vec![],
                VETH.replace("}", ",\"prevResult\":{\"ips\":[{\"address\":\"nope\"}]}}"),
                6,
            ),
            (
                "CHECK without prevResult",
                v,
                vec![("CNI_COMMAND", Some("CHECK"))],
                VETH.into(),
                7,
            ),
            (
                "macvtap without deviceID",
                m,
                vec![],
                r#"{"cniVersion":"1.0.0","name":"vmnet","type":"macvtap"}"#.into(),
                7,
            ),
            (
                "macvtap deviceID with slash",
                m,
                vec![],
                MAC.replace("mvt-vm", "mvt/vm"),
                7,
            ),
            (
                "macvtap deviceID of another spoke",
                m,
                vec![],
                MAC.replace("mvt-vm", "mvt-other"),
                7,
            ),
            (
                "macvtap with ipam",
                m,
                vec![],
                MAC.replace("}", ",\"ipam\":{\"type\":\"host-local\"}}"),
                2,
            ),
        ];
        for (case, plugin, changes, stdin, code) in cases {
            let mut env = base_env("ADD");
            for (k, v) in changes {
                match v {
                    Some(v) => env.insert(k.to_owned(), v.to_owned()),
                    None => env.remove(k),
                };
            }
            let failure = match parse(plugin, &env, &stdin) {
                Err(f) => f,
                Ok(r) => panic!("{case}: expected error {code}, got {r:?}"),
            };
            assert_eq!(failure.error.code.code(), code, "{case}: {}", failure.error);
            assert!(!failure.error.details.is_empty(), "{case}");
        }
    }

    #[test]
    fn veth_attachment_fields() {
        let mut env = base_env("ADD");
        env.insert(
            "CNI_ARGS".into(),
            "IgnoreUnknown=1;MAC=02:00:00:00:00:02".into(),
        );
        let conf = r#"{"cniVersion":"0.4.0","name":"k8slan-veth-srl","type":"k8slanveth","veth":"srl","deviceID":"srl","mtu":1430,
            "mac":"02:00:00:00:00:01","ipam":{"type":"host-local","subnet":"198.18.0.0/24"},"somethingElse":{"x":1}}"#;
        let a = attachment(PluginKind::Veth, &env, conf);
        assert_eq!(a.version, CniVersion::V0_4_0);
        assert_eq!(a.target.host_link, "srl");
        assert_eq!(
            a.target.resource_hint(),
            "macvtap.k8slan.io/k8slan-veth-srl"
        );
        assert_eq!(a.mtu, Some(1430));
        assert_eq!(
            a.mac,
            Some((MacAddr([2, 0, 0, 0, 0, 2]), MacSource::CniArgs))
        );
        assert_eq!(a.ipam.as_deref(), Some("host-local"));
        assert_eq!(a.raw_config, conf.as_bytes());
    }

    #[test]
    fn spoke_falls_back_to_device_id_then_network_name() {
        let env = base_env("ADD");
        let by_id = attachment(
            PluginKind::Veth,
            &env,
            r#"{"cniVersion":"1.0.0","name":"n","type":"k8slanveth","deviceID":"srl2"}"#,
        );
        assert_eq!(by_id.target.host_link, "srl2");
        let by_name = attachment(
            PluginKind::Veth,
            &env,
            r#"{"cniVersion":"1.0.0","name":"k8slan-veth-srl3","type":"k8slanveth"}"#,
        );
        assert_eq!(by_name.target.host_link, "srl3");
        let mac = attachment(
            PluginKind::Macvtap,
            &env,
            r#"{"cniVersion":"1.0.0","name":"k8slan-mac-abcdefghijklmno","type":"macvtap"}"#,
        );
        assert_eq!(
            mac.target.host_link,
            naming::macvtap_name("abcdefghijklmno")
        );
        assert!(mac.target.host_link.starts_with("mvh-"));
        let custom = attachment(
            PluginKind::Macvtap,
            &env,
            r#"{"cniVersion":"1.0.0","name":"my-vm-net","type":"macvtap","deviceID":"mvt-x"}"#,
        );
        assert_eq!(custom.target.host_link, "mvt-x");
        assert_eq!(custom.target.spoke, None);
    }

    #[test]
    fn mac_precedence() {
        let mut env = base_env("ADD");
        env.insert("CNI_ARGS".into(), "MAC=02:00:00:00:00:02".into());
        let conf = r#"{"cniVersion":"1.0.0","name":"k8slan-veth-srl","type":"k8slanveth","mac":"02:00:00:00:00:01","runtimeConfig":{"mac":"02:00:00:00:00:03"}}"#;
        let a = attachment(PluginKind::Veth, &env, conf);
        assert_eq!(
            a.mac,
            Some((MacAddr([2, 0, 0, 0, 0, 3]), MacSource::RuntimeConfig))
        );
        env.remove("CNI_ARGS");
        let a = attachment(PluginKind::Veth, &env, conf);
        assert_eq!(a.mac.map(|m| m.1), Some(MacSource::RuntimeConfig));
        let a = attachment(
            PluginKind::Veth,
            &env,
            r#"{"cniVersion":"1.0.0","name":"k8slan-veth-srl","type":"k8slanveth","mac":"02:00:00:00:00:01"}"#,
        );
        assert_eq!(a.mac.map(|m| m.1), Some(MacSource::Config));
    }

    #[test]
    fn del_accepts_missing_netns_and_version_needs_nothing() {
        let mut env = base_env("DEL");
        env.remove("CNI_NETNS");
        let a = attachment(PluginKind::Veth, &env, VETH);
        assert_eq!(a.env.netns, None);
        let env: HashMap<String, String> =
            [("CNI_COMMAND".to_owned(), "VERSION".to_owned())].into();
        match parse(PluginKind::Macvtap, &env, "") {
            Ok(Request::Version(v)) => assert_eq!(v.cni_version, "1.0.0"),
            other => panic!("{other:?}"),
        }
        match parse(PluginKind::Macvtap, &env, r#"{"cniVersion":"0.3.1"}"#) {
            Ok(Request::Version(v)) => assert_eq!(v.cni_version, "0.3.1"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn error_version_follows_the_config() {
        let mut env = base_env("ADD");
        env.insert("CNI_IFNAME".into(), "a/b".into());
        let f = parse(PluginKind::Veth, &env, &VETH.replace("1.0.0", "0.3.1")).unwrap_err();
        assert_eq!(f.version, Some(CniVersion::V0_3_1));
        assert!(f.error.details.contains("CNI_IFNAME"), "{}", f.error);
        let f = parse(PluginKind::Veth, &env, "nope").unwrap_err();
        assert_eq!(f.version, None);
    }

    #[test]
    fn log_settings_prefer_config_and_ignore_bad_values() {
        let env: HashMap<String, String> = [(
            "K8SLAN_CNI_LOG".to_owned(),
            "/var/log/k8slan-cni.log".to_owned(),
        )]
        .into();
        let get = |k: &str| env.get(k).cloned();
        assert_eq!(
            log_settings(&get, b"{}").file,
            Some(PathBuf::from("/var/log/k8slan-cni.log"))
        );
        assert_eq!(
            log_settings(&get, br#"{"logFile":"/tmp/x.log","logLevel":"debug"}"#),
            LogSettings {
                file: Some("/tmp/x.log".into()),
                level: Some("debug".into())
            }
        );
        assert_eq!(
            log_settings(&get, br#"{"logFile":"../x","logLevel":"loud"}"#).level,
            None
        );
    }
}
