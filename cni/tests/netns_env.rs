//! Privileged tests: `CNI_NETNS` that is not a pod's network namespace is refused at once, with
//! a CNI error naming `CNI_NETNS`, and nothing moves. Runs the real `k8slanveth` binary as a
//! runtime does, inside a throwaway node namespace holding a prepared spoke; every run is bounded
//! by a timeout (a FIFO used to hang the plugin).

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_k8slanveth");
const LIMIT: Duration = Duration::from_secs(10);

/// Runs the plugin inside `node` like [`run_plugin`], but kills it (and fails) after [`LIMIT`].
fn run_bounded(bin: &str, node: &str, env: &[(&str, String)], stdin: &str) -> Run {
    let mut child = plugin_command(bin, Some(node), env)
        .spawn()
        .expect("start plugin");
    feed(&mut child, stdin);
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the plugin hung for more than {LIMIT:?} (CNI_NETNS {env:?})");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap().into()
}

/// A node namespace with spoke `srl` prepared (a veth, recorded as the agent does, so that ADD
/// gets as far as opening `CNI_NETNS`), and a scratch directory.
struct Fixture {
    node: Ns,
    files: NodeFiles,
    dir: TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        let node = Ns::new("node");
        ip_n(&node.name, "link add srl type veth peer name br-srl");
        let files = NodeFiles::new(BIN);
        files.prepare(&node.name, "srl", "veth", "srl", &[]);
        Fixture {
            node,
            files,
            dir: TempDir::new(),
        }
    }

    /// Runs `command` with `CNI_NETNS=netns` and asserts the refusal: error 4 naming CNI_NETNS
    /// and `says`, the prepared link still where it was, under its name.
    fn assert_refused(&self, command: &str, netns: &str, says: &str) {
        let config = json!({"cniVersion": "1.0.0", "name": "k8slan-veth-srl",
                            "type": "k8slanveth", "veth": "srl"});
        let run = run_bounded(
            &self.files.bin,
            &self.node.name,
            &cni_env(command, netns, "e1-1", ""),
            &config.to_string(),
        );
        let details = run.assert_error(4);
        assert!(
            details.contains("CNI_NETNS"),
            "{command} {netns}: {details}"
        );
        assert!(details.contains(netns), "{command} {netns}: {details}");
        assert!(details.contains(says), "{command} {netns}: {details}");
        assert!(
            link_exists(&self.node.name, "srl"),
            "{command} {netns}: the prepared link moved or was renamed"
        );
        assert!(!link_exists(&self.node.name, "e1-1"), "renamed in place");
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }
}

#[test]
#[ignore = "privileged"]
fn a_fifo_is_refused_without_hanging() {
    let f = Fixture::new();
    let fifo = f.path("fifo");
    nix::unistd::mkfifo(
        Path::new(&fifo),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    for command in ["ADD", "DEL"] {
        f.assert_refused(command, &fifo, "a FIFO");
    }
}

#[test]
#[ignore = "privileged"]
fn a_directory_a_regular_file_and_a_dangling_symlink_are_refused() {
    let f = Fixture::new();
    let file = f.path("file");
    std::fs::write(&file, "not a namespace").unwrap();
    let dangling = f.path("dangling");
    std::os::unix::fs::symlink(f.path("nothing-here"), &dangling).unwrap();
    let dir = f.dir.path().display().to_string();
    for command in ["ADD", "DEL"] {
        f.assert_refused(command, &dir, "a directory");
        f.assert_refused(command, &file, "a regular file");
        f.assert_refused(command, &dangling, "a dangling symlink");
    }
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "not a namespace");
}

#[test]
#[ignore = "privileged"]
fn another_namespace_type_is_refused() {
    let f = Fixture::new();
    // The plugin's own (it resolves /proc/self).
    f.assert_refused("ADD", "/proc/self/ns/uts", "a uts namespace");
    f.assert_refused("ADD", "/proc/self/ns/mnt", "a mount namespace");
    f.assert_refused("DEL", "/proc/self/ns/ipc", "an ipc namespace");
}

#[test]
#[ignore = "privileged"]
fn the_nodes_own_namespace_is_refused() {
    let f = Fixture::new();
    // The namespace the plugin runs in (the node's), by its bind mount and through a symlink.
    let node_path = f.node.path();
    f.assert_refused("ADD", &node_path, "the node's own network namespace");
    let link = f.path("to-node");
    std::os::unix::fs::symlink(&node_path, &link).unwrap();
    f.assert_refused("ADD", &link, "the node's own network namespace");
    // The plugin's own, by its /proc path.
    f.assert_refused(
        "ADD",
        "/proc/self/ns/net",
        "the node's own network namespace",
    );
    f.assert_refused(
        "DEL",
        "/proc/thread-self/ns/net",
        "the node's own network namespace",
    );
}

#[test]
#[ignore = "privileged"]
fn a_symlink_to_a_pods_namespace_is_followed() {
    let f = Fixture::new();
    let pod = Ns::new("pod");
    let link = f.path("to-pod");
    std::os::unix::fs::symlink(pod.path(), &link).unwrap();
    let config = json!({"cniVersion": "1.0.0", "name": "k8slan-veth-srl",
                        "type": "k8slanveth", "veth": "srl"});
    let add = run_bounded(
        &f.files.bin,
        &f.node.name,
        &cni_env("ADD", &link, "e1-1", ""),
        &config.to_string(),
    );
    assert!(add.success, "{add:?}");
    assert!(link_exists(&pod.name, "e1-1"));
    let del = run_bounded(
        &f.files.bin,
        &f.node.name,
        &cni_env("DEL", &link, "e1-1", ""),
        &with_prev(&config, &add.json()),
    );
    del.assert_silent_success();
    assert!(link_exists(&f.node.name, "srl"));
}
