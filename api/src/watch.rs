//! How k8slan's watches of the API server reconnect after it was unreachable: exponentially from
//! [`RECONNECT_FIRST`] up to [`RECONNECT_MAX`] between attempts (with jitter), and back to the
//! first after any success.
//!
//! client-go waits up to 30 s, which after an outage of a minute leaves a change made right
//! after the API server returns unseen for up to 30 s. k8slan's watchers are a few per node (the
//! agent's LANs, claims and node reports) and per controller, so retrying every second at most
//! costs a down API server one failed connection per watcher a second, and a change reaches
//! the nodes about a second after it is back.

use std::time::Duration;

/// Wait before the first reconnection attempt.
pub const RECONNECT_FIRST: Duration = Duration::from_millis(250);
/// Longest wait between reconnection attempts.
pub const RECONNECT_MAX: Duration = Duration::from_secs(1);
/// Growth of the wait per failed attempt.
pub const RECONNECT_FACTOR: f32 = 2.0;

/// The policy as a backoff builder (feature `watch`); kube-runtime's `ExponentialBackoff` converts
/// from it.
#[cfg(feature = "watch")]
pub fn reconnect() -> backon::ExponentialBuilder {
    backon::ExponentialBuilder::default()
        .with_min_delay(RECONNECT_FIRST)
        .with_max_delay(RECONNECT_MAX)
        .with_factor(RECONNECT_FACTOR)
        .with_jitter()
        .without_max_times()
}
