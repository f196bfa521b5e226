//! tonic services: authenticate the caller, authorise, delegate to the
//! [`Authority`]'s parts, and translate: this is the only file that builds
//! or reads protobuf messages, and errors are converted once
//! (`ServerError` → `Status`).

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};
use zeroize::Zeroizing;

use super::authority::Authority;
use super::core::ClusterBundle;
use super::enrollment::Caller;
use super::error::ServerError;
use super::registry::{ClusterStatus, ServerStatus};
use super::rotation_view::{
    ClusterAck, PlannedStep, RotationOptions, RotationPlan, RotationStatus,
};
use crate::ca::{self, system_time_to_unix};
use crate::proto;
use crate::proto::admin_service_server::AdminService;
use crate::proto::intermediate_service_server::IntermediateService;
use crate::proto::trust_bundle_service_server::TrustBundleService;
use crate::reconcile::StatusReport;
use crate::store::records::AuditRecord;
use crate::wire;

fn caller<T>(authority: &Authority, request: &Request<T>) -> Result<Caller, ServerError> {
    let chain: Option<Vec<Vec<u8>>> = request.peer_certs().map(|certificates| {
        certificates
            .iter()
            .map(|certificate| certificate.to_vec())
            .collect()
    });
    authority.enrollment.identify(chain.as_deref())
}

fn require_cluster<T>(authority: &Authority, request: &Request<T>) -> Result<String, ServerError> {
    match caller(authority, request)? {
        Caller::Cluster(name) => Ok(name),
        Caller::Admin(_) => Err(ServerError::PermissionDenied(
            "this call is for cluster agents; admins use AdminService".into(),
        )),
    }
}

/// Refuses a request naming another cluster than the caller's.
fn same_cluster(caller: &str, requested: &str) -> Result<(), ServerError> {
    if requested.is_empty() || requested == caller {
        Ok(())
    } else {
        Err(ServerError::PermissionDenied(format!(
            "cluster {caller:?} may only act for itself, not for cluster {requested:?}"
        )))
    }
}

fn require_admin<T>(authority: &Authority, request: &Request<T>) -> Result<String, ServerError> {
    match caller(authority, request)? {
        Caller::Admin(name) => Ok(name),
        Caller::Cluster(cluster) => Err(ServerError::PermissionDenied(format!(
            "cluster {cluster:?} may not call AdminService; use the admin credential from `trustplane init`"
        ))),
    }
}

/// The wire form of a bundle as `cluster` sees it.
fn bundle_message(bundle: &ClusterBundle) -> proto::Bundle {
    let published = &bundle.published;
    proto::Bundle {
        trust_domain: published.bundle.trust_domain().to_string(),
        version: published.bundle.version(),
        digest: published.digest.clone(),
        root_cert_pem: published.root_cert_pem.clone(),
        spiffe_bundle_json: published.spiffe_bundle_json.clone(),
        signing_root_sha256: published.signing_root_sha256.clone(),
        reissue_intermediate_serial: bundle.reissue_serial.clone(),
    }
}

/// The wire form of a bundle as an admin sees it (no reissue directive).
fn published_message(published: &Arc<super::core::PublishedBundle>) -> proto::Bundle {
    bundle_message(&ClusterBundle {
        published: published.clone(),
        reissue_serial: String::new(),
    })
}

fn cluster_message(status: ClusterStatus) -> proto::ClusterStatus {
    proto::ClusterStatus {
        name: status.name,
        state: status.state.as_str().to_string(),
        created_unix: status.created_unix,
        applied_bundle_version: status.report.applied_bundle_version,
        intermediate_serial: status.report.intermediate_serial,
        intermediate_not_after_unix: status.report.intermediate_not_after_unix,
        last_report_unix: status.report.reported_unix,
        last_error: status.report.error,
        mode: status.mode.as_str().to_string(),
        cluster_state: proto::ClusterState::from(status.state).into(),
        cluster_mode: proto::ClusterMode::from(status.mode).into(),
    }
}

