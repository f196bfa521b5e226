//! Enrollment and identities: join tokens (stored hashed, one-time), the
//! exchange of a token and a CSR for a cluster's control-plane client
//! certificate, identifying callers from their verified client
//! certificates, and the server's own TLS certificate.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

use super::audit;
use super::audit_trail::AuditTrail;
use super::core::{Core, validate_cluster_name};
use super::error::ServerError;
use super::integrity;
use super::issuance::record_issued;
use crate::ca::{
    self, Certificate, ControlPlaneRole, PrivateKey, system_time_to_unix, unix_to_system_time,
};
use crate::store::records::{self, AdminRecord, AdminRole, ClusterRecord, IssuedKind, TokenRecord};
use crate::store::{Batch, Expect, StoreError, Table};

/// URI prefix of cluster client identities.
pub const CLUSTER_IDENTITY_PREFIX: &str = "spiffe://trustplane.control/cluster/";
/// URI prefix of admin client identities.
pub const ADMIN_IDENTITY_PREFIX: &str = "spiffe://trustplane.control/admin/";
/// Default join token lifetime.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(3600);
/// Default lifetime of agent client certificates: short, because agents
/// renew them at 2/3 of their lifetime (`RenewIdentity`). The server's
/// `--client-cert-lifetime` sets another.
pub const CLIENT_CERT_LIFETIME: Duration = Duration::from_secs(30 * 24 * 3600);
/// Default lifetime of admin credentials (`init`, `trustplane admin add`):
/// they are minted offline and not renewed, so they last a year.
pub const ADMIN_CERT_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);
/// The longest client certificate lifetime the server accepts as a setting.
pub const MAX_CLIENT_CERT_LIFETIME: Duration = Duration::from_secs(2 * 365 * 24 * 3600);
/// Lifetime of the server's TLS certificate: issued fresh at every start
/// and renewed at ⅔ of it while the server runs.
pub const SERVER_CERT_LIFETIME: Duration = Duration::from_secs(30 * 24 * 3600);
/// The longest join token lifetime.
const MAX_TOKEN_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// Who is calling, from its verified client certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    /// An enrolled cluster's agent.
    Cluster(String),
    /// An admin credential.
    Admin {
        /// Its name.
        name: String,
        /// What it may do.
        role: AdminRole,
    },
}

/// A renewed control-plane client identity.
#[derive(Clone, Debug)]
pub struct RenewedIdentity {
    /// The new client certificate (same identity, new key and serial).
    pub client_certificate: Certificate,
    /// The control-plane CA.
    pub control_plane_ca: Certificate,
}

/// What an agent receives for its join token.
#[derive(Clone, Debug)]
pub struct Enrolled {
    /// Its control-plane client certificate.
    pub client_certificate: Certificate,
    /// The control-plane CA (to verify the server from now on).
    pub control_plane_ca: Certificate,
    /// The trust domain the cluster belongs to.
    pub trust_domain: String,
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
    SystemRandom::new()
        .fill(secret.as_mut())
        .map_err(|_| ServerError::Random)?;
    let encoded = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret.as_ref());
    Ok(Zeroizing::new(format!("tp1.{cluster}.{encoded}")))
}

/// Join tokens, enrollment and caller identities.
#[derive(Clone, Debug)]
pub struct Enrollment {
    core: Arc<Core>,
    client_cert_lifetime: Duration,
    /// Client certificates whose signature by the control-plane CA was
    /// verified already (see [`VerifiedCallers`]).
    verified: Arc<VerifiedCallers>,
}

/// How many verified client certificates [`VerifiedCallers`] remembers
/// before it starts again (more than the connections a server accepts).
const VERIFIED_CALLERS: usize = 32_768;

/// NotBefore and NotAfter of a certificate.
type Validity = (SystemTime, SystemTime);

/// Client certificates already verified against the control-plane CA, by
/// SHA-256 of their DER, with their validity. A caller's certificate is the
/// same on every call of its connection: verifying its signature once
/// instead of on every call saves an ECDSA verification per call (a quarter
/// of an issuance's cryptography). Validity is still checked against the
/// time of each call, and the serial against the cluster's record.
#[derive(Debug, Default)]
struct VerifiedCallers(std::sync::Mutex<std::collections::HashMap<[u8; 32], Arc<VerifiedCaller>>>);

