//! Privileged tests of the `macvtap` binary against real network namespaces, run exactly as a
//! runtime runs it.

mod common;

use common::*;
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_k8slanmacvtap");

/// A node namespace holding spoke `vm1` as the agent prepares a VM spoke: the host veth end
/// `vm1` (MTU 1430) and on it the passthru macvtap `mvt-vm1`; and an empty pod namespace whose
/// interface is `net1`.
fn fixture() -> PodFixture {
    let f = PodFixture::new(BIN, "net1");
    let node = &f.node.name;
    ip_n(node, "link add vm1 mtu 1430 type veth peer name br-vm1");
    ip_n(
        node,
        "link add link vm1 name mvt-vm1 type macvtap mode passthru",
    );
    ip_n(node, "link set vm1 alias k8slan:knl/spoke/vm1");
    f.files.prepare(node, "vm1", "mac", "mvt-vm1", &[]);
    f
}

fn config(version: &str) -> Value {
    json!({"cniVersion": version, "name": "k8slan-mac-vm1", "type": "k8slanmacvtap", "deviceID": "mvt-vm1"})
}

fn flags(l: &Value) -> Vec<String> {
    l["flags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap().to_owned())
        .collect()
}

/// The tap device number of a macvtap, read inside namespace `ns`.
fn tap_devnum(ns: &str, dev: &str) -> String {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", ns, "sh", "-c"])
        .arg(format!("cat /sys/class/net/{dev}/macvtap/tap*/dev"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn node_devnum(path: &std::path::Path) -> String {
    use std::os::unix::fs::MetadataExt;
    let rdev = std::fs::metadata(path).unwrap().rdev();
    format!(
        "{}:{}",
        nix::sys::stat::major(rdev),
        nix::sys::stat::minor(rdev)
    )
}

#[test]
#[ignore = "privileged"]
fn the_tap_node_handed_to_the_pod_follows_the_macvtap_into_the_pod() {
    // A macvtap made before ours and gone before the ADD leaves a lower minor free: moving ours
    // into the pod re-registers its tap, which then takes that lower number.
    let f = fixture();
    let early = Ns::new("early");
    ip_n(&f.node.name, "link del mvt-vm1");
    ip_n(&early.name, "link add l0 type veth peer name l0p");
    ip_n(&early.name, "link add link l0 name m0 type macvtap");
    ip_n(
        &f.node.name,
        "link add link vm1 name mvt-vm1 type macvtap mode passthru",
    );
    f.files.prepare(&f.node.name, "vm1", "mac", "mvt-vm1", &[]);
    let ours_before = tap_devnum(&f.node.name, "mvt-vm1");
    ip_n(&early.name, "link del m0");

    // The node the device plugin made at Allocate, as the agent makes it.
    let node = f.files.dev_dir().join("tap-vm1");
    let (ma, mi) = ours_before.split_once(':').unwrap();
    nix::sys::stat::mknod(
        &node,
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o660),
        nix::sys::stat::makedev(ma.parse().unwrap(), mi.parse().unwrap()),
    )
    .unwrap();

    let conf = config("1.0.0");
    let add = f.run("ADD", "", &conf.to_string());
    assert!(add.success, "{add:?}");
    let in_pod = tap_devnum(&f.pod.name, "net1");
    eprintln!("tap {ours_before} on the node, {in_pod} in the pod");
    assert_eq!(
        node_devnum(&node),
        in_pod,
        "the node handed to the pod must open the macvtap's tap"
    );
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&node)
        .expect("the tap node opens");
    f.run("DEL", "", &with_prev(&conf, &add.json()))
        .assert_silent_success();
}

#[test]
#[ignore = "privileged"]
fn add_check_del_round_trip_in_every_version() {
    for version in VERSIONS {
        let f = fixture();
        let mut conf = config(version);
        conf["runtimeConfig"] = json!({"mac": "02:00:5e:00:01:01"});
        conf["mtu"] = json!(1400);
        let prepared_index = link_json(&f.node.name, "mvt-vm1")["ifindex"].clone();
        let add = f.run(
            "ADD",
            "IgnoreUnknown=1;K8S_POD_NAME=virt-launcher-vm1",
            &conf.to_string(),
        );
        assert!(add.success, "{version}: {add:?}");
        let result = add.json();
        let l = link_json(&f.pod.name, "net1");
        assert_eq!(
            l["ifindex"], prepared_index,
            "{version}: ifindex kept, so /dev/tap<ifindex> matches"
        );
        assert_eq!(result["cniVersion"], version);
        assert_eq!(result["interfaces"][0]["name"], "net1");
        assert_eq!(result["interfaces"][0]["mac"], "02:00:5e:00:01:01");
        assert_eq!(result["interfaces"][0]["sandbox"], f.pod.path());
        assert_eq!(result["ips"], json!([]));
        let l = link_json(&f.pod.name, "net1");
        assert_eq!(l["linkinfo"]["info_kind"], "macvtap", "{l}");
        assert_eq!(l["address"], "02:00:5e:00:01:01");
        assert_eq!(l["mtu"], 1400);
        assert!(flags(&l).contains(&"UP".to_owned()), "{l}");
        assert!(flags(&l).contains(&"PROMISC".to_owned()), "{l}");
        let ipv6_off = std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                &f.pod.name,
                "cat",
                "/proc/sys/net/ipv6/conf/net1/disable_ipv6",
            ])
            .output()
            .unwrap();
        let ipv6_off = String::from_utf8_lossy(&ipv6_off.stdout);
        assert_eq!(
            ipv6_off.trim(),
            "1",
            "{version}: the pod's own IPv6 is off on the VM's macvtap"
        );
        assert!(!link_exists(&f.node.name, "mvt-vm1"));
        assert!(
            link_exists(&f.node.name, "vm1"),
            "the lower veth stays on the node"
        );

        if version != "0.3.0" && version != "0.3.1" {
            f.run("CHECK", "", &with_prev(&conf, &result))
                .assert_silent_success();
        }
        f.run("DEL", "", &with_prev(&conf, &result))
            .assert_silent_success();
        assert!(
            link_exists(&f.node.name, "mvt-vm1"),
            "{version}: macvtap given back under its prepared name"
        );
        assert!(!link_exists(&f.pod.name, "net1"));
        let back = link_json(&f.node.name, "mvt-vm1");
        assert!(
            !flags(&back).contains(&"PROMISC".to_owned()),
            "promiscuous mode undone: {back}"
        );
        f.run("DEL", "", &with_prev(&conf, &result))
            .assert_silent_success();
        assert!(
            f.run("ADD", "", &config(version).to_string()).success,
            "{version}: bound again"
        );
    }
}

