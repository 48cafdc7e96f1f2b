//! `k8slan-controller`: the LAN controller and its validating webhook.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context as _, Result};
use clap::{Parser, ValueEnum};
use futures::StreamExt;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::jiff::Timestamp;
use k8slan_api::LAN;
use k8slan_controller::cert::{self, LiveCert, SecretStore};
use k8slan_controller::http::{self, ProbeState, WebhookState};
use k8slan_controller::lan::{self, Settings};
use k8slan_controller::metrics::Metrics;
use k8slan_controller::{claims, gate, nad, webhook};
use kube::api::ListParams;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::Store;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use prometheus_client::registry::Registry;
use tracing_subscriber::EnvFilter;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum CertMode {
    /// Own CA and serving certificate in a Secret, caBundle patched by the controller.
    #[value(name = "selfSigned")]
    SelfSigned,
    /// cert-manager writes the Secret (mounted at --cert-dir) and injects the caBundle.
    #[value(name = "certManager")]
    CertManager,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// The LAN controller and validating webhook of k8slan.
#[derive(Debug, Clone, Parser)]
#[command(version)]
struct Args {
    /// Namespace of the controller (release namespace): report/claim Leases and the TLS Secret.
    #[arg(long, env = "POD_NAMESPACE", default_value = "k8slan-system")]
    namespace: String,
    /// Pod name, used as the event reporter instance.
    #[arg(long, env = "POD_NAME")]
    pod_name: Option<String>,
    /// HTTPS port of the validating webhook.
    #[arg(long, env = "K8SLAN_WEBHOOK_PORT", default_value_t = 9443)]
    webhook_port: u16,
    /// Plain HTTP port of /metrics, /healthz and /readyz.
    #[arg(long, env = "K8SLAN_METRICS_PORT", default_value_t = 8080)]
    metrics_port: u16,
    /// The only ValidatingWebhookConfiguration whose caBundle the controller patches.
    #[arg(
        long,
        env = "K8SLAN_WEBHOOK_CONFIG",
        default_value = "k8slan-validating-webhook"
    )]
    webhook_config_name: String,
    /// The only MutatingWebhookConfiguration (the spoke gate of pods) whose caBundle the
    /// controller patches.
    #[arg(
        long,
        env = "K8SLAN_MUTATING_WEBHOOK_CONFIG",
        default_value = "k8slan-mutating-webhook"
    )]
    mutating_webhook_config_name: String,
    /// Service in front of the webhook (its DNS names go into the serving certificate).
    #[arg(long, env = "K8SLAN_WEBHOOK_SERVICE", default_value = "k8slan-webhook")]
    service_name: String,
    /// Secret holding the self-signed CA and serving certificate.
    #[arg(long, env = "K8SLAN_TLS_SECRET", default_value = "k8slan-webhook-tls")]
    tls_secret: String,
    /// Where webhook certificates come from.
    #[arg(
        long,
        env = "K8SLAN_CERT_MODE",
        value_enum,
        default_value = "selfSigned"
    )]
    cert_mode: CertMode,
    /// Directory with tls.crt and tls.key in certManager mode.
    #[arg(long, env = "K8SLAN_CERT_DIR", default_value = "/tls")]
    cert_dir: PathBuf,
    /// How often certificates are checked for renewal (self-signed) or reloaded (certManager).
    #[arg(long, env = "K8SLAN_CERT_CHECK_SECONDS", default_value_t = 3600)]
    cert_check_seconds: u64,
    /// The node agents' `--dev-dir` (tap device nodes of VM spokes), written into the `macvtap`
    /// NADs as `devDir`.
    #[arg(long, env = "K8SLAN_DEV_DIR", default_value = k8slan_api::naming::DEFAULT_DEV_DIR)]
    dev_dir: String,
    /// Most spokes of all LANs one node may carry; the webhook refuses a LAN past it (every spoke
    /// is two extended resources in the Node object).
    #[arg(long, env = "K8SLAN_MAX_SPOKES_PER_NODE", default_value_t = webhook::DEFAULT_MAX_SPOKES_PER_NODE)]
    max_spokes_per_node: usize,
    /// How often every spoke claim is checked for a deleted node or a pod that is gone.
    #[arg(long, env = "K8SLAN_CLAIM_CHECK_SECONDS", default_value_t = claims::DEFAULT_PERIOD.as_secs())]
    claim_check_seconds: u64,
    /// How long a claim may record no pod (or a pod of another identity) before it is released.
    #[arg(long, env = "K8SLAN_CLAIM_GRACE_SECONDS", default_value_t = claims::DEFAULT_GRACE.as_secs())]
    claim_grace_seconds: u64,
    /// Log filter (tracing EnvFilter syntax, e.g. `info` or `k8slan_controller=debug`).
    #[arg(long, env = "K8SLAN_LOG_LEVEL", default_value = "info")]
    log_level: String,
    /// Log format.
    #[arg(long, env = "K8SLAN_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
}