/// What a client certificate that verified says, read once: its validity,
/// serial and URI SANs (so a known caller's certificate is not parsed again
/// on every call).
#[derive(Debug, PartialEq, Eq)]
struct VerifiedCaller {
    validity: Validity,
    serial: String,
    uris: Vec<String>,
}

impl VerifiedCallers {
    /// The certificate of `digest`, when it was verified and is valid at
    /// `now`.
    fn known_valid(&self, digest: &[u8; 32], now: SystemTime) -> Option<Arc<VerifiedCaller>> {
        let verified = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        verified
            .get(digest)
            .filter(|caller| {
                let (not_before, not_after) = caller.validity;
                not_before <= now && now <= not_after
            })
            .cloned()
    }

    /// Remembers a certificate that verified.
    fn remember(&self, digest: [u8; 32], caller: Arc<VerifiedCaller>) {
        let mut verified = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if verified.len() >= VERIFIED_CALLERS {
            verified.clear();
        }
        verified.insert(digest, caller);
    }
}

/// SHA-256 of a certificate's DER.
fn certificate_digest(der: &[u8]) -> [u8; 32] {
    let mut digest = [0u8; 32];
    digest.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, der).as_ref());
    digest
}

impl Enrollment {
    /// Enrollment over the shared state, issuing agent client certificates
    /// for [`CLIENT_CERT_LIFETIME`].
    pub fn new(core: Arc<Core>) -> Self {
        Self {
            core,
            client_cert_lifetime: CLIENT_CERT_LIFETIME,
            verified: Arc::default(),
        }
    }

    /// The same, issuing agent client certificates for `lifetime`.
    ///
    /// Errors: [`ServerError::InvalidArgument`] for a lifetime under one
    /// minute or over [`MAX_CLIENT_CERT_LIFETIME`].
    pub fn with_client_cert_lifetime(self, lifetime: Duration) -> Result<Self, ServerError> {
        if lifetime < Duration::from_secs(60) || lifetime > MAX_CLIENT_CERT_LIFETIME {
            return Err(ServerError::InvalidArgument(format!(
                "client certificate lifetime {} must be between 1m and 2 years (agents renew at 2/3 of it)",
                humantime::format_duration(lifetime)
            )));
        }
        Ok(Self {
            client_cert_lifetime: lifetime,
            ..self
        })
    }

    /// The lifetime of the agent client certificates issued here.
    pub fn client_cert_lifetime(&self) -> Duration {
        self.client_cert_lifetime
    }

    /// Registers a cluster (or re-tokens a pending one) at the request of
    /// `actor` and returns a new one-time join token and its expiry. A new
    /// token replaces every earlier one of the cluster.
    ///
    /// Errors: invalid name or lifetime, [`ServerError::AlreadyExists`] for
    /// an enrolled cluster, store errors.
    pub fn add_cluster(
        &self,
        actor: &str,
        name: &str,
        token_ttl: Option<Duration>,
    ) -> Result<(Zeroizing<String>, SystemTime), ServerError> {
        let core = &self.core;
        validate_cluster_name(name)?;
        let now = core.now();
        let ttl = token_ttl.unwrap_or(DEFAULT_TOKEN_TTL);
        if ttl.is_zero() || ttl > MAX_TOKEN_TTL {
            return Err(ServerError::InvalidArgument(
                "join token lifetime must be between 1 s and 7 days".into(),
            ));
        }
        let (record, expect, action) = match core.cluster(name)? {
            Some((record, _)) if record.enrolled_unix.is_some() => {
                return Err(ServerError::AlreadyExists(format!(
                    "cluster {name:?} is already enrolled; to enroll it again run `trustplane cluster remove {name}` first"
                )));
            }
            Some((record, version)) => (record, Expect::Version(version), "cluster-retoken"),
            None => (
                ClusterRecord {
                    name: name.to_string(),
                    trust_domain: core.settings.trust_domain.clone(),
                    created_unix: system_time_to_unix(now),
                    enrolled_unix: None,
                    client_cert_serial: None,
                    previous_client_cert_serial: None,
                    report: None,
                    push: None,
                    reissue_serial: None,
                },
                Expect::Absent,
                "cluster-add",
            ),
        };
        let token = new_token(name)?;
        let expires = now + ttl;
        let token_record = TokenRecord {
            cluster: name.to_string(),
            created_unix: system_time_to_unix(now),
            expires_unix: system_time_to_unix(expires),
            used_unix: None,
            used_key_sha256: None,
            used_serial: None,
        };
        let batch = self.without_tokens_of(name, Batch::new())?.put_json(
            Table::Clusters,
            name,
            &record,
            Some(expect),
        )?;
        let batch = integrity::put_json(
            batch,
            &core.kek,
            Table::Tokens,
            &token_hash(&token),
            &token_record,
            Some(Expect::Absent),
        )?;
        let batch = audit::append(
            batch,
            &core.kek,
            system_time_to_unix(now),
            actor,
            action,
            format!(
                "cluster {name} (agent mode): join token issued, expires {}",
                humantime::format_rfc3339_seconds(expires)
            ),
        );
        core.store.commit(batch)?;
        tracing::info!(cluster = name, "cluster registered; join token issued");
        Ok((token, expires))
    }