fn server_status_message(status: ServerStatus) -> Result<proto::StatusResponse, ServerError> {
    Ok(proto::StatusResponse {
        trust_domain: status.trust_domain,
        bundle: Some(published_message(&status.bundle)),
        signing_root_serial: status.signing_root.serial_hex()?,
        signing_root_subject: status.signing_root.subject()?,
        signing_root_not_after_unix: system_time_to_unix(status.signing_root.not_after()?),
        clusters: status.clusters.into_iter().map(cluster_message).collect(),
    })
}

fn ack_message(ack: ClusterAck) -> proto::ClusterAck {
    proto::ClusterAck {
        name: ack.name,
        mode: ack.mode.as_str().to_string(),
        applied_bundle_version: ack.applied_bundle_version,
        chain_root_subject: ack.chain_root_subject,
        chain_root_serial: ack.chain_root_serial,
        last_report_unix: ack.last_report_unix,
        acknowledged: ack.acknowledged,
        blocking_reason: ack.blocking_reason,
        overdue: ack.overdue,
        excluded: ack.excluded,
        last_error: ack.last_error,
        cluster_mode: proto::ClusterMode::from(ack.mode).into(),
    }
}

fn rotation_status_message(status: RotationStatus) -> proto::RotationStatus {
    proto::RotationStatus {
        phase: status.phase.as_str().to_string(),
        has_rotation: status.has_rotation,
        old_root_serial: status.old_root_serial,
        old_root_subject: status.old_root_subject,
        new_root_serial: status.new_root_serial,
        new_root_subject: status.new_root_subject,
        signing_root_serial: status.signing_root_serial,
        phase_bundle_version: status.phase_bundle_version,
        bundle: status.bundle.as_ref().map(published_message),
        started_unix: status.started_unix,
        entered_unix: status.entered_unix,
        acknowledged_unix: status.acknowledged_unix,
        grace_seconds: status.grace_seconds,
        grace_left_seconds: status.grace_left_seconds,
        ack_timeout_seconds: status.ack_timeout_seconds,
        gate_holds: status.gate_holds,
        blocking: status.blocking,
        clusters: status.clusters.into_iter().map(ack_message).collect(),
        excluded: status.excluded,
        auto_advance: status.auto_advance,
        outcome: status
            .outcome
            .map(|outcome| outcome.as_str().to_string())
            .unwrap_or_default(),
        next_step: status.next_step,
        rotation_phase: proto::RotationPhase::from(status.phase).into(),
        rotation_outcome: proto::RotationOutcome::from(status.outcome).into(),
    }
}

fn planned_step_message(step: PlannedStep) -> proto::PlannedStep {
    proto::PlannedStep {
        phase: step.phase.as_str().to_string(),
        bundle_version: step.bundle_version,
        bundle_roots: step.bundle_roots,
        newest_repeated: step.newest_repeated,
        signing_root: step.signing_root,
        gate: step.gate,
        rotation_phase: proto::RotationPhase::from(step.phase).into(),
    }
}

fn plan_message(plan: RotationPlan) -> proto::RotatePlanResponse {
    proto::RotatePlanResponse {
        steps: plan.steps.into_iter().map(planned_step_message).collect(),
        preflight_ok: plan.preflight_failures.is_empty(),
        preflight_failures: plan.preflight_failures,
        current: Some(rotation_status_message(plan.current)),
        clusters: plan.clusters,
    }
}

fn rotation_options(options: proto::RotationOptions) -> Result<RotationOptions, ServerError> {
    let key_algorithm = if options.key_algorithm.is_empty() {
        None
    } else {
        Some(options.key_algorithm.parse::<ca::KeyAlgorithm>()?)
    };
    Ok(RotationOptions {
        grace_seconds: options.grace_seconds,
        ack_timeout_seconds: options.ack_timeout_seconds,
        exclude_clusters: options.exclude_clusters,
        auto_advance: options.auto_advance,
        key_algorithm,
        root_validity_seconds: options.root_validity_seconds,
        import_root_pem: options.import_root_pem,
        import_key_pem: Zeroizing::new(options.import_key_pem),
    })
}

