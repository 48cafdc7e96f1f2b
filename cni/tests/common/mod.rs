//! Helpers for tests that run the built plugin binaries the way a container runtime does:
//! `CNI_*` variables in a clean environment and the configuration on stdin, inside a throwaway
//! "node" network namespace that holds the prepared links.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use serde_json::Value;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A name unique to this process and call: `k8c<pid>-<n>-<role>`.
pub fn unique(role: &str) -> String {
    format!(
        "k8c{}-{}-{role}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    )
}

/// Runs `ip` with `args`; panics with its stderr on failure.
pub fn ip(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `ip -n <ns> <args>` (`args` split at whitespace); panics with its stderr on failure.
pub fn ip_n(ns: &str, args: &str) -> String {
    let mut all = vec!["-n", ns];
    all.extend(args.split_whitespace());
    ip(&all)
}

/// Whether `ip -n <ns> link show <dev>` finds the device.
pub fn link_exists(ns: &str, dev: &str) -> bool {
    Command::new("ip")
        .args(["-n", ns, "link", "show", dev])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// `ip -j -d link show` of one device, parsed.
pub fn link_json(ns: &str, dev: &str) -> Value {
    let out = ip(&["-n", ns, "-j", "-d", "link", "show", dev]);
    let v: Value = serde_json::from_str(&out).expect("ip -j output");
    v[0].clone()
}

/// Addresses (`a.b.c.d/len`) of a device.
pub fn addresses(ns: &str, dev: &str) -> Vec<String> {
    let out = ip(&["-n", ns, "-j", "addr", "show", dev]);
    let v: Value = serde_json::from_str(&out).expect("ip -j output");
    v[0]["addr_info"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|i| i["scope"] != "link")
                .map(|i| format!("{}/{}", i["local"].as_str().unwrap(), i["prefixlen"]))
                .collect()
        })
        .unwrap_or_default()
}

/// A named network namespace, deleted on drop.
pub struct Ns {
    pub name: String,
    deleted: bool,
}

impl Ns {
    pub fn new(role: &str) -> Ns {
        let name = unique(role);
        ip(&["netns", "add", &name]);
        Ns {
            name,
            deleted: false,
        }
    }

    /// The path a runtime passes as `CNI_NETNS`.
    pub fn path(&self) -> String {
        format!("/var/run/netns/{}", self.name)
    }

    /// Deletes the namespace now (a pod sandbox that went away).
    pub fn delete(&mut self) {
        ip(&["netns", "del", &self.name]);
        self.deleted = true;
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        if !self.deleted {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.name])
                .status();
        }
    }
}

/// A temporary directory, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> TempDir {
        let p = std::env::temp_dir().join(unique("dir"));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What a plugin execution printed and returned.
