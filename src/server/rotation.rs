//! The server side of root rotation: reads what the pure
//! [`crate::rotation`] state machine needs from the store, persists each
//! step (rotation state, new root, signing-root switch, bundle, audit entry)
//! in one transaction, and only then swaps the signer and publishes.

use std::sync::Arc;
use std::time::Duration;

use super::audit_trail::AuditTrail;
use super::core::{Core, load_signer};
use super::error::ServerError;
use super::init::{RootKey, put_root};
use super::integrity;
use super::publication::Publication;
use super::registry::ClusterMode;
use super::rotation_view::{
    ClusterAck, PlannedStep, RotationOptions, RotationPlan, RotationStatus,
};
use crate::ca::{self, Certificate};
use crate::rotation::{self, ClusterView, Phase, Rotation, RotationError, StartOptions, Step};
use crate::store::records::{self, CaSettings, ClusterRecord, RootRecord, VaultIssuer};
use crate::store::{Batch, Expect, Table};

/// Default validity of a new root created by a rotation.
pub(super) const NEW_ROOT_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// A step of the pure state machine from the current rotation: its
/// `advance` or its `abort`.
type Decision = fn(
    &Rotation,
    &crate::bundle::TrustBundle,
    &Certificate,
    &[ClusterView],
    std::time::SystemTime,
) -> Result<Step, RotationError>;

/// A new root made (or imported) for a rotation, not yet stored.
struct NewRoot {
    certificate: Certificate,
    /// The key, or None when a Vault issuer holds it.
    key: Option<ca::PrivateKey>,
    vault: Option<VaultIssuer>,
    imported: bool,
}

/// Root rotation over the shared state.
#[derive(Clone, Debug)]
pub struct Rotations {
    pub(super) core: Arc<Core>,
    publication: Publication,
    audit: AuditTrail,
}

impl Rotations {
    /// Rotation over the shared state.
    pub fn new(core: Arc<Core>) -> Self {
        Self {
            publication: Publication::new(core.clone()),
            audit: AuditTrail::new(core.clone()),
            core,
        }
    }

    /// The rotation state and its store version, if a rotation was ever
    /// started.
    pub fn current(&self) -> Result<Option<(Rotation, u64)>, ServerError> {
        integrity::get_json::<Rotation>(
            self.core.store.as_ref(),
            &self.core.kek,
            Table::Meta,
            records::ROTATION_KEY,
        )
    }

    fn root_certificate(&self, id: &str) -> Result<Certificate, ServerError> {
        let (record, _) = integrity::get_json::<RootRecord>(
            self.core.store.as_ref(),
            &self.core.kek,
            Table::Roots,
            id,
        )?
        .ok_or_else(|| ServerError::missing(format!("root {id}")))?;
        Ok(Certificate::from_pem(&record.certificate_pem)?)
    }

    /// Every enrolled cluster with the view the gates need.
    fn cluster_views(&self) -> Result<Vec<(ClusterRecord, ClusterView)>, ServerError> {
        Ok(
            records::list_json::<ClusterRecord>(self.core.store.as_ref(), Table::Clusters)?
                .into_iter()
                .filter(|(_, record, _)| record.enrolled_unix.is_some())
                .map(|(_, record, _)| {
                    let report = record.report.clone().unwrap_or_default();
                    let view = ClusterView {
                        name: record.name.clone(),
                        applied_version: report.applied_bundle_version,
                        chain: Certificate::parse_pem_chain(&report.cert_chain_pem)
                            .unwrap_or_default(),
                        reported_unix: record.report.as_ref().map(|report| report.reported_unix),
                    };
                    (record, view)
                })
                .collect(),
        )
    }

    fn views(&self) -> Result<Vec<ClusterView>, ServerError> {
        Ok(self
            .cluster_views()?
            .into_iter()
            .map(|(_, view)| view)
            .collect())
    }

