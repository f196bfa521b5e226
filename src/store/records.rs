//! Typed records kept in the store, encoded as JSON. Key material is never
//! in a record: it lives sealed in [`Table::Secrets`].

use serde::{Deserialize, Serialize, de::DeserializeOwned};

use super::{Batch, Expect, Store, StoreError, Table};

/// Key of the CA settings singleton in [`Table::Meta`].
pub const CA_SETTINGS_KEY: &str = "ca";
/// Key of the root-rotation state in [`Table::Meta`].
pub const ROTATION_KEY: &str = "rotation";
/// Key of the audit chain's head (an [`AuditHead`]) in [`Table::Meta`].
pub const AUDIT_HEAD_KEY: &str = "audit-head";
/// Name of the sealed control-plane CA key in [`Table::Secrets`].
pub const CONTROL_PLANE_KEY_SECRET: &str = "control-plane-ca-key";

/// Settings fixed at `init`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaSettings {
    /// The mesh trust domain.
    pub trust_domain: String,
    /// Subject organisation.
    pub organisation: String,
    /// When `init` ran (Unix seconds).
    pub created_unix: i64,
    /// The control-plane CA certificate (PEM).
    pub control_plane_ca_pem: String,
    /// Id (in [`Table::Roots`]) of the root that signs intermediates now.
    pub signing_root_id: String,
}

/// A mesh root.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RootRecord {
    /// Id: the root's hex serial.
    pub id: String,
    /// Certificate (PEM).
    pub certificate_pem: String,
    /// Name of its sealed key in [`Table::Secrets`] (None when held elsewhere, e.g. Vault).
    pub key_secret: Option<String>,
    /// When it was created or imported (Unix seconds).
    pub created_unix: i64,
    /// Whether it was imported rather than generated.
    pub imported: bool,
    /// The Vault PKI issuer that holds its key (`key_secret` is None then).
    /// Written only when set, so records (and their MACs) of local roots
    /// keep their bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vault_issuer: Option<VaultIssuer>,
}

/// Where in Vault a root's key lives.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaultIssuer {
    /// The PKI mount, e.g. `pki`.
    pub mount: String,
    /// The issuer's id (a UUID; names can be moved, ids cannot).
    pub issuer_id: String,
    /// The issuer's name when it was recorded (for people).
    #[serde(default)]
    pub issuer_name: String,
}

/// What a cluster last reported (`ReportStatus`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterReport {
    /// Bundle version applied in the cluster.
    pub applied_bundle_version: u64,
    /// Serial of the intermediate in use.
    pub intermediate_serial: String,
    /// Its expiry (Unix seconds).
    pub intermediate_not_after_unix: i64,
    /// The chain in use (PEM), for pre-flight checks.
    pub cert_chain_pem: String,
    /// Last error, empty when healthy.
    pub error: String,
    /// When the report arrived (Unix seconds).
    pub reported_unix: i64,
}

/// A registered cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterRecord {
    /// Cluster name (DNS label).
    pub name: String,
    /// Trust domain it belongs to.
    pub trust_domain: String,
    /// When it was added (Unix seconds).
    pub created_unix: i64,
    /// When its agent enrolled (Unix seconds), None while pending.
    pub enrolled_unix: Option<i64>,
    /// Serial of the only control-plane client certificate accepted for it.
    pub client_cert_serial: Option<String>,
    /// Serial of the certificate the last `RenewIdentity` replaced, until the
    /// new one is used (its first status report): `RenewIdentity` alone
    /// still accepts it, so an agent whose renewal answer was lost (a crash,
    /// a dropped connection) can renew again instead of being stranded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_client_cert_serial: Option<String>,
    /// Last status report.
    pub report: Option<ClusterReport>,
    /// Push mode: the server writes this cluster's cacerts itself.
    #[serde(default)]
    pub push: Option<PushTarget>,
    /// The intermediate (hex serial) to be replaced, as asked by
    /// `trustplane cluster reissue`.
    #[serde(default)]
    pub reissue_serial: Option<String>,
}

/// One audit entry, a link of the audit chain (see `server::audit`).
/// Entries written before the chain have no sequence number or hashes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditRecord {
    /// Position in the chain, from 1 (0: an entry from before the chain).
    #[serde(default)]
    pub seq: u64,
    /// When (Unix seconds).
    pub unix: i64,
    /// Who (admin name, `cluster/<name>`, or `server` for automatic steps).
    pub actor: String,
    /// What, e.g. `rotate-start`.
    pub action: String,
    /// Details in words.
    pub detail: String,
    /// Lowercase hex SHA-256 of the previous entry (64 zeros for the first).
    #[serde(default)]
    pub prev_hash: String,
    /// Lowercase hex SHA-256 of this entry's content and `prev_hash`.
    #[serde(default)]
    pub hash: String,
}

