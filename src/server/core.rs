//! The state every part of the server shares, and the reads they all need:
//! the store, the clock, the KEK, the policy, the CA settings, the
//! control-plane CA, the root signer, the published bundle and the change
//! notifications. The parts (`enrollment`, `registry`, `issuance`,
//! `publication`, `rotation`, `audit`) each hold an `Arc<Core>`.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use tokio::sync::{Notify, watch};

use super::audit;
use super::error::ServerError;
use super::integrity;
use crate::bundle::TrustBundle;
use crate::ca::{Certificate, PrivateKey, system_time_to_unix};
use crate::clock::Clock;
use crate::policy::Policy;
use crate::signer::sealed::{Kek, unseal};
use crate::signer::{LocalSigner, RootSigner, VaultSigner};
use crate::store::records::{self, BundleRecord, CaSettings, ClusterRecord, RootRecord};
use crate::store::{Batch, Committer, Preparing, Store, StoreError, Table};
use crate::vault::Vault;

/// How often SPIFFE bundle consumers should refresh.
pub const SPIFFE_REFRESH_HINT: Duration = Duration::from_secs(300);

/// A bundle as published: the value and the forms served from it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublishedBundle {
    /// The bundle.
    pub bundle: TrustBundle,
    /// Istio's `root-cert.pem`.
    pub root_cert_pem: String,
    /// Lowercase hex SHA-256 of `root_cert_pem`.
    pub digest: String,
    /// The same roots as a SPIFFE bundle (JWKS).
    pub spiffe_bundle_json: String,
    /// Lowercase hex SHA-256 of the root that signs new intermediates now.
    pub signing_root_sha256: String,
}

impl PublishedBundle {
    /// The served forms of `bundle`, naming `signing_root` as the root that
    /// signs new intermediates.
    ///
    /// Errors: [`ServerError::Bundle`] when the SPIFFE form cannot be built.
    pub fn new(bundle: TrustBundle, signing_root: &Certificate) -> Result<Self, ServerError> {
        let spiffe_bundle_json = bundle.spiffe_bundle_json(SPIFFE_REFRESH_HINT)?;
        Ok(PublishedBundle {
            root_cert_pem: bundle.root_cert_pem(),
            digest: bundle.digest_hex(),
            spiffe_bundle_json,
            signing_root_sha256: signing_root.sha256_hex(),
            bundle,
        })
    }
}

/// The bundle as one cluster sees it: the published one and the serial of
/// an intermediate it was asked to replace (empty for none).
#[derive(Clone, Debug)]
pub struct ClusterBundle {
    /// The published bundle.
    pub published: Arc<PublishedBundle>,
    /// `cluster reissue`: the serial to replace, empty for none.
    pub reissue_serial: String,
}

/// The shared state of one server.
pub struct Core {
    pub(super) store: Arc<dyn Store>,
    /// The store's writer thread, for commits made from async code.
    committer: Committer,
    /// Swapped only by a rotation step, after the step is persisted.
    signer: RwLock<Arc<dyn RootSigner>>,
    /// Serialises rotation steps and bundle publication.
    rotation_lock: Mutex<()>,
    /// Bumped when per-cluster directives (reissue) change, so watch
    /// streams and push loops re-read them.
    directives: watch::Sender<u64>,
    pub(super) policy: Policy,
    pub(super) settings: CaSettings,
    pub(super) control_plane_ca: Certificate,
    pub(super) control_plane_key: PrivateKey,
    clock: Arc<dyn Clock>,
    bundle: watch::Sender<Arc<PublishedBundle>>,
    pub(super) kek: Kek,
    clusters_changed: Notify,
    /// Bumped with `clusters_changed`, for waiters that must not miss a
    /// change between two waits (watch streams of removed clusters).
    clusters_generation: watch::Sender<u64>,
    /// The Vault connection, when roots are held by Vault PKI.
    vault: Option<Arc<Vault>>,
    /// The store's generation this server last caught up with (servers
    /// sharing a store; see [`Core::refresh`]).
    seen_generation: Mutex<Option<u64>>,
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core")
            .field("trust_domain", &self.settings.trust_domain)
            .finish_non_exhaustive()
    }
}

