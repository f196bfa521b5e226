//! tonic services: authenticate the caller, authorise, delegate to the
//! [`Authority`]'s parts, and translate: this is the only file that builds
//! or reads protobuf messages, and errors are converted once
//! (`ServerError` → `Status`). `grpc_watch.rs` holds the one streaming
//! call's state and the bundle's wire form it shares with this file.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};
use zeroize::Zeroizing;

use super::audit_trail::AuditQuery;
use super::authority::Authority;
use super::core::ClusterBundle;
use super::enrollment::Caller;
use super::error::ServerError;
use super::grpc_watch::{BundleWatch, bundle_message};
use super::limits::{CallRates, WatchStreams};
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
use crate::store::records::{AdminRole, AuditRecord};
use crate::telemetry::metrics;
use crate::wire;

/// The client certificate chain the TLS layer verified, if any.
fn peer_chain<T>(request: &Request<T>) -> Option<Vec<Vec<u8>>> {
    request.peer_certs().map(|certificates| {
        certificates
            .iter()
            .map(|certificate| certificate.to_vec())
            .collect()
    })
}

fn caller<T>(authority: &Authority, request: &Request<T>) -> Result<Caller, ServerError> {
    authority
        .enrollment
        .identify(peer_chain(request).as_deref())
}

fn require_cluster<T>(authority: &Authority, request: &Request<T>) -> Result<String, ServerError> {
    cluster_only(caller(authority, request)?)
}

