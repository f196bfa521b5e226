//! The server's state and logic, independent of gRPC: clusters, join
//! tokens, enrollment, intermediate issuance, status and the published
//! bundle. The gRPC layer (`grpc.rs`) only authenticates and translates.

mod rotate;

use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use tokio::sync::watch;
use zeroize::Zeroizing;

use super::{Clock, ServerError};
use crate::bundle::TrustBundle;
use crate::ca::{
    self, Certificate, ControlPlaneRole, PrivateKey, system_time_to_unix, unix_to_system_time,
};
use crate::policy::Policy;
use crate::proto;
use crate::reconcile::StatusReport;
use crate::signer::sealed::{Kek, unseal};
use crate::signer::{LocalSigner, RootSigner};
use crate::sink::SecretFormat;
use crate::store::records::{
    self, AdminRecord, BundleRecord, CaSettings, ClusterRecord, ClusterReport, IssuedKind,
    IssuedRecord, RootRecord, TokenRecord,
};
use crate::store::{Batch, Expect, Store, StoreError, Table};

/// URI prefix of cluster client identities.
pub const CLUSTER_IDENTITY_PREFIX: &str = "spiffe://trustplane.control/cluster/";
/// URI prefix of admin client identities.
pub const ADMIN_IDENTITY_PREFIX: &str = "spiffe://trustplane.control/admin/";
/// Default join-token lifetime.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(3600);
/// Lifetime of control-plane client certificates.
pub const CLIENT_CERT_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);
/// Lifetime of the server's TLS certificate, issued fresh at every start
/// (no hot reload yet: restart the server within this time).
pub const SERVER_CERT_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);
/// How often SPIFFE bundle consumers should refresh.
pub const SPIFFE_REFRESH_HINT: Duration = Duration::from_secs(300);

/// Who is calling, from its verified client certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    /// An enrolled cluster's agent.
    Cluster(String),
    /// An admin credential.
    Admin(String),
}

/// A bundle as published: the value and its wire form.
#[derive(Clone, Debug)]
pub struct PublishedBundle {
    /// The bundle.
    pub bundle: TrustBundle,
    /// Its gRPC message.
    pub message: proto::Bundle,
}

impl PublishedBundle {
    /// Builds the wire form of `bundle`, naming `signing_root` as the root
    /// that signs new intermediates.
    pub fn new(bundle: TrustBundle, signing_root: &Certificate) -> Result<Self, ServerError> {
        let spiffe_bundle_json = bundle
            .spiffe_bundle_json(SPIFFE_REFRESH_HINT)
            .map_err(|error| ServerError::Setup(format!("bundle: {error}")))?;
        let message = proto::Bundle {
            trust_domain: bundle.trust_domain().to_string(),
            version: bundle.version(),
            digest: bundle.digest_hex(),
            root_cert_pem: bundle.root_cert_pem(),
            spiffe_bundle_json,
            signing_root_sha256: signing_root.sha256_hex(),
            reissue_intermediate_serial: String::new(),
        };
        Ok(PublishedBundle { bundle, message })
    }
}

/// The central CA's state and operations.
pub struct Authority {
    store: Arc<dyn Store>,
    /// Swapped only by a rotation step, after the step is persisted.
    signer: RwLock<Arc<dyn RootSigner>>,
    /// Serialises rotation steps and bundle publication.
    rotation_lock: Mutex<()>,
    /// Bumped when per-cluster directives (reissue) change, so watch
    /// streams and push loops re-read them.
    directives: watch::Sender<u64>,
    policy: Policy,
    settings: CaSettings,
    control_plane_ca: Certificate,
    control_plane_key: PrivateKey,
    clock: Arc<dyn Clock>,
    bundle: watch::Sender<Arc<PublishedBundle>>,
    kek: Kek,
    clusters_changed: tokio::sync::Notify,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority")
            .field("trust_domain", &self.settings.trust_domain)
            .finish_non_exhaustive()
    }
}

/// Checks a cluster name: a DNS label (lowercase letters, digits, `-`, at
/// most 63 characters, no leading or trailing `-`).
pub fn validate_cluster_name(name: &str) -> Result<(), ServerError> {
    let valid = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if valid {
        Ok(())
    } else {
        Err(ServerError::InvalidArgument(format!(
            "cluster name {name:?} must be a DNS label: lowercase letters, digits and '-', 1 to 63 characters, starting and ending with a letter or digit"
        )))
    }
}

/// SHA-256 hex of a join token (tokens are stored by hash only).
pub fn token_hash(token: &str) -> String {
    hex::encode(ring::digest::digest(
        &ring::digest::SHA256,
        token.as_bytes(),
    ))
}

