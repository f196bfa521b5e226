//! Root rotation: the state machine that replaces mesh root A by root B
//! without a moment of broken trust. Pure: it takes the rotation state, the
//! current bundle, what every cluster last reported and `now`, and returns
//! the next state and the bundle to publish. The server persists the state
//! and the bundle in one store transaction before it publishes anything.
//!
//! Phases (each publishes a bundle version and is gated on every enrolled,
//! non-excluded cluster having applied it):
//! 1. `stable` — bundle {A}, intermediates signed by A.
//! 2. `trust-new` — bundle {A, B}, still signed by A.
//! 3. `sign-new` — bundle {A, B} with B's block repeated (new bytes, so
//!    istiod pushes it; see [`crate::bundle`]), intermediates signed by B;
//!    after every ack, a grace period at least as long as the longest
//!    workload certificate lifetime.
//! 4. `retire-old` — bundle {B}. After every ack, back to `stable`.
//!
//! Abort goes back to the last phase in which every live certificate still
//! verifies: `trust-new` → `stable` ({A}); `sign-new` → `trust-new` ({A, B},
//! intermediates re-issued from A). Once B has signed intermediates, going
//! back to {A} also waits for the grace period (workload certificates under
//! B must have expired). `retire-old` cannot be aborted: A is already gone
//! from every bundle, finishing is the only safe direction.
//!
//! Pre-flight: before any bundle is published, every cluster's last reported
//! chain must verify under the new bundle's roots; a step that would strand
//! a cluster is refused with its name.
//!
//! Owns the phases and their gates; does not create roots, talk to clusters
//! or keep state (that is `server` and `store`).

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::bundle::{BundleError, TrustBundle};
use crate::ca::{self, Certificate, system_time_to_unix};

/// Default grace after `sign-new` is acknowledged: Istio's default workload
/// certificate lifetime.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(24 * 3600);
/// Default time after which a cluster that has not acknowledged a phase is
/// shown as overdue (it keeps blocking either way).
pub const DEFAULT_ACK_TIMEOUT: Duration = Duration::from_secs(15 * 60);

/// A rotation phase.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// One root; no rotation under way.
    #[default]
    Stable,
    /// Old and new root trusted; old root signs.
    TrustNew,
    /// Old and new root trusted; new root signs.
    SignNew,
    /// Only the new root trusted.
    RetireOld,
}

impl Phase {
    /// The phase's name as printed and stored (`trust-new`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Stable => "stable",
            Phase::TrustNew => "trust-new",
            Phase::SignNew => "sign-new",
            Phase::RetireOld => "retire-old",
        }
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Phase {
    type Err = String;

    /// The text form (`stable`, `trust-new`, `sign-new`, `retire-old`).
    fn from_str(text: &str) -> Result<Self, String> {
        [
            Phase::Stable,
            Phase::TrustNew,
            Phase::SignNew,
            Phase::RetireOld,
        ]
        .into_iter()
        .find(|phase| phase.as_str() == text)
        .ok_or_else(|| {
            format!("unknown phase {text:?}: use stable, trust-new, sign-new or retire-old")
        })
    }
}

/// How a finished rotation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// Retire-old was acknowledged: the new root alone is trusted.
    Completed,
    /// Aborted back to the old root alone.
    Aborted,
}

impl Outcome {
    /// The outcome's name as printed and stored (`completed`, `aborted`).
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Completed => "completed",
            Outcome::Aborted => "aborted",
        }
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The persisted state of a rotation (stored before anything is published).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rotation {
    /// Current phase; `stable` once finished or aborted back.
    pub phase: Phase,
    /// Id (hex serial) of the root being replaced (A).
    pub old_root_id: String,
    /// Id (hex serial) of the new root (B).
    pub new_root_id: String,
    /// The bundle version this phase published; acks must reach it.
    pub bundle_version: u64,
    /// When the rotation started (Unix seconds).
    pub started_unix: i64,
    /// When the current phase was entered (Unix seconds).
    pub entered_unix: i64,
    /// When every cluster was first seen to have acknowledged the phase.
    pub acknowledged_unix: Option<i64>,
    /// Grace after the acks of `sign-new` (seconds).
    pub grace_seconds: u64,
    /// A cluster without an ack after this long is shown as overdue (seconds).
    pub ack_timeout_seconds: u64,
    /// Clusters the operator excluded from the gates (audited, loud).
    pub excluded: Vec<String>,
    /// Advance by itself whenever the gate holds.
    pub auto_advance: bool,
    /// Whether the new root has signed intermediates in this rotation.
    pub new_root_signed: bool,
    /// Whether the phase was entered by an abort.
    pub aborted: bool,
    /// How the rotation ended, once it is `stable` again.
    pub outcome: Option<Outcome>,
}