impl Core {
    /// Opens an initialised store: unseals the signing root key and the
    /// control-plane CA key with `kek` and loads the current bundle.
    ///
    /// Errors: [`ServerError::NotInitialised`]; [`ServerError::LegacyStore`]
    /// for a store older than record MACs; a [`StoreError::Integrity`] naming
    /// a root, bundle, rotation or settings record changed without the KEK;
    /// [`ServerError::AuditChain`] for an audit head that does not
    /// authenticate or match; [`ServerError::Missing`] for a record the
    /// store should hold; and store, KEK and certificate errors.
    pub fn open(
        store: Arc<dyn Store>,
        kek: &Kek,
        policy: Policy,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, ServerError> {
        Self::open_with_vault(store, kek, policy, clock, None)
    }

    /// [`Core::open`] with a Vault connection, for roots held by Vault PKI
    /// (and a `vault-kv` store). A Vault-held signing root is refused
    /// without one, and when the policy asks for URI name constraints
    /// (OpenBao cannot issue them).
    ///
    /// Errors: as [`Core::open`], and [`ServerError::FailedPrecondition`].
    pub fn open_with_vault(
        store: Arc<dyn Store>,
        kek: &Kek,
        policy: Policy,
        clock: Arc<dyn Clock>,
        vault: Option<Arc<Vault>>,
    ) -> Result<Self, ServerError> {
        if store.get(Table::Meta, records::CA_SETTINGS_KEY)?.is_none() {
            return Err(ServerError::NotInitialised);
        }
        // Nothing in the store is trusted before the records that decide
        // trust and the audit chain's head authenticate under the KEK.
        integrity::verify_records(store.as_ref(), kek)?;
        audit::check_head(store.as_ref(), kek)?;
        let (settings, _) = integrity::get_json::<CaSettings>(
            store.as_ref(),
            kek,
            Table::Meta,
            records::CA_SETTINGS_KEY,
        )?
        .ok_or(ServerError::NotInitialised)?;
        let domain_policy = policy.trust_domain(&settings.trust_domain)?;
        let (root_record, _) = integrity::get_json::<RootRecord>(
            store.as_ref(),
            kek,
            Table::Roots,
            &settings.signing_root_id,
        )?
        .ok_or_else(|| {
            ServerError::missing(format!("signing root {}", settings.signing_root_id))
        })?;
        if root_record.vault_issuer.is_some() && domain_policy.name_constraints {
            return Err(ServerError::FailedPrecondition(
                crate::signer::vault::NO_URI_NAME_CONSTRAINTS.into(),
            ));
        }
        let signer = load_signer(store.as_ref(), kek, &root_record, vault.as_ref())?;
        let control_plane_ca = Certificate::from_pem(&settings.control_plane_ca_pem)?;
        let control_plane_key =
            load_sealed_key(store.as_ref(), kek, records::CONTROL_PLANE_KEY_SECRET)?;
        let (bundle_record, _) = integrity::get_json::<BundleRecord>(
            store.as_ref(),
            kek,
            Table::Bundles,
            &settings.trust_domain,
        )?
        .ok_or_else(|| ServerError::missing("the published trust bundle"))?;
        let bundle = bundle_from_record(&bundle_record)?;
        let published = PublishedBundle::new(bundle, signer.signing_root())?;
        // Unknown yet: the first refresh reloads once, catching whatever
        // other servers changed while this one opened.
        let store_generation = None;
        Ok(Core {
            committer: Committer::start(store.clone())?,
            store,
            signer: RwLock::new(signer),
            rotation_lock: Mutex::new(()),
            directives: watch::Sender::new(0),
            policy,
            settings,
            control_plane_ca,
            control_plane_key,
            clock,
            bundle: watch::Sender::new(Arc::new(published)),
            kek: kek.clone(),
            clusters_changed: Notify::new(),
            clusters_generation: watch::Sender::new(0),
            vault,
            seen_generation: Mutex::new(store_generation),
        })
    }

    /// The Vault connection, if the server has one.
    pub fn vault(&self) -> Option<&Arc<Vault>> {
        self.vault.as_ref()
    }

    /// Checks that every Vault-held root of the published bundle is still
    /// the certificate of its Vault issuer (the bundle reflects Vault).
    ///
    /// Errors: [`ServerError::Signer`] naming the issuer path.
    pub async fn check_vault_roots(&self) -> Result<(), ServerError> {
        let Some(vault) = &self.vault else {
            return Ok(());
        };
        for root in self.current_bundle().bundle.roots() {
            let id = root.serial_hex()?;
            let Some((record, _)) = integrity::get_json::<RootRecord>(
                self.store.as_ref(),
                &self.kek,
                Table::Roots,
                &id,
            )?
            else {
                continue;
            };
            if let Some(issuer) = &record.vault_issuer {
                crate::vault::pki::check_issuer(
                    vault,
                    &issuer.mount,
                    &issuer.issuer_id,
                    root.der(),
                )
                .await
                .map_err(|error| ServerError::Signer(crate::signer::SignerError::Vault(error)))?;
            }
        }
        Ok(())
    }

    /// Catches up with changes other servers sharing the store made: when
    /// the store's generation moved, reloads the signing root (a rotation
    /// step switched it), publishes a newer bundle to this server's
    /// watchers, and tells watch streams and push loops to re-read
    /// directives and clusters. Nothing to do on a store only this process
    /// writes. Returns whether the generation moved.
    ///
    /// Errors: store, integrity and certificate errors (the next call
    /// tries again).
    pub fn refresh(&self) -> Result<bool, ServerError> {
        let Some(generation) = self.store.generation()? else {
            return Ok(false);
        };
        let seen = *self
            .seen_generation
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if seen == Some(generation) {
            return Ok(false);
        }
        let _guard = self.lock_rotation();
        let store = self.store.as_ref();
        let (settings, _) = integrity::get_json::<CaSettings>(
            store,
            &self.kek,
            Table::Meta,
            records::CA_SETTINGS_KEY,
        )?
        .ok_or(ServerError::NotInitialised)?;
        let mut signer_changed = false;
        if settings.signing_root_id != self.signing_root().serial_hex()? {
            let (root_record, _) = integrity::get_json::<RootRecord>(
                store,
                &self.kek,
                Table::Roots,
                &settings.signing_root_id,
            )?
            .ok_or_else(|| {
                ServerError::missing(format!("signing root {}", settings.signing_root_id))
            })?;
            self.replace_signer(load_signer(
                store,
                &self.kek,
                &root_record,
                self.vault.as_ref(),
            )?);
            signer_changed = true;
            tracing::info!(root = %settings.signing_root_id, "another server switched the signing root");
        }
        let (bundle_record, _) = integrity::get_json::<BundleRecord>(
            store,
            &self.kek,
            Table::Bundles,
            &self.settings.trust_domain,
        )?
        .ok_or_else(|| ServerError::missing("the published trust bundle"))?;
        let current = self.current_bundle();
        if bundle_record.version > current.bundle.version() || signer_changed {
            let bundle = bundle_from_record(&bundle_record)?;
            let version = bundle.version();
            self.publish(PublishedBundle::new(bundle, self.signer().signing_root())?);
            tracing::info!(
                version,
                "publishing the bundle version another server stored"
            );
        }
        self.directives_changed();
        self.notify_clusters_changed();
        *self
            .seen_generation
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(generation);
        Ok(true)
    }

    /// The current time of the server's clock.
    pub fn now(&self) -> SystemTime {
        self.clock.now()
    }

    /// The clock itself (loops sleep on it).
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// The trust domain served.
    pub fn trust_domain(&self) -> &str {
        &self.settings.trust_domain
    }

    /// The control-plane CA certificate (clients verify the server with it).
    pub fn control_plane_ca(&self) -> &Certificate {
        &self.control_plane_ca
    }

    /// The signer in use now.
    pub fn signer(&self) -> Arc<dyn RootSigner> {
        self.signer
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The root that signs new intermediates now.
    pub fn signing_root(&self) -> Certificate {
        self.signer().signing_root().clone()
    }

    /// Switches to `signer` (after the step that chose it is persisted).
    pub(super) fn replace_signer(&self, signer: Arc<dyn RootSigner>) {
        *self.signer.write().unwrap_or_else(PoisonError::into_inner) = signer;
    }

    /// The bundle published now.
    pub fn current_bundle(&self) -> Arc<PublishedBundle> {
        self.bundle.borrow().clone()
    }

    /// Hands `published` to every watcher (after it is persisted).
    pub(super) fn publish(&self, published: PublishedBundle) {
        self.bundle.send_replace(Arc::new(published));
    }

    /// A receiver that sees every newly published bundle (latest wins).
    pub fn subscribe(&self) -> watch::Receiver<Arc<PublishedBundle>> {
        self.bundle.subscribe()
    }

    /// A receiver that changes when per-cluster directives change.
    pub fn subscribe_directives(&self) -> watch::Receiver<u64> {
        self.directives.subscribe()
    }

    /// Tells watch streams and push loops that a directive changed.
    pub(super) fn directives_changed(&self) {
        self.directives.send_modify(|generation| *generation += 1);
    }

    /// Tells push mode that a cluster was added or removed.
    pub(super) fn notify_clusters_changed(&self) {
        self.clusters_changed.notify_waiters();
        self.clusters_generation
            .send_modify(|generation| *generation += 1);
    }

    /// A receiver that changes when a cluster was added or removed.
    pub fn subscribe_clusters(&self) -> watch::Receiver<u64> {
        self.clusters_generation.subscribe()
    }

    /// Resolves when a cluster was added or removed (push mode reacts).
    pub async fn clusters_changed(&self) {
        self.clusters_changed.notified().await;
    }

    /// Serialises rotation steps and bundle publication.
    pub(super) fn lock_rotation(&self) -> MutexGuard<'_, ()> {
        self.rotation_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// A cluster's record and its store version.
    ///
    /// Errors: store errors.
    pub fn cluster(&self, name: &str) -> Result<Option<(ClusterRecord, u64)>, ServerError> {
        Ok(records::get_json::<ClusterRecord>(
            self.store.as_ref(),
            Table::Clusters,
            name,
        )?)
    }

    /// An enrolled cluster's record and its store version.
    ///
    /// Errors: [`ServerError::PermissionDenied`] before enrollment,
    /// [`ServerError::NotFound`] for an unknown cluster.
    pub fn enrolled_cluster(&self, cluster: &str) -> Result<(ClusterRecord, u64), ServerError> {
        match self.cluster(cluster)? {
            Some((record, version)) if record.enrolled_unix.is_some() => Ok((record, version)),
            Some(_) => Err(ServerError::PermissionDenied(format!(
                "cluster {cluster:?} has not enrolled"
            ))),
            None => Err(ServerError::NotFound(format!(
                "cluster {cluster:?} is not registered"
            ))),
        }
    }

    /// The bundle for `cluster` (`None`: an admin): the published one with
    /// the cluster's reissue request.
    pub fn cluster_bundle(&self, cluster: Option<&str>) -> ClusterBundle {
        ClusterBundle {
            published: self.current_bundle(),
            reissue_serial: cluster
                .and_then(|cluster| self.reissue_serial(cluster))
                .unwrap_or_default(),
        }
    }

    /// Commits `batch` as [`Store::commit`] does, from async code: the
    /// store's writer thread writes it, together with the batches of other
    /// callers waiting at the time (or, for a caller alone, the caller
    /// itself), and this returns once it is durable.
    ///
    /// Errors: the store's.
    pub async fn commit(&self, batch: Batch) -> Result<(), StoreError> {
        self.committer.commit(batch).await
    }

    /// Counts this caller as preparing a batch for [`Core::commit`] until
    /// the guard is dropped (an issuance, while it is handled): a caller
    /// alone commits without a thread hop.
    pub fn prepare_commit(&self) -> Preparing {
        self.committer.prepare()
    }

    /// The intermediate serial `cluster` was asked to replace, if any.
    pub fn reissue_serial(&self, cluster: &str) -> Option<String> {
        self.cluster(cluster)
            .ok()
            .flatten()
            .and_then(|(record, _)| record.reissue_serial)
    }
}

/// Checks a cluster name: a DNS label (lowercase letters, digits, `-`, at
/// most 63 characters, no leading or trailing `-`).
///
/// Errors: [`ServerError::InvalidArgument`] saying what a name may hold.
pub fn validate_cluster_name(name: &str) -> Result<(), ServerError> {
    validate_name("cluster", name)
}

/// Checks the name of a `what` (cluster, admin): a DNS label, as
/// [`validate_cluster_name`].
///
/// Errors: [`ServerError::InvalidArgument`] saying what a name may hold.
pub(super) fn validate_name(what: &str, name: &str) -> Result<(), ServerError> {
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
            "{what} name {name:?} must be a DNS label: lowercase letters, digits and '-', 1 to 63 characters, starting and ending with a letter or digit"
        )))
    }
}

