//! The one reflector loop behind the plugin's watches (claim Leases, LANs): after the initial
//! list and after each change the caller publishes a snapshot of the store; watch errors are
//! logged and retried with backoff ([`reconnect`]). The loop ends once the receiver side of `tx` is gone.

use std::fmt::Debug;
use std::hash::Hash;

use futures::StreamExt;
use k8s_openapi::serde::de::DeserializeOwned;
use kube::runtime::reflector::Store;
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Api, Resource};
use tokio::sync::watch;
use tracing::warn;

/// Reflects `api` (filtered by `cfg`) and calls `publish` with the store after every change;
/// `what` names the objects in the log line of a failed watch.
pub(crate) async fn publish_each_change<K, T>(
    api: Api<K>,
    cfg: watcher::Config,
    what: &str,
    tx: &watch::Sender<T>,
    mut publish: impl FnMut(&Store<K>),
) where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + Hash + Clone,
{
    let (reader, writer) = reflector::store::<K>();
    let stream = reflector(writer, watcher(api, cfg))
        .backoff(reconnect())
        .boxed();
    futures::pin_mut!(stream);
    while let Some(event) = stream.next().await {
        match event {
            Ok(watcher::Event::InitDone | watcher::Event::Apply(_) | watcher::Event::Delete(_)) => {
                publish(&reader)
            }
            Ok(_) => {}
            Err(e) => warn!(error = %e, "watching {what} failed; retrying"),
        }
        if tx.is_closed() {
            return;
        }
    }
}

/// A watch's reconnection backoff: the policy of [`k8slan_api::watch`].
pub(crate) fn reconnect() -> kube::runtime::watcher::ExponentialBackoff {
    k8slan_api::watch::reconnect().into()
}