/// What a cluster last reported, as the gates need it.
#[derive(Clone, Debug)]
pub struct ClusterView {
    /// Cluster name.
    pub name: String,
    /// Bundle version it has applied (0: none).
    pub applied_version: u64,
    /// The chain it serves (`cert-chain.pem`), empty when unknown.
    pub chain: Vec<Certificate>,
    /// When it last reported (Unix seconds), None when it never did.
    pub reported_unix: Option<i64>,
}

/// Why a cluster blocks a gate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BlockReason {
    /// It never reported.
    NeverReported,
    /// It has not applied the phase's bundle version.
    NotApplied {
        /// What it applied.
        applied: u64,
        /// What the phase published.
        wanted: u64,
    },
    /// Its intermediate is not signed by the phase's signing root.
    WrongSigner {
        /// Subject of the root its chain ends in.
        chain_root: String,
    },
    /// Its chain ends in the signing root but does not verify (expired,
    /// or a link is not signed by the next certificate).
    InvalidChain {
        /// The verification failure.
        error: String,
    },
}

impl std::fmt::Display for BlockReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BlockReason::NeverReported => f.write_str("has never reported"),
            BlockReason::NotApplied { applied, wanted } => {
                write!(f, "applied bundle v{applied}, needs v{wanted}")
            }
            BlockReason::InvalidChain { error } => {
                write!(f, "its reported chain does not verify: {error}")
            }
            BlockReason::WrongSigner { chain_root } => {
                write!(
                    f,
                    "intermediate still chains to {chain_root}, not the signing root"
                )
            }
        }
    }
}

/// A cluster that holds a gate closed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Blocker {
    /// Cluster name.
    pub cluster: String,
    /// Why.
    pub reason: BlockReason,
    /// Whether it has been waited for longer than the ack timeout.
    pub overdue: bool,
}

/// Whether the current phase may be left, and what holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Gate {
    /// Clusters that have not acknowledged.
    pub blockers: Vec<Blocker>,
    /// Grace still to wait once every ack is in (zero when none).
    pub grace_left: Duration,
}

impl Gate {
    /// Every ack is in and the grace (if any) has passed.
    pub fn holds(&self) -> bool {
        self.blockers.is_empty() && self.grace_left.is_zero()
    }

    /// One line saying what blocks the next step, or that nothing does.
    pub fn summary(&self) -> String {
        if !self.blockers.is_empty() {
            let names: Vec<String> = self
                .blockers
                .iter()
                .map(|blocker| {
                    format!(
                        "{} ({}{})",
                        blocker.cluster,
                        blocker.reason,
                        if blocker.overdue { ", OVERDUE" } else { "" }
                    )
                })
                .collect();
            return format!(
                "waiting for {} cluster(s): {}",
                self.blockers.len(),
                names.join("; ")
            );
        }
        if !self.grace_left.is_zero() {
            return format!(
                "every cluster acknowledged; grace period: {} left",
                humantime::format_duration(Duration::from_secs(self.grace_left.as_secs()))
            );
        }
        "nothing: the gate holds".to_string()
    }
}

/// A cluster whose chain would not verify under a bundle about to be
/// published.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stranded {
    /// Cluster name.
    pub cluster: String,
    /// The verification failure.
    pub error: String,
}

