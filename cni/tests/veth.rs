//! Privileged tests of the `k8slanveth` binary against real network namespaces, run exactly as a
//! runtime runs it. `make test-privileged` (root) runs them.

mod common;

use common::*;
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_k8slanveth");
const PREPARED_MAC: &str = "02:11:22:33:44:01";
const PREPARED_MTU: u64 = 1430;

/// A node namespace holding spoke `srl` as the agent prepares it (a veth, MTU 1430), and an
/// empty pod namespace whose interface is `e1-1`.
fn fixture() -> PodFixture {
    let f = PodFixture::new(BIN, "e1-1");
    ip_n(
        &f.node.name,
        &format!("link add srl mtu 1430 address {PREPARED_MAC} type veth peer name br-srl"),
    );
    f.files.prepare(&f.node.name, "srl", "veth", "srl", &[]);
    f
}

/// Spoke `srl` is back in the node namespace with its prepared MTU, and gone from the pod.
fn assert_spoke_home(f: &PodFixture) {
    assert!(
        link_exists(&f.node.name, "srl"),
        "spoke srl should be back in the node namespace"
    );
    assert!(
        !link_exists(&f.pod.name, "e1-1"),
        "e1-1 should be gone from the pod"
    );
    let l = link_json(&f.node.name, "srl");
    assert_eq!(l["mtu"], PREPARED_MTU);
}

fn config(version: &str) -> Value {
    json!({"cniVersion": version, "name": "k8slan-veth-srl", "type": "k8slanveth", "veth": "srl"})
}

#[test]
#[ignore = "privileged"]
fn add_check_del_round_trip_in_every_version() {
    for version in VERSIONS {
        let f = fixture();
        let mut conf = config(version);
        conf["mac"] = json!("02:00:5e:00:00:0a");
        let add = f.run("ADD", "", &conf.to_string());
        assert!(add.success, "{version}: {add:?}");
        let result = add.json();
        assert_eq!(result["cniVersion"], version);
        assert_eq!(result["interfaces"][0]["name"], "e1-1");
        assert_eq!(result["interfaces"][0]["mac"], "02:00:5e:00:00:0a");
        assert_eq!(result["interfaces"][0]["sandbox"], f.pod.path());
        let l = link_json(&f.pod.name, "e1-1");
        assert_eq!(l["address"], "02:00:5e:00:00:0a", "{version}");
        assert_eq!(l["mtu"], PREPARED_MTU, "{version}: prepared MTU kept");
        assert!(
            l["flags"].as_array().unwrap().contains(&json!("UP")),
            "{version}: {l}"
        );
        assert!(
            !link_exists(&f.node.name, "srl"),
            "{version}: srl left the node"
        );

        let check = f.run("CHECK", "", &with_prev(&conf, &result));
        if version == "0.3.0" || version == "0.3.1" {
            let details = check.assert_error(1);
            assert!(details.contains("0.4.0"), "{details}");
        } else {
            check.assert_silent_success();
        }

        f.run("DEL", "", &with_prev(&conf, &result))
            .assert_silent_success();
        assert_spoke_home(&f);
        // The MAC the pod had stays with the link; the agent (or the next ADD) decides.
        f.run("DEL", "", &with_prev(&conf, &result))
            .assert_silent_success();
        assert_spoke_home(&f);
        // And the spoke can be bound again by the next pod.
        let again = f.run("ADD", "", &config(version).to_string());
        assert!(again.success, "{version} re-ADD: {again:?}");
    }
}

