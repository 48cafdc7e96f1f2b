//! `Allocate`, step by step: check the device ID, admit the allocation against the inventory
//! (under the lock: served here, not held elsewhere, no twin, not denied), claim the spoke
//! cluster-wide (bounded by the claim timeout), prepare its host side, record it for the CNI
//! plugins, and answer the container's devices. A failed step undoes the earlier ones.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use k8slan_api::SpokeKind;
use k8slan_api::naming::{claim_lease_name, resource_name};
use k8slan_api::prepared::PreparedSpoke;
use k8slan_api::report::LanRef;
use tonic::Status;
use tracing::{debug, instrument, warn};

use super::state::Core;
use crate::claim::{Acquired, Claim, ClaimError, LeaseClaim};
use crate::endpoint::Allocator;
use crate::inventory::{Advert, Failure, Health, device_id};
use crate::lan::WatchedLan;
use crate::member::Reserved;
use crate::prepared::PreparedDirError;
use crate::proto::v1beta1::{ContainerAllocateResponse, DeviceSpec};
use crate::spoke::{HostSide, PrepareError, SpokeRequest};

/// Why an `Allocate` was refused.
#[derive(Debug, thiserror::Error)]
pub enum AllocateError {
    #[error("resource {resource} has no device {got:?}; its only device is {want:?}")]
    UnknownDevice {
        resource: String,
        want: String,
        got: Vec<String>,
    },
    #[error(
        "resource {resource} is not served on node {node} (LAN gone, spoke removed or no underlay)"
    )]
    NotServed { resource: String, node: String },
    #[error("spoke {spoke} is held on node {node} by {}; a spoke has one member", pod.as_deref().unwrap_or("a pod not yet reported"))]
    HeldElsewhere {
        spoke: String,
        node: String,
        pod: Option<String>,
    },
    #[error("spoke {spoke} is already attached as {kind} on this node by {}; a spoke has one member", pod.as_deref().unwrap_or("a pod not yet reported"))]
    TwinHeld {
        spoke: String,
        kind: SpokeKind,
        pod: Option<String>,
    },
    #[error(
        "spoke {spoke} of LAN {lan} is held on this node by pod {pod}, whose namespace the LAN does not admit; it stays unusable until that pod is gone"
    )]
    Denied {
        spoke: String,
        lan: String,
        pod: String,
    },
    #[error("cannot claim spoke {spoke}: {source}")]
    Claim {
        spoke: String,
        source: Box<ClaimError>,
    },
    #[error(
        "cannot claim spoke {spoke}: the API server did not answer the write of claim Lease {lease} within {timeout:?} (--claim-timeout); Allocate fails at once rather than stall pod admission on this node"
    )]
    ClaimTimeout {
        spoke: String,
        lease: String,
        timeout: Duration,
    },
    #[error("cannot prepare spoke {spoke} of LAN {lan} as {kind}: {source}")]
    Prepare {
        spoke: String,
        lan: String,
        kind: SpokeKind,
        source: PrepareError,
    },
    #[error("cannot record prepared spoke {spoke} of LAN {lan} for the CNI plugins: {source}")]
    Record {
        spoke: String,
        lan: String,
        source: PreparedDirError,
    },
}

impl From<AllocateError> for Status {
    fn from(e: AllocateError) -> Self {
        let msg = e.to_string();
        match e {
            AllocateError::UnknownDevice { .. } => Status::invalid_argument(msg),
            AllocateError::NotServed { .. } => Status::not_found(msg),
            AllocateError::HeldElsewhere { .. } | AllocateError::TwinHeld { .. } => {
                Status::failed_precondition(msg)
            }
            AllocateError::Denied { .. } => Status::permission_denied(msg),
            AllocateError::Claim { .. } => Status::unavailable(msg),
            AllocateError::ClaimTimeout { .. } => Status::deadline_exceeded(msg),
            AllocateError::Prepare { .. } | AllocateError::Record { .. } => Status::internal(msg),
        }
    }
}

/// An allocation admitted under the lock: what the slow steps need.
struct Admitted {
    advert: Advert,
    lan: WatchedLan,
    reserved: Reserved,
}