/// The phase a step request expects (enum, or the older string).
fn expected_phase(value: i32, text: &str) -> Result<Option<crate::rotation::Phase>, ServerError> {
    wire::phase(value, text).map_err(ServerError::InvalidArgument)
}

fn audit_message(record: AuditRecord) -> proto::AuditEntry {
    proto::AuditEntry {
        unix: record.unix,
        actor: record.actor,
        action: record.action,
        detail: record.detail,
    }
}

/// `TrustBundleService`.
#[derive(Clone, Debug)]
pub struct BundleApi {
    /// Shared state.
    pub authority: Arc<Authority>,
    /// Ends watch streams when the server shuts down.
    pub shutdown: watch::Receiver<bool>,
}

/// `IntermediateService`.
#[derive(Clone, Debug)]
pub struct IntermediateApi {
    /// Shared state.
    pub authority: Arc<Authority>,
}

/// `AdminService`.
#[derive(Clone, Debug)]
pub struct AdminApi {
    /// Shared state.
    pub authority: Arc<Authority>,
}

type BundleStream = Pin<Box<dyn Stream<Item = Result<proto::Bundle, Status>> + Send>>;

#[tonic::async_trait]
impl TrustBundleService for BundleApi {
    async fn get_bundle(
        &self,
        request: Request<proto::GetBundleRequest>,
    ) -> Result<Response<proto::Bundle>, Status> {
        let cluster = match caller(&self.authority, &request)? {
            Caller::Cluster(name) => Some(name),
            Caller::Admin(_) => None,
        };
        Ok(Response::new(bundle_message(
            &self.authority.publication.for_cluster(cluster.as_deref()),
        )))
    }

    type WatchBundleStream = BundleStream;

    async fn watch_bundle(
        &self,
        request: Request<proto::WatchBundleRequest>,
    ) -> Result<Response<Self::WatchBundleStream>, Status> {
        let who = caller(&self.authority, &request)?;
        let cluster = match &who {
            Caller::Cluster(name) => Some(name.clone()),
            Caller::Admin(_) => None,
        };
        let authority = self.authority.clone();
        let mut bundles = self.authority.publication.subscribe();
        let mut directives = self.authority.publication.subscribe_directives();
        let mut shutdown = self.shutdown.clone();
        // Capacity 1: while the consumer is slow, newer versions overwrite
        // older ones in the watch channel, so it gets the latest, not a backlog.
        let (sender, receiver) = mpsc::channel(1);
        tokio::spawn(async move {
            let mut last_sent: Option<proto::Bundle> = None;
            loop {
                bundles.borrow_and_update();
                directives.borrow_and_update();
                let latest = bundle_message(&authority.publication.for_cluster(cluster.as_deref()));
                if last_sent.as_ref() != Some(&latest) {
                    tokio::select! {
                        sent = sender.send(Ok(latest.clone())) => if sent.is_err() { break },
                        _ = shutdown.changed() => break,
                    }
                    last_sent = Some(latest);
                }
                tokio::select! {
                    changed = bundles.changed() => if changed.is_err() { break },
                    changed = directives.changed() => if changed.is_err() { break },
                    _ = shutdown.changed() => break,
                    _ = sender.closed() => break,
                }
            }
            tracing::debug!(caller = ?who, "bundle watch ended");
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(receiver),
        )))
    }
}

