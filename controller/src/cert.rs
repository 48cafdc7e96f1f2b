//! Serving certificates of the webhook.
//!
//! In `selfSigned` mode the controller keeps its own CA and serving certificate in a Secret of its
//! namespace, which the chart creates empty (keys `ca.crt` — the CA bundle, newest CA first —,
//! `ca.key`, `tls.crt`, `tls.key`;
//! validity and names in annotations, so nothing needs to parse X.509). The CA lives
//! [`CA_VALIDITY_DAYS`] and is replaced a year before it expires (the old CA stays in the bundle
//! while it is valid, so the API server keeps trusting the old serving certificate until the new
//! one is served); the serving certificate lives [`LEAF_VALIDITY_DAYS`] and is renewed
//! [`LEAF_RENEW_BEFORE_DAYS`] days before it expires or when the service names change.
//! [`renewal`] and [`issue`] are pure; [`SecretStore`] and [`patch_ca_bundle`] talk to the API.
//!
//! In `certManager` mode cert-manager writes the Secret and the cainjector fills the caBundle; the
//! controller only reads `tls.crt`/`tls.key` from a mounted directory ([`load_dir`]).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, RwLock};

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// Days a self-signed CA is valid.
pub const CA_VALIDITY_DAYS: i64 = 3650;
/// The CA is replaced when fewer days than this are left.
pub const CA_RENEW_BEFORE_DAYS: i64 = 365;
/// Days a serving certificate is valid.
pub const LEAF_VALIDITY_DAYS: i64 = 365;
/// The serving certificate is renewed when fewer days than this are left.
pub const LEAF_RENEW_BEFORE_DAYS: i64 = 30;

const ANN_CA_CN: &str = "k8slan.io/ca-common-name";
const ANN_CA_NOT_AFTER: &str = "k8slan.io/ca-not-after";
const ANN_CERT_NOT_AFTER: &str = "k8slan.io/cert-not-after";
const ANN_DNS_NAMES: &str = "k8slan.io/dns-names";

/// Why a certificate could not be made, stored, loaded or published.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("generating the webhook certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("webhook certificate or key in {what} is unusable: {why}")]
    Unusable { what: String, why: String },
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{action} Secret {namespace}/{name}: {source}")]
    Secret {
        action: &'static str,
        namespace: String,
        name: String,
        source: Box<kube::Error>,
    },
    #[error(
        "Secret {namespace}/{name} does not exist: in selfSigned mode the chart creates it (empty) and the controller only fills it; reinstall the chart or create an empty Opaque Secret of that name"
    )]
    MissingSecret { namespace: String, name: String },
    #[error("{action} {kind} {name}: {source}")]
    Webhook {
        action: &'static str,
        kind: &'static str,
        name: String,
        source: Box<kube::Error>,
    },
}

/// A CA and the serving certificate it signed, all PEM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Material {
    /// Trusted CAs, newest first: the `caBundle` of the webhook configuration.
    pub ca_bundle: String,
    pub ca_key: String,
    pub ca_common_name: String,
    pub ca_not_after: Timestamp,
    pub cert: String,
    pub key: String,
    pub cert_not_after: Timestamp,
    pub dns_names: Vec<String>,
}

/// What needs to be made anew.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewal {
    Keep,
    /// A new serving certificate from the current CA.
    Leaf,
    /// A new CA and serving certificate.
    All,
}

/// The names the API server uses to reach the webhook service.
pub fn dns_names(service: &str, namespace: &str) -> Vec<String> {
    vec![
        service.to_string(),
        format!("{service}.{namespace}"),
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
    ]
}

/// Decides what to renew.
pub fn renewal(current: Option<&Material>, names: &[String], now: Timestamp) -> Renewal {
    let Some(m) = current else {
        return Renewal::All;
    };
    let days_left = |t: Timestamp| t.duration_since(now).as_secs() / 86_400;
    if days_left(m.ca_not_after) < CA_RENEW_BEFORE_DAYS {
        Renewal::All
    } else if days_left(m.cert_not_after) < LEAF_RENEW_BEFORE_DAYS
        || m.dns_names != names
        || m.cert_not_after > m.ca_not_after
    {
        Renewal::Leaf
    } else {
        Renewal::Keep
    }
}

fn offset(t: Timestamp) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(t.as_second())
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