#[test]
#[ignore = "privileged"]
fn ipam_addresses_routes_and_release_in_every_version() {
    for version in VERSIONS {
        let f = fixture();
        let dir = TempDir::new();
        let mut conf = config(version);
        conf["mtu"] = json!(1400);
        conf["ipam"] = host_local(
            "198.18.7.0/24",
            "198.18.7.1",
            json!([{"dst": "198.19.0.0/16"}]),
            dir.path(),
        );
        let add = f.run("ADD", "IgnoreUnknown=1;K8S_POD_NAME=srl", &conf.to_string());
        assert!(add.success, "{version}: {add:?}");
        let result = add.json();
        let ip0 = &result["ips"][0];
        assert_eq!(ip0["address"], "198.18.7.2/24", "{version}: {result}");
        assert_eq!(ip0["interface"], 0);
        assert_eq!(
            ip0.get("version").is_some(),
            version != "1.0.0",
            "{version}: ips[].version only before 1.0.0"
        );
        assert_eq!(addresses(&f.pod.name, "e1-1"), vec!["198.18.7.2/24"]);
        let routes = ip_n(&f.pod.name, "route show 198.19.0.0/16");
        assert!(
            routes.contains("via 198.18.7.1 dev e1-1"),
            "{version}: gateway of the range used: {routes}"
        );
        assert_eq!(
            link_json(&f.pod.name, "e1-1")["mtu"],
            1400,
            "configured MTU"
        );
        assert_eq!(leases(dir.path(), "k8slan-veth-srl"), vec!["198.18.7.2"]);

        if version != "0.3.0" && version != "0.3.1" {
            f.run("CHECK", "IgnoreUnknown=1", &with_prev(&conf, &result))
                .assert_silent_success();
        }
        f.run("DEL", "IgnoreUnknown=1", &with_prev(&conf, &result))
            .assert_silent_success();
        assert!(
            leases(dir.path(), "k8slan-veth-srl").is_empty(),
            "{version}: lease released"
        );
        assert!(link_exists(&f.node.name, "srl"));
        assert!(
            addresses(&f.node.name, "srl").is_empty(),
            "no pod address on the returned spoke"
        );
        f.run("DEL", "IgnoreUnknown=1", &with_prev(&conf, &result))
            .assert_silent_success();
    }
}

#[test]
#[ignore = "privileged"]
fn mac_precedence_runtime_config_then_cni_args_then_config() {
    let cases = [
        (
            Some("02:00:00:00:00:03"),
            "IgnoreUnknown=1;MAC=02:00:00:00:00:02",
            Some("02:00:00:00:00:01"),
            "02:00:00:00:00:03",
        ),
        (
            None,
            "IgnoreUnknown=1;MAC=02:00:00:00:00:02",
            Some("02:00:00:00:00:01"),
            "02:00:00:00:00:02",
        ),
        (
            None,
            "IgnoreUnknown=1",
            Some("02:00:00:00:00:01"),
            "02:00:00:00:00:01",
        ),
        (None, "", None, PREPARED_MAC),
    ];
    for (runtime, args, cfg, expected) in cases {
        let f = fixture();
        let mut conf = config("1.0.0");
        if let Some(m) = runtime {
            conf["runtimeConfig"] = json!({"mac": m});
        }
        if let Some(m) = cfg {
            conf["mac"] = json!(m);
        }
        let add = f.run("ADD", args, &conf.to_string());
        assert!(add.success, "{add:?}");
        assert_eq!(add.json()["interfaces"][0]["mac"], expected);
        assert_eq!(link_json(&f.pod.name, "e1-1")["address"], expected);
    }
}

#[test]
#[ignore = "privileged"]
fn del_after_the_pod_namespace_is_gone_releases_ipam() {
    let mut f = fixture();
    let dir = TempDir::new();
    let mut conf = config("1.0.0");
    conf["ipam"] = host_local("198.18.8.0/24", "198.18.8.1", json!([]), dir.path());
    let add = f.run("ADD", "", &conf.to_string());
    assert!(add.success, "{add:?}");
    assert_eq!(leases(dir.path(), "k8slan-veth-srl").len(), 1);
    let result = add.json();
    f.pod.delete();
    f.run("DEL", "", &with_prev(&conf, &result))
        .assert_silent_success();
    assert!(
        leases(dir.path(), "k8slan-veth-srl").is_empty(),
        "lease released without the namespace"
    );
    // Without CNI_NETNS at all, too.
    let mut env = cni_env("DEL", "", "e1-1", "");
    env.retain(|(k, _)| *k != "CNI_NETNS");
    run_plugin(BIN, Some(&f.node.name), &env, &with_prev(&conf, &result)).assert_silent_success();
}

