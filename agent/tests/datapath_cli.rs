//! The `k8slan-agent datapath` CLI as a user runs it.

use std::path::Path;
use std::process::{Command, Output};

use k8slan_testkit::{TestDir, TestNs, unique_name};

const BIN: &str = env!("CARGO_BIN_EXE_k8slan-agent");

fn manifest(dir: &Path, ns: &str, extra: &str) -> std::path::PathBuf {
    let path = dir.join(format!("{ns}.yaml"));
    std::fs::write(
        &path,
        format!(
            "apiVersion: lan.k8slan.io/v1beta1\nkind: LAN\nmetadata:\n  name: demo\nspec:\n  ns: {ns}\n  bridge: br2\n  vxlan: vx2\n  vni: 222\n  defaultVxlanDev: eth1\n  spokes: [srl, vm]\n{extra}"
        ),
    )
    .unwrap();
    path
}

fn agent(dirs: &Path, host: Option<&Path>, args: &[&str]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.arg("datapath")
        .args(args)
        .env("K8SLAN_NETNS_DIR", dirs.join("netns"))
        .env("K8SLAN_DEV_DIR", dirs.join("dev"))
        .env_remove("K8SLAN_HOST_NETNS");
    if let Some(h) = host {
        cmd.env("K8SLAN_HOST_NETNS", h);
    }
    cmd.output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn invalid_manifest_exits_non_zero_naming_the_field() {
    let dir = std::env::temp_dir().join(unique_name("cli"));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = manifest(&dir, "../etc", "");
    let o = agent(
        &dir,
        None,
        &["up", "--lan", bad.to_str().unwrap(), "--node", "w1"],
    );
    assert!(!o.status.success());
    assert!(stderr(&o).contains("spec.ns"), "{}", stderr(&o));
    let wrong_kind = dir.join("k.yaml");
    std::fs::write(
        &wrong_kind,
        std::fs::read_to_string(manifest(&dir, "ok", ""))
            .unwrap()
            .replace("kind: LAN", "kind: Pod"),
    )
    .unwrap();
    let o = agent(&dir, None, &["down", "--lan", wrong_kind.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("kind"), "{}", stderr(&o));
    assert!(
        !dir.join("netns").exists(),
        "nothing may be created for invalid input"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
#[ignore = "privileged"]
fn up_attach_show_down_on_a_simulated_node() {
    let node = TestNs::new("cli").unwrap();
    node.sh(
        "ip link add eth1 type veth peer name eth1p && ip link set eth1 up && ip link set eth1p up",
    )
    .unwrap();
    let dir = TestDir::new("cli").unwrap();
    let d = dir.path();
    let host = node.path();
    let ns = unique_name("lan");
    let lan = manifest(d, &ns, "");
    let lan_s = lan.to_str().unwrap();

    // An underlay that does not exist: error, and nothing created.
    let missing = manifest(d, &unique_name("lan"), "  vxlanDevMap: {w1: eth7}\n");
    let o = agent(
        d,
        Some(&host),
        &["up", "--lan", missing.to_str().unwrap(), "--node", "w1"],
    );
    assert!(
        !o.status.success() && stderr(&o).contains("eth7"),
        "{}",
        stderr(&o)
    );
    assert_eq!(
        std::fs::read_dir(d.join("netns"))
            .map(|r| r.count())
            .unwrap_or(0),
        0
    );

    let o = agent(
        d,
        Some(&host),
        &[
            "attach", "--lan", lan_s, "--node", "w1", "--spoke", "vm", "--kind", "mac",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let att: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(att["host_ifname"], "vm");
    let tap = att["mac"]["tap_host_path"].as_str().unwrap().to_string();
    assert!(Path::new(&tap).exists() && tap.starts_with(d.to_str().unwrap()));
    assert!(
        att["mac"]["tap_container_path"]
            .as_str()
            .unwrap()
            .starts_with("/dev/tap")
    );

    let o = agent(d, Some(&host), &["show"]);
    let show: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(show[0]["ns"], ns.as_str());
    assert_eq!(show[0]["vxlans"][0]["kind"]["vni"], 222);
    assert_eq!(show[0]["spokes"][0]["spoke"], "vm");

    let o = agent(d, Some(&host), &["detach", "--lan", lan_s, "--spoke", "vm"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!Path::new(&tap).exists());
    let o = agent(d, Some(&host), &["down", "--lan", lan_s]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(std::fs::read_dir(d.join("netns")).unwrap().count(), 0);
    assert_eq!(node.sh("ip -o link | wc -l").unwrap().trim(), "3");
}
