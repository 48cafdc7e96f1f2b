//! The CNI success result: parsed from any accepted version (IPAM answers, `prevResult`) and
//! written in the version the runtime asked for.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::mac::MacAddr;
use crate::version::CniVersion;

/// An address with its prefix length, `198.18.0.5/24` or `fd00::5/64`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpNet {
    pub addr: IpAddr,
    pub prefix: u8,
}

/// Why a CIDR string is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an address in CIDR notation such as 198.18.0.5/24 or fd00::5/64")]
pub struct IpNetError(String);

impl IpNet {
    pub fn is_ipv4(&self) -> bool {
        self.addr.is_ipv4()
    }
}

impl FromStr for IpNet {
    type Err = IpNetError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || IpNetError(s.chars().take(64).collect());
        let (addr, prefix) = s.split_once('/').ok_or_else(err)?;
        let addr: IpAddr = addr.parse().map_err(|_| err())?;
        if prefix.is_empty() || prefix.len() > 3 || !prefix.bytes().all(|b| b.is_ascii_digit()) {
            return Err(err());
        }
        let prefix: u8 = prefix.parse().map_err(|_| err())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return Err(err());
        }
        Ok(IpNet { addr, prefix })
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl Serialize for IpNet {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for IpNet {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// One interface of a result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// Network namespace path for container interfaces; absent for host interfaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
}

/// One address of a result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpConfig {
    pub address: IpNet,
    pub gateway: Option<IpAddr>,
    /// Index into `interfaces`; absent in IPAM answers.
    pub interface: Option<usize>,
}

/// One route of a result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    pub dst: IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
}

/// A success result, version independent.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CniResult {
    pub interfaces: Vec<Interface>,
    pub ips: Vec<IpConfig>,
    pub routes: Vec<Route>,
    /// Passed through unchanged (nameservers, domain, search, options).
    pub dns: Option<Value>,
}

/// Why a result (IPAM answer or `prevResult`) could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what}: {reason}")]
pub struct ResultError {
    what: String,
    reason: String,
}

#[derive(Deserialize)]
struct WireIp {
    #[serde(default)]
    version: Option<String>,
    address: IpNet,
    #[serde(default)]
    gateway: Option<IpAddr>,
    #[serde(default)]
    interface: Option<usize>,
}

#[derive(Deserialize)]
struct WireResult {
    #[serde(default)]
    interfaces: Vec<Interface>,
    #[serde(default)]
    ips: Vec<WireIp>,
    #[serde(default)]
    routes: Vec<Route>,
    #[serde(default)]
    dns: Option<Value>,
}

impl CniResult {
    /// Reads a result in any accepted version's format. `what` names its origin for messages.
    pub fn from_value(what: &str, value: &Value) -> Result<CniResult, ResultError> {
        let err = |reason: String| ResultError {
            what: what.to_owned(),
            reason,
        };
        if !value.is_object() {
            return Err(err("is not a JSON object".into()));
        }
        let wire: WireResult =
            serde_json::from_value(value.clone()).map_err(|e| err(e.to_string()))?;
        let mut ips = Vec::with_capacity(wire.ips.len());
        for (i, ip) in wire.ips.into_iter().enumerate() {
            if let Some(v) = &ip.version {
                let expected = if ip.address.is_ipv4() { "4" } else { "6" };
                if v != expected {
                    return Err(err(format!(
                        "ips[{i}]: version {v:?} does not match address {}",
                        ip.address
                    )));
                }
            }
            if let Some(idx) = ip.interface
                && idx >= wire.interfaces.len()
            {
                return Err(err(format!(
                    "ips[{i}]: interface index {idx} points past the {} interfaces",
                    wire.interfaces.len()
                )));
            }
            ips.push(IpConfig {
                address: ip.address,
                gateway: ip.gateway,
                interface: ip.interface,
            });
        }
        Ok(CniResult {
            interfaces: wire.interfaces,
            ips,
            routes: wire.routes,
            dns: wire.dns.filter(|d| !d.is_null()),
        })
    }

    /// Appends `other` after `self` (chained ADD with a `prevResult`), shifting its indexes.
    pub fn merge(mut self, other: CniResult) -> CniResult {
        let offset = self.interfaces.len();
        self.interfaces.extend(other.interfaces);
        self.ips.extend(other.ips.into_iter().map(|mut ip| {
            ip.interface = ip.interface.map(|i| i + offset);
            ip
        }));
        self.routes.extend(other.routes);
        if other.dns.is_some() {
            self.dns = other.dns;
        }
        self
    }

    /// Index of the interface called `name` in `sandbox`.
    pub fn interface_index(&self, name: &str, sandbox: &str) -> Option<usize> {
        self.interfaces
            .iter()
            .position(|i| i.name == name && i.sandbox.as_deref() == Some(sandbox))
    }

    /// The addresses assigned to interface `index`.
    pub fn ips_of(&self, index: usize) -> impl Iterator<Item = &IpConfig> {
        self.ips
            .iter()
            .filter(move |ip| ip.interface == Some(index))
    }