fn ca_params(common_name: &str, now: Timestamp, not_after: Timestamp) -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p.not_before = offset(now - SignedDuration::from_secs(300));
    p.not_after = offset(not_after);
    p
}

/// Makes what `renewal` asks for. With [`Renewal::Leaf`] the CA of `current` signs; with
/// [`Renewal::All`] a new CA is made and the old one stays in the bundle while it is valid.
pub fn issue(
    current: Option<&Material>,
    renewal: Renewal,
    names: &[String],
    now: Timestamp,
) -> Result<Material, CertError> {
    let days = |d: i64| SignedDuration::from_hours(24 * d);
    let (ca_bundle, ca_key, ca_cn, ca_not_after) = match (renewal, current) {
        (Renewal::Keep, Some(m)) => return Ok(m.clone()),
        (Renewal::Leaf, Some(m)) => (
            m.ca_bundle.clone(),
            m.ca_key.clone(),
            m.ca_common_name.clone(),
            m.ca_not_after,
        ),
        _ => {
            let key = KeyPair::generate()?;
            let cn = format!("k8slan-webhook-ca-{}", now.as_second());
            let not_after = now + days(CA_VALIDITY_DAYS);
            let cert = ca_params(&cn, now, not_after).self_signed(&key)?;
            let mut bundle = cert.pem();
            if let Some(old) = current.filter(|m| m.ca_not_after > now) {
                // Keep only the previous CA (the first certificate of the old bundle).
                if let Some(end) = old.ca_bundle.find("-----END CERTIFICATE-----") {
                    bundle.push_str(&old.ca_bundle[..end + "-----END CERTIFICATE-----".len()]);
                    bundle.push('\n');
                }
            }
            (bundle, key.serialize_pem(), cn, not_after)
        }
    };
    let ca_key_pair = KeyPair::from_pem(&ca_key)?;
    let issuer = Issuer::new(ca_params(&ca_cn, now, ca_not_after), ca_key_pair);
    let leaf_key = KeyPair::generate()?;
    let mut p = CertificateParams::new(names.to_vec())?;
    let mut dn = DistinguishedName::new();
    dn.push(
        DnType::CommonName,
        names.first().cloned().unwrap_or_default(),
    );
    p.distinguished_name = dn;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert_not_after = (now + days(LEAF_VALIDITY_DAYS)).min(ca_not_after);
    p.not_before = offset(now - SignedDuration::from_secs(300));
    p.not_after = offset(cert_not_after);
    let cert = p.signed_by(&leaf_key, &issuer)?;
    Ok(Material {
        ca_bundle,
        ca_key,
        ca_common_name: ca_cn,
        ca_not_after,
        cert: cert.pem(),
        key: leaf_key.serialize_pem(),
        cert_not_after,
        dns_names: names.to_vec(),
    })
}

impl Material {
    /// Reads the material from a Secret; `None` when anything is missing.
    pub fn from_secret(secret: &Secret) -> Option<Self> {
        let data = secret.data.as_ref()?;
        let text = |k: &str| {
            data.get(k)
                .and_then(|b| String::from_utf8(b.0.clone()).ok())
        };
        let ann = secret.metadata.annotations.as_ref()?;
        let ts = |k: &str| ann.get(k).and_then(|v| v.parse::<Timestamp>().ok());
        Some(Self {
            ca_bundle: text("ca.crt")?,
            ca_key: text("ca.key")?,
            ca_common_name: ann.get(ANN_CA_CN)?.clone(),
            ca_not_after: ts(ANN_CA_NOT_AFTER)?,
            cert: text("tls.crt")?,
            key: text("tls.key")?,
            cert_not_after: ts(ANN_CERT_NOT_AFTER)?,
            dns_names: ann
                .get(ANN_DNS_NAMES)?
                .split(',')
                .map(str::to_string)
                .collect(),
        })
    }

