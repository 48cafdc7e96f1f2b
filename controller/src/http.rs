//! The controller's two servers: plain HTTP for `/metrics`, `/healthz` and `/readyz`, and HTTPS
//! for the webhooks (`POST /validate-lan`, `POST /validate-pod`, `POST /mutate-pod`), whose
//! certificate can be swapped while it runs.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use k8slan_api::LAN;
use kube::runtime::reflector::Store;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::cert::{LiveCert, provider};
use crate::metrics::{self, Metrics};
use crate::{gate, tenancy, webhook};

/// Path the ValidatingWebhookConfiguration calls for LANs.
pub const WEBHOOK_PATH: &str = "/validate-lan";
/// Path the ValidatingWebhookConfiguration calls for pods that request spoke resources.
pub const POD_WEBHOOK_PATH: &str = "/validate-pod";
/// Path the MutatingWebhookConfiguration calls for pods that request spoke resources.
pub const POD_GATE_PATH: &str = "/mutate-pod";

/// Why a server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("listening on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("serving on {addr}: {source}")]
    Serve {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
}

/// What the probe and metrics server reads.
#[derive(Clone)]
pub struct ProbeState {
    pub registry: Arc<Registry>,
    /// True once the LAN cache is filled and the webhook certificate is loaded.
    pub ready: Arc<AtomicBool>,
}

/// `/metrics`, `/healthz`, `/readyz`.
pub fn probe_router(state: ProbeState) -> Router {
    Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(state)
}

async fn metrics_text(State(s): State<ProbeState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        metrics::encode(&s.registry),
    )
        .into_response()
}

async fn readyz(State(s): State<ProbeState>) -> Response {
    if s.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ok").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "waiting for the LAN cache and the webhook certificate",
        )
            .into_response()
    }
}

/// Serves the probe router on plain HTTP until the process ends.
pub async fn serve_probes(addr: SocketAddr, state: ProbeState) -> Result<(), ServeError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })?;
    axum::serve(listener, probe_router(state))
        .await
        .map_err(|source| ServeError::Serve { addr, source })
}

/// What the webhook handler reads.
#[derive(Clone)]
pub struct WebhookState {
    pub lans: Store<LAN>,
    pub metrics: Arc<Metrics>,
    pub limits: webhook::Limits,
    /// Lists the LANs afresh before a pod is denied: a LAN created (or shared) a moment before
    /// its pods may not have reached the cache yet.
    pub client: kube::Client,
}

/// `POST /validate-lan`, `POST /validate-pod`, `POST /mutate-pod`.
pub fn webhook_router(state: WebhookState) -> Router {
    Router::new()
        .route(WEBHOOK_PATH, post(validate))
        .route(POD_WEBHOOK_PATH, post(validate_pod))
        .route(POD_GATE_PATH, post(gate_pod))
        .with_state(state)
}

async fn gate_pod(State(s): State<WebhookState>, body: Bytes) -> Response {
    respond(&s, "pod", gate::handle(&body))
}

async fn validate(State(s): State<WebhookState>, body: Bytes) -> Response {
    let stored = s.lans.state();
    respond(&s, "LAN", webhook::handle(&body, &stored, s.limits))
}

async fn validate_pod(State(s): State<WebhookState>, body: Bytes) -> Response {
    let stored = s.lans.state();
    let verdict = match tenancy::handle(&body, &stored) {
        Ok(v) if !v.allowed => match fresh_lans(&s.client).await {
            Some(fresh) => tenancy::handle(&body, &fresh),
            None => Ok(v),
        },
        other => other,
    };
    respond(&s, "pod", verdict)
}

/// Every LAN as the API server has it now; `None` (and the cached verdict stands) when it cannot
/// be listed.
async fn fresh_lans(client: &kube::Client) -> Option<Vec<Arc<LAN>>> {
    let api: kube::Api<LAN> = kube::Api::all(client.clone());
    match api.list(&kube::api::ListParams::default()).await {
        Ok(list) => Some(list.items.into_iter().map(Arc::new).collect()),
        Err(e) => {
            tracing::warn!(error = %e, "cannot list LANs afresh for a pod review; using the cache");
            None
        }
    }
}

fn respond(
    s: &WebhookState,
    what: &'static str,
    verdict: Result<webhook::Verdict, webhook::WebhookError>,
) -> Response {
    match verdict {
        Ok(verdict) => {
            s.metrics
                .admitted(if verdict.allowed { "allowed" } else { "denied" });
            if !verdict.allowed {
                let msg = verdict
                    .review
                    .response
                    .as_ref()
                    .map(|r| r.result.message.clone())
                    .unwrap_or_default();
                tracing::info!(kind = what, reason = %msg, "denied an admission request");
            }
            axum::Json(verdict.review).into_response()
        }
        Err(e) => {
            s.metrics.admitted("error");
            tracing::warn!(error = %e, "unreadable admission request");
            (StatusCode::BAD_REQUEST, e.to_string()).into_response()
        }
    }
}

/// Serves the webhook over TLS with the live certificate until the process ends.
pub async fn serve_webhook(
    addr: SocketAddr,
    cert: Arc<LiveCert>,
    state: WebhookState,
) -> Result<(), ServeError> {
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(provider()))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(cert);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })?;
    let app = webhook_router(state);
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "accepting a webhook connection");
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        tokio::spawn(async move {
            let tls = match acceptor.accept(tcp).await {
                Ok(t) => t,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
            };
            let service = TowerToHyperService::new(app);
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tls), service)
                .await
            {
                tracing::debug!(%peer, error = %e, "webhook connection ended with an error");
            }
        });
    }
}
