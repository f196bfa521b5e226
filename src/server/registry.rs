//! The cluster registry: registered clusters, their state and mode, push
//! targets and their sealed kubeconfigs, status reports, removal and
//! per-cluster reissue requests.

use std::sync::Arc;

use super::audit_trail::AuditTrail;
use super::core::{Core, PublishedBundle, is_conflict, validate_cluster_name};
use super::enrollment::Enrollment;
use super::error::ServerError;
use crate::ca::{Certificate, system_time_to_unix};
use crate::kubeconfig::{self, ValidatedKubeconfig};
use crate::reconcile::StatusReport;
use crate::signer::sealed::{seal, unseal};
use crate::sink::SecretFormat;
use crate::store::records::{
    self, ClusterRecord, ClusterReport, IssuedKind, IssuedRecord, PushTarget,
};
pub use crate::store::records::{ClusterMode, ClusterState};
use crate::store::{Batch, Expect, StoreError, Table};
use crate::telemetry::printable;

/// The largest `cert-chain.pem` a report may carry.
const MAX_REPORT_CHAIN_BYTES: usize = 64 * 1024;
/// The longest error text a report may carry.
const MAX_REPORT_ERROR_BYTES: usize = 4096;
/// How far ahead a reported intermediate expiry may be (100 years): any
/// later is nonsense, whatever the policy.
const MAX_NOT_AFTER_AHEAD_SECONDS: i64 = 100 * 366 * 24 * 3600;
/// How often a status report is retried against concurrent record writes.
const REPORT_ATTEMPTS: u32 = 5;

/// A registered cluster and its last report.
#[derive(Clone, Debug)]
pub struct ClusterStatus {
    /// The cluster name.
    pub name: String,
    /// Enrolled or not.
    pub state: ClusterState,
    /// Agent or push mode.
    pub mode: ClusterMode,
    /// When it was registered (Unix seconds).
    pub created_unix: i64,
    /// Its last report (all zero and empty when it never reported).
    pub report: ClusterReport,
}

impl ClusterStatus {
    /// The status of `record`.
    pub fn of(record: &ClusterRecord) -> Self {
        Self {
            name: record.name.clone(),
            state: if record.enrolled_unix.is_some() {
                ClusterState::Enrolled
            } else {
                ClusterState::Pending
            },
            mode: ClusterMode::of(record),
            created_unix: record.created_unix,
            report: record.report.clone().unwrap_or_default(),
        }
    }
}

/// The server's status: trust domain, bundle, signing root, clusters.
#[derive(Clone, Debug)]
pub struct ServerStatus {
    /// The trust domain served.
    pub trust_domain: String,
    /// The bundle published now.
    pub bundle: Arc<PublishedBundle>,
    /// The root that signs intermediates now.
    pub signing_root: Certificate,
    /// Every registered cluster.
    pub clusters: Vec<ClusterStatus>,
}

/// The registered clusters.
#[derive(Clone, Debug)]
pub struct Registry {
    core: Arc<Core>,
    enrollment: Enrollment,
    audit: AuditTrail,
}

impl Registry {
    /// The registry over the shared state.
    pub fn new(core: Arc<Core>) -> Self {
        Self {
            enrollment: Enrollment::new(core.clone()),
            audit: AuditTrail::new(core.clone()),
            core,
        }
    }

