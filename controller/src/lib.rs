//! LAN controller and validating webhook.
//!
//! Pure rules: [`nad`] (which NetworkAttachmentDefinitions a LAN owns), [`conflict`] (cluster-wide
//! uniqueness of `ns`, `vni` and spokes), [`status`] (aggregating the agents' reports). Around
//! them: [`lan`] (the reconcile loop), [`webhook`] (admission review), [`cert`] (webhook serving
//! certificates), [`metrics`] and [`http`] (the servers).

pub mod cert;
pub mod conflict;
pub mod http;
pub mod lan;
pub mod metrics;
pub mod nad;
pub mod status;
pub mod webhook;

#[cfg(test)]
mod testutil;
