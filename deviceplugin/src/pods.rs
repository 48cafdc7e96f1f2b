//! What the plugin asks the API about the pods that hold its spokes: the UID of a member pod
//! (recorded on its claim, so that the controller can tell a pod that is gone from one created
//! again under the same name) and Events on a pod whose spoke was refused.

use async_trait::async_trait;
use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use kube::Api;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};

/// A pod named by pod-resources, `<namespace>/<name>`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
}

impl PodRef {
    /// Parses `<namespace>/<name>` (as the members carry it); `None` for anything else.
    pub fn parse(s: &str) -> Option<Self> {
        let (namespace, name) = s.split_once('/')?;
        (!namespace.is_empty() && !name.is_empty() && !name.contains('/')).then(|| Self {
            namespace: namespace.into(),
            name: name.into(),
        })
    }
}

impl std::fmt::Display for PodRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A warning to show on a pod (`kubectl describe pod`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodWarning {
    /// PascalCase reason, e.g. `SpokeNamespaceDenied`.
    pub reason: &'static str,
    pub message: String,
}

/// The API could not answer about a pod.
#[derive(Debug, thiserror::Error)]
pub enum PodsError {
    #[error("cannot read pod {pod}: {source}")]
    Get { pod: String, source: kube::Error },
    #[error("cannot write an event on pod {pod}: {source}")]
    Event { pod: String, source: kube::Error },
}

/// Pod lookups and events.
#[async_trait]
pub trait Pods: Send + Sync + 'static {
    /// `metadata.uid` of the pod; `None` if there is no such pod.
    async fn uid(&self, pod: &PodRef) -> Result<Option<String>, PodsError>;
    /// Emits a Warning event on the pod (with its UID when known).
    async fn warn(
        &self,
        pod: &PodRef,
        uid: Option<&str>,
        warning: &PodWarning,
    ) -> Result<(), PodsError>;
}

/// [`Pods`] through the API server: one `get pods` per lookup, Events as `events.k8s.io/v1`.
pub struct KubePods {
    client: kube::Client,
    recorder: Recorder,
}

impl KubePods {
    pub fn new(client: kube::Client, node: &str) -> Self {
        let reporter = Reporter {
            controller: "k8slan-agent".into(),
            instance: Some(node.to_string()),
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
        }
    }
}

/// Message limit of an event note (the API refuses longer ones).
const MAX_NOTE: usize = 1024;

fn note(message: &str) -> String {
    let mut end = message.len().min(MAX_NOTE);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    message[..end].to_string()
}

#[async_trait]
impl Pods for KubePods {
    async fn uid(&self, pod: &PodRef) -> Result<Option<String>, PodsError> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &pod.namespace);
        match api.get_opt(&pod.name).await {
            Ok(p) => Ok(p.and_then(|p| p.metadata.uid)),
            Err(source) => Err(PodsError::Get {
                pod: pod.to_string(),
                source,
            }),
        }
    }

    async fn warn(
        &self,
        pod: &PodRef,
        uid: Option<&str>,
        warning: &PodWarning,
    ) -> Result<(), PodsError> {
        let reference = ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            namespace: Some(pod.namespace.clone()),
            name: Some(pod.name.clone()),
            uid: uid.map(str::to_string),
            ..Default::default()
        };
        let event = Event {
            type_: EventType::Warning,
            reason: warning.reason.into(),
            note: Some(note(&warning.message)),
            action: "Allocate".into(),
            secondary: None,
        };
        self.recorder
            .publish(&event, &reference)
            .await
            .map_err(|source| PodsError::Event {
                pod: pod.to_string(),
                source,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_refs_parse_only_namespace_slash_name() {
        let p = PodRef::parse("lab/srl1").unwrap();
        assert_eq!((p.namespace.as_str(), p.name.as_str()), ("lab", "srl1"));
        assert_eq!(p.to_string(), "lab/srl1");
        for bad in ["", "x", "/x", "x/", "a/b/c"] {
            assert_eq!(PodRef::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn notes_are_cut_at_the_api_limit_on_a_char_boundary() {
        let long = "é".repeat(MAX_NOTE);
        let n = note(&long);
        assert!(n.len() <= MAX_NOTE && n.chars().all(|c| c == 'é'));
        assert_eq!(note("short"), "short");
    }
}