/// The audit chain's head: the last entry's sequence number and hash,
/// authenticated with a MAC keyed from the KEK.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditHead {
    /// Sequence number of the last entry.
    pub seq: u64,
    /// Its hash (lowercase hex).
    pub hash: String,
    /// HMAC-SHA256 (lowercase hex) of `seq` and `hash`.
    pub mac: String,
}

/// Whether a registered cluster has enrolled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClusterState {
    /// A join token was issued; the agent has not enrolled yet.
    Pending,
    /// Enrolled (push-mode clusters are enrolled when added).
    Enrolled,
}

impl ClusterState {
    /// The text form: `pending` or `enrolled`.
    pub fn as_str(self) -> &'static str {
        match self {
            ClusterState::Pending => "pending",
            ClusterState::Enrolled => "enrolled",
        }
    }
}

/// Who writes a cluster's `cacerts`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClusterMode {
    /// An enrolled agent in the cluster.
    Agent,
    /// The server itself, through the cluster's kubeconfig.
    Push,
}

impl ClusterMode {
    /// The text form: `agent` or `push`.
    pub fn as_str(self) -> &'static str {
        match self {
            ClusterMode::Agent => "agent",
            ClusterMode::Push => "push",
        }
    }

    /// The mode of a cluster record.
    pub fn of(record: &ClusterRecord) -> Self {
        if record.push.is_some() {
            ClusterMode::Push
        } else {
            ClusterMode::Agent
        }
    }
}

/// Where the server writes a push-mode cluster's cacerts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PushTarget {
    /// Namespace of the Secret.
    pub namespace: String,
    /// The Secret's keys (stored as `istio` or `tls`).
    pub secret_format: crate::sink::SecretFormat,
    /// Name of the sealed kubeconfig in [`Table::Secrets`].
    pub kubeconfig_secret: String,
}

/// Name of a push-mode cluster's sealed kubeconfig in [`Table::Secrets`].
pub fn kubeconfig_secret_name(cluster: &str) -> String {
    format!("kubeconfig/{cluster}")
}

/// What an issued certificate is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum IssuedKind {
    /// A mesh root.
    Root,
    /// A cluster intermediate CA.
    Intermediate,
    /// A control-plane client certificate (agent or admin).
    ControlPlaneClient,
    /// The server's TLS certificate.
    ControlPlaneServer,
    /// The control-plane CA.
    ControlPlaneCa,
}

impl IssuedKind {
    /// The text form, as stored: `root`, `intermediate`, ….
    pub fn as_str(self) -> &'static str {
        match self {
            IssuedKind::Root => "root",
            IssuedKind::Intermediate => "intermediate",
            IssuedKind::ControlPlaneClient => "control-plane-client",
            IssuedKind::ControlPlaneServer => "control-plane-server",
            IssuedKind::ControlPlaneCa => "control-plane-ca",
        }
    }
}

/// Every issued certificate, keyed by serial so a serial is never reused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuedRecord {
    /// Hex serial.
    pub serial: String,
    /// Kind.
    pub kind: IssuedKind,
    /// Cluster it was issued to, if any.
    pub cluster: Option<String>,
    /// Issuance time (Unix seconds).
    pub issued_unix: i64,
    /// Expiry (Unix seconds).
    pub not_after_unix: i64,
}

/// A published bundle version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleRecord {
    /// Trust domain.
    pub trust_domain: String,
    /// Version.
    pub version: u64,
    /// Each root's PEM, in bundle order.
    pub roots_pem: Vec<String>,
    /// Whether `root-cert.pem` repeats the newest root (rotation sign-new).
    #[serde(default)]
    pub newest_repeated: bool,
    /// When it was published (Unix seconds).
    pub published_unix: i64,
}

/// A join token (stored by hash only).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRecord {
    /// Cluster it enrolls.
    pub cluster: String,
    /// Creation (Unix seconds).
    pub created_unix: i64,
    /// Expiry (Unix seconds).
    pub expires_unix: i64,
    /// When it was used (Unix seconds); a used token is refused, except
    /// for a repeat of its enrollment with the same key (see below).
    #[serde(default)]
    pub used_unix: Option<i64>,
    /// SHA-256 hex of the public key (SPKI DER) the enrollment certificate
    /// was issued for: an agent killed before it saved that certificate
    /// may repeat `Enroll` with the same token and key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used_key_sha256: Option<String>,
    /// Serial of the last certificate issued for this token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used_serial: Option<String>,
}