/// The kubelet asks for exactly the one device of the resource.
fn check_device(kind: SpokeKind, spoke: &str, device_ids: &[String]) -> Result<(), AllocateError> {
    let want = device_id(kind, spoke);
    match device_ids {
        [id] if *id == want => Ok(()),
        _ => Err(AllocateError::UnknownDevice {
            resource: resource_name(kind, spoke),
            want,
            // Kubelet-supplied: never echo an unbounded list back.
            got: device_ids.iter().take(4).cloned().collect(),
        }),
    }
}

/// The record the CNI plugins read for this allocation.
fn record_of(lan: &WatchedLan, spoke: &str, kind: SpokeKind, host: &HostSide) -> PreparedSpoke {
    let (lan_namespace, lan_name) = lan.key.split_once('/').unwrap_or(("", &lan.key));
    PreparedSpoke {
        lan_namespace: lan_namespace.to_string(),
        lan_name: lan_name.to_string(),
        netns: lan.spec.ns.clone(),
        spoke: spoke.to_string(),
        kind,
        link: host.link.clone(),
        ifindex: host.ifindex,
        allowed_namespaces: lan.spec.allowed_namespaces.clone(),
    }
}

/// The container's part of the answer: a VM's tap device.
fn response(host: HostSide) -> ContainerAllocateResponse {
    let mut resp = ContainerAllocateResponse::default();
    if let Some(tap) = host.tap {
        resp.devices.push(DeviceSpec {
            container_path: tap.container_path,
            host_path: tap.host_path.to_string_lossy().into_owned(),
            permissions: "rw".into(),
        });
    }
    resp
}

impl Core {
    #[instrument(name = "allocate", skip(self), fields(node = %self.node))]
    pub async fn do_allocate(
        &self,
        kind: SpokeKind,
        spoke: &str,
        device_ids: &[String],
    ) -> Result<ContainerAllocateResponse, AllocateError> {
        self.churn.record();
        check_device(kind, spoke, device_ids)?;
        let adm = self.admit(kind, spoke)?;
        if adm.reserved == Reserved::New {
            // The twin turns unhealthy now, before the slow part.
            self.wake.notify_one();
        }
        let created = match self.claim(kind, spoke, &adm).await {
            Ok(created) => created,
            Err(e) => {
                self.undo(kind, spoke, &adm, false).await;
                return Err(e);
            }
        };
        match self.prepare(kind, spoke, &adm).await {
            Ok(host) => Ok(response(host)),
            Err(e) => {
                self.note_failure(&adm.lan, &e);
                self.remove_record(spoke).await;
                self.undo(kind, spoke, &adm, created).await;
                Err(e)
            }
        }
    }

    /// Checks the allocation against what this node serves and enters it as a member.
    fn admit(&self, kind: SpokeKind, spoke: &str) -> Result<Admitted, AllocateError> {
        let resource = resource_name(kind, spoke);
        let mut st = self.lock();
        let not_served = || AllocateError::NotServed {
            resource: resource.clone(),
            node: self.node.clone(),
        };
        let advert = st
            .inventory
            .resources
            .get(&resource)
            .cloned()
            .ok_or_else(not_served)?;
        let lan = st
            .lans
            .as_ref()
            .and_then(|l| l.get(&advert.lan))
            .cloned()
            .ok_or_else(not_served)?;
        if let Health::HeldElsewhere { node } = &advert.health {
            let pod = st
                .claims
                .as_ref()
                .and_then(|c| c.get(spoke))
                .and_then(|c| c.claim.pod.clone());
            return Err(AllocateError::HeldElsewhere {
                spoke: spoke.into(),
                node: node.clone(),
                pod,
            });
        }
        if let Some(d) = st.denied.get(spoke) {
            return Err(AllocateError::Denied {
                spoke: spoke.into(),
                lan: d.lan.clone(),
                pod: d.pod.clone(),
            });
        }
        let reserved = st
            .members
            .reserve(spoke, kind, Instant::now())
            .map_err(|twin| AllocateError::TwinHeld {
                spoke: spoke.into(),
                kind: twin.0.kind,
                pod: twin.0.pod,
            })?;
        Ok(Admitted {
            advert,
            lan,
            reserved,
        })
    }

