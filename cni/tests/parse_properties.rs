//! Stable-toolchain stand-in for the fuzz target (`cni/fuzz`, nightly): the same parse entry
//! point and invariants ([`k8slan_cni::fuzzing::check`]) on many random and mutated inputs.
//! Any panic (in the parser or a broken invariant) fails the test with a shrunk input.

use k8slan_cni::PluginKind;
use k8slan_cni::fuzzing::{CNI_ENV_KEYS, Input, check, check_plugin, decode};
use proptest::prelude::*;
use serde_json::{Value, json};

fn base_config(plugin: PluginKind) -> Value {
    match plugin {
        PluginKind::Veth => {
            json!({"cniVersion": "1.0.0", "name": "k8slan-veth-srl", "type": "k8slanveth", "veth": "srl",
            "mtu": 1430, "mac": "02:00:00:00:00:01", "ipam": {"type": "host-local", "subnet": "198.18.0.0/24"},
            "runtimeConfig": {"mac": "02:00:00:00:00:02"},
            "prevResult": {"cniVersion": "1.0.0", "interfaces": [{"name": "e1-1", "sandbox": "/run/netns/p"}], "ips": [{"address": "198.18.0.2/24", "interface": 0}]}})
        }
        PluginKind::Macvtap => {
            json!({"cniVersion": "0.4.0", "name": "k8slan-mac-vm", "type": "k8slanmacvtap", "deviceID": "mvt-vm"})
        }
    }
}

const KEYS: &[&str] = &[
    "cniVersion",
    "name",
    "type",
    "veth",
    "deviceID",
    "mtu",
    "mac",
    "ipam",
    "runtimeConfig",
    "prevResult",
    "logFile",
    "logLevel",
    "devDir",
    "preparedDir",
];

/// Strings that tend to break name handling.
fn nasty_string() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("..".to_owned()),
        Just("/".to_owned()),
        Just("a/../b".to_owned()),
        Just("e1-1".to_owned()),
        Just("x".repeat(300)),
        Just("1.0.0".to_owned()),
        Just("0.3.1".to_owned()),
        Just("ADD".to_owned()),
        Just("DEL".to_owned()),
        Just("CHECK".to_owned()),
        Just("VERSION".to_owned()),
        Just("/var/run/netns/p".to_owned()),
        Just("/run/netns/../x".to_owned()),
        Just("MAC=02:00:00:00:00:01".to_owned()),
        Just("02:00:00:00:00:01".to_owned()),
        Just("ff:ff:ff:ff:ff:ff".to_owned()),
        ".{0,40}",
        "[a-z0-9./:;=-]{0,20}",
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u32>().prop_map(Value::from),
        nasty_string().prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map(
                prop::sample::select(KEYS).prop_map(str::to_owned),
                inner,
                0..4
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// An environment that is mostly right, with some variables replaced or removed.
fn environment() -> impl Strategy<Value = Vec<(String, String)>> {
    let good = [
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "c0ffee"),
        ("CNI_NETNS", "/run/netns/p"),
        ("CNI_IFNAME", "e1-1"),
        ("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAMESPACE=lab"),
        ("CNI_PATH", "/opt/cni/bin"),
    ];
    (
        prop::collection::vec(
            (
                prop::sample::select(CNI_ENV_KEYS),
                prop::option::of(nasty_string()),
            ),
            0..5,
        ),
        prop::sample::select(vec!["ADD", "DEL", "CHECK", "VERSION"]),
    )
        .prop_map(move |(changes, command)| {
            let mut env: Vec<(String, String)> = good
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            env[0].1 = command.to_owned();
            for (k, v) in changes {
                env.retain(|(key, _)| key != k);
                if let Some(v) = v {
                    env.push((k.to_owned(), v));
                }
            }
            env
        })
}

/// A valid configuration with some keys replaced, removed or added.
fn mutated_config(plugin: PluginKind) -> impl Strategy<Value = Vec<u8>> {
    (
        prop::collection::vec(
            (prop::sample::select(KEYS), prop::option::of(json_value())),
            0..4,
        ),
        any::<bool>(),
        any::<u16>(),
    )
        .prop_map(move |(edits, truncate, cut)| {
            let mut conf = base_config(plugin);
            let obj = conf.as_object_mut().unwrap();
            for (k, v) in edits {
                match v {
                    Some(v) => obj.insert(k.to_owned(), v),
                    None => obj.remove(k),
                };
            }
            let mut bytes = conf.to_string().into_bytes();
            if truncate && !bytes.is_empty() {
                bytes.truncate(usize::from(cut) % bytes.len());
            }
            bytes
        })
}

fn plugin() -> impl Strategy<Value = PluginKind> {
    prop_oneof![Just(PluginKind::Veth), Just(PluginKind::Macvtap)]
}

/// Either plugin run with a random environment on a mutated configuration of either plugin.
fn mutated_input() -> impl Strategy<Value = Input> {
    (
        plugin(),
        environment(),
        prop_oneof![
            mutated_config(PluginKind::Veth),
            mutated_config(PluginKind::Macvtap)
        ],
    )
        .prop_map(|(plugin, env, stdin)| Input { plugin, env, stdin })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, .. ProptestConfig::default() })]

    #[test]
    fn mutated_configs_never_panic_and_errors_are_spec_objects(input in mutated_input()) {
        check(&input);
    }

    #[test]
    fn random_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..512)) {
        check(&decode(&data));
    }
}

/// The fuzz seeds keep the invariants of both targets, and the good ones are accepted.
#[test]
fn fuzz_seeds_keep_the_invariants() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds");
    let mut n = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let data = std::fs::read(entry.unwrap().path()).unwrap();
        let input = decode(&data);
        check(&input);
        check_plugin(&input);
        n += 1;
    }
    assert!(n >= 15, "{n} seeds");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, .. ProptestConfig::default() })]

    #[test]
    fn whole_plugin_keeps_the_node_safe_on_random_bytes(data in prop::collection::vec(any::<u8>(), 0..512)) {
        check_plugin(&decode(&data));
    }

    #[test]
    fn whole_plugin_keeps_the_node_safe_on_mutated_configs(input in mutated_input()) {
        check_plugin(&input);
    }
}