#[derive(Debug)]
pub struct Run {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// stdout as JSON (panics when it is not exactly one JSON document).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}): {:?}\nstderr: {}",
                self.stdout, self.stderr
            )
        })
    }

    /// Asserts success and an empty stdout (DEL, CHECK).
    pub fn assert_silent_success(&self) {
        assert!(
            self.success,
            "expected success, got {:?}\nstderr: {}",
            self.stdout, self.stderr
        );
        assert_eq!(
            self.stdout, "",
            "stdout must be empty\nstderr: {}",
            self.stderr
        );
    }

    /// Asserts failure with the given error code, returns the details.
    pub fn assert_error(&self, code: u64) -> String {
        assert!(
            !self.success,
            "expected error {code}, got success: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        let v = self.json();
        assert_eq!(v["code"], code, "{v}\nstderr: {}", self.stderr);
        assert!(v["msg"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
        assert!(v["cniVersion"].is_string(), "{v}");
        v["details"].as_str().unwrap_or_default().to_owned()
    }
}

/// The command that runs `binary` inside `node` (or in this process's namespace when `None`)
/// with exactly the `CNI_*` variables given, like a runtime, its stdio piped.
pub fn plugin_command(binary: &str, node: Option<&str>, env: &[(&str, String)]) -> Command {
    let mut cmd = match node {
        Some(node) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", node, binary]);
            c
        }
        None => Command::new(binary),
    };
    cmd.env_clear().env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// Writes `stdin` to the started plugin and closes it.
pub fn feed(child: &mut Child, stdin: &str) {
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
}

impl From<Output> for Run {
    fn from(out: Output) -> Run {
        Run {
            success: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

/// Runs `binary` like [`plugin_command`] with `stdin` and waits for it.
pub fn run_plugin(binary: &str, node: Option<&str>, env: &[(&str, String)], stdin: &str) -> Run {
    let mut cmd = plugin_command(binary, node, env);
    // A binary copied by another test thread may still be open for writing in a child forked
    // meanwhile (ETXTBSY); that clears when the child execs.
    let mut child = (0..100)
        .find_map(|_| match cmd.spawn() {
            Err(e) if e.raw_os_error() == Some(26) => {
                std::thread::sleep(std::time::Duration::from_millis(20));
                None
            }
            other => Some(other),
        })
        .expect("ETXTBSY for 2 s")
        .expect("start plugin");
    feed(&mut child, stdin);
    child.wait_with_output().unwrap().into()
}

/// The namespace of the test LAN's pods (`K8S_POD_NAMESPACE`) and the LAN's network namespace.
pub const POD_NAMESPACE: &str = "lab";
pub const LAN_NETNS: &str = "knl";

/// The standard runtime environment of one attachment; `K8S_POD_NAMESPACE=lab` is added to
/// `args` unless they name a pod namespace themselves.
pub fn cni_env(command: &str, pod: &str, ifname: &str, args: &str) -> Vec<(&'static str, String)> {
    // As Multus passes them: IgnoreUnknown=1 (so that IPAM plugins accept the K8S_* keys).
    let args = if args.contains("K8S_POD_NAMESPACE") {
        args.to_owned()
    } else if args.contains("IgnoreUnknown") {
        format!("{args};K8S_POD_NAMESPACE={POD_NAMESPACE}")
    } else if args.is_empty() {
        format!("IgnoreUnknown=1;K8S_POD_NAMESPACE={POD_NAMESPACE}")
    } else {
        format!("IgnoreUnknown=1;{args};K8S_POD_NAMESPACE={POD_NAMESPACE}")
    };
    vec![
        ("CNI_COMMAND", command.to_owned()),
        ("CNI_CONTAINERID", "k8slantest0123".to_owned()),
        ("CNI_NETNS", pod.to_owned()),
        ("CNI_IFNAME", ifname.to_owned()),
        ("CNI_ARGS", args),
        ("CNI_PATH", "/usr/lib/cni:/opt/cni/bin".to_owned()),
    ]
}

/// A node namespace, an empty pod namespace and the node's k8slan files with the plugin
/// `binary` installed; [`PodFixture::run`] runs it for the pod's interface `ifname`.
pub struct PodFixture {
    pub node: Ns,
    pub pod: Ns,
    pub files: NodeFiles,
    ifname: &'static str,
}

impl PodFixture {
    pub fn new(binary: &str, ifname: &'static str) -> PodFixture {
        PodFixture {
            node: Ns::new("node"),
            pod: Ns::new("pod"),
            files: NodeFiles::new(binary),
            ifname,
        }
    }

    /// Runs the plugin in the node namespace as a runtime does for this pod's interface.
    pub fn run(&self, command: &str, args: &str, config: &str) -> Run {
        run_plugin(
            &self.files.bin,
            Some(&self.node.name),
            &cni_env(command, &self.pod.path(), self.ifname, args),
            config,
        )
    }
}

/// A node's k8slan files: the plugin binary installed with its `k8slan-cni.json`, the
/// prepared-spoke records and the tap device directory, all in one temporary directory.
pub struct NodeFiles {
    pub dir: TempDir,
    pub bin: String,
}

impl NodeFiles {
    pub fn new(binary: &str) -> NodeFiles {
        let dir = TempDir::new();
        for sub in ["prepared", "dev"] {
            std::fs::create_dir(dir.path().join(sub)).unwrap();
        }
        let bin = dir.path().join(Path::new(binary).file_name().unwrap());
        std::fs::copy(binary, &bin).unwrap();
        let settings = serde_json::json!({
            "logLevel": "debug",
            "devDir": dir.path().join("dev"),
            "preparedDir": dir.path().join("prepared"),
        });
        std::fs::write(dir.path().join("k8slan-cni.json"), settings.to_string()).unwrap();
        NodeFiles {
            bin: bin.to_str().unwrap().to_owned(),
            dir,
        }
    }

    pub fn dev_dir(&self) -> PathBuf {
        self.dir.path().join("dev")
    }

    /// Records `link` in `node` as prepared for `spoke` of `kind` (LAN lab/lan1), as the agent
    /// does at Allocate, and gives it the alias the agent writes.
    pub fn prepare(&self, node: &str, spoke: &str, kind: &str, link: &str, allowed: &[&str]) {
        let role = if kind == "veth" { "spoke" } else { "macvtap" };
        ip(&[
            "-n",
            node,
            "link",
            "set",
            link,
            "alias",
            &format!("k8slan:{LAN_NETNS}/{role}/{spoke}"),
        ]);
        self.record(
            spoke,
            kind,
            link,
            link_json(node, link)["ifindex"].as_u64().unwrap(),
            allowed,
        );
    }

    /// Writes a record without touching the link.
    pub fn record(&self, spoke: &str, kind: &str, link: &str, ifindex: u64, allowed: &[&str]) {
        let record = serde_json::json!({
            "lanNamespace": POD_NAMESPACE, "lanName": "lan1", "netns": LAN_NETNS, "spoke": spoke,
            "kind": kind, "link": link, "ifindex": ifindex, "allowedNamespaces": allowed,
        });
        std::fs::write(
            self.dir
                .path()
                .join("prepared")
                .join(format!("{spoke}.json")),
            record.to_string(),
        )
        .unwrap();
    }
}

/// `config` with `prevResult` set to `result`.
pub fn with_prev(config: &Value, result: &Value) -> String {
    let mut c = config.clone();
    c["prevResult"] = result.clone();
    c.to_string()
}

/// The host-local IPAM section for `subnet` with its leases in `dir`.
pub fn host_local(subnet: &str, gw: &str, routes: Value, dir: &Path) -> Value {
    serde_json::json!({
        "type": "host-local",
        "ranges": [[{"subnet": subnet, "gateway": gw}]],
        "routes": routes,
        "dataDir": dir.to_str().unwrap(),
    })
}

/// Files in host-local's per-network lease directory that are leases (named by address).
pub fn leases(dir: &Path, network: &str) -> Vec<String> {
    std::fs::read_dir(dir.join(network))
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
                .collect()
        })
        .unwrap_or_default()
}

pub const VERSIONS: [&str; 4] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0"];