    /// The result as JSON in the format of `version`.
    pub fn to_value(&self, version: CniVersion) -> Value {
        let mut obj = Map::new();
        obj.insert("cniVersion".into(), Value::from(version.as_str()));
        obj.insert(
            "interfaces".into(),
            serde_json::to_value(&self.interfaces).unwrap_or_default(),
        );
        let ips = self
            .ips
            .iter()
            .map(|ip| {
                let mut o = Map::new();
                if version.ips_carry_version() {
                    let v = if ip.address.is_ipv4() { "4" } else { "6" };
                    o.insert("version".into(), Value::from(v));
                }
                o.insert("address".into(), Value::from(ip.address.to_string()));
                if let Some(gw) = ip.gateway {
                    o.insert("gateway".into(), Value::from(gw.to_string()));
                }
                if let Some(i) = ip.interface {
                    o.insert("interface".into(), Value::from(i));
                }
                Value::Object(o)
            })
            .collect();
        obj.insert("ips".into(), Value::Array(ips));
        if !self.routes.is_empty() {
            obj.insert(
                "routes".into(),
                serde_json::to_value(&self.routes).unwrap_or_default(),
            );
        }
        obj.insert(
            "dns".into(),
            self.dns
                .clone()
                .unwrap_or_else(|| Value::Object(Map::new())),
        );
        Value::Object(obj)
    }
}

/// The interface entry of a MAC-bearing container interface.
pub fn container_interface(name: &str, mac: Option<MacAddr>, sandbox: &str) -> Interface {
    Interface {
        name: name.to_owned(),
        mac: mac.map(|m| m.to_string()),
        sandbox: Some(sandbox.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn cidr_parsing() {
        assert_eq!(
            "198.18.0.5/24".parse::<IpNet>().unwrap().to_string(),
            "198.18.0.5/24"
        );
        assert_eq!("fd00::5/64".parse::<IpNet>().unwrap().prefix, 64);
        for bad in [
            "198.18.0.5",
            "198.18.0.5/33",
            "fd00::/129",
            "x/24",
            "1.2.3.4/+1",
            "1.2.3.4/",
        ] {
            assert!(bad.parse::<IpNet>().is_err(), "{bad}");
        }
    }

    #[test]
    fn reads_old_ipam_answer_and_writes_each_version() {
        // host-local answering a 0.3.1 request.
        let ipam = json!({"cniVersion": "0.3.1", "ips": [{"version": "4", "address": "198.18.1.2/24", "gateway": "198.18.1.1"}],
            "routes": [{"dst": "198.19.0.0/16"}], "dns": {}});
        let mut r = CniResult::from_value("IPAM result", &ipam).unwrap();
        r.interfaces.push(container_interface(
            "e1-1",
            Some(MacAddr([2, 0, 0, 0, 0, 1])),
            "/run/netns/p",
        ));
        for ip in &mut r.ips {
            ip.interface = Some(0);
        }
        let v1 = r.to_value(CniVersion::V1_0_0);
        assert_eq!(v1["cniVersion"], "1.0.0");
        assert!(v1["ips"][0].get("version").is_none());
        assert_eq!(v1["ips"][0]["interface"], 0);
        assert_eq!(v1["interfaces"][0]["mac"], "02:00:00:00:00:01");
        assert_eq!(v1["interfaces"][0]["sandbox"], "/run/netns/p");
        let v031 = r.to_value(CniVersion::V0_3_1);
        assert_eq!(v031["ips"][0]["version"], "4");
        assert_eq!(v031["routes"][0]["dst"], "198.19.0.0/16");
        // Reading our own output gives the same result back, whatever the version.
        assert_eq!(CniResult::from_value("x", &v031).unwrap(), r);
        assert_eq!(CniResult::from_value("x", &v1).unwrap(), r);
    }

    #[test]
    fn rejects_inconsistent_results() {
        let bad_version = json!({"ips": [{"version": "6", "address": "198.18.1.2/24"}]});
        assert!(
            CniResult::from_value("prevResult", &bad_version)
                .unwrap_err()
                .to_string()
                .contains("version")
        );
        let bad_index =
            json!({"interfaces": [], "ips": [{"address": "198.18.1.2/24", "interface": 3}]});
        assert!(
            CniResult::from_value("prevResult", &bad_index)
                .unwrap_err()
                .to_string()
                .contains("index 3")
        );
        assert!(CniResult::from_value("prevResult", &json!([1])).is_err());
    }

    #[test]
    fn merge_shifts_indexes() {
        // One interface in sandbox /n with one address.
        let one = |ifname: &str, address: &str| CniResult {
            interfaces: vec![container_interface(ifname, None, "/n")],
            ips: vec![IpConfig {
                address: address.parse().unwrap(),
                gateway: None,
                interface: Some(0),
            }],
            ..Default::default()
        };
        let prev = one("eth0", "198.18.0.2/24");
        let ours = one("e1", "198.18.5.2/24");
        let m = prev.merge(ours);
        assert_eq!(m.interface_index("e1", "/n"), Some(1));
        assert_eq!(m.ips_of(1).count(), 1);
        assert_eq!(m.ips[1].interface, Some(1));
    }
}
