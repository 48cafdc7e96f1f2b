//! Giving freed heap memory back to the kernel once a burst of work has settled.
//!
//! Every `Allocate` (and every release) recomputes the inventory and, with the real datapath,
//! builds netlink messages: megabytes of short-lived allocations interleaved with the small
//! long-lived state of thousands of kubelet connections. glibc keeps the freed pages inside its
//! arenas, so the resident size stays at the burst's high-water mark (measured: ~1 MiB after
//! 1,000 Allocates with the real datapath). `malloc_trim` returns the free pages; it walks the
//! arenas under their locks (~2 ms after such a burst), so it runs only when the plugin has been
//! quiet for a poll interval, off the runtime's worker threads.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counts bursts of heap churn and tells when a trim is due.
#[derive(Debug, Default)]
pub(crate) struct Churn {
    events: AtomicU64,
}

impl Churn {
    /// Records one churning operation (an `Allocate`, a release, pods written onto claims).
    pub fn record(&self) {
        self.events.fetch_add(1, Ordering::Relaxed);
    }

    fn count(&self) -> u64 {
        self.events.load(Ordering::Relaxed)
    }
}

/// What the trimmer saw at its last look.
#[derive(Debug, Default)]
pub(crate) struct Trimmer {
    seen: u64,
    trimmed: u64,
}

impl Trimmer {
    /// Called once per poll interval: true when there was churn since the last trim and none
    /// since the previous call (the burst is over). Trimming during a burst does not pay: the
    /// pages come straight back.
    pub fn due(&mut self, churn: &Churn) -> bool {
        let now = churn.count();
        let quiet = now == self.seen;
        self.seen = now;
        if quiet && now != self.trimmed {
            self.trimmed = now;
            true
        } else {
            false
        }
    }
}

/// Returns the free pages of every malloc arena to the kernel. Blocking (takes the arena locks
/// for a few ms): call it from the blocking pool. Does nothing where the C library is not glibc.
pub(crate) fn return_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory of the allocator; it has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_once_per_burst_after_a_quiet_interval() {
        let churn = Churn::default();
        let mut t = Trimmer::default();
        assert!(!t.due(&churn), "nothing happened yet");
        churn.record();
        churn.record();
        assert!(!t.due(&churn), "still busy during this interval");
        assert!(t.due(&churn), "quiet for an interval after the burst");
        assert!(!t.due(&churn), "already trimmed");
        churn.record();
        assert!(!t.due(&churn));
        churn.record();
        assert!(
            !t.due(&churn),
            "a burst spanning intervals waits for its end"
        );
        assert!(t.due(&churn));
    }
}
