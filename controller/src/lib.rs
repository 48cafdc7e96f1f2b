//! LAN controller and validating webhook.
//!
//! Pure rules: [`nad`] (which NetworkAttachmentDefinitions a LAN owns), [`conflict`] (cluster-wide
//! uniqueness of `ns`, `vni` and spokes), [`status`] (aggregating the agents' reports). Around
//! them: [`lan`] (the reconcile loop), [`webhook`] (admission review of LANs), [`tenancy`]
//! (admission review of pods that request spokes), [`gate`] (one pod per spoke at scheduling
//! time: the mutating pod webhook and the keeper of its scheduling gates), [`claims`] (releasing the claims of dead
//! members and deleted nodes), [`cert`] (webhook serving certificates), [`metrics`] and [`http`]
//! (the servers).

pub mod cert;
pub mod claims;
pub mod conflict;
pub mod gate;
pub mod http;
pub mod lan;
pub mod metrics;
pub mod nad;
pub mod status;
pub mod tenancy;
pub mod webhook;

#[cfg(test)]
mod testutil;

/// A watch's reconnection backoff: the policy of [`k8slan_api::watch`].
pub fn reconnect() -> kube::runtime::watcher::ExponentialBackoff {
    k8slan_api::watch::reconnect().into()
}
