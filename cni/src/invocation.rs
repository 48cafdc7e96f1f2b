//! The `CNI_*` environment variables of one plugin execution, checked before any system call.

use std::path::PathBuf;

use k8slan_api::validate;

use crate::error::{CniError, ErrorCode};

/// The operation a runtime asks for in `CNI_COMMAND`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
}

impl Command {
    pub fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Version => "VERSION",
        }
    }
}

/// Longest accepted `CNI_NETNS`.
pub const MAX_NETNS_PATH: usize = validate::MAX_PATH_LEN;
/// Longest accepted `CNI_CONTAINERID`.
pub const MAX_CONTAINER_ID: usize = validate::MAX_CONTAINER_ID;
/// Longest accepted `CNI_ARGS`.
pub const MAX_CNI_ARGS: usize = 64 * 1024;

/// The `CNI_ARGS` key that names the pod's Kubernetes namespace.
pub const POD_NAMESPACE_ARG: &str = "K8S_POD_NAMESPACE";

/// The checked environment of an `ADD`, `DEL` or `CHECK`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Environment {
    pub command: Command,
    pub container_id: String,
    /// `CNI_NETNS`: required for `ADD`/`CHECK`, optional for `DEL`. Syntactically checked only;
    /// [`crate::netns`] checks that it exists and is a network namespace.
    pub netns: Option<String>,
    pub ifname: String,
    /// `CNI_ARGS` pairs in order.
    pub args: Vec<(String, String)>,
    /// `CNI_PATH` directories, where delegated (IPAM) plugins are looked up.
    pub path: Vec<PathBuf>,
}

fn env_error(var: &str, why: impl std::fmt::Display) -> CniError {
    CniError::new(ErrorCode::InvalidEnvironment, format!("{var}: {why}"))
}

/// Reads `CNI_COMMAND` alone (enough to answer `VERSION`).
pub fn command(get: &dyn Fn(&str) -> Option<String>) -> Result<Command, CniError> {
    match get("CNI_COMMAND").as_deref() {
        Some("ADD") => Ok(Command::Add),
        Some("DEL") => Ok(Command::Del),
        Some("CHECK") => Ok(Command::Check),
        Some("VERSION") => Ok(Command::Version),
        Some(other) => Err(env_error(
            "CNI_COMMAND",
            format!(
                "{:?} is not supported; use ADD, DEL, CHECK or VERSION (this plugin speaks CNI up to 1.0.0, without STATUS and GC)",
                other.chars().take(32).collect::<String>()
            ),
        )),
        None => Err(env_error(
            "CNI_COMMAND",
            "is not set; a runtime sets it to ADD, DEL, CHECK or VERSION",
        )),
    }
}

impl Environment {
    /// Reads and checks every variable `command` needs, from `get` (the process environment in
    /// the binaries, a map in tests).
    pub fn parse(command: Command, get: &dyn Fn(&str) -> Option<String>) -> Result<Self, CniError> {
        let required = |var: &str| {
            get(var).filter(|v| !v.is_empty()).ok_or_else(|| {
                env_error(
                    var,
                    format!("is not set; CNI_COMMAND={} needs it", command.as_str()),
                )
            })
        };
        let container_id = required("CNI_CONTAINERID")?;
        container_id_rule(&container_id)?;
        let ifname = required("CNI_IFNAME")?;
        validate::interface_name("CNI_IFNAME", &ifname)
            .map_err(|e| env_error("CNI_IFNAME", e.message))?;
        let netns = match command {
            Command::Del => get("CNI_NETNS").filter(|v| !v.is_empty()),
            _ => Some(required("CNI_NETNS")?),
        };
        if let Some(path) = &netns {
            netns_path_rule(path)?;
        }
        let args = parse_cni_args(get("CNI_ARGS").as_deref().unwrap_or(""))?;
        let path = parse_cni_path(get("CNI_PATH").as_deref().unwrap_or(""))?;
        Ok(Environment {
            command,
            container_id,
            netns,
            ifname,
            args,
            path,
        })
    }

    /// `K8S_POD_NAMESPACE` from `CNI_ARGS` (Multus and the Kubernetes runtimes pass it).
    pub fn pod_namespace(&self) -> Option<&str> {
        self.arg(POD_NAMESPACE_ARG)
    }

