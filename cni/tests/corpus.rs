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
        ("netns not a namespace", VETH, vec![("CNI_NETNS", Some("/proc/self/status"))], veth_conf(), 4, "not a network namespace"),
        ("netns missing", VETH, vec![], veth_conf(), 3, "does not exist"),
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

#[test]
fn logs_go_to_the_configured_file_not_stdout() {
    let dir = TempDir::new();
    let log = dir.path().join("cni.log");
    let mut env = env_with(&[("CNI_IFNAME", Some("a/b"))]);
    env.push(("K8SLAN_CNI_LOG", log.to_str().unwrap().to_owned()));
    let run = run_plugin(VETH, None, &env, &veth_conf());
    run.assert_error(4);
    let logged = std::fs::read_to_string(&log).expect("log file written");
    assert!(logged.contains("CNI_IFNAME"), "{logged}");
    assert!(
        run.stderr.is_empty(),
        "stderr unused when a log file is set: {}",
        run.stderr
    );
}
