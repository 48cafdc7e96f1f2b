//! ADD and DEL latency of the `k8slanveth` binary, run as a runtime runs it: a fresh process per
//! call, in a throwaway node namespace holding a prepared spoke, binding it into a throwaway pod
//! namespace. Needs root; prints `FIGURE` lines:
//!
//! ```text
//! sudo cargo bench -p k8slan-cni --bench add
//! K8SLAN_CNI_BIN=/path/to/k8slanveth K8SLAN_BENCH_ROUNDS=300 cargo bench -p k8slan-cni --bench add
//! ```
//!
//! `K8SLAN_CNI_BIN` measures another build of the plugin (for example the static image build
//! of an older commit) with the same harness.

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use k8slan_api::SpokeKind;
use k8slan_api::naming::link_alias;
use k8slan_api::prepared::{CNI_SETTINGS_FILE, CniNodeSettings, PreparedSpoke, prepared_file};

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(out.status.success(), "ip {args:?}: {out:?}");
}

/// Installs `bin` into `dir` beside a `k8slan-cni.json` and records spoke `srl` (the veth
/// `srl` in `node`, given the agent's alias) as the agent does at Allocate; returns the copy.
fn prepare_node(bin: &str, dir: &Path, node: &str) -> String {
    let prepared = dir.join("prepared");
    std::fs::create_dir_all(&prepared).unwrap();
    let settings = CniNodeSettings {
        dev_dir: dir.join("dev"),
        prepared_dir: prepared.clone(),
        ..CniNodeSettings::default()
    };
    std::fs::write(dir.join(CNI_SETTINGS_FILE), settings.to_json()).unwrap();
    let alias = link_alias("benchlan", "spoke/srl");
    ip(&["-n", node, "link", "set", "srl", "alias", &alias]);
    let ifindex = link_index(node, "srl");
    let record = PreparedSpoke {
        lan_namespace: "bench".into(),
        lan_name: "lan1".into(),
        netns: "benchlan".into(),
        spoke: "srl".into(),
        kind: SpokeKind::Veth,
        link: "srl".into(),
        ifindex,
        allowed_namespaces: Vec::new(),
    };
    std::fs::write(prepared.join(prepared_file("srl")), record.to_json()).unwrap();
    let copy = dir.join("k8slanveth");
    std::fs::copy(bin, &copy).unwrap();
    copy.display().to_string()
}

fn link_index(node: &str, link: &str) -> u32 {
    let out = Command::new("ip")
        .args(["-n", node, "-o", "link", "show", link])
        .output()
        .expect("run ip");
    let text = String::from_utf8_lossy(&out.stdout);
    text.split(':').next().unwrap().trim().parse().unwrap()
}

fn run(bin: &str, node: &File, command: &str, pod: &str, config: &str) -> (Duration, String) {
    let node_fd = node.as_raw_fd();
    let mut cmd = Command::new(bin);
    // SAFETY: setns is async-signal-safe and the descriptor outlives the child's exec.
    unsafe {
        cmd.pre_exec(move || {
            if nix::libc::setns(node_fd, nix::libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let start = Instant::now();
    let mut child = cmd
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", "k8slanbench")
        .env("CNI_NETNS", pod)
        .env("CNI_IFNAME", "e1-1")
        .env("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAMESPACE=bench")
        .env("CNI_PATH", "/opt/cni/bin")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the plugin");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(config.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let took = start.elapsed();
    assert!(out.status.success(), "{command}: {out:?}");
    (took, String::from_utf8_lossy(&out.stdout).into_owned())
}

fn figure(name: &str, mut v: Vec<Duration>) {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let at = |q: f64| ms(v[((v.len() - 1) as f64 * q) as usize]);
    println!(
        "FIGURE {name} rounds={} p50_ms={:.2} p90_ms={:.2} max_ms={:.2}",
        v.len(),
        at(0.5),
        at(0.9),
        ms(v[v.len() - 1])
    );
}

fn main() {
    if !nix::unistd::geteuid().is_root() {
        println!("add benchmark skipped: needs root (network namespaces)");
        return;
    }
    let bin = std::env::var("K8SLAN_CNI_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_k8slanveth").to_string());
    let rounds: usize = std::env::var("K8SLAN_BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(200);
    let tag = std::process::id();
    let (node, pod) = (format!("k8b{tag}node"), format!("k8b{tag}pod"));
    ip(&["netns", "add", &node]);
    ip(&["netns", "add", &pod]);
    ip(&[
        "-n", &node, "link", "add", "srl", "type", "veth", "peer", "name", "br-srl",
    ]);
    let dir = std::env::temp_dir().join(format!("k8slan-bench-{tag}"));
    let installed = prepare_node(&bin, &dir, &node);
    // The plugin runs in the node's namespace: each child enters it before exec.
    let node_ns = File::open(format!("/run/netns/{node}")).unwrap();
    let pod_path = format!("/run/netns/{pod}");
    let config =
        r#"{"cniVersion":"1.0.0","name":"k8slan-veth-srl","type":"k8slanveth","veth":"srl"}"#;
    let (mut adds, mut dels) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let (took, result) = run(&installed, &node_ns, "ADD", &pod_path, config);
        adds.push(took);
        // As a runtime does: DEL gets the ADD's result as prevResult.
        let del_config = config.replacen('}', &format!(r#","prevResult":{result}}}"#), 1);
        dels.push(run(&installed, &node_ns, "DEL", &pod_path, &del_config).0);
    }
    let size = std::fs::metadata(&bin).map(|m| m.len()).unwrap_or(0);
    println!("FIGURE cni_binary bytes={size} path={bin}");
    figure("cni_veth_add", adds);
    figure("cni_veth_del", dels);
    ip(&["netns", "del", &pod]);
    ip(&["netns", "del", &node]);
    let _ = std::fs::remove_dir_all(&dir);
}