    /// Exchanges a join token for a control-plane client certificate. The
    /// token is marked used in the same transaction that records the new
    /// certificate, so a replay is refused, with one exception: an agent
    /// killed before it saved its certificate may repeat `Enroll` with the
    /// same token and the same key (before the token's expiry, while that
    /// certificate is still the cluster's and has not reported); it gets a
    /// fresh certificate whose serial replaces the unclaimed one.
    ///
    /// Errors: [`ServerError::JoinToken`] (unknown, used, expired, another
    /// cluster's, used concurrently), CSR errors, store errors.
    pub async fn enroll(
        &self,
        cluster: &str,
        token: &str,
        client_csr_pem: &str,
    ) -> Result<Enrolled, ServerError> {
        let core = &self.core;
        validate_cluster_name(cluster)?;
        let now = core.now();
        let hash = token_hash(token.trim());
        let refused = |reason: &str| {
            ServerError::JoinToken(format!(
                "join token for cluster {cluster:?} {reason}; create a new one with `trustplane cluster add {cluster}`"
            ))
        };
        let (token_record, token_version) = integrity::get_json::<TokenRecord>(
            core.store.as_ref(),
            &core.kek,
            Table::Tokens,
            &hash,
        )?
        .ok_or_else(|| refused("is unknown"))?;
        if token_record.cluster != cluster {
            return Err(refused("belongs to another cluster"));
        }
        let expired = system_time_to_unix(now) >= token_record.expires_unix;
        let (cluster_record, cluster_version) = core
            .cluster(cluster)?
            .ok_or_else(|| refused("names a cluster that was removed"))?;
        let csr = ca::verify_csr(client_csr_pem.as_bytes())?;
        let key_sha256 = hex::encode(ring::digest::digest(
            &ring::digest::SHA256,
            &csr.public_key.spki_der,
        ));
        // A used token is answered again only for a repeat of its
        // enrollment: same key, before its expiry, and the certificate
        // issued for it still the cluster's and never used to report (the
        // agent died before it saved the answer).
        let repeat = match token_record.used_unix {
            None => None,
            Some(used) => {
                let same_key = token_record.used_key_sha256.as_deref() == Some(key_sha256.as_str());
                let unclaimed = token_record.used_serial.is_some()
                    && cluster_record.client_cert_serial == token_record.used_serial
                    && cluster_record.report.is_none();
                if !(same_key && unclaimed && !expired) {
                    return Err(ServerError::JoinToken(format!(
                        "join token for cluster {cluster:?} was already used at {}; if this cluster's agent lost its identity, run `trustplane cluster remove {cluster}` then `trustplane cluster add {cluster}` for a new token",
                        humantime::format_rfc3339_seconds(unix_to_system_time(used))
                    )));
                }
                token_record.used_serial.clone()
            }
        };
        if expired {
            return Err(refused(&format!(
                "expired at {}",
                humantime::format_rfc3339_seconds(unix_to_system_time(token_record.expires_unix))
            )));
        }
        let sign =
            || std::future::ready(self.sign_cluster_client(cluster, &csr.public_key.spki_der, now));
        // The token is marked used and the cluster enrolled in the same
        // transaction that records the certificate; a repeat replaces the
        // unclaimed certificate's serial in that transaction.
        let with = |batch: Batch, certificate: &Certificate| -> Result<Batch, ServerError> {
            let serial = certificate.serial_hex()?;
            let mut enrolled = cluster_record.clone();
            if repeat.is_none() {
                enrolled.enrolled_unix = Some(system_time_to_unix(now));
            }
            enrolled.previous_client_cert_serial = None;
            enrolled.client_cert_serial = Some(serial.clone());
            let mut used = token_record.clone();
            used.used_unix = used.used_unix.or(Some(system_time_to_unix(now)));
            used.used_key_sha256 = Some(key_sha256.clone());
            used.used_serial = Some(serial.clone());
            let detail = match &repeat {
                None => format!(
                    "cluster {cluster} enrolled with its join token; client certificate {serial}"
                ),
                Some(unclaimed) => format!(
                    "cluster {cluster} repeated its enrollment with its join token and the same key (the first answer was never claimed); client certificate {serial} replaces {unclaimed}"
                ),
            };
            let batch = audit::append(
                batch,
                &core.kek,
                system_time_to_unix(now),
                &audit::cluster_actor(cluster),
                "cluster-enroll",
                detail,
            );
            Ok(integrity::put_json(
                batch,
                &core.kek,
                Table::Tokens,
                &hash,
                &used,
                Some(Expect::Version(token_version)),
            )?
            .put_json(
                Table::Clusters,
                cluster,
                &enrolled,
                Some(Expect::Version(cluster_version)),
            )?)
        };
        let certificate = record_issued(
            core,
            &audit::cluster_actor(cluster),
            IssuedKind::ControlPlaneClient,
            Some(cluster),
            now,
            sign,
            with,
        )
        .await
        .map_err(|error| match error {
            ServerError::Store(StoreError::Conflict { .. }) => refused("was used concurrently"),
            other => other,
        })?;
        tracing::info!(cluster, serial = %certificate.serial_hex().unwrap_or_default(), "cluster enrolled");
        Ok(Enrolled {
            client_certificate: certificate,
            control_plane_ca: core.control_plane_ca.clone(),
            trust_domain: core.settings.trust_domain.clone(),
        })
    }