/// Errors from rotation steps.
#[derive(Debug, thiserror::Error)]
pub enum RotationError {
    /// `start` while a rotation is under way.
    #[error(
        "a rotation is already in phase {0}; see `trustplane rotate status`, or `rotate abort`"
    )]
    InProgress(Phase),
    /// `advance`/`abort` with no rotation under way.
    #[error("no rotation is in progress; start one with `trustplane rotate start`")]
    NotInProgress,
    /// The gate does not hold.
    #[error("phase {phase} cannot be left yet: {summary}")]
    GateClosed {
        /// Current phase.
        phase: Phase,
        /// What blocks it.
        summary: String,
    },
    /// Pre-flight found clusters whose chain would not verify.
    #[error(
        "refusing to publish bundle v{version}: it would strand {} cluster(s): {}",
        stranded.len(),
        stranded.iter().map(|s| format!("{} ({})", s.cluster, s.error)).collect::<Vec<_>>().join("; ")
    )]
    WouldStrand {
        /// The version that was not published.
        version: u64,
        /// Who would break, and why.
        stranded: Vec<Stranded>,
    },
    /// The caller expected another phase (someone else moved on).
    #[error(
        "the rotation is in phase {actual}, not {expected}: it moved on meanwhile; see `trustplane rotate status`"
    )]
    PhaseMoved {
        /// What the caller expected.
        expected: Phase,
        /// The phase now.
        actual: Phase,
    },
    /// Abort from `retire-old`.
    #[error(
        "retire-old cannot be aborted: the old root is no longer in any published bundle; finish with `trustplane rotate advance`"
    )]
    CannotAbort,
    /// The current bundle is not {A} alone (the signing root): the old root
    /// could not be retired from the front without reordering.
    #[error(
        "the trust bundle must hold exactly the signing root to start a rotation, but it holds {0} root(s)"
    )]
    UnexpectedBundle(usize),
    /// The new root is not usable.
    #[error("the new root: {0}")]
    NewRoot(String),
    /// The new root (or the old one) cannot be read.
    #[error("the {which} root cannot be read")]
    UnreadableRoot {
        /// "new" or "old".
        which: &'static str,
        /// Why.
        #[source]
        source: crate::ca::CaError,
    },
    /// A bundle operation failed.
    #[error(transparent)]
    Bundle(#[from] BundleError),
}

/// Options for starting a rotation.
#[derive(Clone, Debug)]
pub struct StartOptions {
    /// Grace after `sign-new` is acknowledged.
    pub grace: Duration,
    /// When a missing ack is shown as overdue.
    pub ack_timeout: Duration,
    /// Clusters not waited for (loud, audited).
    pub excluded: Vec<String>,
    /// Advance automatically when gates hold.
    pub auto_advance: bool,
}

impl Default for StartOptions {
    fn default() -> Self {
        StartOptions {
            grace: DEFAULT_GRACE,
            ack_timeout: DEFAULT_ACK_TIMEOUT,
            excluded: Vec::new(),
            auto_advance: false,
        }
    }
}

/// One step decided by the state machine: persist `rotation`, and publish
/// `bundle` (when Some) with the root of `rotation.signing_root_id()`
/// signing from then on.
#[derive(Clone, Debug)]
pub struct Step {
    /// The new state.
    pub rotation: Rotation,
    /// The bundle to publish, if the step publishes one.
    pub bundle: Option<TrustBundle>,
    /// Excluded clusters whose reported chain will not verify under the
    /// published bundle: the operator accepted that they may lose trust;
    /// the server warns and audits it.
    pub excluded_stranded: Vec<Stranded>,
}

impl Rotation {
    /// Whether a rotation is under way.
    pub fn in_progress(&self) -> bool {
        self.phase != Phase::Stable
    }

    /// The root that signs intermediates in the current phase.
    pub fn signing_root_id(&self) -> &str {
        match self.phase {
            Phase::Stable => {
                if self.outcome == Some(Outcome::Completed) {
                    &self.new_root_id
                } else {
                    &self.old_root_id
                }
            }
            Phase::TrustNew => &self.old_root_id,
            Phase::SignNew | Phase::RetireOld => &self.new_root_id,
        }
    }

    fn grace(&self) -> Duration {
        Duration::from_secs(self.grace_seconds)
    }

