//! Registering endpoints with the kubelet (`/v1beta1.Registration/Register` on `kubelet.sock`),
//! retried until the kubelet accepts them.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::endpoint::plugin_options;
use crate::proto::v1beta1::RegisterRequest;
use crate::proto::v1beta1::registration_client::RegistrationClient;
use crate::proto::{DEVICE_PLUGIN_API_VERSION, KUBELET_SOCKET};
use crate::uds;

/// Registrations in flight at once on the one connection to the kubelet.
const CONCURRENCY: usize = 128;
const FIRST_RETRY: Duration = Duration::from_millis(200);
const LAST_RETRY: Duration = Duration::from_secs(5);

enum Cmd {
    /// (resource name, socket file name)
    Register(Vec<(String, String)>),
    Forget(String),
}

/// Handle of the registration task.
pub(crate) struct Registrar {
    tx: mpsc::UnboundedSender<Cmd>,
    task: JoinHandle<()>,
}

impl Registrar {
    /// Starts registering with the kubelet socket in `dir`.
    pub fn spawn(dir: PathBuf) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(run(dir.join(KUBELET_SOCKET), rx));
        Registrar { tx, task }
    }

    /// (Re-)registers these resources.
    pub fn register(&self, items: Vec<(String, String)>) {
        if !items.is_empty() {
            let _ = self.tx.send(Cmd::Register(items));
        }
    }

    /// Stops trying to register a withdrawn resource.
    pub fn forget(&self, resource: String) {
        let _ = self.tx.send(Cmd::Forget(resource));
    }
}

impl Drop for Registrar {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn run(kubelet: PathBuf, mut rx: mpsc::UnboundedReceiver<Cmd>) {
    let mut pending: BTreeMap<String, String> = BTreeMap::new();
    let mut backoff = FIRST_RETRY;
    let mut cmds = Vec::new();
    loop {
        cmds.clear();
        if pending.is_empty() {
            if rx.recv_many(&mut cmds, 1024).await == 0 {
                return;
            }
        } else {
            tokio::select! {
                n = rx.recv_many(&mut cmds, 1024) => if n == 0 { return },
                _ = tokio::time::sleep(backoff) => {}
            }
        }
        let fresh = !cmds.is_empty();
        for cmd in cmds.drain(..) {
            match cmd {
                Cmd::Register(items) => pending.extend(items),
                Cmd::Forget(resource) => {
                    pending.remove(&resource);
                }
            }
        }
        if fresh {
            backoff = FIRST_RETRY;
        }
        if pending.is_empty() {
            continue;
        }
        let total = pending.len();
        register_all(&kubelet, &mut pending).await;
        if pending.is_empty() {
            info!(resources = total, "registered with the kubelet");
            backoff = FIRST_RETRY;
        } else {
            debug!(
                waiting = pending.len(),
                retry_in = ?backoff,
                "some resources are not registered yet"
            );
            backoff = (backoff * 2).min(LAST_RETRY);
        }
    }
}

/// Registers every pending resource over one connection; the accepted ones leave `pending`.
async fn register_all(kubelet: &std::path::Path, pending: &mut BTreeMap<String, String>) {
    let channel = match uds::connect(kubelet).await {
        Ok(c) => c,
        Err(e) => {
            debug!(error = %e, "kubelet registration socket not reachable yet");
            return;
        }
    };
    let client = RegistrationClient::new(channel);
    let attempts: Vec<_> = pending
        .iter()
        .map(|(resource, file)| {
            let mut client = client.clone();
            let req = RegisterRequest {
                version: DEVICE_PLUGIN_API_VERSION.to_string(),
                endpoint: file.clone(),
                resource_name: resource.clone(),
                options: Some(plugin_options()),
            };
            let resource = resource.clone();
            async move { (resource, client.register(req).await) }
        })
        .collect();
    let mut results = futures::stream::iter(attempts).buffer_unordered(CONCURRENCY);
    while let Some((resource, result)) = results.next().await {
        match result {
            Ok(_) => {
                pending.remove(&resource);
            }
            Err(status) => warn!(
                resource,
                code = ?status.code(),
                message = status.message(),
                "the kubelet refused to register the resource; will retry"
            ),
        }
    }
}