/// The cluster name inside a join token (`tp1.<cluster>.<secret>`).
pub fn cluster_from_token(token: &str) -> Option<&str> {
    let mut parts = token.trim().splitn(3, '.');
    match (parts.next(), parts.next(), parts.next()) {
        (Some("tp1"), Some(cluster), Some(secret)) if !cluster.is_empty() && !secret.is_empty() => {
            Some(cluster)
        }
        _ => None,
    }
}

fn new_token(cluster: &str) -> Result<Zeroizing<String>, ServerError> {
    let mut secret = Zeroizing::new([0u8; 32]);
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), secret.as_mut())
        .map_err(|_| ServerError::Setup("the system random generator failed".into()))?;
    let encoded = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret.as_ref());
    Ok(Zeroizing::new(format!("tp1.{cluster}.{encoded}")))
}

fn is_conflict(error: &ServerError) -> bool {
    matches!(error, ServerError::Store(StoreError::Conflict { .. }))
}

impl Authority {
    /// Opens an initialised store: unseals the signing root key and the
    /// control-plane CA key with `kek` and loads the current bundle.
    pub fn open(
        store: Arc<dyn Store>,
        kek: &Kek,
        policy: Policy,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, ServerError> {
        let (settings, _) =
            records::get_json::<CaSettings>(store.as_ref(), Table::Meta, records::CA_SETTINGS_KEY)?
                .ok_or_else(|| {
                    ServerError::Setup(
                        "the data directory is not initialised: run `trustplane init --trust-domain <td>` first".into(),
                    )
                })?;
        policy.trust_domain(&settings.trust_domain)?;
        let (root_record, _) = records::get_json::<RootRecord>(
            store.as_ref(),
            Table::Roots,
            &settings.signing_root_id,
        )?
        .ok_or_else(|| {
            ServerError::Setup(format!(
                "signing root {} is missing from the store",
                settings.signing_root_id
            ))
        })?;
        let signer = load_signer(store.as_ref(), kek, &root_record)?;
        let control_plane_ca = Certificate::from_pem(&settings.control_plane_ca_pem)?;
        let control_plane_key =
            load_sealed_key(store.as_ref(), kek, records::CONTROL_PLANE_KEY_SECRET)?;
        let (bundle_record, _) = records::get_json::<BundleRecord>(
            store.as_ref(),
            Table::Bundles,
            &settings.trust_domain,
        )?
        .ok_or_else(|| ServerError::Setup("no published trust bundle in the store".into()))?;
        let bundle = bundle_from_record(&bundle_record)?;
        let (sender, _) = watch::channel(Arc::new(PublishedBundle::new(
            bundle,
            signer.signing_root(),
        )?));
        let (directives, _) = watch::channel(0);
        Ok(Authority {
            store,
            signer: RwLock::new(signer),
            rotation_lock: Mutex::new(()),
            directives,
            policy,
            settings,
            control_plane_ca,
            control_plane_key,
            clock,
            bundle: sender,
            kek: kek.clone(),
            clusters_changed: tokio::sync::Notify::new(),
        })
    }

    /// The clock the authority reads.
    pub fn now(&self) -> SystemTime {
        self.clock.now()
    }

    /// The time source itself (push loops sleep on it).
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// Resolves when a cluster was added or removed (push mode reacts).
    pub async fn clusters_changed(&self) {
        self.clusters_changed.notified().await;
    }

    /// Registers a push-mode cluster: the server writes its cacerts Secret
    /// through `kubeconfig` (sealed at rest). No join token is issued.
    pub fn add_push_cluster(
        &self,
        name: &str,
        kubeconfig: &str,
        namespace: &str,
        secret_format: SecretFormat,
    ) -> Result<(), ServerError> {
        validate_cluster_name(name)?;
        if kubeconfig.len() > 256 * 1024 {
            return Err(ServerError::InvalidArgument(
                "kubeconfig larger than 256 KiB".into(),
            ));
        }
        kube::config::Kubeconfig::from_yaml(kubeconfig).map_err(|error| {
            ServerError::InvalidArgument(format!("the kubeconfig does not parse: {error}"))
        })?;
        let namespace = if namespace.is_empty() {
            "istio-system"
        } else {
            namespace
        };
        validate_cluster_name(namespace).map_err(|_| {
            ServerError::InvalidArgument(format!(
                "namespace {namespace:?} is not a valid Kubernetes namespace name"
            ))
        })?;
        if records::get_json::<ClusterRecord>(self.store.as_ref(), Table::Clusters, name)?.is_some()
        {
            return Err(ServerError::AlreadyExists(format!(
                "cluster {name:?} already exists; remove it first with `trustplane cluster remove {name}`"
            )));
        }
        let now = system_time_to_unix(self.clock.now());
        let secret_name = records::kubeconfig_secret_name(name);
        let record = ClusterRecord {
            name: name.to_string(),
            trust_domain: self.settings.trust_domain.clone(),
            created_unix: now,
            enrolled_unix: Some(now),
            client_cert_serial: None,
            report: None,
            push: Some(records::PushTarget {
                namespace: namespace.to_string(),
                secret_format,
                kubeconfig_secret: secret_name.clone(),
            }),
            reissue_serial: None,
        };
        let sealed = crate::signer::sealed::seal(&self.kek, &secret_name, kubeconfig.as_bytes())?;
        let batch = Batch::new()
            .put_json(Table::Clusters, name, &record, Some(Expect::Absent))?
            .put(Table::Secrets, &secret_name, sealed, None);
        self.store.commit(batch)?;
        self.clusters_changed.notify_waiters();
        tracing::info!(cluster = name, namespace, "push-mode cluster registered");
        Ok(())
    }

    /// Every push-mode cluster with its target.
    pub fn push_clusters(&self) -> Result<Vec<(String, records::PushTarget)>, ServerError> {
        Ok(
            records::list_json::<ClusterRecord>(self.store.as_ref(), Table::Clusters)?
                .into_iter()
                .filter_map(|(name, record, _)| record.push.map(|push| (name, push)))
                .collect(),
        )
    }

    /// Unseals a push-mode cluster's kubeconfig.
    pub fn push_kubeconfig(
        &self,
        target: &records::PushTarget,
    ) -> Result<Zeroizing<String>, ServerError> {
        let sealed = self
            .store
            .get(Table::Secrets, &target.kubeconfig_secret)?
            .ok_or_else(|| {
                ServerError::Setup(format!(
                    "sealed kubeconfig {:?} is missing",
                    target.kubeconfig_secret
                ))
            })?;
        let plain = unseal(&self.kek, &target.kubeconfig_secret, &sealed.value)?;
        String::from_utf8(plain.to_vec())
            .map(Zeroizing::new)
            .map_err(|_| ServerError::Setup("sealed kubeconfig is not UTF-8".into()))
    }

    /// The trust domain served.
    pub fn trust_domain(&self) -> &str {
        &self.settings.trust_domain
    }

    /// The control-plane CA certificate (clients verify the server with it).
    pub fn control_plane_ca(&self) -> &Certificate {
        &self.control_plane_ca
    }

    /// The bundle published now.
    pub fn current_bundle(&self) -> Arc<PublishedBundle> {
        self.bundle.borrow().clone()
    }

    /// A receiver that sees every newly published bundle (latest wins).
    pub fn subscribe(&self) -> watch::Receiver<Arc<PublishedBundle>> {
        self.bundle.subscribe()
    }

    /// The signer in use now.
    pub fn signer(&self) -> Arc<dyn RootSigner> {
        self.signer
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The root that signs new intermediates now.
    pub fn signing_root(&self) -> Certificate {
        self.signer().signing_root().clone()
    }

    /// A receiver that changes when per-cluster directives change.
    pub fn subscribe_directives(&self) -> watch::Receiver<u64> {
        self.directives.subscribe()
    }

    /// The bundle message for `cluster`: the published one with the
    /// cluster's reissue request filled in.
    pub fn bundle_for(&self, cluster: Option<&str>) -> proto::Bundle {
        let mut message = self.current_bundle().message.clone();
        if let Some(cluster) = cluster {
            message.reissue_intermediate_serial = self.reissue_serial(cluster).unwrap_or_default();
        }
        message
    }

    /// The intermediate serial `cluster` was asked to replace, if any.
    pub fn reissue_serial(&self, cluster: &str) -> Option<String> {
        records::get_json::<ClusterRecord>(self.store.as_ref(), Table::Clusters, cluster)
            .ok()
            .flatten()
            .and_then(|(record, _)| record.reissue_serial)
    }

    /// Persists `bundle` as the next version, then publishes it to watchers.
    /// Errors when its version is not exactly current + 1.
    pub fn publish_bundle(&self, bundle: TrustBundle) -> Result<(), ServerError> {
        let _guard = self
            .rotation_lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.commit_and_publish(Some(bundle), Batch::new(), None)
    }

    /// Commits `extra` together with `bundle` (when Some) in one store
    /// transaction; only then switches to `signer` (when Some) and publishes
    /// the bundle to watchers. Callers hold `rotation_lock`.
    fn commit_and_publish(
        &self,
        bundle: Option<TrustBundle>,
        extra: Batch,
        signer: Option<Arc<dyn RootSigner>>,
    ) -> Result<(), ServerError> {
        let current = self.current_bundle();
        let Some(bundle) = bundle else {
            self.store.commit(extra)?;
            if let Some(signer) = signer {
                *self
                    .signer
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = signer;
            }
            return Ok(());
        };
        if bundle.version() != current.bundle.version() + 1 {
            return Err(ServerError::Setup(format!(
                "bundle version {} does not follow {}",
                bundle.version(),
                current.bundle.version()
            )));
        }
        let signing_root = match &signer {
            Some(signer) => signer.signing_root().clone(),
            None => self.signing_root(),
        };
        let published = PublishedBundle::new(bundle, &signing_root)?;
        let record = bundle_record(&published.bundle, self.clock.now());
        let (_, stored_version) = records::get_json::<BundleRecord>(
            self.store.as_ref(),
            Table::Bundles,
            self.trust_domain(),
        )?
        .ok_or_else(|| ServerError::Setup("no published trust bundle in the store".into()))?;
        let batch = extra
            .put_json(
                Table::Bundles,
                self.trust_domain(),
                &record,
                Some(Expect::Version(stored_version)),
            )?
            .put_json(
                Table::Bundles,
                records::bundle_history_key(self.trust_domain(), record.version),
                &record,
                Some(Expect::Absent),
            )?;
        self.store.commit(batch)?;
        if let Some(signer) = signer {
            *self
                .signer
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = signer;
        }
        self.bundle.send_replace(Arc::new(published));
        Ok(())
    }

    /// Identifies a caller from its TLS client certificate chain (already
    /// verified against the control-plane CA by the TLS layer). A cluster or
    /// admin whose record is gone, or whose certificate is not the one on
    /// record, is refused.
    pub fn identify(&self, peer_certificates: Option<&[Vec<u8>]>) -> Result<Caller, ServerError> {
        let first = peer_certificates
            .and_then(|chain| chain.first())
            .ok_or(ServerError::Unauthenticated)?;
        let certificate = Certificate::from_der(first.clone())?;
        let now = self.clock.now();
        ca::verify_issued(&certificate, &self.control_plane_ca, now).map_err(|error| {
            ServerError::PermissionDenied(format!(
                "client certificate is not a current trustplane control-plane certificate: {error}"
            ))
        })?;
        let serial = certificate.serial_hex()?;
        let uris = certificate.uri_sans()?;
        for uri in &uris {
            if let Some(cluster) = uri.strip_prefix(CLUSTER_IDENTITY_PREFIX) {
                let record = records::get_json::<ClusterRecord>(
                    self.store.as_ref(),
                    Table::Clusters,
                    cluster,
                )?;
                return match record {
                    Some((record, _)) if record.client_cert_serial.as_deref() == Some(&serial) => {
                        Ok(Caller::Cluster(cluster.to_string()))
                    }
                    Some(_) => Err(ServerError::PermissionDenied(format!(
                        "client certificate {serial} is no longer valid for cluster {cluster:?} (the cluster was re-enrolled)"
                    ))),
                    None => Err(ServerError::PermissionDenied(format!(
                        "cluster {cluster:?} is not registered (it was removed); re-add it with `trustplane cluster add {cluster}`"
                    ))),
                };
            }
            if let Some(admin) = uri.strip_prefix(ADMIN_IDENTITY_PREFIX) {
                let record = records::get_json::<AdminRecord>(
                    self.store.as_ref(),
                    Table::Meta,
                    &records::admin_key(admin),
                )?;
                return match record {
                    Some((record, _)) if record.client_cert_serial == serial => {
                        Ok(Caller::Admin(admin.to_string()))
                    }
                    _ => Err(ServerError::PermissionDenied(format!(
                        "admin credential {admin:?} ({serial}) is not on record"
                    ))),
                };
            }
        }
        Err(ServerError::PermissionDenied(format!(
            "client certificate has no trustplane identity (URI SANs: {uris:?})"
        )))
    }

    /// Registers a cluster (or re-tokens a pending one) and returns a new
    /// one-time join token and its expiry.
    pub fn add_cluster(
        &self,
        name: &str,
        token_ttl: Option<Duration>,
    ) -> Result<(Zeroizing<String>, SystemTime), ServerError> {
        validate_cluster_name(name)?;
        let now = self.clock.now();
        let ttl = token_ttl.unwrap_or(DEFAULT_TOKEN_TTL);
        if ttl.is_zero() || ttl > Duration::from_secs(7 * 24 * 3600) {
            return Err(ServerError::InvalidArgument(
                "join token lifetime must be between 1 s and 7 days".into(),
            ));
        }
        let existing =
            records::get_json::<ClusterRecord>(self.store.as_ref(), Table::Clusters, name)?;
        let (record, expect) = match existing {
            Some((record, _)) if record.enrolled_unix.is_some() => {
                return Err(ServerError::AlreadyExists(format!(
                    "cluster {name:?} is already enrolled; to enroll it again run `trustplane cluster remove {name}` first"
                )));
            }
            Some((record, version)) => (record, Expect::Version(version)),
            None => (
                ClusterRecord {
                    name: name.to_string(),
                    trust_domain: self.settings.trust_domain.clone(),
                    created_unix: system_time_to_unix(now),
                    enrolled_unix: None,
                    client_cert_serial: None,
                    report: None,
                    push: None,
                    reissue_serial: None,
                },
                Expect::Absent,
            ),
        };
        let token = new_token(name)?;
        let expires = now + ttl;
        let token_record = TokenRecord {
            cluster: name.to_string(),
            created_unix: system_time_to_unix(now),
            expires_unix: system_time_to_unix(expires),
            used_unix: None,
        };
        // A new token replaces every earlier one of this cluster.
        let batch = self
            .without_tokens_of(name, Batch::new())?
            .put_json(Table::Clusters, name, &record, Some(expect))?
            .put_json(
                Table::Tokens,
                token_hash(&token),
                &token_record,
                Some(Expect::Absent),
            )?;
        self.store.commit(batch)?;
        tracing::info!(cluster = name, "cluster registered; join token issued");
        Ok((token, expires))
    }

    /// Exchanges a join token for a control-plane client certificate. The
    /// token is marked used in the same transaction that records the new
    /// certificate, so a replay is refused.
    pub fn enroll(
        &self,
        cluster: &str,
        token: &str,
        client_csr_pem: &str,
    ) -> Result<proto::EnrollResponse, ServerError> {
        validate_cluster_name(cluster)?;
        let now = self.clock.now();
        let hash = token_hash(token.trim());
        let refused = |reason: &str| {
            ServerError::JoinToken(format!(
                "join token for cluster {cluster:?} {reason}; create a new one with `trustplane cluster add {cluster}`"
            ))
        };
        let (token_record, token_version) =
            records::get_json::<TokenRecord>(self.store.as_ref(), Table::Tokens, &hash)?
                .ok_or_else(|| refused("is unknown"))?;
        if token_record.cluster != cluster {
            return Err(refused("belongs to another cluster"));
        }
        if let Some(used) = token_record.used_unix {
            return Err(refused(&format!(
                "was already used at {}",
                humantime::format_rfc3339_seconds(unix_to_system_time(used))
            )));
        }
        if system_time_to_unix(now) >= token_record.expires_unix {
            return Err(refused(&format!(
                "expired at {}",
                humantime::format_rfc3339_seconds(unix_to_system_time(token_record.expires_unix))
            )));
        }
        let (mut cluster_record, cluster_version) =
            records::get_json::<ClusterRecord>(self.store.as_ref(), Table::Clusters, cluster)?
                .ok_or_else(|| refused("names a cluster that was removed"))?;
        let csr = ca::verify_csr(client_csr_pem.as_bytes())?;
        let certificate = ca::issue_control_plane_cert(
            &csr.public_key.spki_der,
            &ControlPlaneRole::Client {
                uri: format!("{CLUSTER_IDENTITY_PREFIX}{cluster}"),
            },
            &self.control_plane_ca,
            &self.control_plane_key,
            CLIENT_CERT_LIFETIME,
            now,
        )?;
        let serial = certificate.serial_hex()?;
        cluster_record.enrolled_unix = Some(system_time_to_unix(now));
        cluster_record.client_cert_serial = Some(serial.clone());
        let mut used = token_record.clone();
        used.used_unix = Some(system_time_to_unix(now));
        let issued = IssuedRecord {
            serial: serial.clone(),
            kind: IssuedKind::ControlPlaneClient,
            cluster: Some(cluster.to_string()),
            issued_unix: system_time_to_unix(now),
            not_after_unix: system_time_to_unix(certificate.not_after()?),
        };
        let batch = Batch::new()
            .put_json(
                Table::Tokens,
                &hash,
                &used,
                Some(Expect::Version(token_version)),
            )?
            .put_json(
                Table::Clusters,
                cluster,
                &cluster_record,
                Some(Expect::Version(cluster_version)),
            )?
            .put_json(Table::Certificates, &serial, &issued, Some(Expect::Absent))?;
        self.store.commit(batch).map_err(|error| match error {
            StoreError::Conflict { .. } => refused("was used concurrently"),
            other => ServerError::Store(other),
        })?;
        tracing::info!(cluster, serial = %serial, "cluster enrolled");
        Ok(proto::EnrollResponse {
            client_cert_pem: certificate.to_pem(),
            control_plane_ca_pem: self.control_plane_ca.to_pem(),
            trust_domain: self.settings.trust_domain.clone(),
        })
    }

    fn enrolled_cluster(&self, cluster: &str) -> Result<(ClusterRecord, u64), ServerError> {
        match records::get_json::<ClusterRecord>(self.store.as_ref(), Table::Clusters, cluster)? {
            Some((record, version)) if record.enrolled_unix.is_some() => Ok((record, version)),
            Some(_) => Err(ServerError::PermissionDenied(format!(
                "cluster {cluster:?} has not enrolled"
            ))),
            None => Err(ServerError::NotFound(format!(
                "cluster {cluster:?} is not registered"
            ))),
        }
    }

    /// Signs `cluster`'s intermediate from its CSR. Nothing is stored unless
    /// issuance and verification succeed; the serial is recorded with an
    /// absent-precondition so it can never be reused.
    pub async fn sign_intermediate(
        &self,
        cluster: &str,
        csr: &[u8],
    ) -> Result<proto::SignIntermediateResponse, ServerError> {
        self.enrolled_cluster(cluster)?;
        let csr = ca::verify_csr(csr)?;
        let profile = self
            .policy
            .decide(&self.settings.trust_domain, cluster, &csr, None)?;
        let now = self.clock.now();
        let signer = self.signer();
        let mut attempts = 0;
        let certificate = loop {
            attempts += 1;
            let certificate = signer.sign_intermediate(&csr, &profile, now).await?;
            let serial = certificate.serial_hex()?;
            let issued = IssuedRecord {
                serial: serial.clone(),
                kind: IssuedKind::Intermediate,
                cluster: Some(cluster.to_string()),
                issued_unix: system_time_to_unix(now),
                not_after_unix: system_time_to_unix(certificate.not_after()?),
            };
            let batch = Batch::new().put_json(
                Table::Certificates,
                &serial,
                &issued,
                Some(Expect::Absent),
            )?;
            match self.store.commit(batch).map_err(ServerError::from) {
                Ok(()) => break certificate,
                Err(error) if is_conflict(&error) && attempts < 3 => {
                    tracing::warn!(serial = %serial, "serial collision; issuing again");
                }
                Err(error) => return Err(error),
            }
        };
        let root = signer.signing_root();
        let serial = certificate.serial_hex()?;
        tracing::info!(cluster, serial = %serial, root = %root.serial_hex().unwrap_or_default(), "intermediate issued");
        Ok(proto::SignIntermediateResponse {
            certificate_pem: certificate.to_pem(),
            cert_chain_pem: format!("{}{}", certificate.to_pem(), root.to_pem()),
            bundle: Some(self.bundle_for(Some(cluster))),
            serial,
            not_after_unix: system_time_to_unix(certificate.not_after()?),
        })
    }

    /// Records what `cluster` has applied.
    pub fn report_status(&self, cluster: &str, report: StatusReport) -> Result<(), ServerError> {
        if report.cert_chain_pem.len() > 64 * 1024 || report.error.len() > 4096 {
            return Err(ServerError::InvalidArgument(
                "status report too large (chain ≤ 64 KiB, error ≤ 4 KiB)".into(),
            ));
        }
        let now = system_time_to_unix(self.clock.now());
        for _ in 0..5 {
            let (mut record, version) = self.enrolled_cluster(cluster)?;
            // An error-only report (nothing applied, no chain) keeps what the
            // cluster applied before: the gates and pre-flight still need it.
            let error_only = report.applied_bundle_version == 0
                && report.cert_chain_pem.is_empty()
                && !report.error.is_empty();
            record.report = Some(match (&record.report, error_only) {
                (Some(previous), true) => ClusterReport {
                    error: report.error.clone(),
                    reported_unix: now,
                    ..previous.clone()
                },
                _ => ClusterReport {
                    applied_bundle_version: report.applied_bundle_version,
                    intermediate_serial: report.intermediate_serial.clone(),
                    intermediate_not_after_unix: report.intermediate_not_after_unix,
                    cert_chain_pem: report.cert_chain_pem.clone(),
                    error: report.error.clone(),
                    reported_unix: now,
                },
            });
            let batch = Batch::new().put_json(
                Table::Clusters,
                cluster,
                &record,
                Some(Expect::Version(version)),
            )?;
            match self.store.commit(batch).map_err(ServerError::from) {
                Ok(()) => return Ok(()),
                Err(error) if is_conflict(&error) => continue,
                Err(error) => return Err(error),
            }
        }
        Err(ServerError::Store(StoreError::Backend {
            message: "status report kept conflicting with concurrent writes".into(),
            source: None,
        }))
    }

    /// Adds to `batch` the deletion of every join token of `cluster`.
    fn without_tokens_of(&self, cluster: &str, batch: Batch) -> Result<Batch, ServerError> {
        Ok(
            records::list_json::<TokenRecord>(self.store.as_ref(), Table::Tokens)?
                .into_iter()
                .filter(|(_, record, _)| record.cluster == cluster)
                .fold(batch, |batch, (hash, _, version)| {
                    batch.delete(Table::Tokens, hash, Some(Expect::Version(version)))
                }),
        )
    }

    /// Every registered cluster with its last report.
    pub fn list_clusters(&self) -> Result<Vec<proto::ClusterStatus>, ServerError> {
        Ok(
            records::list_json::<ClusterRecord>(self.store.as_ref(), Table::Clusters)?
                .into_iter()
                .map(|(_, record, _)| cluster_status(&record))
                .collect(),
        )
    }

    /// Removes a cluster; its client certificate is refused from then on.
    pub fn remove_cluster(&self, name: &str) -> Result<(), ServerError> {
        let (_, version) =
            records::get_json::<ClusterRecord>(self.store.as_ref(), Table::Clusters, name)?
                .ok_or_else(|| {
                    ServerError::NotFound(format!("cluster {name:?} is not registered"))
                })?;
        let batch = Batch::new()
            .delete(Table::Clusters, name, Some(Expect::Version(version)))
            .delete(Table::Secrets, records::kubeconfig_secret_name(name), None);
        // Its unused join tokens die with it: a cluster added again under
        // the same name must not be enrolled with an old token.
        self.store.commit(self.without_tokens_of(name, batch)?)?;
        self.clusters_changed.notify_waiters();
        tracing::info!(cluster = name, "cluster removed");
        Ok(())
    }

    /// Server status: trust domain, bundle, signing root, clusters.
    pub fn status(&self) -> Result<proto::StatusResponse, ServerError> {
        let signer = self.signer();
        let root = signer.signing_root();
        Ok(proto::StatusResponse {
            trust_domain: self.settings.trust_domain.clone(),
            bundle: Some(self.current_bundle().message.clone()),
            signing_root_serial: root.serial_hex()?,
            signing_root_subject: root.subject()?,
            signing_root_not_after_unix: system_time_to_unix(root.not_after()?),
            clusters: self.list_clusters()?,
        })
    }

    /// Issues the server's own TLS certificate (fresh key, in memory only).
    pub fn issue_server_identity(
        &self,
        dns_names: Vec<String>,
        ip_addresses: Vec<std::net::IpAddr>,
    ) -> Result<(Certificate, PrivateKey), ServerError> {
        let now = self.clock.now();
        let key = PrivateKey::generate(ca::KeyAlgorithm::EcdsaP256)?;
        let certificate = ca::issue_control_plane_cert(
            &key.public_key_der()?,
            &ControlPlaneRole::Server {
                dns_names,
                ip_addresses,
            },
            &self.control_plane_ca,
            &self.control_plane_key,
            SERVER_CERT_LIFETIME,
            now,
        )?;
        let serial = certificate.serial_hex()?;
        let issued = IssuedRecord {
            serial: serial.clone(),
            kind: IssuedKind::ControlPlaneServer,
            cluster: None,
            issued_unix: system_time_to_unix(now),
            not_after_unix: system_time_to_unix(certificate.not_after()?),
        };
        self.store.commit(Batch::new().put_json(
            Table::Certificates,
            &serial,
            &issued,
            Some(Expect::Absent),
        )?)?;
        Ok((certificate, key))
    }
}

/// Wire form of a cluster record.
pub fn cluster_status(record: &ClusterRecord) -> proto::ClusterStatus {
    let report = record.report.clone().unwrap_or_default();
    proto::ClusterStatus {
        name: record.name.clone(),
        state: if record.enrolled_unix.is_some() {
            "enrolled"
        } else {
            "pending"
        }
        .to_string(),
        created_unix: record.created_unix,
        applied_bundle_version: report.applied_bundle_version,
        intermediate_serial: report.intermediate_serial,
        intermediate_not_after_unix: report.intermediate_not_after_unix,
        last_report_unix: report.reported_unix,
        last_error: report.error,
        mode: if record.push.is_some() {
            "push"
        } else {
            "agent"
        }
        .to_string(),
    }
}

/// Decodes a stored bundle.
pub fn bundle_from_record(record: &BundleRecord) -> Result<TrustBundle, ServerError> {
    let roots = record
        .roots_pem
        .iter()
        .map(|pem| Certificate::from_pem(pem))
        .collect::<Result<Vec<_>, _>>()?;
    TrustBundle::new(&record.trust_domain, record.version, roots)
        .map(|bundle| bundle.newest_repeated(record.newest_repeated))
        .map_err(|error| ServerError::Setup(format!("stored bundle: {error}")))
}

/// Encodes a bundle for the store.
pub fn bundle_record(bundle: &TrustBundle, now: SystemTime) -> BundleRecord {
    BundleRecord {
        trust_domain: bundle.trust_domain().to_string(),
        version: bundle.version(),
        roots_pem: bundle.roots().iter().map(Certificate::to_pem).collect(),
        newest_repeated: bundle.is_newest_repeated(),
        published_unix: system_time_to_unix(now),
    }
}

/// A local signer for a stored root (its key unsealed with `kek`).
pub fn load_signer(
    store: &dyn Store,
    kek: &Kek,
    root_record: &RootRecord,
) -> Result<Arc<dyn RootSigner>, ServerError> {
    let root = Certificate::from_pem(&root_record.certificate_pem)?;
    let key_name = root_record.key_secret.clone().ok_or_else(|| {
        ServerError::Setup("the signing root has no local key (remote signers come later)".into())
    })?;
    let root_key = load_sealed_key(store, kek, &key_name)?;
    Ok(Arc::new(LocalSigner::new(root, root_key)?))
}

/// Reads and unseals a PKCS#8 key stored under `name` in the secrets table.
pub fn load_sealed_key(
    store: &dyn Store,
    kek: &Kek,
    name: &str,
) -> Result<PrivateKey, ServerError> {
    let sealed = store.get(Table::Secrets, name)?.ok_or_else(|| {
        ServerError::Setup(format!("sealed key {name:?} is missing from the store"))
    })?;
    let plain = unseal(kek, name, &sealed.value)?;
    Ok(PrivateKey::from_pkcs8_der(&plain)?)
}

/// A cluster's full `cacerts` material issued in this process: the
/// intermediate key is generated here, in memory, and only returned.
pub struct LocalIssue {
    /// The intermediate CA certificate.
    pub certificate: Certificate,
    /// Its key (PKCS#8), wiped on drop.
    pub key: PrivateKey,
    /// Intermediate then root (PEM).
    pub cert_chain_pem: String,
    /// The bundle it was issued under.
    pub bundle: Arc<PublishedBundle>,
}

impl std::fmt::Debug for LocalIssue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalIssue")
            .field("certificate", &self.certificate)
            .finish_non_exhaustive()
    }
}