/// The cluster a caller is; an admin is refused (cluster-only calls).
fn cluster_only(caller: Caller) -> Result<String, ServerError> {
    match caller {
        Caller::Cluster(name) => Ok(name),
        Caller::Admin { .. } => Err(ServerError::PermissionDenied(
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

/// What an `AdminService` call needs of the caller's role.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Permission {
    /// Reading: list, status, rotation status and plan, audit log
    /// (`auditor`, `operator`, `admin`).
    Read,
    /// Changing clusters or the rotation: add (enroll), remove, reissue,
    /// rotate start/advance/abort (`operator`, `admin`).
    Operate,
}

impl Permission {
    /// Whether `role` has this permission.
    pub(crate) fn allows(self, role: AdminRole) -> bool {
        match self {
            Permission::Read => true,
            Permission::Operate => matches!(role, AdminRole::Admin | AdminRole::Operator),
        }
    }

    /// The roles that have it, in words.
    fn roles(self) -> String {
        AdminRole::ALL
            .into_iter()
            .filter(|role| self.allows(*role))
            .map(AdminRole::as_str)
            .collect::<Vec<_>>()
            .join(" or ")
    }

    fn describe(self) -> &'static str {
        match self {
            Permission::Read => "read the server's state",
            Permission::Operate => "change clusters or the root rotation",
        }
    }
}

/// The one authorisation check of every `AdminService` method: the caller
/// must be an admin credential whose role has `permission`. Returns the
/// admin's name (the actor in the audit trail). Every refusal is audited
/// (see [`audit_refusal`]).
///
/// Errors: as [`caller`]; [`ServerError::PermissionDenied`] naming the
/// admin, its role and the roles needed, or for a cluster certificate.
fn require_role<T>(
    authority: &Authority,
    request: &Request<T>,
    permission: Permission,
) -> Result<String, ServerError> {
    let (actor, error) = match caller(authority, request) {
        Ok(Caller::Admin { name, role }) if permission.allows(role) => return Ok(name),
        Ok(Caller::Admin { name, role }) => {
            let error = ServerError::PermissionDenied(format!(
                "admin {name:?} has role {role}, which may not {}: that needs role {}",
                permission.describe(),
                permission.roles()
            ));
            (Some(name), error)
        }
        Ok(Caller::Cluster(cluster)) => {
            let error = ServerError::PermissionDenied(format!(
                "cluster {cluster:?} may not call AdminService; use an admin credential (`trustplane init` or `trustplane admin add`)"
            ));
            (Some(super::audit::cluster_actor(&cluster)), error)
        }
        Err(error) => (None, error),
    };
    audit_refusal(authority, actor.as_deref(), method_of::<T>(), &error);
    Err(error)
}

/// The AdminService method a request message belongs to: its type name
/// without `Request` (`RotateStartRequest` → `RotateStart`); every admin
/// method has its own request message.
fn method_of<T>() -> &'static str {
    let name = std::any::type_name::<T>();
    let name = name.rsplit("::").next().unwrap_or(name);
    name.strip_suffix("Request").unwrap_or(name)
}

/// Records a refused admin call: `actor` (None: a caller without a
/// trustplane identity) called `method` and was refused with `error`.
/// Callers whose certificate verified against the control-plane CA get an
/// audit entry (`admin-call-refused`); a caller without any certificate is
/// only logged, so that an unauthenticated flood cannot turn into durable
/// store writes. A failure to record is logged, and the call is refused
/// all the same.
fn audit_refusal(authority: &Authority, actor: Option<&str>, method: &str, error: &ServerError) {
    let actor = match (actor, error) {
        (Some(actor), _) => actor.to_string(),
        (None, ServerError::Unauthenticated) => {
            tracing::warn!(
                target: "trustplane::audit",
                method,
                error = %error,
                "admin call refused: no client certificate"
            );
            return;
        }
        (None, _) => "unidentified client certificate".to_string(),
    };
    let detail = format!("AdminService/{method}: {error}");
    if let Err(record_error) = authority
        .audit
        .record_alone(&actor, "admin-call-refused", detail)
    {
        tracing::error!(
            actor = %actor,
            method,
            error = %record_error,
            "could not record a refused admin call in the audit trail"
        );
    }
}

/// The hex serial of the client certificate the caller presented.
/// [`caller`] for `RenewIdentity`: also the certificate the last renewal
/// replaced, while the new one is unused.
fn identify_renewing<T>(
    authority: &Authority,
    request: &Request<T>,
) -> Result<Caller, ServerError> {
    authority
        .enrollment
        .identify_renewing(peer_chain(request).as_deref())
}

fn presented_serial<T>(request: &Request<T>) -> Result<String, ServerError> {
    let certificates = request.peer_certs().ok_or(ServerError::Unauthenticated)?;
    let first = certificates.first().ok_or(ServerError::Unauthenticated)?;
    Ok(ca::Certificate::from_der(first.to_vec())?.serial_hex()?)
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
        vault_issuer: options.vault_issuer,
        vault_root: None,
        vault_root_created: false,
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
        seq: record.seq,
        hash: record.hash,
    }
}

/// `TrustBundleService`.
#[derive(Clone, Debug)]
pub struct BundleApi {
    /// Shared state.
    pub authority: Arc<Authority>,
    /// Ends watch streams when the server shuts down.
    pub shutdown: watch::Receiver<bool>,
    /// Open watch streams per caller identity.
    pub watches: Arc<WatchStreams>,
}

/// `IntermediateService`.
#[derive(Clone, Debug)]
pub struct IntermediateApi {
    /// Shared state.
    pub authority: Arc<Authority>,
    /// Per-cluster call rates.
    pub rates: Arc<CallRates>,
}