    /// The value of `key` in `CNI_ARGS` (the last one when repeated).
    pub fn arg(&self, key: &str) -> Option<&str> {
        self.args
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

fn container_id_rule(id: &str) -> Result<(), CniError> {
    validate::container_id("CNI_CONTAINERID", id).map_err(field)
}

fn field(e: validate::FieldError) -> CniError {
    CniError::new(ErrorCode::InvalidEnvironment, e.to_string())
}

/// `CNI_NETNS` must be an absolute, normalized path: no `.`/`..` components, no empty components,
/// no control characters. It is opened later and must then be a network namespace.
pub fn netns_path_rule(path: &str) -> Result<(), CniError> {
    validate::normalized_absolute_path("CNI_NETNS", path).map_err(|e| {
        env_error(
            "CNI_NETNS",
            format!(
                "{}; pass the path of the pod's network namespace, e.g. /var/run/netns/cni-1234 or /proc/<pid>/ns/net",
                e.message
            ),
        )
    })
}

/// Parses `CNI_ARGS`: `KEY=VALUE` pairs separated by `;`.
pub fn parse_cni_args(raw: &str) -> Result<Vec<(String, String)>, CniError> {
    if raw.len() > MAX_CNI_ARGS {
        return Err(env_error(
            "CNI_ARGS",
            format!("is {} bytes long, more than {MAX_CNI_ARGS}", raw.len()),
        ));
    }
    let mut out = Vec::new();
    for pair in raw.split(';').filter(|p| !p.is_empty()) {
        let Some((k, v)) = pair.split_once('=') else {
            return Err(env_error(
                "CNI_ARGS",
                format!(
                    "{:?} is not KEY=VALUE; write pairs like IgnoreUnknown=1;MAC=02:00:00:00:00:01",
                    pair.chars().take(64).collect::<String>()
                ),
            ));
        };
        validate::cni_args_key("CNI_ARGS", k).map_err(field)?;
        out.push((k.to_owned(), v.to_owned()));
    }
    Ok(out)
}

/// Parses `CNI_PATH`: absolute directories separated by `:`; empty entries are skipped.
pub fn parse_cni_path(raw: &str) -> Result<Vec<PathBuf>, CniError> {
    raw.split(':')
        .filter(|p| !p.is_empty())
        .map(|p| {
            validate::absolute_dir("CNI_PATH", p)
                .map(|()| PathBuf::from(p))
                .map_err(field)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn add_needs_all_variables() {
        let full = [
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "abc123"),
            ("CNI_NETNS", "/var/run/netns/cni-1"),
            ("CNI_IFNAME", "e1-1"),
            (
                "CNI_ARGS",
                "IgnoreUnknown=1;K8S_POD_NAME=srl;MAC=02:00:00:00:00:01",
            ),
            ("CNI_PATH", "/opt/cni/bin::/usr/lib/cni"),
        ];
        let e = Environment::parse(Command::Add, &env(&full)).unwrap();
        assert_eq!(e.ifname, "e1-1");
        assert_eq!(e.arg("MAC"), Some("02:00:00:00:00:01"));
        assert_eq!(
            e.path,
            vec![PathBuf::from("/opt/cni/bin"), PathBuf::from("/usr/lib/cni")]
        );
        for missing in ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"] {
            let partial: Vec<_> = full
                .iter()
                .copied()
                .filter(|(k, _)| *k != missing)
                .collect();
            let err = Environment::parse(Command::Add, &env(&partial)).unwrap_err();
            assert_eq!(err.code, ErrorCode::InvalidEnvironment);
            assert!(err.details.starts_with(missing), "{err}");
        }
        // DEL may come without a namespace.
        let no_ns: Vec<_> = full
            .iter()
            .copied()
            .filter(|(k, _)| *k != "CNI_NETNS")
            .collect();
        assert_eq!(
            Environment::parse(Command::Del, &env(&no_ns))
                .unwrap()
                .netns,
            None
        );
    }

    #[test]
    fn command_values() {
        assert_eq!(
            command(&env(&[("CNI_COMMAND", "CHECK")])).unwrap(),
            Command::Check
        );
        for bad in [None, Some("add"), Some("GC"), Some("STATUS"), Some("")] {
            let pairs: Vec<(&str, &str)> = bad.map(|b| ("CNI_COMMAND", b)).into_iter().collect();
            let err = command(&env(&pairs)).unwrap_err();
            assert_eq!(err.code, ErrorCode::InvalidEnvironment, "{bad:?}");
            assert!(err.details.contains("CNI_COMMAND"));
        }
    }

    #[test]
    fn netns_paths() {
        for good in ["/var/run/netns/cni-1", "/proc/123/ns/net", "/run/netns/a.b"] {
            assert!(netns_path_rule(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "netns/x",
            "/",
            "/run/netns/../../etc/passwd",
            "/run//netns/x",
            "/run/netns/x/",
            "/run/./netns",
            "/run/net\nns",
            &format!("/{}", "a".repeat(5000)),
        ] {
            assert_eq!(
                netns_path_rule(bad).unwrap_err().code,
                ErrorCode::InvalidEnvironment,
                "{bad:?}"
            );
        }
    }

    #[test]
    fn cni_args_and_path() {
        assert_eq!(parse_cni_args("").unwrap(), vec![]);
        assert_eq!(
            parse_cni_args("A=1;;B=x=y").unwrap(),
            vec![("A".into(), "1".into()), ("B".into(), "x=y".into())]
        );
        for bad in ["A", "=1", "A B=1", "A=1;junk"] {
            assert_eq!(
                parse_cni_args(bad).unwrap_err().code,
                ErrorCode::InvalidEnvironment,
                "{bad}"
            );
        }
        assert!(parse_cni_path("relative/bin").is_err());
        assert!(parse_cni_path("/opt/../etc").is_err());
    }

    #[test]
    fn container_ids() {
        assert!(container_id_rule("0123abcdef").is_ok());
        assert!(container_id_rule("a_b.c-d").is_ok());
        for bad in ["-a", "_a", "a/b", "a b", "é"] {
            assert!(container_id_rule(bad).is_err(), "{bad}");
        }
    }
}