    /// Claims the spoke for this node, within the claim timeout; true if this call created the
    /// claim.
    async fn claim(
        &self,
        kind: SpokeKind,
        spoke: &str,
        adm: &Admitted,
    ) -> Result<bool, AllocateError> {
        let lan = LanRef::parse(&adm.lan.key).ok_or_else(|| AllocateError::NotServed {
            resource: resource_name(kind, spoke),
            node: self.node.clone(),
        })?;
        let want = Claim::new(spoke, &self.node, lan, kind);
        let acquired =
            tokio::time::timeout(self.claim_timeout, self.backends.claims.acquire(&want))
                .await
                .map_err(|_| AllocateError::ClaimTimeout {
                    spoke: spoke.into(),
                    lease: claim_lease_name(spoke),
                    timeout: self.claim_timeout,
                })?
                .map_err(|source| AllocateError::Claim {
                    spoke: spoke.into(),
                    source: Box::new(source),
                })?;
        match acquired {
            Acquired::Created => Ok(true),
            Acquired::AlreadyOurs => Ok(false),
            Acquired::HeldElsewhere(c) => {
                self.learn_claim(&c);
                Err(AllocateError::HeldElsewhere {
                    spoke: spoke.into(),
                    node: c.node,
                    pod: c.pod,
                })
            }
        }
    }

    /// Another node won the spoke: take its claim into the snapshot now, so that this node
    /// reports the spoke unhealthy before the claim watch delivers it (the kubelet stops
    /// offering the device, and the scheduler stops placing pods for it here, sooner).
    fn learn_claim(&self, claim: &Claim) {
        let mut st = self.lock();
        let mut map = st.claims.as_deref().cloned().unwrap_or_default();
        map.entry(claim.spoke.clone())
            .or_insert_with(|| LeaseClaim {
                claim: claim.clone(),
                uid: None,
            });
        st.claims = Some(Arc::new(map));
        drop(st);
        self.wake.notify_one();
    }

    /// Prepares the host side and records it for the CNI plugins.
    async fn prepare(
        &self,
        kind: SpokeKind,
        spoke: &str,
        adm: &Admitted,
    ) -> Result<HostSide, AllocateError> {
        let req = SpokeRequest {
            lan: &adm.lan.key,
            spec: &adm.lan.spec,
            underlay: &adm.advert.underlay,
            spoke,
            kind,
        };
        let prepare_error = |source| AllocateError::Prepare {
            spoke: spoke.into(),
            lan: adm.lan.key.clone(),
            kind,
            source,
        };
        let host = self
            .backends
            .preparer
            .prepare(req)
            .await
            .map_err(prepare_error)?;
        if kind == SpokeKind::Mac && host.tap.is_none() {
            return Err(prepare_error(PrepareError::new(
                "the datapath returned no tap device for a VM spoke",
            )));
        }
        debug!(link = %host.link, ifindex = host.ifindex, "spoke prepared");
        let (records, record) = (
            self.records.clone(),
            record_of(&adm.lan, spoke, kind, &host),
        );
        let written = tokio::task::spawn_blocking(move || records.write(&record))
            .await
            .unwrap_or_else(|e| {
                Err(PreparedDirError::Unsafe {
                    dir: self.records.path().to_owned(),
                    why: format!("the record writer panicked: {e}"),
                })
            });
        written.map_err(|source| AllocateError::Record {
            spoke: spoke.into(),
            lan: adm.lan.key.clone(),
            source,
        })?;
        if self.lock().failures.remove(&adm.lan.key).is_some() {
            self.wake.notify_one();
        }
        Ok(host)
    }

    /// Reports the failure on the LAN until a later preparation succeeds.
    fn note_failure(&self, lan: &WatchedLan, err: &AllocateError) {
        self.lock().failures.insert(
            lan.key.clone(),
            Failure {
                generation: lan.generation,
                message: err.to_string(),
            },
        );
    }