impl IntermediateApi {
    /// `SignIntermediate`, its outcome counted by the caller.
    async fn sign(
        &self,
        request: Request<proto::SignIntermediateRequest>,
    ) -> Result<Response<proto::SignIntermediateResponse>, ServerError> {
        let cluster = require_cluster(&self.authority, &request)?;
        let body = request.into_inner();
        same_cluster(&cluster, &body.cluster)?;
        self.rates.sign_intermediate(&cluster)?;
        let signed = if self.authority.core().store.shared() {
            // Every store read is a round trip to Vault: not on the workers
            // that serve every connection.
            let runtime = tokio::runtime::Handle::current();
            let signer = cluster.clone();
            off_workers(&self.authority, "SignIntermediate", move |authority| {
                runtime.block_on(authority.issuance.sign_intermediate(&signer, &body.csr))
            })
            .await
        } else {
            // Local reads take microseconds and the crypto about as long as
            // a TLS handshake, which the workers do too; the durable write
            // goes to the store's writer thread (no blocking-pool hop).
            self.authority
                .issuance
                .sign_intermediate(&cluster, &body.csr)
                .await
        }
        .inspect_err(|error| tracing::warn!(cluster, error = %error, "intermediate refused"))?;
        Ok(Response::new(proto::SignIntermediateResponse {
            certificate_pem: signed.certificate.to_pem(),
            cert_chain_pem: signed.cert_chain_pem,
            bundle: Some(bundle_message(&signed.bundle)),
            serial: signed.certificate.serial_hex()?,
            not_after_unix: system_time_to_unix(signed.certificate.not_after()?),
        }))
    }
}

/// Runs `call` on the blocking pool: the store is synchronous (redb), so
/// calls that write it stay off the async workers that serve every
/// connection.
async fn off_workers<T, F>(
    authority: &Arc<Authority>,
    what: &'static str,
    call: F,
) -> Result<T, ServerError>
where
    T: Send + 'static,
    F: FnOnce(&Authority) -> Result<T, ServerError> + Send + 'static,
{
    let authority = authority.clone();
    tokio::task::spawn_blocking(move || call(&authority))
        .await
        .map_err(|source| ServerError::Task { task: what, source })?
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
            Caller::Admin { .. } => None,
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
        let (cluster, identity) = match &who {
            Caller::Cluster(name) => (Some(name.clone()), format!("cluster {name:?}")),
            Caller::Admin { name, .. } => (None, format!("admin {name:?}")),
        };
        let slot = self.watches.open(&identity)?;
        let watch = BundleWatch::open(self.authority.clone(), cluster, slot, self.shutdown.clone());
        tracing::debug!(caller = ?who, "bundle watch opened");
        Ok(Response::new(Box::pin(futures_util::stream::unfold(
            watch,
            BundleWatch::next,
        ))))
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
        let runtime = tokio::runtime::Handle::current();
        let enrolled = off_workers(&self.authority, "Enroll", move |authority| {
            runtime.block_on(authority.enrollment.enroll(
                &body.cluster,
                &join_token,
                &body.client_csr_pem,
            ))
        })
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
        let started = std::time::Instant::now();
        let answered = self.sign(request).await;
        metrics::record_issuance(
            answered
                .as_ref()
                .map_or_else(ServerError::label, |_| metrics::OUTCOME_OK),
            started.elapsed(),
        );
        Ok(answered?)
    }

    async fn report_status(
        &self,
        request: Request<proto::ReportStatusRequest>,
    ) -> Result<Response<proto::ReportStatusResponse>, Status> {
        let cluster = require_cluster(&self.authority, &request)?;
        let body = request.into_inner();
        same_cluster(&cluster, &body.cluster)?;
        self.rates.report_status(&cluster)?;
        let report = StatusReport {
            applied_bundle_version: body.applied_bundle_version,
            intermediate_serial: body.intermediate_serial,
            intermediate_not_after_unix: body.intermediate_not_after_unix,
            cert_chain_pem: body.cert_chain_pem,
            error: body.error,
        };
        off_workers(&self.authority, "ReportStatus", move |authority| {
            authority.registry.report_status(&cluster, report)
        })
        .await?;
        Ok(Response::new(proto::ReportStatusResponse {}))
    }

    async fn renew_identity(
        &self,
        request: Request<proto::RenewIdentityRequest>,
    ) -> Result<Response<proto::RenewIdentityResponse>, Status> {
        let cluster = cluster_only(identify_renewing(&self.authority, &request)?)?;
        let serial = presented_serial(&request)?;
        let body = request.into_inner();
        let runtime = tokio::runtime::Handle::current();
        let renewing = cluster.clone();
        let renewed = off_workers(&self.authority, "RenewIdentity", move |authority| {
            runtime.block_on(authority.enrollment.renew_identity(
                &authority.audit,
                &renewing,
                &serial,
                &body.client_csr_pem,
            ))
        })
        .await
        .inspect_err(|error| tracing::warn!(cluster, error = %error, "identity renewal refused"))?;
        Ok(Response::new(proto::RenewIdentityResponse {
            client_certificate_pem: renewed.client_certificate.to_pem(),
            control_plane_ca_pem: renewed.control_plane_ca.to_pem(),
            not_after_unix: system_time_to_unix(
                renewed
                    .client_certificate
                    .not_after()
                    .map_err(ServerError::from)?,
            ),
        }))
    }
}