    /// The rotation as `trustplane rotate status` shows it.
    pub fn status(&self) -> Result<RotationStatus, ServerError> {
        let now = self.core.now();
        let signing_root = self.core.signing_root();
        let rotation = self.current()?.map(|(rotation, _)| rotation);
        let clusters = self.cluster_views()?;
        let views: Vec<ClusterView> = clusters.iter().map(|(_, view)| view.clone()).collect();
        let gate = rotation
            .as_ref()
            .map(|rotation| rotation.gate(&views, &signing_root, now));
        let mut status = RotationStatus {
            phase: rotation
                .as_ref()
                .map_or(Phase::Stable, |rotation| rotation.phase),
            has_rotation: rotation.is_some(),
            signing_root_serial: signing_root.serial_hex()?,
            bundle: Some(self.core.current_bundle()),
            ..RotationStatus::default()
        };
        for (record, view) in &clusters {
            let report = record.report.clone().unwrap_or_default();
            let blocker = gate.as_ref().and_then(|gate| {
                gate.blockers
                    .iter()
                    .find(|blocker| blocker.cluster == record.name)
            });
            let chain_root = view.chain.last();
            status.clusters.push(ClusterAck {
                name: record.name.clone(),
                mode: ClusterMode::of(record),
                applied_bundle_version: report.applied_bundle_version,
                chain_root_subject: chain_root
                    .and_then(|root| root.subject().ok())
                    .unwrap_or_default(),
                chain_root_serial: chain_root
                    .and_then(|root| root.serial_hex().ok())
                    .unwrap_or_default(),
                last_report_unix: report.reported_unix,
                acknowledged: blocker.is_none(),
                blocking_reason: blocker
                    .map(|blocker| blocker.reason.to_string())
                    .unwrap_or_default(),
                overdue: blocker.is_some_and(|blocker| blocker.overdue),
                excluded: rotation
                    .as_ref()
                    .is_some_and(|rotation| rotation.excluded.contains(&record.name)),
                last_error: report.error,
            });
        }
        let Some(rotation) = rotation else {
            status.gate_holds = true;
            status.blocking = "nothing: no rotation in progress".into();
            status.next_step =
                "start a rotation with `trustplane rotate start` (see `rotate plan` first)".into();
            return Ok(status);
        };
        let gate = gate.unwrap_or(rotation::Gate {
            blockers: Vec::new(),
            grace_left: Duration::ZERO,
        });
        let old_root = self.root_certificate(&rotation.old_root_id)?;
        let new_root = self.root_certificate(&rotation.new_root_id)?;
        status.old_root_serial = rotation.old_root_id.clone();
        status.old_root_subject = old_root.subject()?;
        status.new_root_serial = rotation.new_root_id.clone();
        status.new_root_subject = new_root.subject()?;
        status.phase_bundle_version = rotation.bundle_version;
        status.started_unix = rotation.started_unix;
        status.entered_unix = rotation.entered_unix;
        status.acknowledged_unix = rotation.acknowledged_unix.unwrap_or(0);
        status.grace_seconds = rotation.grace_seconds;
        status.grace_left_seconds = gate.grace_left.as_secs();
        status.ack_timeout_seconds = rotation.ack_timeout_seconds;
        status.excluded = rotation.excluded.clone();
        status.auto_advance = rotation.auto_advance;
        status.outcome = rotation.outcome;
        if rotation.in_progress() {
            status.gate_holds = gate.holds();
            status.blocking = gate.summary();
            status.next_step = match rotation.phase {
                Phase::TrustNew => "sign-new: intermediates re-issued from the new root; bundle bytes change (newest root repeated)",
                Phase::SignNew => "retire-old: bundle holds only the new root",
                Phase::RetireOld => "stable: the rotation is complete",
                Phase::Stable => "",
            }
            .into();
            if rotation.phase == Phase::RetireOld
                && let Some(note) = self.vault_retire_note(&rotation.old_root_id)?
            {
                status.next_step = format!("{}; {note}", status.next_step);
            }
        } else {
            status.gate_holds = true;
            status.blocking = "nothing: no rotation in progress".into();
            status.next_step =
                "start a rotation with `trustplane rotate start` (see `rotate plan` first)".into();
            if rotation.outcome == Some(rotation::Outcome::Completed)
                && let Some(note) = self.vault_retire_note(&rotation.old_root_id)?
            {
                status.next_step = format!("{}; {note}", status.next_step);
            }
        }
        Ok(status)
    }