    /// Signs a control-plane client certificate of `cluster` for the public
    /// key `spki_der`, valid from `now` for the agent client lifetime (the
    /// one signing step of enrollment and renewal).
    ///
    /// Errors: signing errors.
    fn sign_cluster_client(
        &self,
        cluster: &str,
        spki_der: &[u8],
        now: SystemTime,
    ) -> Result<Certificate, ServerError> {
        let role = ControlPlaneRole::Client {
            uri: format!("{CLUSTER_IDENTITY_PREFIX}{cluster}"),
        };
        Ok(ca::issue_control_plane_cert(
            spki_der,
            &role,
            &self.core.control_plane_ca,
            &self.core.control_plane_key,
            self.client_cert_lifetime,
            now,
        )?)
    }

    /// Replaces `cluster`'s control-plane client certificate, presented with
    /// serial `presented_serial`, by one for the key in `client_csr_pem`.
    /// The new serial replaces the old on the cluster record (compare-and-swap)
    /// in the transaction that records the certificate and its audit entry,
    /// so the old certificate is refused from then on.
    ///
    /// Errors: [`ServerError::PermissionDenied`] when the presented
    /// certificate is no longer the cluster's (renewed or re-enrolled
    /// meanwhile), CSR errors, store errors.
    pub async fn renew_identity(
        &self,
        audit: &AuditTrail,
        cluster: &str,
        presented_serial: &str,
        client_csr_pem: &str,
    ) -> Result<RenewedIdentity, ServerError> {
        let core = &self.core;
        let superseded = || {
            ServerError::PermissionDenied(format!(
                "client certificate {presented_serial} is no longer the identity of cluster {cluster:?} (it was renewed or re-enrolled meanwhile); use the current one"
            ))
        };
        let (record, version) = core.enrolled_cluster(cluster)?;
        // The current certificate, or the one the last renewal replaced when
        // its answer was lost (the new one was never used): then that
        // unused certificate is replaced in turn.
        // Either way, the presented certificate is the one that stays
        // accepted for another renewal until the new one is used.
        if record.client_cert_serial.as_deref() != Some(presented_serial)
            && record.previous_client_cert_serial.as_deref() != Some(presented_serial)
        {
            return Err(superseded());
        }
        let previous = Some(presented_serial.to_string());
        let csr = ca::verify_csr(client_csr_pem.as_bytes())?;
        let now = core.now();
        let sign =
            || std::future::ready(self.sign_cluster_client(cluster, &csr.public_key.spki_der, now));
        let with = |batch: Batch, certificate: &Certificate| -> Result<Batch, ServerError> {
            let serial = certificate.serial_hex()?;
            let mut renewed = record.clone();
            renewed.client_cert_serial = Some(serial.clone());
            renewed.previous_client_cert_serial = previous.clone();
            let batch = batch.put_json(
                Table::Clusters,
                cluster,
                &renewed,
                Some(Expect::Version(version)),
            )?;
            audit.record(
                batch,
                &audit::cluster_actor(cluster),
                "identity-renew",
                format!(
                    "cluster {cluster:?} renewed its client certificate: {presented_serial} replaced by {serial}, expires {}",
                    humantime::format_rfc3339_seconds(certificate.not_after()?)
                ),
            )
        };
        let certificate = record_issued(
            core,
            &audit::cluster_actor(cluster),
            IssuedKind::ControlPlaneClient,
            Some(cluster),
            now,
            sign,
            with,
        )
        .await
        .map_err(|error| match error {
            ServerError::Store(StoreError::Conflict { table, .. })
                if table == Table::Clusters.name() =>
            {
                superseded()
            }
            other => other,
        })?;
        tracing::info!(
            cluster,
            old = presented_serial,
            serial = %certificate.serial_hex().unwrap_or_default(),
            "client identity renewed"
        );
        Ok(RenewedIdentity {
            client_certificate: certificate,
            control_plane_ca: core.control_plane_ca.clone(),
        })
    }