impl Authority {
    /// Generates a key for `cluster` in this process and signs its
    /// intermediate (offline `issue` and push mode). The key is never
    /// stored. `lifetime` None takes the policy default.
    pub async fn issue_with_local_key(
        &self,
        cluster: &str,
        key_algorithm: ca::KeyAlgorithm,
        lifetime: Option<Duration>,
    ) -> Result<LocalIssue, ServerError> {
        validate_cluster_name(cluster)?;
        let key = PrivateKey::generate(key_algorithm)?;
        let csr_pem = ca::create_csr(&key, &format!("{cluster} intermediate CA"))?;
        let csr = ca::verify_csr(csr_pem.as_bytes())?;
        let profile = self
            .policy
            .decide(&self.settings.trust_domain, cluster, &csr, lifetime)?;
        let now = self.clock.now();
        let signer = self.signer();
        let certificate = signer.sign_intermediate(&csr, &profile, now).await?;
        let serial = certificate.serial_hex()?;
        let issued = IssuedRecord {
            serial: serial.clone(),
            kind: IssuedKind::Intermediate,
            cluster: Some(cluster.to_string()),
            issued_unix: system_time_to_unix(now),
            not_after_unix: system_time_to_unix(certificate.not_after()?),
        };
        self.store.commit(Batch::new().put_json(
            Table::Certificates,
            &serial,
            &issued,
            Some(Expect::Absent),
        )?)?;
        let root = signer.signing_root();
        let chain = vec![certificate.clone(), root.clone()];
        let bundle = self.current_bundle();
        ca::probe_ca_key(&chain, &key, bundle.bundle.roots(), now)?;
        Ok(LocalIssue {
            cert_chain_pem: format!("{}{}", certificate.to_pem(), root.to_pem()),
            certificate,
            key,
            bundle,
        })
    }
}
