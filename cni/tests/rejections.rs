//! Every rejected invocation leaves the node as it was. Each input runs through the whole plugin
//! ([`k8slan_cni::plugin::run_on`]) over a recording kernel double that holds the spokes the
//! agent prepared (with their records in a temporary prepared directory) and the links a NAD
//! author would like to steal: another pod's host veth, the node's `eth0`, a bridge, a macvtap
//! k8slan did not make, a veth carrying another role's alias. On every rejection: no link moved
//! or changed, no IPAM call, no file written or created in the node's directories (nor at a path
//! a NAD named). Accepted ADDs bind only a recorded link for an admitted namespace, and the
//! foreign links are never touched by any input.
//!
//! The bad inputs are families, one per rule (see `families`); a property test adds random
//! mutations of environment and configuration on top.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8slan_api::naming::SpokeKind;
use k8slan_api::prepared::{CniNodeSettings, PreparedSpoke, prepared_file};
use k8slan_cni::PluginKind;
use k8slan_cni::error::CniError;
use k8slan_cni::fuzzing::CNI_ENV_KEYS;
use k8slan_cni::link::LinkState;
use k8slan_cni::mac::MacAddr;
use k8slan_cni::plugin::{Outcome, run_on};
use k8slan_cni::testing::{FakeHost, RecordingLinks, SharedLinks, prepared_link, record};
use proptest::prelude::*;
use serde_json::{Value, json};

const MAC: MacAddr = MacAddr([2, 0x11, 0, 0, 0, 1]);
/// Links in the node's namespace that no input may ever move or change.
const FOREIGN: [&str; 7] = ["cali1a2b", "eth0", "br0", "mvt-x", "veth9", "fake", "vm"];

fn link(name: &str, index: u32, kind: Option<&str>, alias: Option<&str>) -> LinkState {
    LinkState {
        index,
        name: name.into(),
        kind: kind.map(str::to_owned),
        mac: Some(MAC),
        mtu: Some(1500),
        up: true,
        promisc: false,
        alias: alias.map(str::to_owned),
    }
}

/// A node: the prepared spokes `srl` (pod) and `vm` (VM) with records, a record `fake` whose link
/// is a pod-made veth without our alias, and the foreign links.
struct Node {
    dir: tempfile::TempDir,
    settings: CniNodeSettings,
    host: FakeHost,
}

impl Node {
    fn new() -> Node {
        let dir = tempfile::tempdir().unwrap();
        let prepared = dir.path().join("prepared");
        std::fs::create_dir(&prepared).unwrap();
        std::fs::create_dir(dir.path().join("dev")).unwrap();
        let srl = record(SpokeKind::Veth, "srl");
        let mut vm = record(SpokeKind::Mac, "vm");
        vm.ifindex = 8;
        let mut fake = record(SpokeKind::Veth, "fake");
        fake.ifindex = 9;
        for r in [&srl, &vm, &fake] {
            write_record(&prepared, r);
        }
        let mut links = vec![
            prepared_link(&srl, MAC, 1430),
            prepared_link(&vm, MAC, 1430),
        ];
        links.extend([
            link("vm", 10, Some("veth"), Some("k8slan:knl/spoke/vm")),
            link("cali1a2b", 11, Some("veth"), None),
            link("eth0", 2, None, None),
            link("br0", 3, Some("bridge"), Some("k8slan:knl/bridge")),
            link("mvt-x", 12, Some("macvtap"), None),
            link("veth9", 13, Some("veth"), Some("k8slan:knl/port/srl")),
            link("fake", 9, Some("veth"), None),
        ]);
        let host = FakeHost {
            links: SharedLinks(std::rc::Rc::new(std::cell::RefCell::new(
                RecordingLinks::with_host_links(links),
            ))),
            sandbox_exists: true,
            ..Default::default()
        };
        let settings = CniNodeSettings {
            log_file: None,
            log_level: None,
            dev_dir: dir.path().join("dev"),
            prepared_dir: prepared,
        };
        Node {
            dir,
            settings,
            host,
        }
    }

