//! What the agent tells the CNI plugins on its node, through files that only root can write:
//!
//! - a [`PreparedSpoke`] record per spoke the device plugin prepared, at
//!   `<prepared-dir>/<spoke>.json` ([`prepared_file`]), written at `Allocate` and removed with
//!   the spoke. The CNI plugins bind a link only if it is the one recorded there (name, index,
//!   kind and `k8slan:` alias) and only for a pod of a namespace the record admits
//!   ([`PreparedSpoke::admits`]), so neither a NAD author nor a pod in another namespace can make
//!   them move anything else;
//! - the plugins' node settings, [`CniNodeSettings`], in [`CNI_SETTINGS_FILE`] beside the plugin
//!   binaries (written by `k8slan-agent install-cni`). Every path the plugins write to comes from
//!   there, never from a network configuration.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::naming::SpokeKind;

/// Default directory of the [`PreparedSpoke`] records on a node.
pub const DEFAULT_PREPARED_DIR: &str = "/run/k8slan/prepared";
/// File name of the CNI plugins' node settings, in the directory that holds the plugin binaries.
pub const CNI_SETTINGS_FILE: &str = "k8slan-cni.json";
/// Largest record or settings file a reader accepts.
pub const MAX_NODE_FILE_BYTES: usize = 64 * 1024;

/// File name of a spoke's record inside the prepared directory.
pub fn prepared_file(spoke: &str) -> String {
    format!("{spoke}.json")
}

/// A node file that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum NodeFileError {
    #[error("{what} is larger than {MAX_NODE_FILE_BYTES} bytes")]
    TooLarge { what: &'static str },
    #[error("{what} is not valid JSON of its kind: {source}")]
    Json {
        what: &'static str,
        source: serde_json::Error,
    },
}

/// One spoke the agent prepared on this node, as the CNI plugins may bind it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PreparedSpoke {
    /// Kubernetes namespace of the LAN.
    pub lan_namespace: String,
    /// Name of the LAN.
    pub lan_name: String,
    /// The LAN's network namespace (`spec.ns`).
    pub netns: String,
    pub spoke: String,
    #[serde(with = "kind_serde")]
    pub kind: SpokeKind,
    /// Name of the host-side link the plugin may move: the spoke's host veth end (`veth`) or
    /// its macvtap (`mac`).
    pub link: String,
    /// Interface index of that link in the node's namespace when it was prepared.
    pub ifindex: u32,
    /// Namespaces besides the LAN's own whose pods may hold the spoke.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_namespaces: Vec<String>,
}

impl PreparedSpoke {
    /// Whether a pod of `namespace` may hold this spoke.
    pub fn admits(&self, namespace: &str) -> bool {
        namespace == self.lan_namespace || self.allowed_namespaces.iter().any(|n| n == namespace)
    }

    pub fn parse(bytes: &[u8]) -> Result<Self, NodeFileError> {
        parse_bounded(bytes, "prepared-spoke record")
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a PreparedSpoke always serialises")
    }
}

/// Settings of the CNI plugins on one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CniNodeSettings {
    /// Log file of the plugins (opened without following symlinks, mode 0600); none: stderr only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_file: Option<PathBuf>,
    /// Log level (`error`, `warn`, `info`, `debug`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_level: Option<String>,
    /// Node-private directory of the VM spokes' tap device nodes (the agent's `--dev-dir`).
    pub dev_dir: PathBuf,
    /// Directory of the [`PreparedSpoke`] records (the agent's `--prepared-dir`).
    pub prepared_dir: PathBuf,
}

impl Default for CniNodeSettings {
    fn default() -> Self {
        Self {
            log_file: None,
            log_level: None,
            dev_dir: crate::naming::DEFAULT_DEV_DIR.into(),
            prepared_dir: DEFAULT_PREPARED_DIR.into(),
        }
    }
}

impl CniNodeSettings {
    pub fn parse(bytes: &[u8]) -> Result<Self, NodeFileError> {
        parse_bounded(bytes, "CNI node settings")
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("CniNodeSettings always serialise")
    }
}

fn parse_bounded<T: for<'de> Deserialize<'de>>(
    bytes: &[u8],
    what: &'static str,
) -> Result<T, NodeFileError> {
    if bytes.len() > MAX_NODE_FILE_BYTES {
        return Err(NodeFileError::TooLarge { what });
    }
    serde_json::from_slice(bytes).map_err(|source| NodeFileError::Json { what, source })
}

mod kind_serde {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    use crate::naming::SpokeKind;

    pub fn serialize<S: Serializer>(kind: &SpokeKind, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(kind.as_str())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SpokeKind, D::Error> {
        String::deserialize(d)?.parse().map_err(D::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> PreparedSpoke {
        PreparedSpoke {
            lan_namespace: "lab".into(),
            lan_name: "lan1".into(),
            netns: "knlvrf".into(),
            spoke: "srl".into(),
            kind: SpokeKind::Veth,
            link: "srl".into(),
            ifindex: 7,
            allowed_namespaces: vec!["lab2".into()],
        }
    }

    #[test]
    fn a_record_round_trips_and_admits_only_its_namespaces() {
        let r = record();
        assert_eq!(PreparedSpoke::parse(r.to_json().as_bytes()).unwrap(), r);
        assert!(r.to_json().contains(r#""kind":"veth""#));
        assert!(r.admits("lab") && r.admits("lab2"));
        assert!(!r.admits("other") && !r.admits(""));
    }

    #[test]
    fn unknown_fields_and_oversized_files_are_refused() {
        let mut json = record().to_json();
        json.insert_str(1, r#""logFile":"/etc/passwd","#);
        assert!(matches!(
            PreparedSpoke::parse(json.as_bytes()),
            Err(NodeFileError::Json { .. })
        ));
        let big = vec![b' '; MAX_NODE_FILE_BYTES + 1];
        assert!(matches!(
            CniNodeSettings::parse(&big),
            Err(NodeFileError::TooLarge { .. })
        ));
    }

    #[test]
    fn settings_default_to_the_node_paths() {
        let s =
            CniNodeSettings::parse(br#"{"devDir":"/run/k8slan/dev","preparedDir":"/p"}"#).unwrap();
        assert_eq!(s.prepared_dir, PathBuf::from("/p"));
        assert_eq!(s.log_file, None);
        assert_eq!(
            CniNodeSettings::default().prepared_dir,
            PathBuf::from(DEFAULT_PREPARED_DIR)
        );
    }
}