/// An admin credential, in [`Table::Meta`] under `admin/<name>`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminRecord {
    /// Admin name (URI SAN `spiffe://trustplane.control/admin/<name>`).
    pub name: String,
    /// Serial of its client certificate.
    pub client_cert_serial: String,
    /// Creation (Unix seconds).
    pub created_unix: i64,
    /// What it may do (`admin` for records written before roles existed).
    #[serde(default)]
    pub role: AdminRole,
    /// When it was revoked (Unix seconds); a revoked credential is refused.
    #[serde(default)]
    pub revoked_unix: Option<i64>,
    /// Its certificate's expiry (Unix seconds; None for records written
    /// before it was kept).
    #[serde(default)]
    pub not_after_unix: Option<i64>,
}

/// What an admin credential may do with `AdminService`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AdminRole {
    /// Everything.
    #[default]
    Admin,
    /// Add, enroll and remove clusters, reissue, rotate; and read.
    Operator,
    /// Read only: list, status, rotation status and plan, audit log.
    Auditor,
}

impl AdminRole {
    /// Every role, strongest first.
    pub const ALL: [AdminRole; 3] = [AdminRole::Admin, AdminRole::Operator, AdminRole::Auditor];

    /// The text form: `admin`, `operator` or `auditor`.
    pub fn as_str(self) -> &'static str {
        match self {
            AdminRole::Admin => "admin",
            AdminRole::Operator => "operator",
            AdminRole::Auditor => "auditor",
        }
    }
}

impl std::fmt::Display for AdminRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for AdminRole {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        AdminRole::ALL
            .into_iter()
            .find(|role| role.as_str() == text)
            .ok_or_else(|| format!("unknown role {text:?}: use admin, operator or auditor"))
    }
}

/// Key of an admin record in [`Table::Meta`].
pub fn admin_key(name: &str) -> String {
    format!("admin/{name}")
}

/// Key of a bundle history entry: `<trust domain>/<version, 20 digits>`.
pub fn bundle_history_key(trust_domain: &str, version: u64) -> String {
    format!("{trust_domain}/{version:020}")
}

/// Reads and decodes a JSON record with its version.
pub fn get_json<T: DeserializeOwned>(
    store: &dyn Store,
    table: Table,
    key: &str,
) -> Result<Option<(T, u64)>, StoreError> {
    match store.get(table, key)? {
        None => Ok(None),
        Some(stored) => {
            let value =
                serde_json::from_slice(&stored.value).map_err(|source| StoreError::Corrupt {
                    table: table.name(),
                    key: key.to_string(),
                    source,
                })?;
            Ok(Some((value, stored.version)))
        }
    }
}

/// Reads and decodes every JSON record of a table, ordered by key.
pub fn list_json<T: DeserializeOwned>(
    store: &dyn Store,
    table: Table,
) -> Result<Vec<(String, T, u64)>, StoreError> {
    store
        .list(table)?
        .into_iter()
        .map(|(key, stored)| {
            let value =
                serde_json::from_slice(&stored.value).map_err(|source| StoreError::Corrupt {
                    table: table.name(),
                    key: key.clone(),
                    source,
                })?;
            Ok((key, value, stored.version))
        })
        .collect()
}

impl Batch {
    /// Adds a put of `value` encoded as JSON.
    pub fn put_json<T: Serialize>(
        self,
        table: Table,
        key: impl Into<String>,
        value: &T,
        expect: Option<Expect>,
    ) -> Result<Self, StoreError> {
        let key = key.into();
        let bytes = serde_json::to_vec(value).map_err(|source| StoreError::Corrupt {
            table: table.name(),
            key: key.clone(),
            source,
        })?;
        Ok(self.put(table, key, bytes, expect))
    }
}

#[cfg(test)]
#[allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;

    /// A local root's record keeps the bytes it had before Vault-held roots
    /// existed, so the MACs of existing stores stay valid.
    #[test]
    fn a_root_record_names_its_vault_issuer_only_when_it_has_one() {
        let local = RootRecord {
            id: "01".into(),
            certificate_pem: "pem".into(),
            key_secret: Some("root-key/01".into()),
            created_unix: 1,
            imported: false,
            vault_issuer: None,
        };
        let bytes = serde_json::to_string(&local).unwrap();
        assert_eq!(
            bytes,
            r#"{"id":"01","certificate_pem":"pem","key_secret":"root-key/01","created_unix":1,"imported":false}"#
        );
        assert_eq!(serde_json::from_str::<RootRecord>(&bytes).unwrap(), local);
        let held = RootRecord {
            key_secret: None,
            vault_issuer: Some(VaultIssuer {
                mount: "pki".into(),
                issuer_id: "0f1e".into(),
                issuer_name: "mesh-root".into(),
            }),
            ..local
        };
        let bytes = serde_json::to_string(&held).unwrap();
        assert!(
            bytes.ends_with(
                r#""vault_issuer":{"mount":"pki","issuer_id":"0f1e","issuer_name":"mesh-root"}}"#
            ),
            "{bytes}"
        );
        assert_eq!(serde_json::from_str::<RootRecord>(&bytes).unwrap(), held);
    }
}