    /// Identifies a caller from its TLS client certificate chain (already
    /// verified against the control-plane CA by the TLS layer). A cluster or
    /// admin whose record is gone, or whose certificate is not the one on
    /// record, is refused.
    ///
    /// Errors: [`ServerError::Unauthenticated`] without a certificate,
    /// [`ServerError::PermissionDenied`] saying why it is not accepted.
    pub fn identify(&self, peer_certificates: Option<&[Vec<u8>]>) -> Result<Caller, ServerError> {
        self.identify_as(peer_certificates, false)
    }

    /// [`Self::identify`] for `RenewIdentity`, which also accepts the
    /// certificate a renewal just replaced until the new one is used: the
    /// answer to that renewal may never have reached the agent.
    ///
    /// Errors: as [`Self::identify`].
    pub fn identify_renewing(
        &self,
        peer_certificates: Option<&[Vec<u8>]>,
    ) -> Result<Caller, ServerError> {
        self.identify_as(peer_certificates, true)
    }

    fn identify_as(
        &self,
        peer_certificates: Option<&[Vec<u8>]>,
        renewing: bool,
    ) -> Result<Caller, ServerError> {
        let core = &self.core;
        let first = peer_certificates
            .and_then(|chain| chain.first())
            .ok_or(ServerError::Unauthenticated)?;
        let digest = certificate_digest(first);
        let now = core.now();
        let caller = match self.verified.known_valid(&digest, now) {
            Some(caller) => caller,
            None => {
                let certificate = Certificate::from_der(first.clone())?;
                ca::verify_issued(&certificate, &core.control_plane_ca, now)
                    .map_err(|source| ServerError::NotControlPlaneCertificate { source })?;
                let caller = Arc::new(VerifiedCaller {
                    validity: (certificate.not_before()?, certificate.not_after()?),
                    serial: certificate.serial_hex()?,
                    uris: certificate.uri_sans()?,
                });
                self.verified.remember(digest, caller.clone());
                caller
            }
        };
        let serial = &caller.serial;
        for uri in &caller.uris {
            if let Some(cluster) = uri.strip_prefix(CLUSTER_IDENTITY_PREFIX) {
                return match core.cluster(cluster)? {
                    Some((record, _))
                        if record.client_cert_serial.as_deref() == Some(serial.as_str()) =>
                    {
                        Ok(Caller::Cluster(cluster.to_string()))
                    }
                    Some((record, _))
                        if renewing
                            && record.previous_client_cert_serial.as_deref()
                                == Some(serial.as_str()) =>
                    {
                        Ok(Caller::Cluster(cluster.to_string()))
                    }
                    Some(_) => Err(ServerError::PermissionDenied(format!(
                        "client certificate {serial} is no longer valid for cluster {cluster:?} (it was renewed, or the cluster re-enrolled); use the current identity, or re-enroll with a new join token"
                    ))),
                    None => Err(ServerError::PermissionDenied(format!(
                        "cluster {cluster:?} is not registered (it was removed); re-add it with `trustplane cluster add {cluster}`"
                    ))),
                };
            }
            if let Some(admin) = uri.strip_prefix(ADMIN_IDENTITY_PREFIX) {
                let record = integrity::get_json::<AdminRecord>(
                    core.store.as_ref(),
                    &core.kek,
                    Table::Meta,
                    &records::admin_key(admin),
                )?;
                return match record {
                    Some((record, _))
                        if record.client_cert_serial == *serial
                            && record.revoked_unix.is_none() =>
                    {
                        Ok(Caller::Admin {
                            name: admin.to_string(),
                            role: record.role,
                        })
                    }
                    Some((record, _)) if record.client_cert_serial == *serial => {
                        Err(ServerError::PermissionDenied(format!(
                            "admin credential {admin:?} ({serial}) was revoked at {}; ask an admin for a new one (`trustplane admin add`)",
                            humantime::format_rfc3339_seconds(unix_to_system_time(
                                record.revoked_unix.unwrap_or_default()
                            ))
                        )))
                    }
                    _ => Err(ServerError::PermissionDenied(format!(
                        "admin credential {admin:?} ({serial}) is not on record"
                    ))),
                };
            }
        }
        Err(ServerError::PermissionDenied(format!(
            "client certificate has no trustplane identity (URI SANs: {:?})",
            caller.uris
        )))
    }