#[tonic::async_trait]
impl AdminService for AdminApi {
    async fn add_cluster(
        &self,
        request: Request<proto::AddClusterRequest>,
    ) -> Result<Response<proto::AddClusterResponse>, Status> {
        let admin = require_role(&self.authority, &request, Permission::Operate)?;
        let mut body = request.into_inner();
        // Wiped when dropped, whatever the outcome.
        let kubeconfig = Zeroizing::new(std::mem::take(&mut body.kubeconfig));
        if !kubeconfig.is_empty() {
            let secret_format = wire::secret_format(body.format, &body.secret_format)
                .map_err(ServerError::InvalidArgument)?;
            off_workers(&self.authority, "AddCluster", move |authority| {
                authority.registry.add_push_cluster(
                    &admin,
                    &body.name,
                    &kubeconfig,
                    &body.namespace,
                    secret_format,
                )
            })
            .await?;
            return Ok(Response::new(proto::AddClusterResponse::default()));
        }
        let ttl = (body.token_ttl_seconds > 0).then(|| Duration::from_secs(body.token_ttl_seconds));
        let (token, expires) = off_workers(&self.authority, "AddCluster", move |authority| {
            authority.enrollment.add_cluster(&admin, &body.name, ttl)
        })
        .await?;
        Ok(Response::new(proto::AddClusterResponse {
            join_token: token.to_string(),
            token_expires_unix: crate::ca::system_time_to_unix(expires),
        }))
    }

    async fn list_clusters(
        &self,
        request: Request<proto::ListClustersRequest>,
    ) -> Result<Response<proto::ListClustersResponse>, Status> {
        require_role(&self.authority, &request, Permission::Read)?;
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
        let admin = require_role(&self.authority, &request, Permission::Operate)?;
        let name = request.into_inner().name;
        off_workers(&self.authority, "RemoveCluster", move |authority| {
            authority.registry.remove_cluster(&admin, &name)
        })
        .await?;
        Ok(Response::new(proto::RemoveClusterResponse {}))
    }

    async fn status(
        &self,
        request: Request<proto::StatusRequest>,
    ) -> Result<Response<proto::StatusResponse>, Status> {
        require_role(&self.authority, &request, Permission::Read)?;
        Ok(Response::new(server_status_message(
            self.authority.registry.status()?,
        )?))
    }

    async fn reissue_cluster(
        &self,
        request: Request<proto::ReissueClusterRequest>,
    ) -> Result<Response<proto::ReissueClusterResponse>, Status> {
        let admin = require_role(&self.authority, &request, Permission::Operate)?;
        let name = request.into_inner().name;
        off_workers(&self.authority, "ReissueCluster", move |authority| {
            authority.registry.reissue_cluster(&name, &admin)
        })
        .await?;
        Ok(Response::new(proto::ReissueClusterResponse {}))
    }

