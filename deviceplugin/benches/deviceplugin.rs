//! Device plugin figures with 1,000 spokes (2,000 resources), printed as a table.
//!
//! Two processes, so that the plugin's memory is measured alone: this process plays the kubelet
//! (stand-in speaking the real v1beta1 protocol over unix sockets, plus a pod-resources stand-in)
//! and re-executes itself as the plugin (`K8SLAN_BENCH_ROLE=plugin`), driven over stdin/stdout.
//! The datapath is a no-op fake (`RecordingPreparer::quiet`): Allocate latency here is the
//! plugin's own (gRPC, state machine, claim in memory), not the kernel's. With
//! `DATAPATH=netagent` (root) the plugin prepares real spokes with the netagent datapath inside a
//! throwaway network namespace acting as the node's host namespace.
//!
//! Run: `cargo bench -p k8slan-deviceplugin --bench deviceplugin` (env `SPOKES` to change 1000).

#[path = "../tests/common/netagent.rs"]
mod netagent;

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8slan_api::SpokeKind;
use k8slan_api::naming::resource_name;
use k8slan_deviceplugin::inventory::device_id;
use k8slan_deviceplugin::lan::snapshot;
use k8slan_deviceplugin::plugin::{self, Backends, PluginConfig, Sources};
use k8slan_deviceplugin::testing::{
    FakeLinks, FakePodResources, KubeletStandIn, MemoryClaims, MemoryReports, RecordingPreparer,
    lan,
};
use k8slan_deviceplugin::{HostSide, PrepareError, SpokePreparer, SpokeRequest};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::watch;

const ROLE: &str = "K8SLAN_BENCH_ROLE";
const ROOT: &str = "K8SLAN_BENCH_ROOT";