#[test]
#[ignore = "privileged"]
fn missing_prepared_link_names_the_resource_to_request() {
    let f = fixture();
    let mut conf = config("1.0.0");
    conf["veth"] = json!("vm2");
    let details = f.run("ADD", "", &conf.to_string()).assert_error(11);
    assert!(
        details.contains("macvtap.k8slan.io/k8slan-veth-vm2"),
        "{details}"
    );
    assert!(details.contains("\"vm2\""), "{details}");
}

#[test]
#[ignore = "privileged"]
fn failure_after_ipam_rolls_everything_back() {
    let f = fixture();
    let dir = TempDir::new();
    let mut conf = config("1.0.0");
    conf["mtu"] = json!(1300);
    conf["mac"] = json!("02:00:00:00:00:99");
    // The gateway of this route is outside every connected prefix: adding it fails after the
    // link was moved, renamed, reconfigured and addressed.
    conf["ipam"] = host_local(
        "198.18.9.0/24",
        "198.18.9.1",
        json!([{"dst": "198.19.0.0/16", "gw": "198.19.200.1"}]),
        dir.path(),
    );
    let run = f.run("ADD", "", &conf.to_string());
    let details = run.assert_error(5);
    assert!(details.contains("add route"), "{details}");
    assert_spoke_home(&f);
    let l = link_json(&f.node.name, "srl");
    assert_eq!(l["address"], PREPARED_MAC, "MAC restored");
    assert!(addresses(&f.node.name, "srl").is_empty());
    assert!(
        leases(dir.path(), "k8slan-veth-srl").is_empty(),
        "lease released by the rollback"
    );
}

#[test]
#[ignore = "privileged"]
fn interface_name_taken_in_the_pod_is_refused_and_left_alone() {
    let f = fixture();
    // Some other plugin's interface already is e1-1 in the pod.
    ip_n(&f.pod.name, "link add e1-1 type veth peer name other");
    let details = f
        .run("ADD", "", &config("1.0.0").to_string())
        .assert_error(4);
    assert!(details.contains("CNI_IFNAME"), "{details}");
    assert!(link_exists(&f.node.name, "srl"), "spoke untouched");
    // The runtime's DEL after the failed ADD (no prevResult) must not take the foreign link.
    f.run("DEL", "", &config("1.0.0").to_string())
        .assert_silent_success();
    assert!(
        link_exists(&f.pod.name, "e1-1"),
        "foreign interface left in place"
    );
    assert!(link_exists(&f.node.name, "srl"));
}

#[test]
#[ignore = "privileged"]
fn agent_alias_lets_del_work_without_prev_result() {
    // The fixture gives srl the alias the agent writes (k8slan:knl/spoke/srl).
    let f = fixture();
    assert!(f.run("ADD", "", &config("0.4.0").to_string()).success);
    f.run("DEL", "", &config("0.4.0").to_string())
        .assert_silent_success();
    assert_spoke_home(&f);
}