    /// Registers a push-mode cluster at the request of `actor`: the server
    /// writes its cacerts Secret through `kubeconfig` (sealed at rest). No
    /// join token is issued.
    ///
    /// Errors: invalid name, namespace or kubeconfig,
    /// [`ServerError::AlreadyExists`], sealing and store errors.
    pub fn add_push_cluster(
        &self,
        actor: &str,
        name: &str,
        kubeconfig: &str,
        namespace: &str,
        secret_format: SecretFormat,
    ) -> Result<(), ServerError> {
        let core = &self.core;
        validate_cluster_name(name)?;
        kubeconfig::validate(kubeconfig)
            .map_err(|source| ServerError::InvalidKubeconfig { source })?;
        let namespace = if namespace.is_empty() {
            crate::sink::kube::DEFAULT_NAMESPACE
        } else {
            namespace
        };
        validate_cluster_name(namespace).map_err(|_| {
            ServerError::InvalidArgument(format!(
                "namespace {namespace:?} is not a valid Kubernetes namespace name"
            ))
        })?;
        if core.cluster(name)?.is_some() {
            return Err(ServerError::AlreadyExists(format!(
                "cluster {name:?} already exists; remove it first with `trustplane cluster remove {name}`"
            )));
        }
        let now = system_time_to_unix(core.now());
        let secret_name = records::kubeconfig_secret_name(name);
        let record = ClusterRecord {
            name: name.to_string(),
            trust_domain: core.settings.trust_domain.clone(),
            created_unix: now,
            enrolled_unix: Some(now),
            client_cert_serial: None,
            previous_client_cert_serial: None,
            report: None,
            push: Some(PushTarget {
                namespace: namespace.to_string(),
                secret_format,
                kubeconfig_secret: secret_name.clone(),
            }),
            reissue_serial: None,
        };
        let sealed = seal(&core.kek, &secret_name, kubeconfig.as_bytes())?;
        let batch = Batch::new()
            .put_json(Table::Clusters, name, &record, Some(Expect::Absent))?
            .put(Table::Secrets, &secret_name, sealed, None);
        let batch = self.audit.record(
            batch,
            actor,
            "cluster-add",
            format!(
                "cluster {name} (push mode): namespace {namespace}, format {}",
                secret_format.as_str()
            ),
        )?;
        let batch = self.audit.record(
            batch,
            actor,
            "push-kubeconfig-set",
            format!(
                "cluster {name}: kubeconfig sha256 {} sealed as {secret_name}",
                hex::encode(ring::digest::digest(
                    &ring::digest::SHA256,
                    kubeconfig.as_bytes()
                ))
            ),
        )?;
        core.store.commit(batch)?;
        core.notify_clusters_changed();
        tracing::info!(cluster = name, namespace, "push-mode cluster registered");
        Ok(())
    }

    /// Every push-mode cluster with its target.
    ///
    /// Errors: store errors.
    pub fn push_clusters(&self) -> Result<Vec<(String, PushTarget)>, ServerError> {
        Ok(
            records::list_json::<ClusterRecord>(self.core.store.as_ref(), Table::Clusters)?
                .into_iter()
                .filter_map(|(name, record, _)| record.push.map(|push| (name, push)))
                .collect(),
        )
    }

    /// Unseals a push-mode cluster's kubeconfig and checks it again with
    /// [`kubeconfig::validate`]: one stored before the check existed (or by
    /// an older version) is not used.
    ///
    /// Errors: [`ServerError::Missing`], [`ServerError::NotUtf8`], KEK
    /// errors, [`ServerError::StoredKubeconfigRefused`].
    pub fn push_kubeconfig(&self, target: &PushTarget) -> Result<ValidatedKubeconfig, ServerError> {
        let core = &self.core;
        let sealed = core
            .store
            .get(Table::Secrets, &target.kubeconfig_secret)?
            .ok_or_else(|| {
                ServerError::missing(format!("sealed kubeconfig {:?}", target.kubeconfig_secret))
            })?;
        let plain = unseal(&core.kek, &target.kubeconfig_secret, &sealed.value)?;
        let text = std::str::from_utf8(&plain).map_err(|_| ServerError::NotUtf8 {
            what: "the sealed kubeconfig",
        })?;
        kubeconfig::validate(text).map_err(|source| ServerError::StoredKubeconfigRefused { source })
    }