    /// Makes (or imports) the new root for a rotation, in memory.
    fn new_root(&self, options: &RotationOptions) -> Result<NewRoot, ServerError> {
        let now = self.core.now();
        if let Some((certificate, issuer)) = &options.vault_root {
            super::init::check_vault_root(certificate, now)?;
            return Ok(NewRoot {
                certificate: certificate.clone(),
                key: None,
                vault: Some(issuer.clone()),
                imported: false,
            });
        }
        if !options.vault_issuer.is_empty() {
            return Err(ServerError::FailedPrecondition(
                "--vault-issuer was not resolved in Vault before the rotation started".into(),
            ));
        }
        let (certificate, key, imported) = if options.import_root_pem.is_empty() {
            if !options.import_key_pem.is_empty() {
                return Err(ServerError::InvalidArgument(
                    "an imported root key needs its certificate too (--import-root)".into(),
                ));
            }
            let key_algorithm = options.key_algorithm.unwrap_or(ca::KeyAlgorithm::EcdsaP256);
            let validity = if options.root_validity_seconds == 0 {
                NEW_ROOT_VALIDITY
            } else {
                Duration::from_secs(options.root_validity_seconds)
            };
            let label = humantime::format_rfc3339_seconds(now).to_string();
            let (certificate, key) = ca::create_successor_root(
                &ca::RootRequest {
                    trust_domain: self.core.settings.trust_domain.clone(),
                    organisation: self.core.settings.organisation.clone(),
                    key_algorithm,
                    validity,
                },
                &label,
                now,
            )?;
            (certificate, key, false)
        } else {
            let (certificate, key) =
                ca::import_root(&options.import_root_pem, &options.import_key_pem, now)?;
            (certificate, key, true)
        };
        Ok(NewRoot {
            certificate,
            key: Some(key),
            vault: None,
            imported,
        })
    }

    pub(super) fn start_options(
        &self,
        options: &RotationOptions,
    ) -> Result<StartOptions, ServerError> {
        let registered: Vec<String> =
            records::list_json::<ClusterRecord>(self.core.store.as_ref(), Table::Clusters)?
                .into_iter()
                .map(|(name, _, _)| name)
                .collect();
        for name in &options.exclude_clusters {
            if !registered.contains(name) {
                return Err(ServerError::InvalidArgument(format!(
                    "--exclude-cluster {name:?}: no such cluster (see `trustplane cluster list`)"
                )));
            }
        }
        Ok(StartOptions {
            grace: if options.grace_seconds == 0 {
                rotation::DEFAULT_GRACE
            } else {
                Duration::from_secs(options.grace_seconds)
            },
            ack_timeout: if options.ack_timeout_seconds == 0 {
                rotation::DEFAULT_ACK_TIMEOUT
            } else {
                Duration::from_secs(options.ack_timeout_seconds)
            },
            excluded: options.exclude_clusters.clone(),
            auto_advance: options.auto_advance,
        })
    }

