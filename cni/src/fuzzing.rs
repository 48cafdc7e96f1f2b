//! The parse entry point and the whole plugin as fuzz targets and property tests drive them:
//! one byte string decoded into a plugin, an environment and stdin, and the invariants every
//! answer must keep ([`check`] for the parser, [`check_plugin`] for a whole execution over the
//! recording doubles of [`crate::testing`]).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use k8slan_api::naming::SpokeKind;
use k8slan_api::prepared::{CniNodeSettings, prepared_file};
use k8slan_api::validate;

use crate::mac::MacAddr;
use crate::plugin::run_on;
use crate::testing::{FakeHost, RecordingLinks, SharedLinks, prepared_link, record};

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

/// The `CNI_*` variables a runtime sets (CNI 1.0.0), for harnesses that vary the environment.
pub const CNI_ENV_KEYS: &[&str] = &[
    "CNI_COMMAND",
    "CNI_CONTAINERID",
    "CNI_NETNS",
    "CNI_IFNAME",
    "CNI_ARGS",
    "CNI_PATH",
];

impl Input {
    /// The value of environment variable `key`; of several entries for it, the last one wins.
    pub fn var(&self, key: &str) -> Option<String> {
        self.env
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
    }
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
    let get = |k: &str| input.var(k);
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

/// A prepared directory (made once per process) with the records of `srl` (veth) and `vm`
/// (mac) of LAN `lab/lan1`.
pub fn fuzz_prepared_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("k8slan-cni-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("fuzz prepared dir");
        for r in [record(SpokeKind::Veth, "srl"), record(SpokeKind::Mac, "vm")] {
            std::fs::write(dir.join(prepared_file(&r.spoke)), r.to_json()).expect("record");
        }
        dir
    })
}

/// Runs `input` through the whole plugin over a node holding the prepared `srl` and `vm` and
/// foreign links (another pod's veth, `eth0`, a bridge, a foreign macvtap), and panics when an
/// invariant breaks: a rejected input changed no link and called no IPAM; an accepted ADD moved
/// exactly one recorded link; a foreign link is never touched.
pub fn check_plugin(input: &Input) {
    let dir = fuzz_prepared_dir();
    let mac = MacAddr([2, 0x11, 0, 0, 0, 1]);
    let srl = record(SpokeKind::Veth, "srl");
    let mut vm = record(SpokeKind::Mac, "vm");
    vm.ifindex = 7;
    let mut links = vec![prepared_link(&srl, mac, 1430)];
    let mut vm_link = prepared_link(&vm, mac, 1430);
    vm_link.index = 8;
    links.push(vm_link);
    let foreign = |name: &str, index, kind: Option<&str>| crate::link::LinkState {
        index,
        name: name.into(),
        kind: kind.map(str::to_owned),
        mac: Some(mac),
        mtu: Some(1500),
        up: true,
        promisc: false,
        alias: None,
    };
    links.extend([
        foreign("cali1a2b", 11, Some("veth")),
        foreign("eth0", 2, None),
        foreign("br0", 3, Some("bridge")),
        foreign("mvt-x", 12, Some("macvtap")),
    ]);
    let mut host = FakeHost {
        links: SharedLinks(std::rc::Rc::new(std::cell::RefCell::new(
            RecordingLinks::with_host_links(links),
        ))),
        sandbox_exists: true,
        ..Default::default()
    };
    let settings = Ok(CniNodeSettings {
        log_file: None,
        log_level: None,
        dev_dir: dir.join("dev"),
        prepared_dir: dir.to_owned(),
    });
    let get = |k: &str| input.var(k);
    let out = run_on(input.plugin, &get, &input.stdin, &settings, &mut host);
    let k = host.links.0.borrow();
    for name in ["cali1a2b", "eth0", "br0", "mvt-x"] {
        assert!(
            k.host.contains_key(name),
            "foreign {name} moved: {:?}",
            k.log
        );
        let suffix = format!("node namespace {name}");
        assert!(
            !k.log.iter().any(|l| l.ends_with(&suffix)),
            "{name} changed: {:?}",
            k.log
        );
    }
    if !out.success {
        assert!(k.changes().is_empty(), "rejected, yet changed: {:?}", k.log);
        assert!(
            host.ipam_calls.borrow().is_empty(),
            "rejected, yet IPAM ran"
        );
    } else if get("CNI_COMMAND").as_deref() == Some("ADD") {
        let moved: Vec<_> = k
            .log
            .iter()
            .filter(|l| l.starts_with("move link node namespace"))
            .collect();
        assert_eq!(moved.len(), 1, "{:?}", k.log);
        assert!(
            moved[0].ends_with(" srl") || moved[0].ends_with(" mvt-vm"),
            "moved {}",
            moved[0]
        );
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
        check_plugin(&back);
        check_plugin(&decode(&[]));
    }
}
