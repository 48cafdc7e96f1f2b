//! Malformed invocations through the built binaries (no root needed: each is refused before any
//! system call): the right error code, one error object on stdout, exit status non-zero.

mod common;

use common::*;
use serde_json::json;

const VETH: &str = env!("CARGO_BIN_EXE_k8slanveth");
const MACVTAP: &str = env!("CARGO_BIN_EXE_k8slanmacvtap");

fn env_with(changes: &[(&'static str, Option<&str>)]) -> Vec<(&'static str, String)> {
    let mut env = cni_env(
        "ADD",
        "/var/run/netns/k8slan-test-none",
        "e1-1",
        "IgnoreUnknown=1",
    );
    for (k, v) in changes {
        env.retain(|(key, _)| key != k);
        if let Some(v) = v {
            env.push((k, (*v).to_owned()));
        }
    }
    env
}

fn veth_conf() -> String {
    json!({"cniVersion": "1.0.0", "name": "k8slan-veth-srl", "type": "k8slanveth", "veth": "srl"})
        .to_string()
}

#[test]
fn version_lists_supported_versions() {
    for bin in [VETH, MACVTAP] {
        let run = run_plugin(
            bin,
            None,
            &[("CNI_COMMAND", "VERSION".into())],
            r#"{"cniVersion":"0.4.0"}"#,
        );
        assert!(run.success, "{run:?}");
        assert_eq!(
            run.json(),
            json!({"cniVersion": "0.4.0", "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0"]})
        );
    }
}

#[test]
fn malformed_invocations_are_refused_with_the_right_code() {
    let long = "x".repeat(20);
    type Case<'a> = (
        &'a str,
        &'a str,
        Vec<(&'static str, Option<&'a str>)>,
        String,
        u64,
        &'a str,
    );
    let cases: Vec<Case> = vec![
        ("bad json", VETH, vec![], "{\"cniVersion\":".into(), 6, "not JSON"),
        ("unknown version", VETH, vec![], veth_conf().replace("1.0.0", "2.0.0"), 1, "2.0.0"),
        ("missing ifname", VETH, vec![("CNI_IFNAME", None)], veth_conf(), 4, "CNI_IFNAME"),
        ("ifname with slash", VETH, vec![("CNI_IFNAME", Some("a/b"))], veth_conf(), 4, "CNI_IFNAME"),
        ("oversized ifname", VETH, vec![("CNI_IFNAME", Some(&long))], veth_conf(), 4, "CNI_IFNAME"),
        ("netns escaping", VETH, vec![("CNI_NETNS", Some("/var/run/netns/../../../etc/passwd"))], veth_conf(), 4, "CNI_NETNS"),
        ("missing command", MACVTAP, vec![("CNI_COMMAND", None)], veth_conf(), 4, "CNI_COMMAND"),
        ("spoke with dotdot", VETH, vec![], veth_conf().replace("\"srl\"", "\"../x\""), 7, "veth"),
        ("macvtap with ipam", MACVTAP, vec![], json!({"cniVersion": "1.0.0", "name": "k8slan-mac-vm", "type": "k8slanmacvtap", "deviceID": "mvt-vm", "ipam": {"type": "host-local"}}).to_string(), 2, "ipam"),
        ("macvtap without device", MACVTAP, vec![], json!({"cniVersion": "1.0.0", "name": "vmnet", "type": "k8slanmacvtap"}).to_string(), 7, "resourceName"),
    ];
    for (case, bin, changes, stdin, code, mentions) in cases {
        let run = run_plugin(bin, None, &env_with(&changes), &stdin);
        let details = run.assert_error(code);
        assert!(
            details.contains(mentions),
            "{case}: {details:?} should mention {mentions:?}"
        );
        assert_eq!(
            run.stdout.lines().count(),
            1,
            "{case}: stdout carries only the error object"
        );
    }
}

