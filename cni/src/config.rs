//! The network configuration on stdin and its validation into an [`Attachment`]: everything the
//! plugins need, checked before any system call. [`parse_request`] is the single parse entry
//! point (also driven by the fuzz target and the property tests). Every step returns a
//! [`CniError`]; only [`parse_request`] pairs it with the version to answer in ([`Failure`]).

use k8slan_api::naming::{self, SpokeKind};
use k8slan_api::prepared::CNI_SETTINGS_FILE;
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
/// Keys that earlier versions read from the network configuration and that now come only from
/// the node's settings file ([`CNI_SETTINGS_FILE`]), with the `install-cni` flag that sets each.
pub const NODE_KEYS: [(&str, &str); 4] = [
    ("logFile", "--cni-log-file"),
    ("logLevel", "--cni-log-level"),
    ("devDir", "--dev-dir"),
    ("preparedDir", "--prepared-dir"),
];

/// Which of the two plugins is running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PluginKind {
    /// `k8slanveth`: moves the spoke's host veth end into a pod.
    Veth,
    /// `k8slanmacvtap`: moves the spoke's macvtap into a (KubeVirt virt-launcher) pod.
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
    /// The spoke, when known (always for `k8slanveth`; for `k8slanmacvtap` when the network
    /// name is `k8slan-mac-<spoke>` or the device is `mvt-<spoke>`).
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

    /// The spoke for messages: its name, or the link when the spoke is not known.
    pub fn shown(&self) -> String {
        match &self.spoke {
            Some(s) => format!("spoke {s:?}"),
            None => format!("the spoke of device {:?}", self.host_link),
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
    /// Node keys ([`NODE_KEYS`]) a `DEL` found in the configuration and ignored (an attachment
    /// made by an earlier version); `ADD` and `CHECK` refuse them.
    pub ignored_keys: Vec<&'static str>,
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

fn shown(s: &str) -> String {
    s.chars().take(64).collect()
}

fn invalid(details: impl Into<String>) -> CniError {
    CniError::new(ErrorCode::InvalidConfig, details)
}

fn field(e: validate::FieldError) -> CniError {
    invalid(e.to_string())
}

/// Parses the environment and the configuration of one execution of `plugin`. Pure: no file,
/// network or namespace is touched.
pub fn parse_request(
    plugin: PluginKind,
    get: &dyn Fn(&str) -> Option<String>,
    stdin: &[u8],
) -> Result<Request, Failure> {
    let unversioned = |error| Failure {
        version: None,
        error,
    };
    let command = invocation::command(get).map_err(unversioned)?;
    check_size(stdin).map_err(unversioned)?;
    if command == Command::Version {
        return Ok(Request::Version(version_answer(stdin)));
    }
    let value = decode(stdin).map_err(unversioned)?;
    let version = cni_version(&value).map_err(unversioned)?;
    attachment(plugin, command, get, stdin, &value, version)
        .map(|a| Request::Attachment(Box::new(a)))
        .map_err(|error| Failure {
            version: Some(version),
            error,
        })
}

fn check_size(stdin: &[u8]) -> Result<(), CniError> {
    if stdin.len() > MAX_CONFIG_BYTES {
        return Err(CniError::new(
            ErrorCode::DecodeFailure,
            format!("the network configuration on stdin is larger than {MAX_CONFIG_BYTES} bytes"),
        ));
    }
    Ok(())
}

/// VERSION may come with `{"cniVersion": ...}` or nothing at all.
fn version_answer(stdin: &[u8]) -> VersionInfo {
    let requested = serde_json::from_slice::<Value>(stdin).ok().and_then(|v| {
        v.get("cniVersion")
            .and_then(Value::as_str)
            .map(str::to_owned)
    });
    VersionInfo::answer(requested.as_deref())
}

fn decode(stdin: &[u8]) -> Result<Value, CniError> {
    let decode_failure = |d: String| CniError::new(ErrorCode::DecodeFailure, d);
    let value: Value = serde_json::from_slice(stdin).map_err(|e| {
        decode_failure(format!(
            "the network configuration on stdin is not JSON: {e}"
        ))
    })?;
    if !value.is_object() {
        return Err(decode_failure(
            "the network configuration on stdin is not a JSON object".into(),
        ));
    }
    Ok(value)
}

fn cni_version(value: &Value) -> Result<CniVersion, CniError> {
    let incompatible = |d: String| CniError::new(ErrorCode::IncompatibleVersion, d);
    match value.get("cniVersion") {
        Some(Value::String(v)) => CniVersion::parse(v).ok_or_else(|| {
            incompatible(format!(
                "cniVersion {:?} is not supported; use one of {}",
                shown(v),
                CniVersion::supported_list()
            ))
        }),
        Some(_) => Err(incompatible(
            "cniVersion must be a string such as \"1.0.0\"".into(),
        )),
        None => Err(incompatible(format!(
            "cniVersion is missing; set one of {}",
            CniVersion::supported_list()
        ))),
    }
}

fn attachment(
    plugin: PluginKind,
    command: Command,
    get: &dyn Fn(&str) -> Option<String>,
    stdin: &[u8],
    value: &Value,
    version: CniVersion,
) -> Result<Attachment, CniError> {
    let env = Environment::parse(command, get)?;
    check_command_version(command, version)?;
    let ignored_keys = node_keys(command, value)?;
    let conf: NetConf = serde_json::from_value(value.clone())
        .map_err(|e| invalid(format!("network configuration: {e}")))?;
    let network = network_name(&conf)?;
    plugin_type(plugin, &conf)?;
    let target = resolve_target(plugin, &conf, &network)?;
    Ok(Attachment {
        version,
        mtu: mtu(conf.mtu)?,
        ipam: ipam(plugin, &conf, value)?,
        mac: resolve_mac(&conf, &env)?,
        prev_result: prev_result(command, &conf)?,
        env,
        network,
        target,
        raw_config: stdin.to_vec(),
        ignored_keys,
    })
}

fn check_command_version(command: Command, version: CniVersion) -> Result<(), CniError> {
    if command == Command::Check && !version.has_check() {
        return Err(CniError::new(
            ErrorCode::IncompatibleVersion,
            format!("CHECK is not part of CNI {version}; it needs cniVersion 0.4.0 or later"),
        ));
    }
    Ok(())
}

/// Node keys ([`NODE_KEYS`]) in the configuration: refused on `ADD` and `CHECK` (a network
/// author must not choose where a root process writes), returned to be ignored on `DEL` (so
/// that attachments made by an earlier version can still be cleaned up).
fn node_keys(command: Command, value: &Value) -> Result<Vec<&'static str>, CniError> {
    let found: Vec<(&'static str, &'static str)> = NODE_KEYS
        .into_iter()
        .filter(|(key, _)| value.get(key).is_some())
        .collect();
    match found.first() {
        Some((key, flag)) if command != Command::Del => Err(CniError::new(
            ErrorCode::UnsupportedField,
            format!(
                "{key} is no longer read from the network configuration: it comes from the node's {CNI_SETTINGS_FILE} beside the plugin binaries (k8slan-agent install-cni {flag}, chart values under agent/cni); remove {key} from the NetworkAttachmentDefinition"
            ),
        )),
        _ => Ok(found.into_iter().map(|(key, _)| key).collect()),
    }
}

fn network_name(conf: &NetConf) -> Result<String, CniError> {
    let network = conf.name.clone().ok_or_else(|| {
        invalid("name is missing; the network needs a name such as k8slan-veth-<spoke>")
    })?;
    validate::cni_network_name("name", &network).map_err(field)?;
    Ok(network)
}

fn plugin_type(plugin: PluginKind, conf: &NetConf) -> Result<(), CniError> {
    match conf.plugin_type.as_deref() {
        Some(t) if validate::file_name("type", t).is_ok() => Ok(()),
        other => Err(invalid(format!(
            "type {:?} must be the plugin's binary name, here {:?}",
            other.map(shown),
            plugin.cni_type()
        ))),
    }
}

fn mtu(mtu: Option<u32>) -> Result<Option<u32>, CniError> {
    match mtu {
        Some(m) if !MTU_RANGE.contains(&m) => Err(invalid(format!(
            "mtu {m} is out of range {}-{}; omit it to keep the prepared link's MTU",
            MTU_RANGE.start(),
            MTU_RANGE.end()
        ))),
        other => Ok(other),
    }
}

fn ipam(plugin: PluginKind, conf: &NetConf, value: &Value) -> Result<Option<String>, CniError> {
    let Some(ipam) = &conf.ipam else {
        return Ok(None);
    };
    if plugin == PluginKind::Macvtap {
        let shown_ipam = value
            .get("ipam")
            .map(|i| shown(&i.to_string()))
            .unwrap_or_default();
        return Err(CniError::new(
            ErrorCode::UnsupportedField,
            format!(
                "ipam = {shown_ipam}: the {} plugin hands a layer-2 link to a VM and configures no addresses; remove ipam (configure addresses inside the VM)",
                plugin.cni_type()
            ),
        ));
    }
    match ipam.plugin_type.as_deref() {
        Some(t) if validate::file_name("ipam.type", t).is_ok() => Ok(Some(t.to_owned())),
        other => Err(invalid(format!(
            "ipam.type {:?} must be the name of an IPAM plugin binary in CNI_PATH, e.g. \"host-local\"",
            other.map(shown)
        ))),
    }
}

fn prev_result(command: Command, conf: &NetConf) -> Result<Option<CniResult>, CniError> {
    let prev = conf
        .prev_result
        .as_ref()
        .filter(|p| !p.is_null())
        .map(|p| CniResult::from_value("prevResult", p))
        .transpose()
        .map_err(|e| CniError::new(ErrorCode::DecodeFailure, e.to_string()))?;
    if command == Command::Check && prev.is_none() {
        return Err(invalid(
            "prevResult is missing; CHECK compares the attachment with the result of the preceding ADD",
        ));
    }
    Ok(prev)
}

/// The spoke named by the network: `k8slan-veth-<spoke>` or `k8slan-mac-<spoke>`.
fn spoke_of_network(plugin: PluginKind, network: &str) -> Option<String> {
    naming::parse_resource_name(network)
        .filter(|(kind, spoke)| {
            *kind == plugin.spoke_kind() && validate::spoke_name("name", spoke).is_ok()
        })
        .map(|(_, spoke)| spoke.to_owned())
}

fn resolve_target(plugin: PluginKind, conf: &NetConf, network: &str) -> Result<Target, CniError> {
    let from_name = spoke_of_network(plugin, network);
    match plugin {
        PluginKind::Veth => veth_target(conf, network, from_name),
        PluginKind::Macvtap => macvtap_target(conf, network, from_name),
    }
}

/// `k8slanveth`: `veth`, else `deviceID` (Multus passes the spoke), else the network's spoke.
fn veth_target(
    conf: &NetConf,
    network: &str,
    from_name: Option<String>,
) -> Result<Target, CniError> {
    if let Some(v) = &conf.veth {
        validate::spoke_name("veth", v).map_err(field)?;
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
        (None, None) => from_name.ok_or_else(|| {
            invalid(format!(
                "veth is missing: set \"veth\": \"<spoke>\" (network {network:?} is not named k8slan-veth-<spoke> either)"
            ))
        })?,
    };
    Ok(Target {
        plugin: PluginKind::Veth,
        host_link: naming::host_veth_name(&spoke).to_owned(),
        spoke: Some(spoke),
    })
}

/// `k8slanmacvtap`: `deviceID` (the macvtap's name), else the macvtap of the network's spoke;
/// both given must agree.
fn macvtap_target(
    conf: &NetConf,
    network: &str,
    from_name: Option<String>,
) -> Result<Target, CniError> {
    let expected = from_name.as_deref().map(naming::macvtap_name);
    let host_link = match (&conf.device_id, expected) {
        (Some(d), expected) => {
            validate::interface_name("deviceID", d).map_err(field)?;
            if let Some(exp) = expected.filter(|exp| exp != d) {
                return Err(invalid(format!(
                    "deviceID {d:?} is not the macvtap of network {network:?} (expected {exp:?}): the pod was allocated another spoke's device; check the NetworkAttachmentDefinition's resourceName annotation"
                )));
            }
            d.clone()
        }
        (None, Some(exp)) => exp,
        (None, None) => {
            return Err(invalid(format!(
                "deviceID is missing: Multus adds it when the NetworkAttachmentDefinition is annotated {}: {}/k8slan-mac-<spoke> and the pod requests that resource (network {network:?} is not named k8slan-mac-<spoke> either)",
                naming::RESOURCE_NAME_ANNOTATION,
                naming::RESOURCE_DOMAIN
            )));
        }
    };
    let spoke = from_name.or_else(|| spoke_of_macvtap(&host_link));
    Ok(Target {
        plugin: PluginKind::Macvtap,
        host_link,
        spoke,
    })
}

/// The spoke of a macvtap named `mvt-<spoke>` (short spokes); `mvh-<hash>` names none.
fn spoke_of_macvtap(link: &str) -> Option<String> {
    link.strip_prefix("mvt-")
        .filter(|s| validate::spoke_name("deviceID", s).is_ok())
        .filter(|s| naming::macvtap_name(s) == link)
        .map(str::to_owned)
}

fn parse_mac(
    value: Option<&str>,
    code: ErrorCode,
    what: &str,
) -> Result<Option<MacAddr>, CniError> {
    value
        .map(|m| MacAddr::parse_unicast(m).map_err(|e| CniError::new(code, format!("{what}: {e}"))))
        .transpose()
}

/// MAC precedence: `runtimeConfig.mac` > `CNI_ARGS` `MAC` > config `mac`. Every given value must
/// be valid, even one that loses.
fn resolve_mac(
    conf: &NetConf,
    env: &Environment,
) -> Result<Option<(MacAddr, MacSource)>, CniError> {
    let rc_mac = conf.runtime_config.as_ref().and_then(|r| r.mac.as_deref());
    let rc = parse_mac(rc_mac, ErrorCode::InvalidConfig, "runtimeConfig.mac")?;
    let args = parse_mac(
        env.arg("MAC"),
        ErrorCode::InvalidEnvironment,
        "CNI_ARGS: MAC",
    )?;
    let cfg = parse_mac(conf.mac.as_deref(), ErrorCode::InvalidConfig, "mac")?;
    Ok(rc
        .map(|m| (m, MacSource::RuntimeConfig))
        .or(args.map(|m| (m, MacSource::CniArgs)))
        .or(cfg.map(|m| (m, MacSource::Config))))
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
    const MAC: &str = r#"{"cniVersion":"1.0.0","name":"k8slan-mac-vm","type":"k8slanmacvtap","deviceID":"mvt-vm"}"#;

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
                "logFile in the NAD",
                v,
                vec![],
                VETH.replace("}", ",\"logFile\":\"/etc/passwd\"}"),
                2,
            ),
            (
                "logLevel in the NAD",
                v,
                vec![],
                VETH.replace("}", ",\"logLevel\":\"debug\"}"),
                2,
            ),
            (
                "devDir in the NAD",
                m,
                vec![],
                MAC.replace("}", ",\"devDir\":\"/run/k8slan/dev\"}"),
                2,
            ),
            (
                "preparedDir in the NAD",
                m,
                vec![],
                MAC.replace("}", ",\"preparedDir\":\"/tmp/x\"}"),
                2,
            ),
            (
                "devDir on CHECK",
                m,
                vec![("CNI_COMMAND", Some("CHECK"))],
                MAC.replace("}", ",\"devDir\":\"/x\"}"),
                2,
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
                r#"{"cniVersion":"1.0.0","name":"vmnet","type":"k8slanmacvtap"}"#.into(),
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
            r#"{"cniVersion":"1.0.0","name":"k8slan-mac-abcdefghijklmno","type":"k8slanmacvtap"}"#,
        );
        assert_eq!(
            mac.target.host_link,
            naming::macvtap_name("abcdefghijklmno")
        );
        assert!(mac.target.host_link.starts_with("mvh-"));
        let custom = attachment(
            PluginKind::Macvtap,
            &env,
            r#"{"cniVersion":"1.0.0","name":"my-vm-net","type":"k8slanmacvtap","deviceID":"mvt-x"}"#,
        );
        assert_eq!(custom.target.host_link, "mvt-x");
        assert_eq!(
            custom.target.spoke.as_deref(),
            Some("x"),
            "mvt-<spoke> names it"
        );
        let hashed = attachment(
            PluginKind::Macvtap,
            &env,
            r#"{"cniVersion":"1.0.0","name":"my-vm-net","type":"k8slanmacvtap","deviceID":"mvh-0123abcd"}"#,
        );
        assert_eq!(hashed.target.spoke, None);
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
    fn node_keys_are_refused_on_add_and_ignored_on_del() {
        let conf = MAC.replace("}", ",\"devDir\":\"/run/k8slan/dev\",\"logFile\":\"/x\"}");
        let f = parse(PluginKind::Macvtap, &base_env("ADD"), &conf).unwrap_err();
        assert!(
            f.error.details.starts_with("logFile is no longer read"),
            "{}",
            f.error
        );
        assert!(f.error.details.contains("k8slan-cni.json"), "{}", f.error);
        let del = attachment(PluginKind::Macvtap, &base_env("DEL"), &conf);
        assert_eq!(del.ignored_keys, vec!["logFile", "devDir"]);
    }
}
