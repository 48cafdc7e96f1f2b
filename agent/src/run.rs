//! `k8slan-agent run`: the node agent of the DaemonSet. Wires the device plugin to the datapath,
//! runs the node-local LAN reconciler beside it, and serves probes and metrics.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use clap::Args;
use k8s_openapi::api::coordination::v1::Lease;
use k8slan_api::LAN;
use k8slan_api::prepared::DEFAULT_PREPARED_DIR;
use k8slan_deviceplugin::prepared::PreparedDir;
use k8slan_deviceplugin::{
    AgentConfig, DEFAULT_KUBELET_DIR, DEFAULT_NAMESPACE, Sources, claim, report,
};
use k8slan_netagent::{Datapath, HostNs, RtnlKernel};
use kube::Api;
use tokio::sync::{Notify, watch};
use tracing::{info, warn};

use crate::datapath_cli::Dirs;
use crate::lans;
use crate::metrics::{self, Metrics};
use crate::peers;
use crate::preparer::DatapathPreparer;
use crate::underlay::{self, DatapathLinks};

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Kubernetes name of this node (from the downward API: spec.nodeName).
    #[arg(long, env = "NODE_NAME")]
    pub node_name: String,
    /// Kubelet root directory: device-plugins/ and pod-resources/ live below it.
    #[arg(long, env = "K8SLAN_KUBELET_DIR", default_value = DEFAULT_KUBELET_DIR)]
    pub kubelet_dir: PathBuf,
    /// Namespace of the spoke claims and node reports (the agent's own namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = DEFAULT_NAMESPACE)]
    pub namespace: String,
    #[command(flatten)]
    pub dirs: Dirs,
    /// How often every programmed LAN is checked against its spec (drift repair).
    #[arg(long, env = "K8SLAN_RESYNC", default_value = "30s", value_parser = humantime_secs)]
    pub resync: Duration,
    /// Directory of the prepared-spoke records the CNI plugins read (root-owned, mode 0700;
    /// created if missing, refused if it is a symlink or writable by others).
    #[arg(long, env = "K8SLAN_PREPARED_DIR", default_value = DEFAULT_PREPARED_DIR)]
    pub prepared_dir: PathBuf,
    /// Longest wait for the API server when `Allocate` writes a claim: past it, `Allocate`
    /// fails at once with a message rather than stall pod admission on the node.
    #[arg(long, env = "K8SLAN_CLAIM_TIMEOUT", default_value = "5s", value_parser = humantime_secs)]
    pub claim_timeout: Duration,
    /// The node's InternalIP (from the downward API: status.hostIP). The host interface carrying
    /// it is the node's uplink: the underlay of LANs that name no device. Empty: no uplink.
    #[arg(long, env = "NODE_IP", default_value = "")]
    pub node_ip: String,
    /// Address of the probe and metrics server (`/healthz`, `/readyz`, `/metrics`).
    #[arg(long, env = "K8SLAN_PROBE_ADDR", default_value = "0.0.0.0:9810")]
    pub probe_addr: SocketAddr,
}

fn humantime_secs(s: &str) -> Result<Duration, String> {
    let secs = s.strip_suffix('s').unwrap_or(s);
    match secs.parse::<u64>() {
        Ok(n) if n > 0 => Ok(Duration::from_secs(n)),
        _ => Err(format!(
            "{s:?} is not a positive number of seconds such as 30s"
        )),
    }
}

#[derive(Clone, Default)]
struct Probe {
    /// Set once the first complete list of LANs has arrived.
    ready: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
}

async fn healthz() -> &'static str {
    "ok"
}

async fn metrics_text(State(p): State<Probe>) -> String {
    metrics::encode(&p.metrics.registry())
}

async fn readyz(State(p): State<Probe>) -> (StatusCode, &'static str) {
    if p.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ok")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "waiting for the first list of LANs",
        )
    }
}