fn init_logging(args: &Args) -> Result<()> {
    let filter = EnvFilter::try_new(&args.log_level)
        .with_context(|| format!("invalid --log-level {:?}", args.log_level))?;
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match args.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
    Ok(())
}

/// Every flag that names an object or a path, checked by the rules in `k8slan_api::validate`.
fn validate_args(args: &Args) -> Result<()> {
    use k8slan_api::validate as v;
    v::namespace_name("--namespace", &args.namespace)?;
    if let Some(pod) = &args.pod_name {
        v::object_name("--pod-name", pod)?;
    }
    v::object_name("--webhook-config-name", &args.webhook_config_name)?;
    v::object_name(
        "--mutating-webhook-config-name",
        &args.mutating_webhook_config_name,
    )?;
    v::service_name("--service-name", &args.service_name)?;
    v::object_name("--tls-secret", &args.tls_secret)?;
    v::node_directory("--dev-dir", &args.dev_dir)
        .context("--dev-dir is the node agents' --dev-dir (chart value agent.devDir)")?;
    anyhow::ensure!(
        args.max_spokes_per_node >= 1,
        "--max-spokes-per-node must be at least 1 (chart value controller.maxSpokesPerNode)"
    );
    anyhow::ensure!(
        args.claim_check_seconds >= 1 && args.claim_grace_seconds >= 1,
        "--claim-check-seconds and --claim-grace-seconds must be at least 1"
    );
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    init_logging(&args)?;
    validate_args(&args)?;
    let client = Client::try_default()
        .await
        .context("connecting to the Kubernetes API (in-cluster config or KUBECONFIG)")?;

    let metrics = Arc::new(Metrics::default());
    let ready = Arc::new(AtomicBool::new(false));
    let any = IpAddr::V6(Ipv6Addr::UNSPECIFIED);
    let probes = tokio::spawn(http::serve_probes(
        SocketAddr::new(any, args.metrics_port),
        probe_state(&metrics, &ready),
    ));

    let running = lan::start(
        client.clone(),
        Settings {
            lease_namespace: args.namespace.clone(),
            instance: args.pod_name.clone(),
            cni: nad::CniSettings {
                dev_dir: args.dev_dir.clone(),
            },
        },
        metrics.clone(),
    );

    let live = first_certificate(&args, &client).await?;
    let webhook = tokio::spawn(http::serve_webhook(
        SocketAddr::new(any, args.webhook_port),
        live.clone(),
        WebhookState {
            lans: running.lans.clone(),
            metrics: metrics.clone(),
            limits: webhook::Limits {
                max_spokes_per_node: args.max_spokes_per_node,
            },
            client: client.clone(),
        },
    ));
    tokio::spawn(claims::run(claim_sweeper(&args, &client, &running)));
    tokio::spawn(
        gate::Keeper {
            client: client.clone(),
            recorder: recorder(&args, &client),
        }
        .run(),
    );
    spawn_certificate_keepers(&args, &client, live, &metrics);

    tokio::spawn(mark_ready(client.clone(), running.lans.clone(), ready));

    tracing::info!(namespace = %args.namespace, webhook_port = args.webhook_port, metrics_port = args.metrics_port, cert_mode = ?args.cert_mode, "k8slan-controller started");
    tokio::select! {
        () = running.task => tracing::info!("controller stopped"),
        r = probes => r.context("probe server task")?.context("probe server")?,
        r = webhook => r.context("webhook server task")?.context("webhook server")?,
    }
    Ok(())
}