/// Whether `error` is a lost compare-and-swap (worth a re-read and retry).
pub(super) fn is_conflict(error: &ServerError) -> bool {
    matches!(error, ServerError::Store(StoreError::Conflict { .. }))
}

/// Decodes a stored bundle.
///
/// Errors: certificate errors, [`ServerError::Bundle`].
pub fn bundle_from_record(record: &BundleRecord) -> Result<TrustBundle, ServerError> {
    let roots = record
        .roots_pem
        .iter()
        .map(|pem| Certificate::from_pem(pem))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(
        TrustBundle::new(&record.trust_domain, record.version, roots)
            .map(|bundle| bundle.newest_repeated(record.newest_repeated))?,
    )
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

/// The signer for a stored root: a local signer (its key unsealed with
/// `kek`) or, for a root held by Vault PKI, a [`VaultSigner`] on `vault`.
///
/// Errors: [`ServerError::FailedPrecondition`] for a Vault-held root
/// without a Vault connection, [`ServerError::NoLocalKey`], and as
/// [`load_sealed_key`].
pub fn load_signer(
    store: &dyn Store,
    kek: &Kek,
    root_record: &RootRecord,
    vault: Option<&Arc<Vault>>,
) -> Result<Arc<dyn RootSigner>, ServerError> {
    let root = Certificate::from_pem(&root_record.certificate_pem)?;
    if let Some(issuer) = &root_record.vault_issuer {
        let vault = vault.ok_or_else(|| {
            ServerError::FailedPrecondition(format!(
                "root {} is held by Vault (PKI mount {:?}, issuer {} {:?}): start trustplane with VAULT_ADDR and Vault credentials (see `trustplane server --help`)",
                root_record.id, issuer.mount, issuer.issuer_id, issuer.issuer_name
            ))
        })?;
        return Ok(Arc::new(VaultSigner::new(
            vault.clone(),
            &issuer.mount,
            &issuer.issuer_id,
            root,
        )));
    }
    let key_name = root_record
        .key_secret
        .clone()
        .ok_or(ServerError::NoLocalKey)?;
    let root_key = load_sealed_key(store, kek, &key_name)?;
    Ok(Arc::new(LocalSigner::new(root, root_key)?))
}

/// Reads and unseals a PKCS#8 key stored under `name` in the secrets table.
///
/// Errors: [`ServerError::Missing`], and store, KEK and key errors.
pub fn load_sealed_key(
    store: &dyn Store,
    kek: &Kek,
    name: &str,
) -> Result<PrivateKey, ServerError> {
    let sealed = store
        .get(Table::Secrets, name)?
        .ok_or_else(|| ServerError::missing(format!("sealed key {name:?}")))?;
    let plain = unseal(kek, name, &sealed.value)?;
    Ok(PrivateKey::from_pkcs8_der(&plain)?)
}