    /// Evaluates the gate for advancing from the current phase: every
    /// enrolled, non-excluded cluster has applied the phase's bundle and
    /// serves a chain that verifies to the phase's signing root; leaving
    /// `sign-new` also waits for the grace. `signing_root` is the root of
    /// [`Self::signing_root_id`].
    pub fn gate(
        &self,
        clusters: &[ClusterView],
        signing_root: &Certificate,
        now: SystemTime,
    ) -> Gate {
        self.gate_with_grace(clusters, signing_root, now, self.phase == Phase::SignNew)
    }

    /// The gate for aborting: only going back from `trust-new` to {A} after
    /// the new root has signed intermediates waits, for every cluster to be
    /// re-issued from A and then for the grace (workload certificates under
    /// B must have expired). Every other abort may happen at once.
    pub fn abort_gate(
        &self,
        clusters: &[ClusterView],
        signing_root: &Certificate,
        now: SystemTime,
    ) -> Gate {
        if self.phase == Phase::TrustNew && self.new_root_signed {
            self.gate_with_grace(clusters, signing_root, now, true)
        } else {
            Gate {
                blockers: Vec::new(),
                grace_left: Duration::ZERO,
            }
        }
    }

    fn gate_with_grace(
        &self,
        clusters: &[ClusterView],
        signing_root: &Certificate,
        now: SystemTime,
        needs_grace: bool,
    ) -> Gate {
        let now_unix = system_time_to_unix(now);
        let overdue = now_unix.saturating_sub(self.entered_unix)
            > i64::try_from(self.ack_timeout_seconds).unwrap_or(i64::MAX);
        let mut blockers = Vec::new();
        if self.in_progress() {
            for cluster in clusters {
                if self.excluded.contains(&cluster.name) {
                    continue;
                }
                let reason = if cluster.reported_unix.is_none() {
                    Some(BlockReason::NeverReported)
                } else if cluster.applied_version < self.bundle_version {
                    Some(BlockReason::NotApplied {
                        applied: cluster.applied_version,
                        wanted: self.bundle_version,
                    })
                } else {
                    match cluster.chain.last() {
                        Some(root) if root == signing_root => ca::verify_chain_to_roots(
                            &cluster.chain,
                            std::slice::from_ref(signing_root),
                            now,
                        )
                        .err()
                        .map(|error| BlockReason::InvalidChain {
                            error: error.to_string(),
                        }),
                        Some(root) => Some(BlockReason::WrongSigner {
                            chain_root: root.subject().unwrap_or_default(),
                        }),
                        None => Some(BlockReason::WrongSigner {
                            chain_root: "no reported chain".into(),
                        }),
                    }
                };
                if let Some(reason) = reason {
                    blockers.push(Blocker {
                        cluster: cluster.name.clone(),
                        reason,
                        overdue,
                    });
                }
            }
        }
        let grace_left = if blockers.is_empty() && needs_grace {
            // Certificate times are whole seconds and a certificate is still
            // valid at its notAfter second: wait one second beyond the grace
            // so that a workload certificate issued at the last ack with a
            // lifetime equal to the grace has expired.
            let since = self.acknowledged_unix.unwrap_or(now_unix);
            let elapsed = u64::try_from(now_unix.saturating_sub(since)).unwrap_or(0);
            self.grace()
                .saturating_add(Duration::from_secs(1))
                .saturating_sub(Duration::from_secs(elapsed))
        } else {
            Duration::ZERO
        };
        Gate {
            blockers,
            grace_left,
        }
    }

    /// Records the moment every ack is first seen (the grace counts from
    /// it, rounded up to the next second); returns true when the state
    /// changed and must be persisted.
    /// Forgets it again when a cluster stops acknowledging (e.g. re-issue).
    pub fn observe(
        &mut self,
        clusters: &[ClusterView],
        signing_root: &Certificate,
        now: SystemTime,
    ) -> bool {
        if !self.in_progress() {
            return false;
        }
        let acknowledged = self.gate(clusters, signing_root, now).blockers.is_empty();
        match (acknowledged, self.acknowledged_unix) {
            (true, None) => {
                self.acknowledged_unix = Some(system_time_to_unix(now).saturating_add(1));
                true
            }
            (false, Some(_)) => {
                self.acknowledged_unix = None;
                true
            }
            _ => false,
        }
    }
}