    /// Issues the server's own TLS certificate (fresh key, in memory only).
    ///
    /// Errors: key generation, signing and store errors.
    pub async fn issue_server_identity(
        &self,
        dns_names: Vec<String>,
        ip_addresses: Vec<std::net::IpAddr>,
    ) -> Result<(Certificate, PrivateKey), ServerError> {
        let core = &self.core;
        let now = core.now();
        let key = PrivateKey::generate(ca::KeyAlgorithm::EcdsaP256)?;
        let public_key = key.public_key_der()?;
        let role = ControlPlaneRole::Server {
            dns_names,
            ip_addresses,
        };
        let certificate = record_issued(
            core,
            "server",
            IssuedKind::ControlPlaneServer,
            None,
            now,
            || {
                std::future::ready(
                    ca::issue_control_plane_cert(
                        &public_key,
                        &role,
                        &core.control_plane_ca,
                        &core.control_plane_key,
                        SERVER_CERT_LIFETIME,
                        now,
                    )
                    .map_err(ServerError::from),
                )
            },
            |batch, _| Ok(batch),
        )
        .await?;
        Ok((certificate, key))
    }

    /// Adds to `batch` the deletion of every join token of `cluster`.
    ///
    /// Errors: store errors.
    pub(super) fn without_tokens_of(
        &self,
        cluster: &str,
        batch: Batch,
    ) -> Result<Batch, ServerError> {
        Ok(integrity::list_json::<TokenRecord>(
            self.core.store.as_ref(),
            &self.core.kek,
            Table::Tokens,
        )?
        .into_iter()
        .filter(|(_, record, _)| record.cluster == cluster)
        .fold(batch, |batch, (hash, _, version)| {
            batch.delete(Table::Tokens, hash, Some(Expect::Version(version)))
        }))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::{Duration, SystemTime};

    use super::{VerifiedCaller, VerifiedCallers, certificate_digest};

    #[test]
    fn a_verified_caller_is_known_only_inside_its_validity() {
        let verified = VerifiedCallers::default();
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let end = start + Duration::from_secs(3600);
        let digest = certificate_digest(b"certificate one");
        assert!(
            verified.known_valid(&digest, start).is_none(),
            "nothing verified yet"
        );
        let caller = Arc::new(VerifiedCaller {
            validity: (start, end),
            serial: "01".into(),
            uris: vec!["spiffe://trustplane/cluster/east".into()],
        });
        verified.remember(digest, caller.clone());
        assert_eq!(verified.known_valid(&digest, start), Some(caller.clone()));
        assert_eq!(verified.known_valid(&digest, end), Some(caller));
        assert!(
            verified
                .known_valid(&digest, start - Duration::from_secs(1))
                .is_none()
        );
        assert!(
            verified
                .known_valid(&digest, end + Duration::from_secs(1))
                .is_none()
        );
        // Another certificate (another digest) is not known.
        assert!(
            verified
                .known_valid(&certificate_digest(b"certificate two"), start)
                .is_none()
        );
    }
}