    /// Persists `step` in one transaction (rotation state guarded by
    /// `rotation_version`, the settings' signing root, a new root, the
    /// bundle, an audit entry), then switches signer and publishes.
    /// Callers hold `rotation_lock`.
    fn apply_step(
        &self,
        step: Step,
        rotation_version: Option<u64>,
        new_root: Option<NewRoot>,
        actor: &str,
        action: &str,
    ) -> Result<(), ServerError> {
        let now = self.core.now();
        if !step.excluded_stranded.is_empty() {
            for stranded in &step.excluded_stranded {
                tracing::warn!(
                    cluster = %stranded.cluster,
                    error = %stranded.error,
                    "excluded cluster will not trust the published bundle"
                );
            }
        }
        let detail = format!(
            "phase {} (bundle v{}), signing root {}{}{}",
            step.rotation.phase,
            step.bundle
                .as_ref()
                .map_or(step.rotation.bundle_version, |bundle| bundle.version()),
            step.rotation.signing_root_id(),
            step.rotation
                .outcome
                .as_ref()
                .map(|outcome| format!(", rotation {outcome}"))
                .unwrap_or_default(),
            if step.excluded_stranded.is_empty() {
                String::new()
            } else {
                format!(
                    "; EXCLUDED clusters that lose trust: {}",
                    step.excluded_stranded
                        .iter()
                        .map(|stranded| stranded.cluster.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            }
        );
        let mut batch = integrity::put_json(
            Batch::new(),
            &self.core.kek,
            Table::Meta,
            records::ROTATION_KEY,
            &step.rotation,
            Some(match rotation_version {
                Some(version) => Expect::Version(version),
                None => Expect::Absent,
            }),
        )?;
        let current_signer_id = self.core.signing_root().serial_hex()?;
        let mut signer = None;
        let signing_root_id = step.rotation.signing_root_id().to_string();
        if signing_root_id != current_signer_id {
            let (mut settings, settings_version) = integrity::get_json::<CaSettings>(
                self.core.store.as_ref(),
                &self.core.kek,
                Table::Meta,
                records::CA_SETTINGS_KEY,
            )?
            .ok_or_else(|| ServerError::missing("the CA settings"))?;
            settings.signing_root_id.clone_from(&signing_root_id);
            batch = integrity::put_json(
                batch,
                &self.core.kek,
                Table::Meta,
                records::CA_SETTINGS_KEY,
                &settings,
                Some(Expect::Version(settings_version)),
            )?;
            // A step only ever switches to a root already in the store: a
            // new root is stored by `start`, which keeps the old one signing.
            let (record, _) = integrity::get_json::<RootRecord>(
                self.core.store.as_ref(),
                &self.core.kek,
                Table::Roots,
                &signing_root_id,
            )?
            .ok_or_else(|| ServerError::missing(format!("root {signing_root_id}")))?;
            signer = Some(load_signer(
                self.core.store.as_ref(),
                &self.core.kek,
                &record,
                self.core.vault(),
            )?);
        }
        if let Some(new_root) = new_root {
            let held = match (&new_root.key, &new_root.vault) {
                (Some(key), _) => RootKey::Sealed(key),
                (None, Some(issuer)) => RootKey::Vault(issuer),
                (None, None) => return Err(ServerError::NoLocalKey),
            };
            (batch, _) = put_root(
                batch,
                &self.core.kek,
                actor,
                &new_root.certificate,
                held,
                new_root.imported,
                now,
            )?;
        }
        let detail = match step.rotation.phase {
            Phase::RetireOld => match self.vault_retire_note(&step.rotation.old_root_id)? {
                Some(note) => format!("{detail}; {note}"),
                None => detail,
            },
            _ => detail,
        };
        batch = self.audit.record(batch, actor, action, detail)?;
        self.publication
            .commit_and_publish(step.bundle, batch, signer, actor)?;
        Ok(())
    }

    /// Every step of a rotation with the given options, and the pre-flight
    /// of the step that would be taken next. Changes nothing.
    pub fn plan(&self, options: &RotationOptions) -> Result<RotationPlan, ServerError> {
        let now = self.core.now();
        let current = self.core.current_bundle();
        let clusters = self.views()?;
        let start_options = self.start_options(options)?;
        let rotation = self.current()?.map(|(rotation, _)| rotation);
        let signing_root = self.core.signing_root();
        let describe = |root: &Certificate| {
            format!(
                "{} (serial {})",
                root.subject().unwrap_or_default(),
                root.serial_hex().unwrap_or_default()
            )
        };
        let in_progress = rotation.as_ref().is_some_and(Rotation::in_progress);
        let (old_root, new_root_name, preflight) = if in_progress {
            let rotation = rotation.as_ref().ok_or(RotationError::NotInProgress)?;
            let preflight =
                match rotation::advance(rotation, &current.bundle, &signing_root, &clusters, now) {
                    Ok(step) => step
                        .excluded_stranded
                        .into_iter()
                        .map(|stranded| {
                            format!(
                                "{} (excluded, will lose trust): {}",
                                stranded.cluster, stranded.error
                            )
                        })
                        .collect(),
                    Err(RotationError::WouldStrand { stranded, .. }) => stranded
                        .into_iter()
                        .map(|stranded| format!("{}: {}", stranded.cluster, stranded.error))
                        .collect(),
                    Err(other) => vec![format!("next step: {other}")],
                };
            let new_root = self.root_certificate(&rotation.new_root_id)?;
            (
                self.root_certificate(&rotation.old_root_id)?,
                describe(&new_root),
                preflight,
            )
        } else {
            // Trust-new keeps every root; a chain that does not verify under
            // the current roots would not verify under {A, B} either.
            let preflight = rotation::preflight(&current.bundle, &clusters, now)
                .into_iter()
                .filter(|stranded| !start_options.excluded.contains(&stranded.cluster))
                .map(|stranded| format!("{}: {}", stranded.cluster, stranded.error))
                .collect();
            let new_root_name = if !options.vault_issuer.is_empty() {
                format!(
                    "Vault issuer {:?} (adopted if it exists, else created in Vault by `rotate start`)",
                    options.vault_issuer
                )
            } else if options.import_root_pem.is_empty() {
                format!(
                    "new {} root \"{} root CA <start time>\" (created by `rotate start`)",
                    options
                        .key_algorithm
                        .unwrap_or(ca::KeyAlgorithm::EcdsaP256)
                        .as_str(),
                    self.core.settings.trust_domain
                )
            } else {
                let certificate = Certificate::from_pem(&options.import_root_pem)?;
                format!("imported {}", describe(&certificate))
            };
            (signing_root.clone(), new_root_name, preflight)
        };
        let old = describe(&old_root);
        let base = if in_progress {
            rotation
                .as_ref()
                .map_or(0, |rotation| rotation.bundle_version)
        } else {
            current.bundle.version()
        };
        let names: Vec<String> = clusters
            .iter()
            .filter(|cluster| !start_options.excluded.contains(&cluster.name))
            .map(|cluster| cluster.name.clone())
            .collect();
        let all = if names.is_empty() {
            "no enrolled cluster".to_string()
        } else {
            names.join(", ")
        };
        let grace = humantime::format_duration(start_options.grace).to_string();
        let phases = [
            (
                Phase::TrustNew,
                vec![old.clone(), new_root_name.clone()],
                false,
                old.clone(),
                format!("every cluster applies the bundle ({all})"),
            ),
            (
                Phase::SignNew,
                vec![old.clone(), new_root_name.clone()],
                true,
                new_root_name.clone(),
                format!(
                    "every cluster serves an intermediate signed by the new root ({all}), then a grace of {grace}"
                ),
            ),
            (
                Phase::RetireOld,
                vec![new_root_name.clone()],
                false,
                new_root_name.clone(),
                format!("every cluster applies the bundle ({all}); then stable"),
            ),
        ];
        let current_phase = rotation
            .as_ref()
            .filter(|rotation| rotation.in_progress())
            .map(|rotation| rotation.phase);
        let skip = match current_phase {
            Some(Phase::TrustNew) => 1,
            Some(Phase::SignNew) => 2,
            Some(Phase::RetireOld) => 3,
            _ => 0,
        };
        let steps = phases
            .into_iter()
            .skip(skip)
            .enumerate()
            .map(
                |(index, (phase, roots, repeated, signer, gate))| PlannedStep {
                    phase,
                    bundle_version: base + 1 + index as u64,
                    bundle_roots: roots,
                    newest_repeated: repeated,
                    signing_root: signer,
                    gate,
                },
            )
            .collect();
        Ok(RotationPlan {
            steps,
            preflight_failures: preflight,
            current: self.status()?,
            clusters: names,
        })
    }

    /// Creates or imports the new root and enters `trust-new`.
    pub fn start(
        &self,
        options: &RotationOptions,
        actor: &str,
    ) -> Result<RotationStatus, ServerError> {
        // Another server sharing the store may have moved on.
        self.core.refresh()?;
        let _guard = self.core.lock_rotation();
        let now = self.core.now();
        let start_options = self.start_options(options)?;
        let previous = self.current()?;
        if let Some((rotation, _)) = &previous
            && rotation.in_progress()
        {
            return Err(RotationError::InProgress(rotation.phase).into());
        }
        let new_root = self.new_root(options)?;
        let old_root = self.core.signing_root();
        let current = self.core.current_bundle();
        let step = rotation::start(
            previous.as_ref().map(|(rotation, _)| rotation),
            &current.bundle,
            &old_root,
            &new_root.certificate,
            &self.views()?,
            &start_options,
            now,
        )?;
        if !start_options.excluded.is_empty() {
            tracing::warn!(
                excluded = ?start_options.excluded,
                "rotation started with excluded clusters: they are not waited for and may lose trust in the new root"
            );
        }
        self.apply_step(
            step,
            previous.map(|(_, version)| version),
            Some(new_root),
            actor,
            if start_options.excluded.is_empty() {
                "rotate-start".to_string()
            } else {
                format!(
                    "rotate-start excluding {}",
                    start_options.excluded.join(", ")
                )
            }
            .as_str(),
        )?;
        drop(_guard);
        self.status()
    }

    /// Takes one step decided by `decide` (the pure `advance` or `abort`)
    /// from the persisted rotation. Callers hold `rotation_lock`.
    fn step_locked(
        &self,
        actor: &str,
        expected_phase: Option<Phase>,
        action: &str,
        decide: Decision,
    ) -> Result<(), ServerError> {
        let (rotation, version) = self.current()?.ok_or(RotationError::NotInProgress)?;
        check_expected_phase(&rotation, expected_phase)?;
        let current = self.core.current_bundle();
        let step = decide(
            &rotation,
            &current.bundle,
            &self.core.signing_root(),
            &self.views()?,
            self.core.now(),
        )?;
        self.apply_step(step, Some(version), None, actor, action)
    }

    fn advance_locked(
        &self,
        actor: &str,
        expected_phase: Option<Phase>,
    ) -> Result<(), ServerError> {
        self.step_locked(actor, expected_phase, "rotate-advance", rotation::advance)
    }

    /// Enters the next phase if the gate holds. A non-empty
    /// `expected_phase` must be the current phase (so a step is never taken
    /// twice when someone else, or `--auto`, moved on meanwhile).
    pub fn advance(
        &self,
        actor: &str,
        expected_phase: Option<Phase>,
    ) -> Result<RotationStatus, ServerError> {
        self.core.refresh()?;
        {
            let _guard = self.core.lock_rotation();
            self.advance_locked(actor, expected_phase)?;
        }
        self.status()
    }

    /// Goes back to the last safe phase (`expected_phase` as for
    /// [`Self::advance`]).
    pub fn abort(
        &self,
        actor: &str,
        expected_phase: Option<Phase>,
    ) -> Result<RotationStatus, ServerError> {
        self.core.refresh()?;
        {
            let _guard = self.core.lock_rotation();
            self.step_locked(actor, expected_phase, "rotate-abort", rotation::abort)?;
        }
        self.status()
    }

    /// Notes when every ack is in (the grace counts from then) and, with
    /// `--auto`, advances when the gate holds. The server calls it once a
    /// second (off the request path); a late note only lengthens the grace.
    pub fn tick(&self) -> Result<(), ServerError> {
        let _guard = self.core.lock_rotation();
        let Some((mut rotation, version)) = self.current()? else {
            return Ok(());
        };
        if !rotation.in_progress() {
            return Ok(());
        }
        let now = self.core.now();
        let views = self.views()?;
        let signing_root = self.core.signing_root();
        let mut version = version;
        if rotation.observe(&views, &signing_root, now) {
            let batch = integrity::put_json(
                Batch::new(),
                &self.core.kek,
                Table::Meta,
                records::ROTATION_KEY,
                &rotation,
                Some(Expect::Version(version)),
            )?;
            let detail = match rotation.acknowledged_unix {
                Some(_) => format!("phase {}: every cluster acknowledged", rotation.phase),
                None => format!(
                    "phase {}: no longer acknowledged by every cluster",
                    rotation.phase
                ),
            };
            self.core.store.commit(self.audit.record(
                batch,
                "server",
                "rotate-acknowledged",
                detail,
            )?)?;
            version += 1;
            if rotation.acknowledged_unix.is_some() {
                tracing::info!(phase = %rotation.phase, "every cluster acknowledged the phase");
            }
        }
        let _ = version;
        if rotation.auto_advance
            && rotation.gate(&views, &signing_root, now).holds()
            && let Err(error) = self.advance_locked("server (--auto)", None)
        {
            tracing::warn!(error = %error, "automatic rotation step refused");
        }
        Ok(())
    }
}

fn check_expected_phase(
    rotation: &Rotation,
    expected_phase: Option<Phase>,
) -> Result<(), ServerError> {
    match expected_phase {
        Some(expected) if expected != rotation.phase => Err(RotationError::PhaseMoved {
            expected,
            actual: rotation.phase,
        }
        .into()),
        _ => Ok(()),
    }
}