    /// Records what `cluster` has applied, after [`Registry::check_report`].
    /// An error-only report (nothing applied, no chain) keeps what the
    /// cluster applied before: the gates and pre-flight still need it. The
    /// error text is stored [`printable`].
    ///
    /// Errors: a report refused by [`Registry::check_report`], unknown or
    /// not enrolled cluster, store errors (after retrying concurrent
    /// writes).
    pub fn report_status(&self, cluster: &str, report: StatusReport) -> Result<(), ServerError> {
        let core = &self.core;
        let now = system_time_to_unix(core.now());
        self.check_report(cluster, &report, now)?;
        let report = StatusReport {
            error: printable(&report.error),
            ..report
        };
        let error_only = report.applied_bundle_version == 0
            && report.cert_chain_pem.is_empty()
            && !report.error.is_empty();
        for _ in 0..REPORT_ATTEMPTS {
            let (mut record, version) = core.enrolled_cluster(cluster)?;
            // The report came over the current identity: a certificate the
            // last renewal replaced is no longer needed for a retry.
            record.previous_client_cert_serial = None;
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
            match core.store.commit(batch).map_err(ServerError::from) {
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

    /// Checks a report before it is stored: sizes; the applied bundle
    /// version not above the published one; the intermediate serial one the
    /// server issued to `cluster` (kind intermediate), with that
    /// certificate's expiry; a report without a serial (nothing applied yet)
    /// carries no expiry and no chain.
    ///
    /// Errors: [`ServerError::InvalidArgument`] for a malformed report,
    /// [`ServerError::FailedPrecondition`] for one that contradicts what
    /// the server issued or published; store errors.
    pub fn check_report(
        &self,
        cluster: &str,
        report: &StatusReport,
        now_unix: i64,
    ) -> Result<(), ServerError> {
        if report.cert_chain_pem.len() > MAX_REPORT_CHAIN_BYTES
            || report.error.len() > MAX_REPORT_ERROR_BYTES
        {
            return Err(ServerError::InvalidArgument(
                "status report too large (chain ≤ 64 KiB, error ≤ 4 KiB)".into(),
            ));
        }
        let published = self.core.current_bundle().bundle.version();
        if report.applied_bundle_version > published {
            return Err(ServerError::FailedPrecondition(format!(
                "applied bundle version {} is above the published version {published}; report only a version the server sent",
                report.applied_bundle_version
            )));
        }
        let not_after = report.intermediate_not_after_unix;
        if not_after < 0 {
            return Err(ServerError::InvalidArgument(format!(
                "intermediate_not_after_unix {not_after} is negative"
            )));
        }
        if not_after > now_unix.saturating_add(MAX_NOT_AFTER_AHEAD_SECONDS) {
            return Err(ServerError::InvalidArgument(format!(
                "intermediate_not_after_unix {not_after} is more than 100 years ahead"
            )));
        }
        let serial = report.intermediate_serial.as_str();
        if serial.is_empty() {
            if not_after != 0 || !report.cert_chain_pem.is_empty() {
                return Err(ServerError::InvalidArgument(
                    "a report without an intermediate serial carries no expiry and no chain; send the serial of the intermediate in use"
                        .into(),
                ));
            }
            return Ok(());
        }
        if serial.len() > 64
            || !serial
                .bytes()
                .all(|byte| byte.is_ascii_digit() || (b'a'..=b'f').contains(&byte))
        {
            return Err(ServerError::InvalidArgument(
                "intermediate_serial must be lowercase hex of at most 64 digits".into(),
            ));
        }
        let issued = records::get_json::<IssuedRecord>(
            self.core.store.as_ref(),
            Table::Certificates,
            serial,
        )?
        .map(|(issued, _)| issued)
        .filter(|issued| {
            issued.kind == IssuedKind::Intermediate && issued.cluster.as_deref() == Some(cluster)
        })
        .ok_or_else(|| {
            ServerError::FailedPrecondition(format!(
                "intermediate {serial} was not issued to cluster {cluster:?}; report the serial of the intermediate the server signed for this cluster"
            ))
        })?;
        if issued.not_after_unix != not_after {
            return Err(ServerError::InvalidArgument(format!(
                "intermediate_not_after_unix {not_after} is not the expiry {} of intermediate {serial}",
                issued.not_after_unix
            )));
        }
        Ok(())
    }

    /// Every registered cluster with its last report.
    ///
    /// Errors: store errors.
    pub fn list_clusters(&self) -> Result<Vec<ClusterStatus>, ServerError> {
        Ok(
            records::list_json::<ClusterRecord>(self.core.store.as_ref(), Table::Clusters)?
                .into_iter()
                .map(|(_, record, _)| ClusterStatus::of(&record))
                .collect(),
        )
    }

    /// Removes a cluster at the request of `actor`; its client certificate
    /// is refused from then on, and its unused join tokens and sealed
    /// kubeconfig go with it.
    ///
    /// Errors: [`ServerError::NotFound`], store errors.
    pub fn remove_cluster(&self, actor: &str, name: &str) -> Result<(), ServerError> {
        let core = &self.core;
        let (record, version) = core
            .cluster(name)?
            .ok_or_else(|| ServerError::NotFound(format!("cluster {name:?} is not registered")))?;
        let batch = Batch::new()
            .delete(Table::Clusters, name, Some(Expect::Version(version)))
            .delete(Table::Secrets, records::kubeconfig_secret_name(name), None);
        let batch = self.audit.record(
            batch,
            actor,
            "cluster-remove",
            format!(
                "cluster {name} ({} mode, client certificate {})",
                ClusterMode::of(&record).as_str(),
                record.client_cert_serial.as_deref().unwrap_or("none")
            ),
        )?;
        // Its unused join tokens die with it: a cluster added again under
        // the same name must not be enrolled with an old token.
        core.store
            .commit(self.enrollment.without_tokens_of(name, batch)?)?;
        core.notify_clusters_changed();
        tracing::info!(cluster = name, "cluster removed");
        Ok(())
    }

    /// Server status: trust domain, bundle, signing root, clusters.
    ///
    /// Errors: store errors.
    pub fn status(&self) -> Result<ServerStatus, ServerError> {
        Ok(ServerStatus {
            trust_domain: self.core.settings.trust_domain.clone(),
            bundle: self.core.current_bundle(),
            signing_root: self.core.signing_root(),
            clusters: self.list_clusters()?,
        })
    }

    /// Asks `name` for a new intermediate from the current signing root
    /// (agents see it on their bundle stream; push clusters are rewritten),
    /// recorded in the audit trail.
    ///
    /// Errors: [`ServerError::NotFound`], [`ServerError::InvalidArgument`]
    /// for a cluster without an intermediate yet, store errors.
    pub fn reissue_cluster(&self, name: &str, actor: &str) -> Result<(), ServerError> {
        let core = &self.core;
        let (mut record, version) = core
            .cluster(name)?
            .ok_or_else(|| ServerError::NotFound(format!("cluster {name:?} is not registered")))?;
        if record.enrolled_unix.is_none() {
            return Err(ServerError::InvalidArgument(format!(
                "cluster {name:?} has not enrolled yet: it has no intermediate to reissue"
            )));
        }
        let serial = record
            .report
            .as_ref()
            .map(|report| report.intermediate_serial.clone())
            .filter(|serial| !serial.is_empty())
            .ok_or_else(|| {
                ServerError::InvalidArgument(format!(
                    "cluster {name:?} has not reported an intermediate yet; nothing to reissue"
                ))
            })?;
        record.reissue_serial = Some(serial.clone());
        let batch = Batch::new().put_json(
            Table::Clusters,
            name,
            &record,
            Some(Expect::Version(version)),
        )?;
        let batch = self.audit.record(
            batch,
            actor,
            "cluster-reissue",
            format!("cluster {name}, intermediate {serial}"),
        )?;
        core.store.commit(batch)?;
        core.directives_changed();
        Ok(())
    }
}
