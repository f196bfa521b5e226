//! Issuance: intermediates from a cluster's CSR, intermediates with a key
//! made here (push mode and offline `issue`), and the one place that
//! records an issued certificate, with the serial-collision retry every
//! path uses.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::core::{ClusterBundle, Core, PublishedBundle, validate_cluster_name};
use super::error::ServerError;
use crate::ca::{self, Certificate, PrivateKey, system_time_to_unix};
use crate::store::records::{IssuedKind, IssuedRecord};
use crate::store::{Batch, Expect, StoreError, Table};

/// How often a serial collision is answered with a new certificate.
const ISSUE_ATTEMPTS: u32 = 3;

/// The record of an issued certificate (kept under its serial, so that a
/// serial is never used twice).
///
/// Errors: a certificate whose serial or validity does not read.
pub fn issued_record(
    certificate: &Certificate,
    kind: IssuedKind,
    cluster: Option<&str>,
    now: SystemTime,
) -> Result<IssuedRecord, ServerError> {
    Ok(IssuedRecord {
        serial: certificate.serial_hex()?,
        kind,
        cluster: cluster.map(str::to_string),
        issued_unix: system_time_to_unix(now),
        not_after_unix: system_time_to_unix(certificate.not_after()?),
    })
}

/// The audit detail of an issued certificate: kind, serial, cluster,
/// SHA-256 of its public key (SubjectPublicKeyInfo), lifetime and expiry.
///
/// Errors: a certificate whose fields do not read.
pub fn issuance_detail(
    certificate: &Certificate,
    kind: IssuedKind,
    cluster: Option<&str>,
) -> Result<String, ServerError> {
    let not_before = certificate.not_before()?;
    let not_after = certificate.not_after()?;
    let lifetime = not_after
        .duration_since(not_before)
        .unwrap_or(Duration::ZERO);
    Ok(format!(
        "{} serial {}, cluster {}, public key sha256 {}, lifetime {} (not after {})",
        kind.as_str(),
        certificate.serial_hex()?,
        cluster.unwrap_or("-"),
        hex::encode(ring::digest::digest(
            &ring::digest::SHA256,
            &certificate.public_key_der()?
        )),
        humantime::format_duration(lifetime),
        humantime::format_rfc3339_seconds(not_after),
    ))
}

/// Adds to `batch` the `certificate-issue` audit entry of `certificate`,
/// issued at the request of `actor`.
///
/// Errors: as [`issuance_detail`].
pub fn audit_issued(
    batch: Batch,
    kek: &crate::signer::sealed::Kek,
    now: SystemTime,
    actor: &str,
    certificate: &Certificate,
    kind: IssuedKind,
    cluster: Option<&str>,
) -> Result<Batch, ServerError> {
    Ok(super::audit::append(
        batch,
        kek,
        system_time_to_unix(now),
        actor,
        "certificate-issue",
        issuance_detail(certificate, kind, cluster)?,
    ))
}

/// Signs with `sign` and records the certificate under its serial in one
/// store transaction together with what `with` adds to the batch for that
/// certificate (e.g. a used join token), and its `certificate-issue` audit
/// entry by `actor`. A serial that exists already is
/// answered by signing again, up to three times, so a serial is never
/// reused; any other lost compare-and-swap (e.g. a join token used
/// concurrently) is returned at once, since signing again cannot fix it.
///
/// Errors: the signer's, the store's (a serial collision after the last
/// attempt).
pub(super) async fn record_issued<Sign, Signed>(
    core: &Core,
    actor: &str,
    kind: IssuedKind,
    cluster: Option<&str>,
    now: SystemTime,
    mut sign: Sign,
    with: impl Fn(Batch, &Certificate) -> Result<Batch, ServerError>,
) -> Result<Certificate, ServerError>
where
    Sign: FnMut() -> Signed,
    Signed: Future<Output = Result<Certificate, ServerError>>,
{
    let mut attempts = 0;
    loop {
        attempts += 1;
        let certificate = sign().await?;
        let issued = issued_record(&certificate, kind, cluster, now)?;
        let serial = issued.serial.clone();
        let batch = with(Batch::new(), &certificate)?.put_json(
            Table::Certificates,
            &serial,
            &issued,
            Some(Expect::Absent),
        )?;
        let batch = audit_issued(batch, &core.kek, now, actor, &certificate, kind, cluster)?;
        match core.commit(batch).await {
            Ok(()) => return Ok(certificate),
            Err(StoreError::Conflict { table, key, .. })
                if table == Table::Certificates.name()
                    && key == serial
                    && attempts < ISSUE_ATTEMPTS =>
            {
                tracing::warn!(serial = %serial, "serial collision; issuing again");
            }
            Err(error) => return Err(error.into()),
        }
    }
}