    /// The Secret that stores the material.
    pub fn to_secret(&self, namespace: &str, name: &str) -> Secret {
        let data = [
            ("ca.crt", &self.ca_bundle),
            ("ca.key", &self.ca_key),
            ("tls.crt", &self.cert),
            ("tls.key", &self.key),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
        .collect();
        Secret {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                namespace: Some(namespace.to_string()),
                labels: Some(BTreeMap::from([(
                    k8slan_api::naming::MANAGED_BY_LABEL.to_string(),
                    k8slan_api::naming::MANAGED_BY.to_string(),
                )])),
                annotations: Some(BTreeMap::from([
                    (ANN_CA_CN.to_string(), self.ca_common_name.clone()),
                    (ANN_CA_NOT_AFTER.to_string(), self.ca_not_after.to_string()),
                    (
                        ANN_CERT_NOT_AFTER.to_string(),
                        self.cert_not_after.to_string(),
                    ),
                    (ANN_DNS_NAMES.to_string(), self.dns_names.join(",")),
                ])),
                ..ObjectMeta::default()
            },
            // Opaque: the chart creates the Secret empty (a kubernetes.io/tls Secret cannot be
            // empty), and a Secret's type never changes.
            type_: Some("Opaque".into()),
            data: Some(data),
            ..Secret::default()
        }
    }
}

/// A rustls key from PEM certificate chain and key.
pub fn certified_key(cert_pem: &str, key_pem: &str, what: &str) -> Result<CertifiedKey, CertError> {
    let bad = |why: String| CertError::Unusable {
        what: what.to_string(),
        why,
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| bad(format!("certificate PEM: {e}")))?;
    if chain.is_empty() {
        return Err(bad("no certificate in the PEM".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| bad(format!("key PEM: {e}")))?;
    CertifiedKey::from_der(chain, key, &provider()).map_err(|e| bad(e.to_string()))
}

/// The crypto provider used for the webhook's TLS (ring).
pub fn provider() -> CryptoProvider {
    rustls::crypto::ring::default_provider()
}

/// Reads `tls.crt` and `tls.key` from a directory (a mounted cert-manager Secret).
pub fn load_dir(dir: &Path) -> Result<(String, String), CertError> {
    let read = |f: &str| {
        let p = dir.join(f);
        std::fs::read_to_string(&p).map_err(|source| CertError::Read {
            path: p.display().to_string(),
            source,
        })
    };
    Ok((read("tls.crt")?, read("tls.key")?))
}

/// The certificate the webhook server presents; swapped in place on rotation.
#[derive(Debug)]
pub struct LiveCert(RwLock<Arc<CertifiedKey>>);

impl LiveCert {
    pub fn new(key: CertifiedKey) -> Arc<Self> {
        Arc::new(Self(RwLock::new(Arc::new(key))))
    }

    pub fn replace(&self, key: CertifiedKey) {
        // A poisoned lock still holds a valid key; overwrite it.
        let mut guard = self.0.write().unwrap_or_else(|e| e.into_inner());
        *guard = Arc::new(key);
    }
}

impl ResolvesServerCert for LiveCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.read().unwrap_or_else(|e| e.into_inner()).clone())
    }
}

/// The Secret holding the self-signed material. The chart creates it empty and owns it (so
/// `helm uninstall` deletes it); the controller only reads and replaces it, which its RBAC
/// allows for this one Secret by name.
pub struct SecretStore {
    api: Api<Secret>,
    namespace: String,
    name: String,
}

impl SecretStore {
    /// The Secret `namespace/name`.
    pub fn new(client: Client, namespace: &str, name: &str) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            namespace: namespace.to_string(),
            name: name.to_string(),
        }
    }

    fn err(&self, action: &'static str, source: kube::Error) -> CertError {
        CertError::Secret {
            action,
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            source: Box::new(source),
        }
    }

    /// Returns valid material for `names`, renewing and storing it when needed. When another
    /// replica wrote the Secret first, its material wins.
    pub async fn ensure(&self, names: &[String], now: Timestamp) -> Result<Material, CertError> {
        let existing = self
            .api
            .get_opt(&self.name)
            .await
            .map_err(|e| self.err("reading", e))?
            .ok_or_else(|| CertError::MissingSecret {
                namespace: self.namespace.clone(),
                name: self.name.clone(),
            })?;
        let current = Material::from_secret(&existing);
        let what = renewal(current.as_ref(), names, now);
        if let (Renewal::Keep, Some(m)) = (what, &current) {
            return Ok(m.clone());
        }
        let fresh = issue(current.as_ref(), what, names, now)?;
        tracing::info!(secret = %self.name, renewal = ?what, not_after = %fresh.cert_not_after, "issuing webhook serving certificate");
        let mut secret = fresh.to_secret(&self.namespace, &self.name);
        // Keep what the chart (or an earlier version) put there: labels, owners, the type.
        let mut labels = existing.metadata.labels.clone().unwrap_or_default();
        labels.extend(secret.metadata.labels.take().unwrap_or_default());
        secret.metadata.labels = Some(labels);
        let mut annotations = existing.metadata.annotations.clone().unwrap_or_default();
        annotations.extend(secret.metadata.annotations.take().unwrap_or_default());
        secret.metadata.annotations = Some(annotations);
        secret.metadata.owner_references = existing.metadata.owner_references.clone();
        secret.metadata.resource_version = existing.metadata.resource_version.clone();
        if existing.type_.is_some() {
            secret.type_ = existing.type_.clone();
        }
        match self
            .api
            .replace(&self.name, &PostParams::default(), &secret)
            .await
        {
            Ok(_) => Ok(fresh),
            Err(kube::Error::Api(s)) if s.code == 409 => {
                let winner = self
                    .api
                    .get(&self.name)
                    .await
                    .map_err(|e| self.err("re-reading", e))?;
                Material::from_secret(&winner).ok_or_else(|| CertError::Unusable {
                    what: format!("Secret {}/{}", self.namespace, self.name),
                    why: "written concurrently by somebody else and incomplete".into(),
                })
            }
            Err(e) => Err(self.err("writing", e)),
        }
    }
}