/// Checks every cluster's reported chain against the roots of `bundle`.
pub fn preflight(bundle: &TrustBundle, clusters: &[ClusterView], now: SystemTime) -> Vec<Stranded> {
    clusters
        .iter()
        .filter(|cluster| !cluster.chain.is_empty())
        .filter_map(|cluster| {
            ca::verify_chain_to_roots(&cluster.chain, bundle.roots(), now)
                .err()
                .map(|error| Stranded {
                    cluster: cluster.name.clone(),
                    error: error.to_string(),
                })
        })
        .collect()
}

/// Pre-flight for a bundle about to be published: refuses it if a
/// non-excluded cluster would be stranded; excluded clusters that would be
/// stranded are returned so the step can say so loudly (and audit it).
fn checked(
    bundle: TrustBundle,
    clusters: &[ClusterView],
    excluded: &[String],
    now: SystemTime,
) -> Result<(TrustBundle, Vec<Stranded>), RotationError> {
    let (excluded_stranded, stranded): (Vec<Stranded>, Vec<Stranded>) =
        preflight(&bundle, clusters, now)
            .into_iter()
            .partition(|stranded| excluded.contains(&stranded.cluster));
    if stranded.is_empty() {
        Ok((bundle, excluded_stranded))
    } else {
        Err(RotationError::WouldStrand {
            version: bundle.version(),
            stranded,
        })
    }
}

/// Starts a rotation from `current` (bundle {A}, A = `old_root`) to
/// `new_root`: phase `trust-new`, bundle {A, B}.
///
/// Errors: [`RotationError::InProgress`], [`RotationError::NewRoot`] when
/// the new root is already trusted or not valid now,
/// [`RotationError::WouldStrand`], [`RotationError::Bundle`].
pub fn start(
    previous: Option<&Rotation>,
    current: &TrustBundle,
    old_root: &Certificate,
    new_root: &Certificate,
    clusters: &[ClusterView],
    options: &StartOptions,
    now: SystemTime,
) -> Result<Step, RotationError> {
    if let Some(previous) = previous
        && previous.in_progress()
    {
        return Err(RotationError::InProgress(previous.phase));
    }
    if current.contains(new_root) {
        return Err(RotationError::NewRoot(
            "it is already in the trust bundle".into(),
        ));
    }
    if current.roots() != std::slice::from_ref(old_root) {
        return Err(RotationError::UnexpectedBundle(current.roots().len()));
    }
    let not_after = new_root
        .not_after()
        .map_err(|source| RotationError::UnreadableRoot {
            which: "new",
            source,
        })?;
    if not_after <= now {
        return Err(RotationError::NewRoot("it has expired".into()));
    }
    let (bundle, excluded_stranded) = checked(
        current.with_appended(new_root.clone())?,
        clusters,
        &options.excluded,
        now,
    )?;
    let now_unix = system_time_to_unix(now);
    let id = |root: &Certificate, which: &'static str| {
        root.serial_hex()
            .map_err(|source| RotationError::UnreadableRoot { which, source })
    };
    Ok(Step {
        rotation: Rotation {
            phase: Phase::TrustNew,
            old_root_id: id(old_root, "old")?,
            new_root_id: id(new_root, "new")?,
            bundle_version: bundle.version(),
            started_unix: now_unix,
            entered_unix: now_unix,
            acknowledged_unix: None,
            grace_seconds: options.grace.as_secs(),
            ack_timeout_seconds: options.ack_timeout.as_secs(),
            excluded: options.excluded.clone(),
            auto_advance: options.auto_advance,
            new_root_signed: false,
            aborted: false,
            outcome: None,
        },
        bundle: Some(bundle),
        excluded_stranded,
    })
}

