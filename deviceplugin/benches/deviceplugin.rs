//! Device plugin figures with 1,000 spokes (2,000 resources), printed as a table.
//!
//! Two processes, so that the plugin's memory is measured alone: this process plays the kubelet
//! (stand-in speaking the real v1beta1 protocol over unix sockets, plus a pod-resources stand-in)
//! and re-executes itself as the plugin (`K8SLAN_BENCH_ROLE=plugin`), driven over stdin/stdout.
//! The datapath is a no-op fake (`RecordingPreparer::quiet`): Allocate latency here is the
//! plugin's own (gRPC, state machine, claim in memory), not the kernel's.
//!
//! Run: `cargo bench -p k8slan-deviceplugin --bench deviceplugin` (env `SPOKES` to change 1000).

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
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    if std::env::var(ROLE).as_deref() == Ok("plugin") {
        rt.block_on(plugin_role());
    } else {
        rt.block_on(kubelet_role());
    }
}

/// The plugin process: serves until stdin says `quit`; `go` feeds the LAN, `rss` reports memory.
async fn plugin_role() {
    let root = PathBuf::from(std::env::var(ROOT).expect("root"));
    let claims = MemoryClaims::new();
    let (lans_tx, lans_rx) = watch::channel(None);
    let config = PluginConfig {
        node_name: "bench-node".into(),
        device_plugin_dir: root.join("device-plugins"),
        pod_resources_socket: root.join("pod-resources/kubelet.sock"),
        poll_interval: PluginConfig::DEFAULT_POLL_INTERVAL,
        release_grace: PluginConfig::DEFAULT_RELEASE_GRACE,
    };
    let backends = Backends {
        preparer: RecordingPreparer::quiet(&root.join("dev")),
        claims: claims.clone(),
        reports: Arc::new(MemoryReports::default()),
        links: FakeLinks::with(&["eth1"]),
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
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut out = tokio::io::stdout();
    out.write_all(format!("ready {}\n", vm_rss_kib()).as_bytes())
        .await
        .unwrap();
    out.flush().await.unwrap();
    while let Ok(Some(line)) = lines.next_line().await {
        match line.as_str() {
            "go" => {
                let l = lan("bench", "big", "big", &refs, "eth1");
                lans_tx.send_replace(Some(snapshot([&l])));
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
    let _pr = FakePodResources::start(&root.join("pod-resources/kubelet.sock")).expect("pr");
    let names = spokes();
    let resources = names.len() * 2;

    let mut child = tokio::process::Command::new(std::env::current_exe().unwrap())
        .env(ROLE, "plugin")
        .env(ROOT, &root)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("plugin process");
    let mut to_plugin = child.stdin.take().unwrap();
    let mut from_plugin = BufReader::new(child.stdout.take().unwrap()).lines();
    let ready = from_plugin.next_line().await.unwrap().unwrap();
    let mut ask = async |cmd: &str| -> Option<String> {
        to_plugin
            .write_all(format!("{cmd}\n").as_bytes())
            .await
            .ok()?;
        to_plugin.flush().await.ok()?;
        if cmd == "rss" {
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

    println!(
        "k8slan device plugin benchmark ({} spokes, {resources} resources, no-op datapath)",
        names.len()
    );
    println!("| figure | value | goal |");
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
}