/// A webhook configuration whose `caBundle`s the controller keeps: the validating one (LANs and
/// pods) and the mutating one (the spoke gate of pods).
pub trait WebhookConfig:
    kube::Resource<DynamicType = (), Scope = kube::core::ClusterResourceScope>
    + Clone
    + std::fmt::Debug
    + serde::de::DeserializeOwned
    + Send
    + Sync
    + 'static
{
    const KIND: &'static str;
    /// Each webhook's name and current `caBundle`.
    fn bundles(&self) -> Vec<(&str, Option<&ByteString>)>;
}

/// Both kinds carry `webhooks[].name` and `webhooks[].clientConfig.caBundle` alike.
macro_rules! webhook_config {
    ($kind:ty, $name:literal) => {
        impl WebhookConfig for $kind {
            const KIND: &'static str = $name;
            fn bundles(&self) -> Vec<(&str, Option<&ByteString>)> {
                let hooks = self.webhooks.iter().flatten();
                hooks
                    .map(|w| (w.name.as_str(), w.client_config.ca_bundle.as_ref()))
                    .collect()
            }
        }
    };
}

webhook_config!(
    ValidatingWebhookConfiguration,
    "ValidatingWebhookConfiguration"
);
webhook_config!(MutatingWebhookConfiguration, "MutatingWebhookConfiguration");