#[tonic::async_trait]
impl IntermediateService for IntermediateApi {
    async fn enroll(
        &self,
        request: Request<proto::EnrollRequest>,
    ) -> Result<Response<proto::EnrollResponse>, Status> {
        let mut body = request.into_inner();
        // Wiped when dropped, whatever the outcome.
        let join_token = Zeroizing::new(std::mem::take(&mut body.join_token));
        let enrolled = self
            .authority
            .enrollment
            .enroll(&body.cluster, &join_token, &body.client_csr_pem)
            .await?;
        Ok(Response::new(proto::EnrollResponse {
            client_cert_pem: enrolled.client_certificate.to_pem(),
            control_plane_ca_pem: enrolled.control_plane_ca.to_pem(),
            trust_domain: enrolled.trust_domain,
        }))
    }

    async fn sign_intermediate(
        &self,
        request: Request<proto::SignIntermediateRequest>,
    ) -> Result<Response<proto::SignIntermediateResponse>, Status> {
        let cluster = require_cluster(&self.authority, &request)?;
        let body = request.into_inner();
        same_cluster(&cluster, &body.cluster)?;
        let signed = self
            .authority
            .issuance
            .sign_intermediate(&cluster, &body.csr)
            .await
            .inspect_err(|error| tracing::warn!(cluster, error = %error, "intermediate refused"))?;
        Ok(Response::new(proto::SignIntermediateResponse {
            certificate_pem: signed.certificate.to_pem(),
            cert_chain_pem: signed.cert_chain_pem,
            bundle: Some(bundle_message(&signed.bundle)),
            serial: signed.certificate.serial_hex().map_err(ServerError::from)?,
            not_after_unix: system_time_to_unix(
                signed.certificate.not_after().map_err(ServerError::from)?,
            ),
        }))
    }

    async fn report_status(
        &self,
        request: Request<proto::ReportStatusRequest>,
    ) -> Result<Response<proto::ReportStatusResponse>, Status> {
        let cluster = require_cluster(&self.authority, &request)?;
        let body = request.into_inner();
        same_cluster(&cluster, &body.cluster)?;
        let report = StatusReport {
            applied_bundle_version: body.applied_bundle_version,
            intermediate_serial: body.intermediate_serial,
            intermediate_not_after_unix: body.intermediate_not_after_unix,
            cert_chain_pem: body.cert_chain_pem,
            error: body.error,
        };
        self.authority.registry.report_status(&cluster, report)?;
        Ok(Response::new(proto::ReportStatusResponse {}))
    }
}

#[tonic::async_trait]
impl AdminService for AdminApi {
    async fn add_cluster(
        &self,
        request: Request<proto::AddClusterRequest>,
    ) -> Result<Response<proto::AddClusterResponse>, Status> {
        require_admin(&self.authority, &request)?;
        let mut body = request.into_inner();
        // Wiped when dropped, whatever the outcome.
        let kubeconfig = Zeroizing::new(std::mem::take(&mut body.kubeconfig));
        if !kubeconfig.is_empty() {
            let secret_format = wire::secret_format(body.format, &body.secret_format)
                .map_err(ServerError::InvalidArgument)?;
            self.authority.registry.add_push_cluster(
                &body.name,
                &kubeconfig,
                &body.namespace,
                secret_format,
            )?;
            return Ok(Response::new(proto::AddClusterResponse::default()));
        }
        let ttl = (body.token_ttl_seconds > 0).then(|| Duration::from_secs(body.token_ttl_seconds));
        let (token, expires) = self.authority.enrollment.add_cluster(&body.name, ttl)?;
        Ok(Response::new(proto::AddClusterResponse {
            join_token: token.to_string(),
            token_expires_unix: crate::ca::system_time_to_unix(expires),
        }))
    }

    async fn list_clusters(
        &self,
        request: Request<proto::ListClustersRequest>,
    ) -> Result<Response<proto::ListClustersResponse>, Status> {
        require_admin(&self.authority, &request)?;
        Ok(Response::new(proto::ListClustersResponse {
            clusters: self
                .authority
                .registry
                .list_clusters()?
                .into_iter()
                .map(cluster_message)
                .collect(),
            bundle_version: self.authority.publication.current().bundle.version(),
        }))
    }

