//! The CNI error object and its well-known codes.

use serde::Serialize;

use crate::version::CniVersion;

/// Error codes of the CNI specification (0-99 are reserved for these), plus k8slan's own (100+).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// 1: the `cniVersion` is not one this plugin speaks.
    IncompatibleVersion,
    /// 2: a configuration field this plugin does not support; the message names key and value.
    UnsupportedField,
    /// 3: the container (its network namespace) does not exist.
    UnknownContainer,
    /// 4: a required `CNI_*` environment variable is missing or invalid; the message names it.
    InvalidEnvironment,
    /// 5: reading input, a kernel call or running a delegated plugin failed.
    IoFailure,
    /// 6: the input is not decodable (not JSON, not UTF-8, too large, bad `prevResult`).
    DecodeFailure,
    /// 7: the network configuration is invalid.
    InvalidConfig,
    /// 11: a transient condition; the runtime should try again later.
    TryAgainLater,
    /// 100 (k8slan): `CHECK` found the attachment different from what `prevResult` describes.
    CheckFailed,
    /// Any other code, as returned by a delegated (IPAM) plugin and passed on unchanged.
    Other(u32),
}

impl ErrorCode {
    /// The numeric code written in the error object.
    pub fn code(self) -> u32 {
        match self {
            ErrorCode::IncompatibleVersion => 1,
            ErrorCode::UnsupportedField => 2,
            ErrorCode::UnknownContainer => 3,
            ErrorCode::InvalidEnvironment => 4,
            ErrorCode::IoFailure => 5,
            ErrorCode::DecodeFailure => 6,
            ErrorCode::InvalidConfig => 7,
            ErrorCode::TryAgainLater => 11,
            ErrorCode::CheckFailed => 100,
            ErrorCode::Other(c) => c,
        }
    }

    /// The code for a number found in a delegated plugin's error object.
    pub fn from_code(code: u32) -> ErrorCode {
        match code {
            1 => ErrorCode::IncompatibleVersion,
            2 => ErrorCode::UnsupportedField,
            3 => ErrorCode::UnknownContainer,
            4 => ErrorCode::InvalidEnvironment,
            5 => ErrorCode::IoFailure,
            6 => ErrorCode::DecodeFailure,
            7 => ErrorCode::InvalidConfig,
            11 => ErrorCode::TryAgainLater,
            100 => ErrorCode::CheckFailed,
            other => ErrorCode::Other(other),
        }
    }

    /// Short description used as the error object's `msg`.
    pub fn summary(self) -> &'static str {
        match self {
            ErrorCode::IncompatibleVersion => "incompatible CNI version",
            ErrorCode::UnsupportedField => "unsupported field in network configuration",
            ErrorCode::UnknownContainer => "container unknown or does not exist",
            ErrorCode::InvalidEnvironment => "invalid necessary environment variables",
            ErrorCode::IoFailure => "I/O failure",
            ErrorCode::DecodeFailure => "failed to decode content",
            ErrorCode::InvalidConfig => "invalid network configuration",
            ErrorCode::TryAgainLater => "try again later",
            ErrorCode::CheckFailed => "attachment differs from prevResult",
            ErrorCode::Other(_) => "delegated plugin failed",
        }
    }
}

/// A failed CNI command: what the plugin prints on stdout before exiting non-zero.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{} (code {}): {details}", .code.summary(), .code.code())]
pub struct CniError {
    pub code: ErrorCode,
    /// What failed, on which object, why, and what to do about it.
    pub details: String,
}

impl CniError {
    pub fn new(code: ErrorCode, details: impl Into<String>) -> Self {
        CniError {
            code,
            details: details.into(),
        }
    }

    /// The spec's error object, in the given (or our newest) version.
    pub fn to_object(&self, version: Option<CniVersion>) -> ErrorObject {
        ErrorObject {
            cni_version: version.unwrap_or(CniVersion::LATEST).as_str().to_owned(),
            code: self.code.code(),
            msg: self.code.summary().to_owned(),
            details: self.details.clone(),
        }
    }
}

/// The serialized error result of the CNI specification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ErrorObject {
    #[serde(rename = "cniVersion", default)]
    pub cni_version: String,
    pub code: u32,
    #[serde(default)]
    pub msg: String,
    #[serde(default)]
    pub details: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_has_spec_keys() {
        let e = CniError::new(ErrorCode::InvalidConfig, "ipam.type is empty");
        let v = serde_json::to_value(e.to_object(Some(CniVersion::V0_4_0))).unwrap();
        assert_eq!(v["cniVersion"], "0.4.0");
        assert_eq!(v["code"], 7);
        assert_eq!(v["msg"], "invalid network configuration");
        assert_eq!(v["details"], "ipam.type is empty");
        assert_eq!(e.to_object(None).cni_version, "1.0.0");
    }

    #[test]
    fn codes_round_trip() {
        for c in [1, 2, 3, 4, 5, 6, 7, 11, 100, 42] {
            assert_eq!(ErrorCode::from_code(c).code(), c);
        }
    }
}