    /// Takes back the reservation and (if this call created it) the claim, within the claim
    /// timeout; a claim left behind is dropped later as an orphan.
    async fn undo(&self, kind: SpokeKind, spoke: &str, adm: &Admitted, created: bool) {
        if adm.reserved == Reserved::New {
            self.lock().members.cancel(spoke, kind);
            self.wake.notify_one();
        }
        if !created {
            return;
        }
        let release = self.backends.claims.release(spoke, None);
        match tokio::time::timeout(self.claim_timeout, release).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(error = %e, "cannot drop the claim of a failed allocation"),
            Err(_) => warn!(
                timeout = ?self.claim_timeout,
                "the claim of a failed allocation was not dropped in time; it goes as an orphan claim"
            ),
        }
    }
}

pub(crate) struct CoreAllocator(pub Arc<Core>);

#[async_trait]
impl Allocator for CoreAllocator {
    async fn allocate(
        &self,
        kind: SpokeKind,
        spoke: &str,
        device_ids: &[String],
    ) -> Result<ContainerAllocateResponse, Status> {
        self.0
            .do_allocate(kind, spoke, device_ids)
            .await
            .map_err(|e| {
                warn!(error = %e, "Allocate refused");
                Status::from(e)
            })
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use k8slan_api::LanSpec;

    use super::*;
    use crate::spoke::TapDevice;

    #[test]
    fn only_the_one_device_of_the_resource_is_accepted_and_errors_stay_small() {
        assert!(check_device(SpokeKind::Mac, "s1", &["mvt-s1".into()]).is_ok());
        let many: Vec<String> = (0..10_000).map(|i| format!("d{i}")).collect();
        for ids in [vec![], vec!["s1".to_string(), "s1".to_string()], many] {
            let e = check_device(SpokeKind::Veth, "s1", &ids).unwrap_err();
            let AllocateError::UnknownDevice { got, .. } = &e else {
                panic!("{e}")
            };
            assert!(got.len() <= 4);
            assert_eq!(Status::from(e).code(), tonic::Code::InvalidArgument);
        }
    }

    #[test]
    fn a_record_names_the_lan_its_link_and_who_may_hold_it() {
        let spec: LanSpec = serde_json::from_value(serde_json::json!({
            "ns": "knl", "bridge": "br0", "vxlan": "vx0", "vni": 1,
            "defaultVxlanDev": "eth1", "spokes": ["vm1"], "allowedNamespaces": ["lab2"],
        }))
        .unwrap();
        let lan = WatchedLan {
            key: "lab/lan1".into(),
            generation: 3,
            spec,
            accepted: Some(true),
        };
        let host = HostSide {
            link: "mvt-vm1".into(),
            ifindex: 77,
            tap: Some(TapDevice {
                host_path: PathBuf::from("/run/k8slan/dev/tap-vm1"),
                container_path: "/dev/tap77".into(),
            }),
        };
        let r = record_of(&lan, "vm1", SpokeKind::Mac, &host);
        assert_eq!(
            (r.lan_namespace.as_str(), r.lan_name.as_str()),
            ("lab", "lan1")
        );
        assert_eq!(
            (r.netns.as_str(), r.link.as_str(), r.ifindex),
            ("knl", "mvt-vm1", 77)
        );
        assert!(r.admits("lab") && r.admits("lab2") && !r.admits("other"));
        let resp = response(host);
        assert_eq!(resp.devices.len(), 1);
        assert_eq!(resp.devices[0].container_path, "/dev/tap77");
    }

    #[test]
    fn timeouts_and_denials_have_their_own_codes_and_say_what_to_do() {
        let e = AllocateError::ClaimTimeout {
            spoke: "s1".into(),
            lease: "spoke-s1".into(),
            timeout: Duration::from_secs(5),
        };
        let msg = e.to_string();
        assert!(
            msg.contains("s1") && msg.contains("spoke-s1") && msg.contains("5s"),
            "{msg}"
        );
        assert!(
            msg.contains("API server") && msg.contains("--claim-timeout"),
            "{msg}"
        );
        assert_eq!(Status::from(e).code(), tonic::Code::DeadlineExceeded);
        let e = AllocateError::Denied {
            spoke: "s1".into(),
            lan: "lab/lan1".into(),
            pod: "other/p".into(),
        };
        assert_eq!(Status::from(e).code(), tonic::Code::PermissionDenied);
    }
}