#[test]
#[ignore = "privileged"]
fn check_needs_promiscuous_mode() {
    let f = fixture();
    let add = f.run("ADD", "", &config("1.0.0").to_string());
    assert!(add.success, "{add:?}");
    let prev = with_prev(&config("1.0.0"), &add.json());
    f.run("CHECK", "", &prev).assert_silent_success();
    ip_n(&f.pod.name, "link set net1 promisc off");
    let details = f.run("CHECK", "", &prev).assert_error(100);
    assert!(details.contains("promiscuous"), "{details}");
}

#[test]
#[ignore = "privileged"]
fn del_after_the_pod_namespace_is_gone() {
    let mut f = fixture();
    let add = f.run("ADD", "", &config("1.0.0").to_string());
    assert!(add.success, "{add:?}");
    f.pod.delete();
    f.run("DEL", "", &with_prev(&config("1.0.0"), &add.json()))
        .assert_silent_success();
    f.run("DEL", "", &with_prev(&config("1.0.0"), &add.json()))
        .assert_silent_success();
}

#[test]
#[ignore = "privileged"]
fn device_id_is_derived_from_the_network_name_when_missing() {
    let f = fixture();
    let mut conf = config("1.0.0");
    conf.as_object_mut().unwrap().remove("deviceID");
    let add = f.run("ADD", "", &conf.to_string());
    assert!(add.success, "{add:?}");
    assert!(link_exists(&f.pod.name, "net1"));
}

#[test]
#[ignore = "privileged"]
fn missing_macvtap_names_the_resource_to_request() {
    let f = fixture();
    ip_n(&f.node.name, "link del mvt-vm1");
    let details = f
        .run("ADD", "", &config("1.0.0").to_string())
        .assert_error(11);
    assert!(
        details.contains("macvtap.k8slan.io/k8slan-mac-vm1"),
        "{details}"
    );
}

#[test]
#[ignore = "privileged"]
fn a_veth_with_the_device_name_is_not_taken() {
    let f = fixture();
    ip_n(&f.node.name, "link del mvt-vm1");
    ip_n(&f.node.name, "link add mvt-vm1 type veth peer name x");
    let details = f
        .run("ADD", "", &config("1.0.0").to_string())
        .assert_error(5);
    assert!(details.contains("not the macvtap"), "{details}");
    assert!(link_exists(&f.node.name, "mvt-vm1"));
}