    fn run(&mut self, plugin: PluginKind, env: &[(String, String)], stdin: &[u8]) -> Outcome {
        let get = |k: &str| {
            env.iter()
                .rev()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.clone())
        };
        let settings: Result<CniNodeSettings, CniError> = Ok(self.settings.clone());
        run_on(plugin, &get, stdin, &settings, &mut self.host)
    }

    fn links(&self) -> std::cell::Ref<'_, RecordingLinks> {
        self.host.links.0.borrow()
    }

    /// Every file below the node's directory, with its size and modification time.
    fn files(&self) -> BTreeMap<PathBuf, (u64, std::time::SystemTime)> {
        let mut out = BTreeMap::new();
        walk(self.dir.path(), &mut out);
        out
    }
}

fn walk(dir: &Path, out: &mut BTreeMap<PathBuf, (u64, std::time::SystemTime)>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let meta = std::fs::symlink_metadata(e.path()).unwrap();
        if meta.is_dir() {
            walk(&e.path(), out);
        }
        out.insert(e.path(), (meta.len(), meta.modified().unwrap()));
    }
}

fn write_record(dir: &Path, r: &PreparedSpoke) {
    std::fs::write(dir.join(prepared_file(&r.spoke)), r.to_json()).unwrap();
}

fn good_env(command: &str) -> Vec<(String, String)> {
    [
        ("CNI_COMMAND", command),
        ("CNI_CONTAINERID", "c0ffee"),
        ("CNI_NETNS", "/run/netns/p"),
        ("CNI_IFNAME", "e1-1"),
        (
            "CNI_ARGS",
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=lab;K8S_POD_NAME=p",
        ),
        ("CNI_PATH", "/opt/cni/bin"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

fn veth_conf() -> Value {
    json!({"cniVersion": "1.0.0", "name": "k8slan-veth-srl", "type": "k8slanveth", "veth": "srl"})
}

fn mac_conf() -> Value {
    json!({"cniVersion": "1.0.0", "name": "k8slan-mac-vm", "type": "k8slanmacvtap", "deviceID": "mvt-vm"})
}

/// One bad input: its family, the plugin, the environment and stdin.
struct Case {
    family: &'static str,
    plugin: PluginKind,
    env: Vec<(String, String)>,
    stdin: Vec<u8>,
}

fn with(mut conf: Value, key: &str, value: Value) -> Vec<u8> {
    if value.is_null() {
        conf.as_object_mut().unwrap().remove(key);
    } else {
        conf[key] = value;
    }
    conf.to_string().into_bytes()
}

fn env_with(command: &str, key: &str, value: Option<&str>) -> Vec<(String, String)> {
    let mut env = good_env(command);
    env.retain(|(k, _)| k != key);
    if let Some(v) = value {
        env.push((key.into(), v.into()));
    }
    env
}

fn args_with(ns: Option<&str>) -> Vec<(String, String)> {
    let args = match ns {
        Some(ns) => format!("IgnoreUnknown=1;K8S_POD_NAMESPACE={ns}"),
        None => "IgnoreUnknown=1;K8S_POD_NAME=p".into(),
    };
    env_with("ADD", "CNI_ARGS", Some(&args))
}

/// The bad inputs, a family per rule.
fn families(victim: &Path, forged: &Path) -> Vec<Case> {
    let v = PluginKind::Veth;
    let m = PluginKind::Macvtap;
    let add = || good_env("ADD");
    let mut cases = Vec::new();
    let mut push = |family, plugin, env, stdin| {
        cases.push(Case {
            family,
            plugin,
            env,
            stdin,
        })
    };
    // Item 1: a NAD that names a link the agent did not prepare for it.
    for name in FOREIGN.iter().chain(&["lo", "nothere", "srl2", "vm"]) {
        for key in ["veth", "deviceID"] {
            push(
                "veth names a foreign link",
                v,
                add(),
                with(veth_conf(), key, json!(name)),
            );
        }
        push(
            "network named after a foreign link",
            v,
            add(),
            json!({"cniVersion": "1.0.0", "name": format!("k8slan-veth-{name}"), "type": "k8slanveth"})
                .to_string()
                .into_bytes(),
        );
    }
    for dev in [
        "mvt-x",
        "eth0",
        "br0",
        "cali1a2b",
        "srl",
        "vm",
        "veth9",
        "mvt-srl",
        "mvh-0badf00d",
    ] {
        let conf = json!({"cniVersion": "1.0.0", "name": "custom-vm-net", "type": "k8slanmacvtap", "deviceID": dev});
        push(
            "macvtap names a foreign link",
            m,
            add(),
            conf.to_string().into_bytes(),
        );
    }
    push(
        "veth NAD for the VM spoke's record",
        v,
        add(),
        with(veth_conf(), "veth", json!("vm")),
    );
    // Item 4: the pod's namespace must be one the LAN admits.
    for ns in [
        None,
        Some(""),
        Some("other"),
        Some("LAB"),
        Some("lab/../x"),
        Some("kube-system"),
        Some("default"),
        Some(&"a".repeat(64)[..]),
        Some("lab "),
        Some("-lab"),
    ] {
        push(
            "pod namespace not admitted",
            v,
            args_with(ns),
            veth_conf().to_string().into_bytes(),
        );
        push(
            "pod namespace not admitted",
            m,
            args_with(ns),
            mac_conf().to_string().into_bytes(),
        );
    }
    // Item 2: no path from the NAD.
    let victim = victim.to_str().unwrap();
    for (key, value) in [
        ("logFile", json!(victim)),
        ("logFile", json!("/etc/passwd")),
        ("logFile", json!("relative.log")),
        ("logLevel", json!("trace")),
        ("devDir", json!(victim)),
        ("devDir", json!("/dev")),
        ("preparedDir", json!(forged.to_str().unwrap())),
    ] {
        for command in ["ADD", "CHECK"] {
            push(
                "node key in the NAD",
                v,
                good_env(command),
                with(veth_conf(), key, value.clone()),
            );
            push(
                "node key in the NAD",
                m,
                good_env(command),
                with(mac_conf(), key, value.clone()),
            );
        }
    }
    // CNI_* variables.
    let long = "x".repeat(5000);
    let bad_env: &[(&str, Option<&str>)] = &[
        ("CNI_COMMAND", None),
        ("CNI_COMMAND", Some("add")),
        ("CNI_COMMAND", Some("GC")),
        ("CNI_COMMAND", Some("STATUS")),
        ("CNI_CONTAINERID", None),
        ("CNI_CONTAINERID", Some("../x")),
        ("CNI_CONTAINERID", Some("-x")),
        ("CNI_NETNS", None),
        ("CNI_NETNS", Some("run/netns/p")),
        ("CNI_NETNS", Some("/run/netns/../../proc/1/ns/net")),
        ("CNI_NETNS", Some("/run/netns/p\n")),
        ("CNI_NETNS", Some("/")),
        ("CNI_NETNS", Some(&long)),
        ("CNI_IFNAME", None),
        ("CNI_IFNAME", Some("a/b")),
        ("CNI_IFNAME", Some("..")),
        ("CNI_IFNAME", Some("abcdefghijklmnop")),
        ("CNI_IFNAME", Some("e 1")),
        ("CNI_ARGS", Some("K8S_POD_NAMESPACE")),
        ("CNI_ARGS", Some("K8S_POD_NAMESPACE=lab;MAC=zz")),
        (
            "CNI_ARGS",
            Some("K8S_POD_NAMESPACE=lab;MAC=01:00:5e:00:00:01"),
        ),
        ("CNI_ARGS", Some("A B=1;K8S_POD_NAMESPACE=lab")),
        ("CNI_PATH", Some("bin")),
        ("CNI_PATH", Some("/opt/../etc")),
    ];
    for (key, value) in bad_env {
        push(
            "bad CNI_* variable",
            v,
            env_with("ADD", key, *value),
            veth_conf().to_string().into_bytes(),
        );
        push(
            "bad CNI_* variable",
            m,
            env_with("ADD", key, *value),
            mac_conf().to_string().into_bytes(),
        );
    }
    // The configuration itself.
    let bad_conf: &[(&str, Value)] = &[
        ("cniVersion", json!("9.9.9")),
        ("cniVersion", json!(1)),
        ("cniVersion", Value::Null),
        ("name", json!("-x")),
        ("name", json!("a/b")),
        ("name", Value::Null),
        ("type", json!("../k8slanveth")),
        ("type", json!("")),
        ("mtu", json!(20)),
        ("mtu", json!(70000)),
        ("mtu", json!(-1)),
        ("mac", json!("01:00:5e:00:00:01")),
        ("mac", json!("ff:ff:ff:ff:ff:ff")),
        ("mac", json!("x")),
        ("runtimeConfig", json!({"mac": "00:00:00:00:00:00"})),
        ("ipam", json!({"type": "../../bin/sh"})),
        ("ipam", json!({})),
        ("prevResult", json!({"ips": [{"address": "nope"}]})),
        ("veth", json!("a/b")),
        ("veth", json!("..")),
        ("veth", json!(5)),
        ("deviceID", json!("other")),
    ];
    for (key, value) in bad_conf {
        push(
            "bad configuration",
            v,
            add(),
            with(veth_conf(), key, value.clone()),
        );
    }
    push(
        "macvtap with ipam",
        m,
        add(),
        with(mac_conf(), "ipam", json!({"type": "host-local"})),
    );
    push(
        "macvtap deviceID with slash",
        m,
        add(),
        with(mac_conf(), "deviceID", json!("mvt/vm")),
    );
    push(
        "macvtap of another spoke",
        m,
        add(),
        with(mac_conf(), "deviceID", json!("mvt-srl")),
    );
    for stdin in [&b"{"[..], b"[1]", b"", b"\xff\xfe", b"null"] {
        push("not a configuration", v, add(), stdin.to_vec());
    }
    push(
        "oversized configuration",
        v,
        add(),
        format!(
            r#"{{"cniVersion":"1.0.0","pad":"{}"}}"#,
            "x".repeat(1 << 20)
        )
        .into_bytes(),
    );
    cases
}

/// The recorded links an accepted ADD may move, and the namespaces they admit.
fn recorded(link: &str) -> bool {
    link == "srl" || link == "mvt-vm"
}

fn foreign_untouched(node: &Node, what: &str) {
    let links = node.links();
    for name in FOREIGN {
        assert!(
            links.host.contains_key(name),
            "{what}: foreign link {name} left the node: {:?}",
            links.log
        );
        assert!(
            !links
                .log
                .iter()
                .any(|l| l.ends_with(&format!("node namespace {name}"))),
            "{what}: foreign link {name} was changed: {:?}",
            links.log
        );
    }
}

fn assert_left_alone(
    node: &Node,
    before: &BTreeMap<PathBuf, (u64, std::time::SystemTime)>,
    out: &Outcome,
    what: &str,
    victim: &Path,
) {
    let v: Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("{what}: {e}: {:?}", out.stdout));
    let code = v["code"]
        .as_u64()
        .unwrap_or_else(|| panic!("{what}: no code: {v}"));
    assert!(matches!(code, 1..=7 | 11 | 100), "{what}: code {code}: {v}");
    assert!(
        v["details"].as_str().is_some_and(|d| !d.is_empty()),
        "{what}: {v}"
    );
    let links = node.links();
    assert!(
        links.changes().is_empty(),
        "{what}: {v}: links changed: {:?}",
        links.log
    );
    assert!(links.pod.is_empty(), "{what}: a link reached the pod");
    drop(links);
    assert!(
        node.host.ipam_calls.borrow().is_empty(),
        "{what}: IPAM was called"
    );
    assert_eq!(&node.files(), before, "{what}: the node's files changed");
    assert!(!victim.exists(), "{what}: {} was created", victim.display());
    foreign_untouched(node, what);
}

/// A fresh node after the ADD of `conf` with the good environment, which must succeed.
fn after_good_add(plugin: PluginKind, conf: Value) -> Node {
    let mut node = Node::new();
    let out = node.run(plugin, &good_env("ADD"), conf.to_string().as_bytes());
    assert!(out.success, "{}", out.stdout);
    node
}

#[test]
fn the_good_inputs_are_accepted_so_the_rejections_below_mean_something() {
    let node = after_good_add(PluginKind::Veth, veth_conf());
    assert!(node.links().pod.contains_key("e1-1"));
    let node = after_good_add(PluginKind::Macvtap, mac_conf());
    assert!(!node.links().host.contains_key("mvt-vm"));
    foreign_untouched(&node, "good macvtap ADD");
}

#[test]
fn every_bad_input_of_every_family_leaves_the_node_alone() {
    let probe = Node::new();
    let victim = probe.dir.path().join("victim.log");
    let forged = probe.dir.path().join("forged");
    std::fs::create_dir(&forged).unwrap();
    let mut everyone = record(SpokeKind::Veth, "cali1a2b");
    everyone.allowed_namespaces = vec!["lab".into()];
    write_record(&forged, &everyone);
    let cases = families(&victim, &forged);
    assert!(cases.len() > 150, "{} cases", cases.len());
    let mut per_family: BTreeMap<&str, usize> = BTreeMap::new();
    for case in &cases {
        let mut node = Node::new();
        // The victim and the forged records live in the probe's directory; check it too.
        let before = node.files();
        let probe_before = probe.files();
        let out = node.run(case.plugin, &case.env, &case.stdin);
        let what = format!(
            "{} ({:?}, {:?}, {})",
            case.family,
            case.plugin,
            case.env,
            String::from_utf8_lossy(&case.stdin)
                .chars()
                .take(200)
                .collect::<String>()
        );
        assert!(!out.success, "{what}: accepted: {}", out.stdout);
        assert_left_alone(&node, &before, &out, &what, &victim);
        assert_eq!(probe.files(), probe_before, "{what}");
        *per_family.entry(case.family).or_default() += 1;
    }
    eprintln!("rejected inputs per family: {per_family:?}");
}

#[test]
fn a_spoke_whose_link_was_swapped_after_allocate_is_not_bound() {
    // The record names srl at ifindex 7; a pod (or anyone) replaced it by another veth.
    let mut node = Node::new();
    {
        let mut links = node.host.links.0.borrow_mut();
        let (l, _) = links.host.get_mut("srl").unwrap();
        l.index = 70;
    }
    let before = node.files();
    let out = node.run(
        PluginKind::Veth,
        &good_env("ADD"),
        veth_conf().to_string().as_bytes(),
    );
    assert!(!out.success);
    assert!(
        out.stdout.contains("ifindex 70, recorded 7"),
        "{}",
        out.stdout
    );
    assert_left_alone(
        &node,
        &before,
        &out,
        "swapped link",
        Path::new("/nonexistent"),
    );
}

#[test]
fn allowed_namespaces_admit_their_pods() {
    let mut node = Node::new();
    let mut srl = record(SpokeKind::Veth, "srl");
    srl.allowed_namespaces = vec!["lab2".into()];
    write_record(&node.settings.prepared_dir, &srl);
    let out = node.run(
        PluginKind::Veth,
        &args_with(Some("lab2")),
        veth_conf().to_string().as_bytes(),
    );
    assert!(out.success, "{}", out.stdout);
    let mut node = Node::new();
    let out = node.run(
        PluginKind::Veth,
        &args_with(Some("lab2")),
        veth_conf().to_string().as_bytes(),
    );
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["code"], 7, "{v}");
    let details = v["details"].as_str().unwrap();
    assert!(
        details.contains("LAN lab/lan1") && details.contains("\"lab2\""),
        "{details}"
    );
}

#[test]
fn del_with_old_node_keys_still_cleans_up_but_never_takes_a_foreign_link() {
    let mut node = Node::new();
    let conf = with(mac_conf(), "devDir", json!("/run/k8slan/dev"));
    let clean = mac_conf().to_string();
    assert!(
        node.run(PluginKind::Macvtap, &good_env("ADD"), clean.as_bytes())
            .success
    );
    let out = node.run(PluginKind::Macvtap, &good_env("DEL"), &conf);
    assert!(out.success, "{}", out.stdout);
    assert!(node.links().host.contains_key("mvt-vm"), "given back");
    // A pod-made macvtap named CNI_IFNAME with another role's alias stays where it is.
    node.host.links.0.borrow_mut().pod.insert(
        "e1-1".into(),
        (
            link("e1-1", 40, Some("macvtap"), Some("k8slan:knl/spoke/vm")),
            vec![],
        ),
    );
    assert!(
        node.run(PluginKind::Macvtap, &good_env("DEL"), &conf)
            .success
    );
    assert!(node.links().pod.contains_key("e1-1"));
}

fn nasty() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("..".to_owned()),
        Just("eth0".to_owned()),
        Just("cali1a2b".to_owned()),
        Just("mvt-x".to_owned()),
        Just("br0".to_owned()),
        Just("srl".to_owned()),
        Just("vm".to_owned()),
        Just("mvt-vm".to_owned()),
        Just("lab".to_owned()),
        Just("other".to_owned()),
        Just("/tmp".to_owned()),
        Just("IgnoreUnknown=1;K8S_POD_NAMESPACE=other".to_owned()),
        Just("K8S_POD_NAMESPACE=lab".to_owned()),
        "[a-z0-9./:;=-]{0,20}",
    ]
}

