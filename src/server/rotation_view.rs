//! What the rotation part takes and returns, as domain values: the options
//! of `rotate plan`/`start`, the status with a row per cluster, and the
//! plan. `grpc.rs` turns them into protobuf messages.

use std::sync::Arc;

use zeroize::Zeroizing;

use super::core::PublishedBundle;
use super::registry::ClusterMode;
use crate::ca;
use crate::rotation::{Outcome, Phase};

/// How to start (or plan) a rotation; zero and empty values take the
/// defaults.
#[derive(Clone, Default)]
pub struct RotationOptions {
    /// Grace after every cluster acknowledged sign-new (0: 24 h).
    pub grace_seconds: u64,
    /// A cluster without an ack after this long is overdue (0: 15 min).
    pub ack_timeout_seconds: u64,
    /// Clusters the gates do not wait for.
    pub exclude_clusters: Vec<String>,
    /// Advance by itself whenever a gate holds.
    pub auto_advance: bool,
    /// New root key algorithm (None: ECDSA P-256).
    pub key_algorithm: Option<ca::KeyAlgorithm>,
    /// New root validity in seconds (0: 10 years).
    pub root_validity_seconds: u64,
    /// Import this root (PEM) instead of creating one (empty: create).
    pub import_root_pem: String,
    /// The imported root's key (PEM; never printed).
    pub import_key_pem: Zeroizing<String>,
    /// Vault: the issuer (name or id) to use as the new root, created in
    /// the signing root's PKI mount when it does not exist (empty: a new
    /// issuer named `trustplane-root-<time>` when the signing root is in
    /// Vault).
    pub vault_issuer: String,
    /// The Vault-held new root, resolved by
    /// [`super::Rotations::resolve_vault_root`] before `start`.
    pub vault_root: Option<(ca::Certificate, crate::store::records::VaultIssuer)>,
    /// Whether `resolve_vault_root` created that issuer in Vault (so a
    /// failed start says it is there to adopt or delete).
    pub vault_root_created: bool,
}

impl std::fmt::Debug for RotationOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RotationOptions")
            .field("grace_seconds", &self.grace_seconds)
            .field("ack_timeout_seconds", &self.ack_timeout_seconds)
            .field("exclude_clusters", &self.exclude_clusters)
            .field("auto_advance", &self.auto_advance)
            .field("key_algorithm", &self.key_algorithm)
            .field("root_validity_seconds", &self.root_validity_seconds)
            .field("import_root", &!self.import_root_pem.is_empty())
            .field("import_key_pem", &"[redacted]")
            .field("vault_issuer", &self.vault_issuer)
            .finish()
    }
}

/// One cluster as the current phase's gate sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterAck {
    /// The cluster name.
    pub name: String,
    /// Agent or push mode.
    pub mode: ClusterMode,
    /// The bundle version it applied.
    pub applied_bundle_version: u64,
    /// Subject of the root its reported chain ends in.
    pub chain_root_subject: String,
    /// Serial of that root.
    pub chain_root_serial: String,
    /// When it last reported (0: never).
    pub last_report_unix: i64,
    /// Whether it satisfies the gate.
    pub acknowledged: bool,
    /// Why not, when it does not.
    pub blocking_reason: String,
    /// Waited for longer than the ack timeout.
    pub overdue: bool,
    /// Excluded by the operator: not waited for.
    pub excluded: bool,
    /// Its last error.
    pub last_error: String,
}

/// The rotation as `trustplane rotate status` shows it.
#[derive(Clone, Debug, Default)]
pub struct RotationStatus {
    /// The current phase (`Stable` when none is under way).
    pub phase: Phase,
    /// False when no rotation was ever started.
    pub has_rotation: bool,
    /// Serial of the root being replaced.
    pub old_root_serial: String,
    /// Its subject.
    pub old_root_subject: String,
    /// Serial of the new root.
    pub new_root_serial: String,
    /// Its subject.
    pub new_root_subject: String,
    /// Serial of the root that signs intermediates now.
    pub signing_root_serial: String,
    /// The bundle version the phase published.
    pub phase_bundle_version: u64,
    /// The bundle published now.
    pub bundle: Option<Arc<PublishedBundle>>,
    /// When the rotation started (Unix seconds).
    pub started_unix: i64,
    /// When the phase was entered.
    pub entered_unix: i64,
    /// When every cluster first acknowledged (0: not yet).
    pub acknowledged_unix: i64,
    /// The grace after sign-new, in seconds.
    pub grace_seconds: u64,
    /// Grace still to wait.
    pub grace_left_seconds: u64,
    /// The ack timeout, in seconds.
    pub ack_timeout_seconds: u64,
    /// Whether the next step may be taken.
    pub gate_holds: bool,
    /// What blocks the next step, in one line.
    pub blocking: String,
    /// Every enrolled cluster.
    pub clusters: Vec<ClusterAck>,
    /// Excluded clusters.
    pub excluded: Vec<String>,
    /// Whether the server advances by itself.
    pub auto_advance: bool,
    /// How the last rotation ended, once stable again.
    pub outcome: Option<Outcome>,
    /// What `rotate advance` would do next.
    pub next_step: String,
}

/// One planned step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedStep {
    /// The phase entered.
    pub phase: Phase,
    /// The bundle version it publishes.
    pub bundle_version: u64,
    /// Subject and serial of every root in its bundle, in order.
    pub bundle_roots: Vec<String>,
    /// Whether `root-cert.pem` repeats the newest root.
    pub newest_repeated: bool,
    /// The root that signs in it.
    pub signing_root: String,
    /// What it waits for before the next one.
    pub gate: String,
}

/// Every step of a rotation and the pre-flight of the next one.
#[derive(Clone, Debug)]
pub struct RotationPlan {
    /// The steps still to take.
    pub steps: Vec<PlannedStep>,
    /// Clusters the next bundle would strand ("cluster: reason").
    pub preflight_failures: Vec<String>,
    /// The rotation now.
    pub current: RotationStatus,
    /// Every enrolled cluster the gates wait for.
    pub clusters: Vec<String>,
}