    async fn rotate_plan(
        &self,
        request: Request<proto::RotatePlanRequest>,
    ) -> Result<Response<proto::RotatePlanResponse>, Status> {
        require_role(&self.authority, &request, Permission::Read)?;
        let options = rotation_options(request.into_inner().options.unwrap_or_default())?;
        Ok(Response::new(plan_message(
            self.authority.rotation.plan(&options)?,
        )))
    }

    async fn rotate_start(
        &self,
        request: Request<proto::RotateStartRequest>,
    ) -> Result<Response<proto::RotationStatus>, Status> {
        let admin = require_role(&self.authority, &request, Permission::Operate)?;
        let options = rotation_options(request.into_inner().options.unwrap_or_default())?;
        let options = self.authority.rotation.resolve_vault_root(options).await?;
        // An issuer this call created in Vault stays there if the start
        // fails (trustplane never deletes in Vault): the error says so.
        let created = options
            .vault_root
            .as_ref()
            .filter(|_| options.vault_root_created)
            .map(|(_, issuer)| issuer.clone());
        let authority = self.authority.clone();
        // Root key generation and sealing are CPU work: keep them off the
        // async workers.
        let started =
            tokio::task::spawn_blocking(move || authority.rotation.start(&options, &admin))
                .await
                .map_err(|source| ServerError::Task {
                    task: "rotation start",
                    source,
                })
                .and_then(|result| result);
        match (started, created) {
            (Ok(status), _) => Ok(Response::new(rotation_status_message(status))),
            (Err(error), None) => Err(error.into()),
            (Err(error), Some(issuer)) => {
                let status = Status::from(error);
                let note = super::rotation_vault::kept_issuer_note(&issuer);
                Err(Status::new(
                    status.code(),
                    format!("{}; {note}", status.message()),
                ))
            }
        }
    }

    async fn rotate_status(
        &self,
        request: Request<proto::RotateStatusRequest>,
    ) -> Result<Response<proto::RotationStatus>, Status> {
        require_role(&self.authority, &request, Permission::Read)?;
        Ok(Response::new(rotation_status_message(
            self.authority.rotation.status()?,
        )))
    }

    async fn rotate_advance(
        &self,
        request: Request<proto::RotateAdvanceRequest>,
    ) -> Result<Response<proto::RotationStatus>, Status> {
        let admin = require_role(&self.authority, &request, Permission::Operate)?;
        let body = request.into_inner();
        let expected = expected_phase(body.expected, &body.expected_phase)?;
        let status = off_workers(&self.authority, "RotateAdvance", move |authority| {
            authority.rotation.advance(&admin, expected)
        })
        .await?;
        Ok(Response::new(rotation_status_message(status)))
    }

    async fn rotate_abort(
        &self,
        request: Request<proto::RotateAbortRequest>,
    ) -> Result<Response<proto::RotationStatus>, Status> {
        let admin = require_role(&self.authority, &request, Permission::Operate)?;
        let body = request.into_inner();
        let expected = expected_phase(body.expected, &body.expected_phase)?;
        let status = off_workers(&self.authority, "RotateAbort", move |authority| {
            authority.rotation.abort(&admin, expected)
        })
        .await?;
        Ok(Response::new(rotation_status_message(status)))
    }

    async fn audit_log(
        &self,
        request: Request<proto::AuditLogRequest>,
    ) -> Result<Response<proto::AuditLogResponse>, Status> {
        require_role(&self.authority, &request, Permission::Read)?;
        let body = request.into_inner();
        let query = AuditQuery {
            since_unix: (body.since_unix != 0).then_some(body.since_unix),
            action: (!body.action.is_empty()).then_some(body.action),
            limit: match body.limit {
                0 => 100,
                limit => limit as usize,
            },
        };
        Ok(Response::new(proto::AuditLogResponse {
            entries: self
                .authority
                .audit
                .entries(&query)?
                .into_iter()
                .map(audit_message)
                .collect(),
        }))
    }
}