const KEYS: &[&str] = &[
    "name",
    "type",
    "veth",
    "deviceID",
    "mtu",
    "mac",
    "ipam",
    "logFile",
    "devDir",
    "preparedDir",
    "cniVersion",
];

proptest! {
    #![proptest_config(ProptestConfig { cases: 1500, .. ProptestConfig::default() })]

    /// Random edits of a good invocation: a rejection changes nothing; an acceptance of ADD moved
    /// only a recorded link, for an admitted namespace; foreign links are never touched.
    #[test]
    fn random_edits_keep_the_node_safe(
        mac in any::<bool>(),
        command in prop::sample::select(vec!["ADD", "ADD", "DEL", "CHECK"]),
        env_edits in prop::collection::vec((prop::sample::select(CNI_ENV_KEYS), prop::option::of(nasty())), 0..3),
        conf_edits in prop::collection::vec((prop::sample::select(KEYS), prop::option::of(nasty())), 0..3),
    ) {
        let (plugin, mut conf) = if mac { (PluginKind::Macvtap, mac_conf()) } else { (PluginKind::Veth, veth_conf()) };
        for (k, v) in conf_edits {
            match v {
                Some(v) => conf[k] = json!(v),
                None => { conf.as_object_mut().unwrap().remove(k); }
            }
        }
        let mut env = good_env(command);
        for (k, v) in env_edits {
            env.retain(|(key, _)| key != k);
            if let Some(v) = v { env.push((k.to_owned(), v)); }
        }
        let mut node = Node::new();
        let before = node.files();
        let out = node.run(plugin, &env, conf.to_string().as_bytes());
        let what = format!("{env:?} {conf}");
        foreign_untouched(&node, &what);
        prop_assert_eq!(node.files(), before.clone(), "{}", what);
        let is_add = env.iter().rev().find(|(k, _)| k == "CNI_COMMAND").is_some_and(|(_, v)| v == "ADD");
        if !out.success {
            assert_left_alone(&node, &before, &out, &what, Path::new("/nonexistent"));
        } else if is_add {
            let links = node.links();
            let moved: Vec<&String> = links.log.iter().filter(|l| l.starts_with("move link node namespace")).collect();
            prop_assert_eq!(moved.len(), 1, "{}", what);
            let name = moved[0].rsplit(' ').next().unwrap();
            prop_assert!(recorded(name), "{}: moved {}", what, name);
            let args = env.iter().rev().find(|(k, _)| k == "CNI_ARGS").map(|(_, v)| v.clone()).unwrap_or_default();
            prop_assert!(args.split(';').any(|p| p == "K8S_POD_NAMESPACE=lab"), "{}", what);
        }
    }
}