/// What `/metrics`, `/healthz` and `/readyz` read.
fn probe_state(metrics: &Metrics, ready: &Arc<AtomicBool>) -> ProbeState {
    let mut registry = Registry::with_prefix("k8slan_controller");
    metrics.register(&mut registry);
    ProbeState {
        registry: Arc::new(registry),
        ready: ready.clone(),
    }
}

/// Keeps the serving certificate fresh and, in selfSigned mode, the CA bundle of both webhook
/// configurations published.
fn spawn_certificate_keepers(
    args: &Args,
    client: &Client,
    live: Arc<LiveCert>,
    metrics: &Arc<Metrics>,
) {
    tokio::spawn(keep_certificate(
        args.clone(),
        client.clone(),
        live,
        metrics.clone(),
    ));
    if args.cert_mode != CertMode::SelfSigned {
        return;
    }
    tokio::spawn(keep_ca_bundle::<ValidatingWebhookConfiguration>(
        args.clone(),
        client.clone(),
        args.webhook_config_name.clone(),
    ));
    tokio::spawn(keep_ca_bundle::<MutatingWebhookConfiguration>(
        args.clone(),
        client.clone(),
        args.mutating_webhook_config_name.clone(),
    ));
}

/// Releases the claims of deleted nodes and gone pods, from the controller's caches.
fn claim_sweeper(args: &Args, client: &Client, running: &lan::Running) -> claims::Sweeper {
    claims::Sweeper {
        client: client.clone(),
        leases: running.leases.clone(),
        lans: running.lans.clone(),
        recorder: recorder(args, client),
        settings: claims::Settings {
            namespace: args.namespace.clone(),
            period: Duration::from_secs(args.claim_check_seconds),
            grace: Duration::from_secs(args.claim_grace_seconds),
        },
    }
}

/// The controller's event recorder.
fn recorder(args: &Args, client: &Client) -> Recorder {
    Recorder::new(
        client.clone(),
        Reporter {
            controller: lan::FIELD_MANAGER.into(),
            instance: args.pod_name.clone(),
        },
    )
}

/// Marks the controller ready once the LAN cache holds the cluster's LANs. The cache swaps in its
/// first full list at once, so a non-empty cache is complete; an empty one is complete when the
/// cluster has no LAN.
async fn mark_ready(client: Client, lans: Store<LAN>, ready: Arc<AtomicBool>) {
    let api: Api<LAN> = Api::all(client);
    loop {
        if tokio::time::timeout(Duration::from_secs(1), lans.wait_until_ready())
            .await
            .is_ok()
        {
            break;
        }
        if !lans.is_empty() {
            break;
        }
        match api.list_metadata(&ListParams::default().limit(1)).await {
            Ok(l) if l.items.is_empty() => break,
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "listing LANs for readiness"),
        }
    }
    ready.store(true, Ordering::Relaxed);
    tracing::info!("LAN cache filled; ready");
}

/// The Secret of the self-signed material (created by the chart).
fn secret_store(args: &Args, client: &Client) -> SecretStore {
    SecretStore::new(client.clone(), &args.namespace, &args.tls_secret)
}