fn spokes() -> Vec<String> {
    let n: usize = std::env::var("SPOKES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000);
    (0..n).map(|i| format!("s{i}")).collect()
}

fn vm_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn main() {
    let plugin = std::env::var(ROLE).as_deref() == Ok("plugin");
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if plugin {
        // The plugin process runs on the agent's runtime settings.
        rt.worker_threads(k8slan_deviceplugin::RUNTIME_WORKERS);
    }
    let rt = rt.enable_all().build().expect("runtime");
    if plugin {
        rt.block_on(plugin_role());
    } else {
        rt.block_on(kubelet_role());
    }
}

/// The plugin process: serves until stdin says `quit`; `go` feeds the LAN, `rss` reports memory.
async fn plugin_role() {
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let root = PathBuf::from(std::env::var(ROOT).expect("root"));
    let claims = MemoryClaims::new();
    let (lans_tx, lans_rx) = watch::channel(None);
    let config = PluginConfig {
        node_name: "bench-node".into(),
        uplink: None,
        device_plugin_dir: root.join("device-plugins"),
        pod_resources_socket: root.join("pod-resources/kubelet.sock"),
        prepared_dir: root.join("prepared"),
        poll_interval: PluginConfig::DEFAULT_POLL_INTERVAL,
        // The bench lists the members in pod-resources only once all are allocated.
        release_grace: Duration::from_secs(3600),
        claim_timeout: PluginConfig::DEFAULT_CLAIM_TIMEOUT,
    };
    let real = std::env::var("DATAPATH").as_deref() == Ok("netagent");
    let timed = Arc::new(Timed::default());
    // Real datapath: a namespace standing in for the node's host namespace, with underlay eth1.
    let node = real.then(|| {
        let host = k8slan_testkit::TestNs::new("bnh").expect("node namespace");
        host.sh("ip link add eth1 type veth peer name eth1p && ip link set eth1 up && ip link set eth1p up")
            .expect("underlay");
        let dir = k8slan_testkit::TestDir::new("bn").expect("node dir");
        let kernel = k8slan_netagent::RtnlKernel::new(
            k8slan_netagent::HostNs::Path(host.path()),
            dir.path().join("netns"),
        )
        .expect("kernel");
        let dp = Arc::new(k8slan_netagent::Datapath::new(kernel, dir.path().join("dev")));
        (host, dir, dp)
    });
    let backends = match &node {
        Some((_, _, dp)) => Backends {
            preparer: timed.clone().wrapping(Arc::new(netagent::NetagentPreparer {
                dp: dp.clone(),
                node: "bench-node".into(),
            })),
            claims: claims.clone(),
            reports: Arc::new(MemoryReports::default()),
            pods: Arc::new(k8slan_deviceplugin::testing::MemoryPods::default()),
            links: Arc::new(netagent::KernelLinks(dp.clone())),
        },
        None => Backends {
            preparer: timed
                .clone()
                .wrapping(RecordingPreparer::quiet(&root.join("dev"))),
            claims: claims.clone(),
            reports: Arc::new(MemoryReports::default()),
            pods: Arc::new(k8slan_deviceplugin::testing::MemoryPods::default()),
            links: FakeLinks::with(&["eth1"]),
        },
    };
    let netns = if real {
        k8slan_testkit::unique_name("lan")
    } else {
        "big".to_string()
    };
    let sources = Sources {
        lans: lans_rx,
        claims: claims.subscribe(),
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(plugin::serve(config, backends, sources, async move {
        let _ = stop_rx.await;
    }));
    let names = spokes();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut last_spec = None;
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut out = tokio::io::stdout();
    out.write_all(format!("ready {}\n", vm_rss_kib()).as_bytes())
        .await
        .unwrap();
    out.flush().await.unwrap();
    while let Ok(Some(line)) = lines.next_line().await {
        match line.as_str() {
            "go" => {
                let l = lan("bench", "big", &netns, &refs, "eth1");
                last_spec = Some(l.spec.clone());
                lans_tx.send_replace(Some(snapshot([&l])));
            }
            "prep" => {
                let mut d = timed.times.lock().unwrap().clone();
                d.sort();
                let line = if d.is_empty() {
                    "prep - - -".to_string()
                } else {
                    format!(
                        "prep {:.3} {:.3} {:.3}",
                        pct(&d, 0.5).as_secs_f64() * 1e3,
                        pct(&d, 0.99).as_secs_f64() * 1e3,
                        d.last().unwrap().as_secs_f64() * 1e3
                    )
                };
                out.write_all(format!("{line}\n").as_bytes()).await.unwrap();
                out.flush().await.unwrap();
            }
            "rss" => {
                out.write_all(format!("rss {}\n", vm_rss_kib()).as_bytes())
                    .await
                    .unwrap();
                out.flush().await.unwrap();
            }
            _ => break,
        }
    }
    let _ = stop_tx.send(());
    let _ = server.await;
    if let (Some((_host, _dir, dp)), Some(spec)) = (node, last_spec) {
        let _ = tokio::task::spawn_blocking(move || dp.lan_down(&spec).map_err(Box::new)).await;
    }
}

/// Times every `prepare` of the wrapped preparer (the datapath's share of Allocate).
#[derive(Default)]
struct Timed {
    inner: std::sync::OnceLock<Arc<dyn SpokePreparer>>,
    times: std::sync::Mutex<Vec<Duration>>,
}

impl Timed {
    fn wrapping(self: Arc<Self>, inner: Arc<dyn SpokePreparer>) -> Arc<dyn SpokePreparer> {
        let _ = self.inner.set(inner);
        self
    }
}

#[async_trait::async_trait]
impl SpokePreparer for Timed {
    async fn prepare(&self, req: SpokeRequest<'_>) -> Result<HostSide, PrepareError> {
        let t = Instant::now();
        let r = self.inner.get().expect("wrapped").prepare(req).await;
        self.times.lock().unwrap().push(t.elapsed());
        r
    }

    async fn release(&self, req: SpokeRequest<'_>) -> Result<(), PrepareError> {
        self.inner.get().expect("wrapped").release(req).await
    }
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

async fn kubelet_role() {
    let tmp = tempfile::TempDir::new().expect("tempdir");
    let root = tmp.path().to_owned();
    let dir = root.join("device-plugins");
    let mut kubelet = KubeletStandIn::start(&dir).expect("kubelet stand-in");
    let pr = FakePodResources::start(&root.join("pod-resources/kubelet.sock")).expect("pr");
    let names = spokes();
    let resources = names.len() * 2;

    // `BENCH_WRAP="heaptrack -o /tmp/plugin"` runs the plugin under a profiler.
    let exe = std::env::current_exe().unwrap();
    let wrap: Vec<String> = std::env::var("BENCH_WRAP")
        .map(|w| w.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default();
    let mut cmd = match wrap.split_first() {
        Some((prog, args)) => {
            let mut c = tokio::process::Command::new(prog);
            c.args(args).arg(&exe);
            c
        }
        None => tokio::process::Command::new(&exe),
    };
    let mut child = cmd
        .env(ROLE, "plugin")
        .env(ROOT, &root)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("plugin process");
    let mut to_plugin = child.stdin.take().unwrap();
    let mut from_plugin = BufReader::new(child.stdout.take().unwrap()).lines();
    // A wrapper may print its own lines first.
    let ready = loop {
        let line = from_plugin
            .next_line()
            .await
            .unwrap()
            .expect("plugin ready");
        if line.starts_with("ready ") {
            break line;
        }
    };
    let mut ask = async |cmd: &str| -> Option<String> {
        to_plugin
            .write_all(format!("{cmd}\n").as_bytes())
            .await
            .ok()?;
        to_plugin.flush().await.ok()?;
        if cmd == "rss" || cmd == "prep" {
            from_plugin.next_line().await.ok()?
        } else {
            None
        }
    };
    let idle_rss: u64 = ready
        .strip_prefix("ready ")
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);

    // 1. LAN fed -> every resource registered and listed.
    let all_listed = |m: &std::collections::BTreeMap<String, _>| -> bool {
        let m: &std::collections::BTreeMap<String, k8slan_deviceplugin::testing::ResourceView> = m;
        m.len() == resources
            && m.values()
                .all(|r| r.streaming && r.devices().is_some_and(|d| d.len() == 1))
    };
    let t0 = Instant::now();
    ask("go").await;
    assert!(
        kubelet
            .wait_until(Duration::from_secs(120), all_listed)
            .await,
        "not all resources registered"
    );
    let register_time = t0.elapsed();
    let rss_registered: u64 = ask("rss")
        .await
        .and_then(|l| l.strip_prefix("rss ")?.parse().ok())
        .unwrap_or(0);

    // 2. Allocate latency: one Allocate per spoke, alternating pod and VM kinds, one at a time
    //    as the kubelet admits pods.
    let mut lat = Vec::with_capacity(names.len());
    for (i, spoke) in names.iter().enumerate() {
        let kind = if i % 2 == 0 {
            SpokeKind::Veth
        } else {
            SpokeKind::Mac
        };
        let res = resource_name(kind, spoke);
        let id = device_id(kind, spoke);
        let t = Instant::now();
        kubelet.allocate(&res, &[&id]).await.expect("allocate");
        lat.push(t.elapsed());
    }
    lat.sort();
    let rss_allocated: u64 = ask("rss")
        .await
        .and_then(|l| l.strip_prefix("rss ")?.parse().ok())
        .unwrap_or(0);

    let prep = ask("prep").await.unwrap_or_default();
    // The members' pods are running now: the kubelet lists them (steady state).
    let held: Vec<(String, String, String)> = names
        .iter()
        .enumerate()
        .map(|(i, spoke)| {
            let kind = if i % 2 == 0 {
                SpokeKind::Veth
            } else {
                SpokeKind::Mac
            };
            (
                format!("bench/pod-{spoke}"),
                resource_name(kind, spoke),
                device_id(kind, spoke),
            )
        })
        .collect();
    let held_refs: Vec<(&str, &str, &str)> = held
        .iter()
        .map(|(p, r, d)| (p.as_str(), r.as_str(), d.as_str()))
        .collect();
    pr.set(&held_refs);
    // Let the plugin confirm them (one pod-resources poll) and settle before the restart.
    tokio::time::sleep(Duration::from_secs(8)).await;
    // Steady state with the members running: the plugin has been quiet for a poll interval.
    let rss_settled: u64 = ask("rss")
        .await
        .and_then(|l| l.strip_prefix("rss ")?.parse().ok())
        .unwrap_or(0);

    // 3. Kubelet restart: sockets wiped, kubelet.sock recreated -> everything back.
    let t1 = Instant::now();
    kubelet.restart().expect("restart");
    assert!(
        kubelet
            .wait_until(Duration::from_secs(120), all_listed)
            .await,
        "not all resources re-registered"
    );
    let reregister_time = t1.elapsed();

    ask("quit").await;
    let _ = child.wait().await;

    let datapath = if std::env::var("DATAPATH").as_deref() == Ok("netagent") {
        "netagent datapath on the real kernel"
    } else {
        "no-op datapath"
    };
    println!(
        "k8slan device plugin benchmark ({} spokes, {resources} resources, {datapath})",
        names.len()
    );
    println!("| figure | value | goal |");
    let prep: Vec<&str> = prep.split_whitespace().skip(1).collect();
    println!("| --- | --- | --- |");
    println!(
        "| LAN fed -> all resources registered and listed | {:.2} s | <= 10 s |",
        register_time.as_secs_f64()
    );
    println!(
        "| kubelet restart -> all resources back | {:.2} s | <= 5 s |",
        reregister_time.as_secs_f64()
    );
    println!(
        "| Allocate latency, median | {:.3} ms | |",
        pct(&lat, 0.5).as_secs_f64() * 1e3
    );
    println!(
        "| Allocate latency, p99 | {:.3} ms | <= 20 ms |",
        pct(&lat, 0.99).as_secs_f64() * 1e3
    );
    println!(
        "| Allocate latency, max | {:.3} ms | |",
        lat.last().unwrap().as_secs_f64() * 1e3
    );
    if let [median, p99, max] = prep.as_slice() {
        println!(
            "| of which the datapath's prepare: median / p99 / max | {median} / {p99} / {max} ms | |"
        );
    }
    println!(
        "| plugin VmRSS, idle (no LAN) | {:.1} MiB | |",
        idle_rss as f64 / 1024.0
    );
    println!(
        "| plugin VmRSS, {resources} resources served | {:.1} MiB | <= 64 MB |",
        rss_registered as f64 / 1024.0
    );
    println!(
        "| plugin VmRSS, after {} Allocates | {:.1} MiB | <= 64 MB |",
        names.len(),
        rss_allocated as f64 / 1024.0
    );
    println!(
        "| plugin VmRSS, 8 s after the Allocates (members running, plugin quiet) | {:.1} MiB | <= 64 MB |",
        rss_settled as f64 / 1024.0
    );
}