    async fn remove_cluster(
        &self,
        request: Request<proto::RemoveClusterRequest>,
    ) -> Result<Response<proto::RemoveClusterResponse>, Status> {
        require_admin(&self.authority, &request)?;
        self.authority
            .registry
            .remove_cluster(&request.into_inner().name)?;
        Ok(Response::new(proto::RemoveClusterResponse {}))
    }

    async fn status(
        &self,
        request: Request<proto::StatusRequest>,
    ) -> Result<Response<proto::StatusResponse>, Status> {
        require_admin(&self.authority, &request)?;
        Ok(Response::new(server_status_message(
            self.authority.registry.status()?,
        )?))
    }

    async fn reissue_cluster(
        &self,
        request: Request<proto::ReissueClusterRequest>,
    ) -> Result<Response<proto::ReissueClusterResponse>, Status> {
        let admin = require_admin(&self.authority, &request)?;
        self.authority
            .registry
            .reissue_cluster(&request.into_inner().name, &admin)?;
        Ok(Response::new(proto::ReissueClusterResponse {}))
    }

    async fn rotate_plan(
        &self,
        request: Request<proto::RotatePlanRequest>,
    ) -> Result<Response<proto::RotatePlanResponse>, Status> {
        require_admin(&self.authority, &request)?;
        let options = rotation_options(request.into_inner().options.unwrap_or_default())?;
        Ok(Response::new(plan_message(
            self.authority.rotation.plan(&options)?,
        )))
    }

    async fn rotate_start(
        &self,
        request: Request<proto::RotateStartRequest>,
    ) -> Result<Response<proto::RotationStatus>, Status> {
        let admin = require_admin(&self.authority, &request)?;
        let options = rotation_options(request.into_inner().options.unwrap_or_default())?;
        let authority = self.authority.clone();
        // Root key generation and sealing are CPU work: keep them off the
        // async workers.
        let status =
            tokio::task::spawn_blocking(move || authority.rotation.start(&options, &admin))
                .await
                .map_err(|source| ServerError::Task {
                    task: "rotation start",
                    source,
                })??;
        Ok(Response::new(rotation_status_message(status)))
    }

    async fn rotate_status(
        &self,
        request: Request<proto::RotateStatusRequest>,
    ) -> Result<Response<proto::RotationStatus>, Status> {
        require_admin(&self.authority, &request)?;
        Ok(Response::new(rotation_status_message(
            self.authority.rotation.status()?,
        )))
    }

    async fn rotate_advance(
        &self,
        request: Request<proto::RotateAdvanceRequest>,
    ) -> Result<Response<proto::RotationStatus>, Status> {
        let admin = require_admin(&self.authority, &request)?;
        let body = request.into_inner();
        let expected = expected_phase(body.expected, &body.expected_phase)?;
        Ok(Response::new(rotation_status_message(
            self.authority.rotation.advance(&admin, expected)?,
        )))
    }

    async fn rotate_abort(
        &self,
        request: Request<proto::RotateAbortRequest>,
    ) -> Result<Response<proto::RotationStatus>, Status> {
        let admin = require_admin(&self.authority, &request)?;
        let body = request.into_inner();
        let expected = expected_phase(body.expected, &body.expected_phase)?;
        Ok(Response::new(rotation_status_message(
            self.authority.rotation.abort(&admin, expected)?,
        )))
    }

    async fn audit_log(
        &self,
        request: Request<proto::AuditLogRequest>,
    ) -> Result<Response<proto::AuditLogResponse>, Status> {
        require_admin(&self.authority, &request)?;
        let limit = match request.into_inner().limit {
            0 => 100,
            limit => limit as usize,
        };
        Ok(Response::new(proto::AuditLogResponse {
            entries: self
                .authority
                .audit
                .entries(limit)?
                .into_iter()
                .map(audit_message)
                .collect(),
        }))
    }
}