pub async fn run(args: RunArgs) -> Result<()> {
    k8slan_api::validate::node_name("--node-name", &args.node_name)?;
    let host = match &args.dirs.host_netns {
        Some(p) => HostNs::Path(p.clone()),
        None => HostNs::Current,
    };
    let kernel = RtnlKernel::new(host, &args.dirs.netns_dir)
        .context("cannot open the host network namespace")?;
    let uplink = find_uplink(&kernel, &args.node_ip)?;
    let dp = Arc::new(
        Datapath::new(kernel, &args.dirs.dev_dir)
            .with_tap_owner(args.dirs.tap_owner)
            .with_uplink(uplink.clone()),
    );
    let client = kube::Client::try_default()
        .await
        .context("cannot build a Kubernetes client (in-cluster config or KUBECONFIG)")?;

    let (lans_tx, lans_rx) = watch::channel(None);
    let lan_watch = tokio::spawn(k8slan_deviceplugin::lan::watch_lans(
        Api::<LAN>::all(client.clone()),
        lans_tx,
    ));

    let probe = Probe::default();
    let ready = probe.ready.clone();
    let metrics = probe.metrics.clone();
    let mut first_list = lans_rx.clone();
    tokio::spawn(async move {
        if first_list.wait_for(Option::is_some).await.is_ok() {
            ready.store(true, Ordering::Relaxed);
        }
    });
    serve_probes(args.probe_addr, probe).await?;

    let records = PreparedDir::open(&args.prepared_dir).context("--prepared-dir")?;
    let replumbed = Arc::new(Notify::new());
    let node = Arc::new(lans::Node {
        dp: dp.clone(),
        name: args.node_name.clone(),
        records,
        metrics: metrics.clone(),
        replumbed: replumbed.clone(),
    });
    let reconciler = tokio::spawn(lans::reconcile_loop(
        node.clone(),
        lans_rx.clone(),
        args.resync,
    ));
    let leases = || Api::<Lease>::namespaced(client.clone(), &args.namespace);
    let (claims_tx, claims_rx) = watch::channel(None);
    let claim_watch = tokio::spawn(claim::watch_claims(leases(), claims_tx));
    let (reports_tx, reports_rx) = watch::channel(None);
    let report_watch = tokio::spawn(report::watch_reports(leases(), reports_tx));
    let peer_sources = peers::Sources {
        lans: lans_rx.clone(),
        claims: claims_rx.clone(),
        reports: reports_rx,
    };
    let peering = tokio::spawn(peers::peer_loop(node, peer_sources, args.resync));

    let config = AgentConfig {
        prepared_dir: args.prepared_dir.clone(),
        claim_timeout: args.claim_timeout,
        uplink: uplink.clone(),
        ..AgentConfig::new(&args.node_name, &args.kubelet_dir, &args.namespace)
    };
    let links = Arc::new(DatapathLinks(dp.clone()));
    let preparer = Arc::new(DatapathPreparer::new(
        dp,
        &args.node_name,
        metrics,
        replumbed,
    ));
    info!(node = %args.node_name, kubelet_dir = %args.kubelet_dir.display(), uplink = ?uplink, "k8slan agent starting");
    let sources = Sources {
        lans: lans_rx,
        claims: claims_rx,
    };
    let result = k8slan_deviceplugin::run(
        config,
        preparer,
        Some(links),
        client,
        sources,
        shutdown_signal(),
    )
    .await;
    for task in [reconciler, peering, claim_watch, report_watch, lan_watch] {
        task.abort();
    }
    result.context("device plugin stopped")?;
    info!("k8slan agent stopped");
    Ok(())
}

/// The uplink: the host interface carrying `--node-ip` (none when it is empty).
fn find_uplink(kernel: &RtnlKernel, node_ip: &str) -> Result<Option<String>> {
    if node_ip.is_empty() {
        return Ok(None);
    }
    let ip: IpAddr = node_ip
        .parse()
        .with_context(|| format!("--node-ip {node_ip:?} is not an IP address"))?;
    let found = underlay::uplink(kernel, ip).with_context(|| {
        format!("cannot list the host interfaces to find the one carrying {ip}")
    })?;
    if found.is_none() {
        warn!(%ip, "no host interface carries the node IP: LANs that name no underlay device are not served here");
    }
    Ok(found)
}

/// Serves `/healthz`, `/readyz` and `/metrics` on `addr` in the background.
async fn serve_probes(addr: SocketAddr, probe: Probe) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} for probes"))?;
    let router = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(probe);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            warn!(error = %e, "probe server stopped");
        }
    });
    Ok(())
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(e) => {
            warn!(error = %e, "cannot watch SIGTERM; stopping on SIGINT only");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