/// Sets `caBundle` of every webhook in the named configuration of kind `K` (and only that one).
/// Returns whether anything changed.
pub async fn patch_ca_bundle<K: WebhookConfig>(
    client: Client,
    config_name: &str,
    ca_bundle: &str,
) -> Result<bool, CertError> {
    let api: Api<K> = Api::all(client);
    let err = |action, source| CertError::Webhook {
        action,
        kind: K::KIND,
        name: config_name.to_string(),
        source: Box::new(source),
    };
    let config = api.get(config_name).await.map_err(|e| err("reading", e))?;
    let want = ByteString(ca_bundle.as_bytes().to_vec());
    let stale: Vec<serde_json::Value> = config
        .bundles()
        .into_iter()
        .filter(|(_, have)| *have != Some(&want))
        .map(|(name, _)| serde_json::json!({"name": name, "clientConfig": {"caBundle": want}}))
        .collect();
    if stale.is_empty() {
        return Ok(false);
    }
    let patch = serde_json::json!({"webhooks": stale});
    api.patch(
        config_name,
        &PatchParams::default(),
        &Patch::Strategic(&patch),
    )
    .await
    .map_err(|e| err("patching caBundle of", e))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::client::danger::ServerCertVerifier;

    fn now() -> Timestamp {
        Timestamp::from_second(1_800_000_000).unwrap()
    }

    fn days(d: i64) -> SignedDuration {
        SignedDuration::from_hours(24 * d)
    }

    /// A TLS client's server-certificate verifier trusting the first CA of `bundle`.
    fn verifier_trusting(bundle: &str) -> Arc<rustls::client::WebPkiServerVerifier> {
        let ca = CertificateDer::pem_slice_iter(bundle.as_bytes())
            .next()
            .unwrap()
            .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca).unwrap();
        rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(provider()),
        )
        .build()
        .unwrap()
    }

    #[test]
    fn fresh_material_is_a_usable_server_certificate_for_the_service() {
        let names = dns_names("k8slan-webhook", "k8slan-system");
        assert_eq!(names[2], "k8slan-webhook.k8slan-system.svc");
        let m = issue(None, Renewal::All, &names, now()).unwrap();
        assert!(m.ca_bundle.starts_with("-----BEGIN CERTIFICATE-----"));
        assert_eq!(m.cert_not_after, now() + days(LEAF_VALIDITY_DAYS));
        assert_eq!(m.ca_not_after, now() + days(CA_VALIDITY_DAYS));
        let key = certified_key(&m.cert, &m.key, "test").unwrap();
        assert_eq!(key.cert.len(), 1);
        // The serving certificate chains to the bundle and names the service.
        let verifier = verifier_trusting(&m.ca_bundle);
        let host =
            rustls::pki_types::ServerName::try_from("k8slan-webhook.k8slan-system.svc").unwrap();
        let at = rustls::pki_types::UnixTime::since_unix_epoch(std::time::Duration::from_secs(
            now().as_second() as u64 + 3600,
        ));
        verifier
            .verify_server_cert(&key.cert[0], &[], &host, &[], at)
            .unwrap();
        let other = rustls::pki_types::ServerName::try_from("evil.example").unwrap();
        assert!(
            verifier
                .verify_server_cert(&key.cert[0], &[], &other, &[], at)
                .is_err()
        );
    }

    #[test]
    fn renewal_rules() {
        let names = dns_names("svc", "ns");
        let m = issue(None, Renewal::All, &names, now()).unwrap();
        assert_eq!(renewal(None, &names, now()), Renewal::All);
        assert_eq!(renewal(Some(&m), &names, now()), Renewal::Keep);
        assert_eq!(
            renewal(Some(&m), &names, now() + days(LEAF_VALIDITY_DAYS - 29)),
            Renewal::Leaf
        );
        assert_eq!(
            renewal(Some(&m), &dns_names("svc2", "ns"), now()),
            Renewal::Leaf
        );
        assert_eq!(
            renewal(Some(&m), &names, now() + days(CA_VALIDITY_DAYS - 300)),
            Renewal::All
        );
    }

    #[test]
    fn a_renewed_leaf_keeps_the_ca_and_a_new_ca_keeps_the_old_one_trusted() {
        let names = dns_names("svc", "ns");
        let m = issue(None, Renewal::All, &names, now()).unwrap();
        let later = now() + days(340);
        let leaf = issue(Some(&m), Renewal::Leaf, &names, later).unwrap();
        assert_eq!(leaf.ca_bundle, m.ca_bundle);
        assert_ne!(leaf.cert, m.cert);
        // The renewed leaf still verifies against the unchanged bundle.
        let verifier = verifier_trusting(&m.ca_bundle);
        let key = certified_key(&leaf.cert, &leaf.key, "leaf").unwrap();
        let at = rustls::pki_types::UnixTime::since_unix_epoch(std::time::Duration::from_secs(
            later.as_second() as u64 + 60,
        ));
        verifier
            .verify_server_cert(
                &key.cert[0],
                &[],
                &rustls::pki_types::ServerName::try_from("svc.ns.svc").unwrap(),
                &[],
                at,
            )
            .unwrap();

        let rotated = issue(Some(&m), Renewal::All, &names, later).unwrap();
        assert_eq!(rotated.ca_bundle.matches("BEGIN CERTIFICATE").count(), 2);
        assert!(rotated.ca_bundle.ends_with(&m.ca_bundle));
        assert_ne!(rotated.ca_key, m.ca_key);
    }

    #[test]
    fn secret_round_trip() {
        let names = dns_names("svc", "ns");
        let m = issue(None, Renewal::All, &names, now()).unwrap();
        let s = m.to_secret("ns", "svc-tls");
        assert_eq!(s.type_.as_deref(), Some("Opaque"));
        assert_eq!(Material::from_secret(&s), Some(m));
        let mut broken = s.clone();
        broken.data.as_mut().unwrap().remove("tls.key");
        assert_eq!(Material::from_secret(&broken), None);
    }

    #[test]
    fn garbage_is_not_a_key() {
        let e = certified_key("nope", "nope", "dir /tls").unwrap_err();
        assert!(e.to_string().contains("dir /tls"), "{e}");
    }
}