#[test]
#[ignore = "privileged"]
fn check_reports_what_changed() {
    let f = fixture();
    let dir = TempDir::new();
    let mut conf = config("1.0.0");
    conf["ipam"] = host_local("198.18.10.0/24", "198.18.10.1", json!([]), dir.path());
    let add = f.run("ADD", "", &conf.to_string());
    assert!(add.success, "{add:?}");
    let prev = with_prev(&conf, &add.json());
    f.run("CHECK", "", &prev).assert_silent_success();

    ip_n(&f.pod.name, "addr flush dev e1-1");
    let details = f.run("CHECK", "", &prev).assert_error(100);
    assert!(details.contains("198.18.10.2/24"), "{details}");

    ip_n(&f.pod.name, "link set e1-1 address 02:00:00:00:77:77");
    let details = f.run("CHECK", "", &prev).assert_error(100);
    assert!(details.contains("02:00:00:00:77:77"), "{details}");

    ip_n(&f.pod.name, "link set e1-1 name other");
    let details = f.run("CHECK", "", &prev).assert_error(100);
    assert!(details.contains("missing"), "{details}");
}

#[test]
#[ignore = "privileged"]
fn device_id_must_match_the_spoke() {
    let f = fixture();
    let mut conf = config("1.0.0");
    conf["deviceID"] = json!("srl");
    assert!(
        f.run("ADD", "", &conf.to_string()).success,
        "deviceID equal to veth is fine"
    );
    let f = fixture();
    conf["deviceID"] = json!("other");
    let details = f.run("ADD", "", &conf.to_string()).assert_error(7);
    assert!(details.contains("deviceID \"other\""), "{details}");
    assert!(link_exists(&f.node.name, "srl"));
}

#[test]
#[ignore = "privileged"]
fn links_the_agent_did_not_prepare_for_the_network_are_never_moved() {
    let f = fixture();
    let n = &f.node.name;
    ip_n(n, "link add cali1a2b type veth peer name cali-p");
    ip_n(n, "link add eth0 type veth peer name eth0-p");
    ip_n(n, "link add br0 type bridge");
    // Another pod's host veth, the node's uplink, a bridge: no record, nothing moves.
    for victim in ["cali1a2b", "eth0", "br0"] {
        let mut conf = config("1.0.0");
        conf["veth"] = json!(victim);
        let details = f.run("ADD", "", &conf.to_string()).assert_error(11);
        assert!(
            details.contains(&format!("macvtap.k8slan.io/k8slan-veth-{victim}")),
            "{details}"
        );
        assert!(link_exists(n, victim), "{victim} stayed on the node");
        assert!(!link_exists(&f.pod.name, "e1-1"));
    }
    // A record naming srl, but the srl on the node now is another link (ifindex, alias).
    ip_n(n, "link del srl");
    ip_n(n, "link add srl type veth peer name srl-p");
    let details = f
        .run("ADD", "", &config("1.0.0").to_string())
        .assert_error(5);
    assert!(
        details.contains("not the veth the k8slan agent prepared"),
        "{details}"
    );
    assert!(
        details.contains("macvtap.k8slan.io/k8slan-veth-srl"),
        "{details}"
    );
    assert!(link_exists(n, "srl"));
    // Its alias copied onto it does not help: the index is still not the recorded one.
    ip_n(n, "link set srl alias k8slan:knl/spoke/srl");
    f.run("ADD", "", &config("1.0.0").to_string())
        .assert_error(5);
    assert!(link_exists(n, "srl"));
}

#[test]
#[ignore = "privileged"]
fn a_pod_of_a_namespace_the_lan_does_not_admit_gets_nothing() {
    let f = fixture();
    let details = f
        .run(
            "ADD",
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=tenant2",
            &config("1.0.0").to_string(),
        )
        .assert_error(7);
    assert!(
        details.contains("LAN lab/lan1") && details.contains("\"tenant2\""),
        "{details}"
    );
    assert!(link_exists(&f.node.name, "srl"));
    f.files
        .prepare(&f.node.name, "srl", "veth", "srl", &["tenant2"]);
    let add = f.run(
        "ADD",
        "IgnoreUnknown=1;K8S_POD_NAMESPACE=tenant2",
        &config("1.0.0").to_string(),
    );
    assert!(
        add.success,
        "spec.allowedNamespaces admits tenant2: {add:?}"
    );
}