/// Loads (certManager) or ensures and publishes (selfSigned) the first serving certificate.
async fn first_certificate(args: &Args, client: &Client) -> Result<Arc<LiveCert>> {
    let key = match args.cert_mode {
        CertMode::CertManager => {
            let (crt, key) = cert::load_dir(&args.cert_dir)?;
            cert::certified_key(&crt, &key, &args.cert_dir.display().to_string())?
        }
        CertMode::SelfSigned => {
            let store = secret_store(args, client);
            let names = cert::dns_names(&args.service_name, &args.namespace);
            let m = store.ensure(&names, Timestamp::now()).await?;
            publish_ca(client, args, &m.ca_bundle).await;
            cert::certified_key(
                &m.cert,
                &m.key,
                &format!("Secret {}/{}", args.namespace, args.tls_secret),
            )?
        }
    };
    Ok(LiveCert::new(key))
}

/// Publishes the CA bundle into both webhook configurations.
async fn publish_ca(client: &Client, args: &Args, bundle: &str) {
    publish_ca_into::<ValidatingWebhookConfiguration>(client, &args.webhook_config_name, bundle)
        .await;
    publish_ca_into::<MutatingWebhookConfiguration>(
        client,
        &args.mutating_webhook_config_name,
        bundle,
    )
    .await;
}

async fn publish_ca_into<K: cert::WebhookConfig>(client: &Client, config: &str, bundle: &str) {
    match cert::patch_ca_bundle::<K>(client.clone(), config, bundle).await {
        Ok(true) => tracing::info!(kind = K::KIND, config, "patched the webhook caBundle"),
        Ok(false) => {}
        // Not fatal: the configuration may not exist yet (installed after us); keep_ca_bundle retries.
        Err(e) => tracing::warn!(error = %e, "cannot publish the webhook CA yet"),
    }
}

/// Renews (selfSigned) or reloads (certManager) the serving certificate periodically.
async fn keep_certificate(args: Args, client: Client, live: Arc<LiveCert>, metrics: Arc<Metrics>) {
    let store = secret_store(&args, &client);
    let names = cert::dns_names(&args.service_name, &args.namespace);
    let mut last: Option<(String, String)> = None;
    let mut tick = tokio::time::interval(Duration::from_secs(args.cert_check_seconds.max(10)));
    tick.tick().await;
    loop {
        tick.tick().await;
        let pair = match args.cert_mode {
            CertMode::CertManager => cert::load_dir(&args.cert_dir),
            CertMode::SelfSigned => match store.ensure(&names, Timestamp::now()).await {
                Ok(m) => {
                    publish_ca(&client, &args, &m.ca_bundle).await;
                    Ok((m.cert, m.key))
                }
                Err(e) => Err(e),
            },
        };
        match pair {
            Ok(pair) if last.as_ref() != Some(&pair) => {
                match cert::certified_key(&pair.0, &pair.1, "renewed certificate") {
                    Ok(k) => {
                        if last.is_some() {
                            tracing::info!("serving a renewed webhook certificate");
                            metrics.cert_rotations.inc();
                        }
                        live.replace(k);
                        last = Some(pair);
                    }
                    Err(e) => tracing::warn!(error = %e, "keeping the current webhook certificate"),
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "keeping the current webhook certificate"),
        }
    }
}

/// Re-publishes the caBundle whenever the webhook configuration `name` of kind `K` changes (a
/// `helm upgrade` re-renders it without one).
async fn keep_ca_bundle<K: cert::WebhookConfig>(args: Args, client: Client, name: String) {
    let api: Api<K> = Api::all(client.clone());
    let cfg = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let store = secret_store(&args, &client);
    let names = cert::dns_names(&args.service_name, &args.namespace);
    let mut changes = watcher(api, cfg)
        .backoff(k8slan_controller::reconnect())
        .applied_objects()
        .boxed();
    while let Some(ev) = changes.next().await {
        match ev {
            Ok(_) => match store.ensure(&names, Timestamp::now()).await {
                Ok(m) => publish_ca_into::<K>(&client, &name, &m.ca_bundle).await,
                Err(e) => tracing::warn!(error = %e, "cannot read the webhook certificate"),
            },
            Err(e) => {
                tracing::warn!(kind = K::KIND, error = %e, "watching the webhook configuration")
            }
        }
    }
}
