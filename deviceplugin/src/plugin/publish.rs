//! Publishing the node report: written when it differs from the last one written, one write at
//! a time (the next event or tick retries a failed or skipped write).

use std::sync::{Arc, Mutex};

use tracing::{debug, warn};

use crate::report::{NodeReport, ReportSink};

#[derive(Default)]
pub(super) struct Publisher {
    published: Arc<Mutex<Option<NodeReport>>>,
    publishing: Option<tokio::task::JoinHandle<()>>,
}

impl Publisher {
    pub fn publish(&mut self, sink: &Arc<dyn ReportSink>, node: &str, report: &NodeReport) {
        if self.publishing.as_ref().is_some_and(|h| !h.is_finished()) {
            return;
        }
        if self
            .published
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            == Some(report)
        {
            return;
        }
        let (sink, node, slot) = (sink.clone(), node.to_string(), self.published.clone());
        let report = report.clone();
        self.publishing = Some(tokio::spawn(async move {
            match sink.publish(&node, &report).await {
                Ok(()) => {
                    debug!(lans = report.lans.len(), "node report written");
                    *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(report);
                }
                Err(e) => warn!(error = %e, "cannot write the node report; will retry"),
            }
        }));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use async_trait::async_trait;

    use super::*;
    use crate::report::{LanNodeReport, NodeState, ReportError};

    #[derive(Default)]
    struct Counting(AtomicU32);

    #[async_trait]
    impl ReportSink for Counting {
        async fn publish(&self, _: &str, _: &NodeReport) -> Result<(), ReportError> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    }

    fn report(generation: i64) -> NodeReport {
        NodeReport {
            lans: [(
                "a/b".to_string(),
                LanNodeReport {
                    state: NodeState::Ready,
                    message: String::new(),
                    generation,
                },
            )]
            .into(),
            ..NodeReport::default()
        }
    }

    #[tokio::test]
    async fn an_unchanged_report_is_written_once() {
        let counting = Arc::new(Counting::default());
        let sink: Arc<dyn ReportSink> = counting.clone();
        let mut p = Publisher::default();
        for r in [report(1), report(1), report(2), report(2)] {
            p.publish(&sink, "n", &r);
            if let Some(h) = p.publishing.take() {
                h.await.unwrap();
            }
        }
        assert_eq!(counting.0.load(Ordering::SeqCst), 2);
    }
}