/// An intermediate signed from a cluster's CSR.
#[derive(Clone, Debug)]
pub struct SignedIntermediate {
    /// The intermediate CA certificate (Istio's `ca-cert.pem`).
    pub certificate: Certificate,
    /// Intermediate then root (Istio's `cert-chain.pem`).
    pub cert_chain_pem: String,
    /// The bundle as the cluster sees it now.
    pub bundle: ClusterBundle,
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

/// Signs intermediates with the current root signer.
#[derive(Clone, Debug)]
pub struct Issuance {
    core: Arc<Core>,
}

impl Issuance {
    /// Issuance over the shared state.
    pub fn new(core: Arc<Core>) -> Self {
        Self { core }
    }

    /// Signs `cluster`'s intermediate from its CSR. Nothing is stored unless
    /// issuance and verification succeed; the serial is recorded so that it
    /// can never be reused.
    ///
    /// Errors: unknown or not enrolled cluster, CSR and policy refusals,
    /// signer and store errors.
    pub async fn sign_intermediate(
        &self,
        cluster: &str,
        csr: &[u8],
    ) -> Result<SignedIntermediate, ServerError> {
        let core = &self.core;
        // Counted until it returns: concurrent issuances (as under load) go
        // to the store's writer thread together; one alone commits its own.
        let _preparing = core.prepare_commit();
        let (record, _) = core.enrolled_cluster(cluster)?;
        let csr = ca::verify_csr(csr)?;
        let actor = super::audit::cluster_actor(cluster);
        let (certificate, root, _) = self.sign(&actor, cluster, &csr, None).await?;
        tracing::info!(
            cluster,
            serial = %certificate.serial_hex().unwrap_or_default(),
            root = %root.serial_hex().unwrap_or_default(),
            "intermediate issued"
        );
        Ok(SignedIntermediate {
            cert_chain_pem: format!("{}{}", certificate.to_pem(), root.to_pem()),
            certificate,
            // The record read above: issuing does not change its directive.
            bundle: ClusterBundle {
                published: core.current_bundle(),
                reissue_serial: record.reissue_serial.unwrap_or_default(),
            },
        })
    }

    /// Decides the profile for `cluster`'s verified CSR (`lifetime` None:
    /// the policy default), signs it with the current root and records it.
    /// Returns the certificate, the root that signed it and the time used.
    async fn sign(
        &self,
        actor: &str,
        cluster: &str,
        csr: &ca::VerifiedCsr,
        lifetime: Option<Duration>,
    ) -> Result<(Certificate, Certificate, SystemTime), ServerError> {
        let core = &self.core;
        // Signs with the root the store names now, even when another server
        // sharing it switched roots since this one's last refresh (a store
        // only this process writes has nothing to refresh: no thread hop).
        if core.store.shared() {
            let refreshing = core.clone();
            tokio::task::spawn_blocking(move || refreshing.refresh())
                .await
                .map_err(|source| ServerError::Task {
                    task: "store refresh",
                    source,
                })??;
        }
        let profile = core
            .policy
            .decide(&core.settings.trust_domain, cluster, csr, lifetime)?;
        let now = core.now();
        let signer = core.signer();
        let certificate = record_issued(
            core,
            actor,
            IssuedKind::Intermediate,
            Some(cluster),
            now,
            || async { Ok(signer.sign_intermediate(csr, &profile, now).await?) },
            |batch, _| Ok(batch),
        )
        .await?;
        Ok((certificate, signer.signing_root().clone(), now))
    }

    /// Generates a key for `cluster` in this process and signs its
    /// intermediate (offline `issue` and push mode), recorded as asked by
    /// `actor`. The key is never stored. `lifetime` None takes the policy
    /// default.
    ///
    /// Errors: invalid name, policy refusal, signer and store errors, a
    /// certificate that fails the probe through the chain.
    pub async fn issue_with_local_key(
        &self,
        actor: &str,
        cluster: &str,
        key_algorithm: ca::KeyAlgorithm,
        lifetime: Option<Duration>,
    ) -> Result<LocalIssue, ServerError> {
        let core = &self.core;
        validate_cluster_name(cluster)?;
        let key = PrivateKey::generate(key_algorithm)?;
        let csr_pem = ca::create_csr(&key, &format!("{cluster} intermediate CA"))?;
        let csr = ca::verify_csr(csr_pem.as_bytes())?;
        let (certificate, root, now) = self.sign(actor, cluster, &csr, lifetime).await?;
        let chain = vec![certificate.clone(), root.clone()];
        let bundle = core.current_bundle();
        ca::probe_ca_key(&chain, &key, bundle.bundle.roots(), now)?;
        Ok(LocalIssue {
            cert_chain_pem: format!("{}{}", certificate.to_pem(), root.to_pem()),
            certificate,
            key,
            bundle,
        })
    }
}