/// The step that pre-flights `bundle` and enters `phase` publishing it.
fn publishing(
    rotation: &Rotation,
    phase: Phase,
    bundle: TrustBundle,
    clusters: &[ClusterView],
    now: SystemTime,
) -> Result<Step, RotationError> {
    let (bundle, excluded_stranded) = checked(bundle, clusters, &rotation.excluded, now)?;
    Ok(Step {
        rotation: enter(rotation, phase, bundle.version(), now),
        bundle: Some(bundle),
        excluded_stranded,
    })
}

fn enter(rotation: &Rotation, phase: Phase, version: u64, now: SystemTime) -> Rotation {
    let mut next = rotation.clone();
    next.phase = phase;
    next.bundle_version = version;
    next.entered_unix = system_time_to_unix(now);
    next.acknowledged_unix = None;
    next.aborted = false;
    next
}

/// Moves to the next phase if the current gate holds. `signing_root` is
/// the root of [`Rotation::signing_root_id`].
///
/// Errors: [`RotationError::NotInProgress`], [`RotationError::GateClosed`],
/// [`RotationError::WouldStrand`], [`RotationError::Bundle`].
pub fn advance(
    rotation: &Rotation,
    current: &TrustBundle,
    signing_root: &Certificate,
    clusters: &[ClusterView],
    now: SystemTime,
) -> Result<Step, RotationError> {
    if !rotation.in_progress() {
        return Err(RotationError::NotInProgress);
    }
    let gate = rotation.gate(clusters, signing_root, now);
    if !gate.holds() {
        return Err(RotationError::GateClosed {
            phase: rotation.phase,
            summary: gate.summary(),
        });
    }
    match rotation.phase {
        Phase::Stable => Err(RotationError::NotInProgress),
        Phase::TrustNew => {
            let mut step = publishing(
                rotation,
                Phase::SignNew,
                current.with_newest_repeated(true)?,
                clusters,
                now,
            )?;
            step.rotation.new_root_signed = true;
            Ok(step)
        }
        Phase::SignNew => publishing(
            rotation,
            Phase::RetireOld,
            current.with_oldest_removed()?,
            clusters,
            now,
        ),
        Phase::RetireOld => {
            let mut next = enter(rotation, Phase::Stable, rotation.bundle_version, now);
            next.outcome = Some(Outcome::Completed);
            Ok(Step {
                rotation: next,
                bundle: None,
                excluded_stranded: Vec::new(),
            })
        }
    }
}

/// Goes back to the last phase in which every live certificate verifies.
///
/// Errors: [`RotationError::NotInProgress`], [`RotationError::CannotAbort`]
/// from `retire-old`, [`RotationError::GateClosed`] when going back to {A}
/// after B has signed and the re-issue or grace is not done,
/// [`RotationError::WouldStrand`], [`RotationError::Bundle`].
pub fn abort(
    rotation: &Rotation,
    current: &TrustBundle,
    signing_root: &Certificate,
    clusters: &[ClusterView],
    now: SystemTime,
) -> Result<Step, RotationError> {
    match rotation.phase {
        Phase::Stable => Err(RotationError::NotInProgress),
        Phase::RetireOld => Err(RotationError::CannotAbort),
        Phase::SignNew => {
            let mut step = publishing(
                rotation,
                Phase::TrustNew,
                current.with_newest_repeated(false)?,
                clusters,
                now,
            )?;
            step.rotation.aborted = true;
            Ok(step)
        }
        Phase::TrustNew => {
            if rotation.new_root_signed {
                let gate = rotation.abort_gate(clusters, signing_root, now);
                if !gate.holds() {
                    return Err(RotationError::GateClosed {
                        phase: rotation.phase,
                        summary: format!(
                            "{} (the new root signed intermediates, so it stays trusted until every cluster is re-issued from the old root and the grace has passed)",
                            gate.summary()
                        ),
                    });
                }
            }
            let mut step = publishing(
                rotation,
                Phase::Stable,
                current.with_newest_removed()?,
                clusters,
                now,
            )?;
            step.rotation.aborted = true;
            step.rotation.outcome = Some(Outcome::Aborted);
            Ok(step)
        }
    }
}

#[cfg(test)]
mod tests;