/// The plugin binary copied into `dir`, with `settings` as its `k8slan-cni.json` (none: absent).
fn installed(dir: &std::path::Path, bin: &str, settings: Option<&str>) -> String {
    use std::os::unix::fs::PermissionsExt;
    let dest = dir.join(std::path::Path::new(bin).file_name().unwrap());
    std::fs::copy(bin, &dest).unwrap();
    if let Some(s) = settings {
        let path = dir.join("k8slan-cni.json");
        std::fs::write(&path, s).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    dest.to_str().unwrap().to_owned()
}

#[test]
fn logs_go_to_the_node_settings_file_never_to_a_path_from_the_nad() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new();
    let log = dir.path().join("cni.log");
    let victim = dir.path().join("victim");
    let settings = json!({"logFile": log, "logLevel": "debug", "devDir": dir.path(), "preparedDir": dir.path()});
    let bin = installed(dir.path(), VETH, Some(&settings.to_string()));
    let mut conf: serde_json::Value = serde_json::from_str(&veth_conf()).unwrap();
    conf["logFile"] = json!(victim);
    let run = run_plugin(&bin, None, &env_with(&[]), &conf.to_string());
    let details = run.assert_error(2);
    assert!(
        details.contains("logFile") && details.contains("k8slan-cni.json"),
        "{details}"
    );
    assert!(!victim.exists(), "the NAD's logFile was created");
    let logged = std::fs::read_to_string(&log).expect("log file written");
    assert!(logged.contains("logFile"), "{logged}");
    assert_eq!(
        std::fs::metadata(&log).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(
        run.stderr.is_empty(),
        "stderr unused when a log file is set: {}",
        run.stderr
    );
}

#[test]
fn a_log_file_that_is_a_symlink_is_not_followed() {
    let dir = TempDir::new();
    let victim = dir.path().join("victim");
    std::fs::write(&victim, "keep").unwrap();
    let log = dir.path().join("cni.log");
    std::os::unix::fs::symlink(&victim, &log).unwrap();
    let settings = json!({"logFile": log, "devDir": dir.path(), "preparedDir": dir.path()});
    let bin = installed(dir.path(), VETH, Some(&settings.to_string()));
    let run = run_plugin(
        &bin,
        None,
        &env_with(&[("CNI_IFNAME", Some("a/b"))]),
        &veth_conf(),
    );
    run.assert_error(4);
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep");
    assert!(
        run.stderr.contains("cannot open the log file"),
        "{}",
        run.stderr
    );
}

#[test]
fn unusable_node_settings_stop_add_but_not_del() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new();
    let bin = installed(dir.path(), VETH, Some("{\"devDir\": 1}"));
    let run = run_plugin(&bin, None, &env_with(&[]), &veth_conf());
    let details = run.assert_error(5);
    assert!(details.contains("k8slan-cni.json"), "{details}");
    let mut del = env_with(&[("CNI_COMMAND", Some("DEL"))]);
    del.retain(|(k, _)| *k != "CNI_NETNS");
    run_plugin(&bin, None, &del, &veth_conf()).assert_silent_success();
    // Writable by others: refused as well.
    let settings = dir.path().join("k8slan-cni.json");
    std::fs::write(
        &settings,
        json!({"devDir": "/d", "preparedDir": "/p"}).to_string(),
    )
    .unwrap();
    std::fs::set_permissions(&settings, std::fs::Permissions::from_mode(0o666)).unwrap();
    let details = run_plugin(&bin, None, &env_with(&[]), &veth_conf()).assert_error(5);
    assert!(details.contains("writable by group or others"), "{details}");
}

#[test]
fn add_without_a_record_names_the_resource_and_touches_nothing() {
    let dir = TempDir::new();
    let settings = json!({"devDir": dir.path(), "preparedDir": dir.path()});
    for (bin, conf, resource) in [
        (VETH, veth_conf(), "macvtap.k8slan.io/k8slan-veth-srl"),
        (MACVTAP, json!({"cniVersion": "1.0.0", "name": "k8slan-mac-vm", "type": "k8slanmacvtap", "deviceID": "mvt-vm"}).to_string(), "macvtap.k8slan.io/k8slan-mac-vm"),
    ] {
        let bin = installed(dir.path(), bin, Some(&settings.to_string()));
        let run = run_plugin(&bin, None, &env_with(&[("CNI_ARGS", Some("IgnoreUnknown=1;K8S_POD_NAMESPACE=lab"))]), &conf);
        let details = run.assert_error(11);
        assert!(details.contains(resource) && details.contains("no record"), "{details}");
    }
}

#[test]
fn with_a_record_the_pod_namespace_is_checked_next() {
    let dir = TempDir::new();
    let record = json!({"lanNamespace": "lab", "lanName": "lan1", "netns": "knl", "spoke": "srl", "kind": "veth", "link": "srl", "ifindex": 7});
    std::fs::write(dir.path().join("srl.json"), record.to_string()).unwrap();
    let settings = json!({"devDir": dir.path(), "preparedDir": dir.path()});
    let bin = installed(dir.path(), VETH, Some(&settings.to_string()));
    let args = Some("IgnoreUnknown=1;K8S_POD_NAMESPACE=lab");
    let cases = [
        (
            vec![("CNI_NETNS", Some("/proc/self/status")), ("CNI_ARGS", args)],
            4,
            "not a network namespace",
        ),
        (vec![("CNI_ARGS", args)], 3, "does not exist"),
        (
            vec![("CNI_ARGS", Some("IgnoreUnknown=1;K8S_POD_NAMESPACE=other"))],
            7,
            "LAN lab/lan1",
        ),
        (
            vec![("CNI_ARGS", Some("IgnoreUnknown=1"))],
            4,
            "K8S_POD_NAMESPACE is missing",
        ),
    ];
    for (changes, code, mentions) in cases {
        let details = run_plugin(&bin, None, &env_with(&changes), &veth_conf()).assert_error(code);
        assert!(
            details.contains(mentions),
            "{details:?} should mention {mentions:?}"
        );
    }
}
