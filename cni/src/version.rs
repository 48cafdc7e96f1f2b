//! CNI specification versions this crate speaks, and the answer to `VERSION`.

use std::fmt;

use serde::Serialize;

/// A CNI specification version accepted in `cniVersion`.
///
/// Results are written in the format of the version the runtime asked for. `0.1.0` and `0.2.0`
/// use a different result shape and are not accepted; `1.1.0` is not claimed (no `STATUS`/`GC`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CniVersion {
    V0_3_0,
    V0_3_1,
    V0_4_0,
    V1_0_0,
}

impl CniVersion {
    /// Every accepted version, oldest first.
    pub const SUPPORTED: [CniVersion; 4] = [
        CniVersion::V0_3_0,
        CniVersion::V0_3_1,
        CniVersion::V0_4_0,
        CniVersion::V1_0_0,
    ];
    /// The newest version, used for answers when the input named none we can use.
    pub const LATEST: CniVersion = CniVersion::V1_0_0;

    /// The version as written in `cniVersion`.
    pub fn as_str(self) -> &'static str {
        match self {
            CniVersion::V0_3_0 => "0.3.0",
            CniVersion::V0_3_1 => "0.3.1",
            CniVersion::V0_4_0 => "0.4.0",
            CniVersion::V1_0_0 => "1.0.0",
        }
    }

    /// Parses an accepted version; `None` for anything else.
    pub fn parse(s: &str) -> Option<CniVersion> {
        Self::SUPPORTED.into_iter().find(|v| v.as_str() == s)
    }

    /// `CHECK` and `prevResult` on `DEL` exist from 0.4.0 on.
    pub fn has_check(self) -> bool {
        self >= CniVersion::V0_4_0
    }

    /// Results before 1.0.0 carry `"version": "4"|"6"` in every `ips` entry.
    pub fn ips_carry_version(self) -> bool {
        self < CniVersion::V1_0_0
    }

    /// Comma-separated list of the accepted versions, for error messages.
    pub fn supported_list() -> String {
        Self::SUPPORTED
            .iter()
            .map(|v| v.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl fmt::Display for CniVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The answer to `CNI_COMMAND=VERSION`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VersionInfo {
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    #[serde(rename = "supportedVersions")]
    pub supported_versions: Vec<&'static str>,
}

impl VersionInfo {
    /// Echoes the version the runtime sent when we accept it, else answers in our newest version.
    pub fn answer(requested: Option<&str>) -> VersionInfo {
        let version = requested
            .and_then(CniVersion::parse)
            .unwrap_or(CniVersion::LATEST);
        VersionInfo {
            cni_version: version.as_str().to_owned(),
            supported_versions: CniVersion::SUPPORTED.iter().map(|v| v.as_str()).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_order() {
        assert_eq!(CniVersion::parse("0.3.1"), Some(CniVersion::V0_3_1));
        assert_eq!(CniVersion::parse("1.0.0"), Some(CniVersion::V1_0_0));
        for bad in ["0.2.0", "0.1.0", "1.1.0", "1.0", "", " 1.0.0", "v1.0.0"] {
            assert_eq!(CniVersion::parse(bad), None, "{bad:?}");
        }
        assert!(!CniVersion::V0_3_1.has_check());
        assert!(CniVersion::V0_4_0.has_check());
        assert!(CniVersion::V0_4_0.ips_carry_version());
        assert!(!CniVersion::V1_0_0.ips_carry_version());
    }

    #[test]
    fn version_answer_echoes_known_versions_only() {
        let v = VersionInfo::answer(Some("0.4.0"));
        assert_eq!(v.cni_version, "0.4.0");
        assert_eq!(v.supported_versions, ["0.3.0", "0.3.1", "0.4.0", "1.0.0"]);
        assert_eq!(VersionInfo::answer(Some("9.9.9")).cni_version, "1.0.0");
        assert_eq!(VersionInfo::answer(None).cni_version, "1.0.0");
        let json = serde_json::to_value(VersionInfo::answer(None)).unwrap();
        assert!(json["supportedVersions"].is_array());
    }
}
