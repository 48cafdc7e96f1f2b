//! The parse entry point as fuzz targets and property tests drive it: one byte string decoded
//! into a plugin, an environment and stdin, and the invariants every answer must keep.

use k8slan_api::validate;

use crate::config::{PluginKind, Request, parse_request};
use crate::invocation;
use crate::version::CniVersion;

/// A decoded fuzz input.
#[derive(Debug, Clone)]
pub struct Input {
    pub plugin: PluginKind,
    pub env: Vec<(String, String)>,
    pub stdin: Vec<u8>,
}

/// Decodes `data`: byte 0 picks the plugin (lowest bit); then `KEY=VALUE` lines form the
/// environment until an empty line; the remaining bytes are stdin.
pub fn decode(data: &[u8]) -> Input {
    let (first, rest) = data.split_first().map(|(f, r)| (*f, r)).unwrap_or((0, &[]));
    let plugin = if first & 1 == 0 {
        PluginKind::Veth
    } else {
        PluginKind::Macvtap
    };
    let (head, stdin) = match rest.windows(2).position(|w| w == b"\n\n") {
        Some(i) => (&rest[..i], &rest[i + 2..]),
        None => (rest, &[][..]),
    };
    let env = String::from_utf8_lossy(head)
        .lines()
        .filter_map(|l| l.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
        .collect();
    Input {
        plugin,
        env,
        stdin: stdin.to_vec(),
    }
}

/// Encodes an input so that [`decode`] gives it back (for seed corpora and generators).
pub fn encode(input: &Input) -> Vec<u8> {
    let mut out = vec![u8::from(input.plugin == PluginKind::Macvtap)];
    let lines: Vec<String> = input.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    out.extend_from_slice(lines.join("\n").as_bytes());
    out.extend_from_slice(b"\n\n");
    out.extend_from_slice(&input.stdin);
    out
}

/// Parses `input` and panics when an invariant breaks: an error must be a spec-valid error
/// object with a reserved code the parser may produce; an accepted attachment must only carry
/// names that are safe to hand to the kernel.
pub fn check(input: &Input) {
    let get = |k: &str| {
        input
            .env
            .iter()
            .rev()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
    };
    match parse_request(input.plugin, &get, &input.stdin) {
        Err(f) => {
            let code = f.error.code.code();
            assert!(
                matches!(code, 1 | 2 | 4 | 6 | 7),
                "parser produced code {code}: {}",
                f.error
            );
            assert!(!f.error.details.is_empty(), "empty details for code {code}");
            let obj = serde_json::to_value(f.error.to_object(f.version))
                .expect("error object serializes");
            let version = obj["cniVersion"].as_str().expect("cniVersion is a string");
            assert!(
                CniVersion::parse(version).is_some(),
                "error object version {version:?}"
            );
            assert_eq!(obj["code"].as_u64(), Some(u64::from(code)));
            assert!(obj["msg"].as_str().is_some_and(|m| !m.is_empty()));
        }
        Ok(Request::Version(v)) => {
            assert!(CniVersion::parse(&v.cni_version).is_some());
        }
        Ok(Request::Attachment(a)) => {
            validate::interface_name("ifname", &a.env.ifname)
                .expect("accepted CNI_IFNAME is an interface name");
            validate::interface_name("host link", &a.target.host_link)
                .expect("accepted host link is an interface name");
            if let Some(spoke) = &a.target.spoke {
                validate::spoke_name("spoke", spoke).expect("accepted spoke is valid");
            }
            if let Some(ns) = &a.env.netns {
                invocation::netns_path_rule(ns).expect("accepted netns path is normalized");
                assert!(!ns.split('/').any(|c| c == ".."));
            }
            if let Some(ipam) = &a.ipam {
                assert!(!ipam.contains('/') && ipam != ".." && ipam != "." && !ipam.is_empty());
            }
            if let Some(mtu) = a.mtu {
                assert!(crate::config::MTU_RANGE.contains(&mtu));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_decode_round_trip() {
        let input = Input {
            plugin: PluginKind::Macvtap,
            env: vec![
                ("CNI_COMMAND".into(), "ADD".into()),
                ("CNI_ARGS".into(), "A=1;B=2".into()),
            ],
            stdin: b"{\"x\":\n\n1}".to_vec(),
        };
        let back = decode(&encode(&input));
        assert_eq!(back.plugin, input.plugin);
        assert_eq!(back.env, input.env);
        assert_eq!(back.stdin, input.stdin);
        check(&back);
        check(&decode(&[]));
    }
}
