//! tonic services: authenticate the caller, authorise, delegate to
//! [`Authority`], convert errors once (`ServerError` → `Status`).

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::ServerError;
use super::authority::{Authority, Caller};
use crate::proto;
use crate::proto::admin_service_server::AdminService;
use crate::proto::intermediate_service_server::IntermediateService;
use crate::proto::trust_bundle_service_server::TrustBundleService;
use crate::reconcile::StatusReport;
use crate::sink::SecretFormat;

fn caller<T>(authority: &Authority, request: &Request<T>) -> Result<Caller, ServerError> {
    let chain: Option<Vec<Vec<u8>>> = request.peer_certs().map(|certificates| {
        certificates
            .iter()
            .map(|certificate| certificate.to_vec())
            .collect()
    });
    authority.identify(chain.as_deref())
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
        Ok(Response::new(self.authority.bundle_for(cluster.as_deref())))
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
        let mut bundles = self.authority.subscribe();
        let mut directives = self.authority.subscribe_directives();
        let mut shutdown = self.shutdown.clone();
        // Capacity 1: while the consumer is slow, newer versions overwrite
        // older ones in the watch channel, so it gets the latest, not a backlog.
        let (sender, receiver) = mpsc::channel(1);
        tokio::spawn(async move {
            let mut last_sent: Option<proto::Bundle> = None;
            loop {
                bundles.borrow_and_update();
                directives.borrow_and_update();
                let latest = authority.bundle_for(cluster.as_deref());
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
        let body = request.into_inner();
        let response =
            self.authority
                .enroll(&body.cluster, &body.join_token, &body.client_csr_pem)?;
        Ok(Response::new(response))
    }

    async fn sign_intermediate(
        &self,
        request: Request<proto::SignIntermediateRequest>,
    ) -> Result<Response<proto::SignIntermediateResponse>, Status> {
        let cluster = require_cluster(&self.authority, &request)?;
        let body = request.into_inner();
        same_cluster(&cluster, &body.cluster)?;
        let response = self
            .authority
            .sign_intermediate(&cluster, &body.csr)
            .await
            .inspect_err(|error| tracing::warn!(cluster, error = %error, "intermediate refused"))?;
        Ok(Response::new(response))
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
        self.authority.report_status(&cluster, report)?;
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
        let body = request.into_inner();
        if !body.kubeconfig.is_empty() {
            let secret_format = if body.secret_format.is_empty() {
                SecretFormat::default()
            } else {
                body.secret_format
                    .parse()
                    .map_err(ServerError::InvalidArgument)?
            };
            self.authority.add_push_cluster(
                &body.name,
                &body.kubeconfig,
                &body.namespace,
                secret_format,
            )?;
            return Ok(Response::new(proto::AddClusterResponse::default()));
        }
        let ttl = (body.token_ttl_seconds > 0).then(|| Duration::from_secs(body.token_ttl_seconds));
        let (token, expires) = self.authority.add_cluster(&body.name, ttl)?;
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
            clusters: self.authority.list_clusters()?,
            bundle_version: self.authority.current_bundle().bundle.version(),
        }))
    }

    async fn remove_cluster(
        &self,
        request: Request<proto::RemoveClusterRequest>,
    ) -> Result<Response<proto::RemoveClusterResponse>, Status> {
        require_admin(&self.authority, &request)?;
        self.authority.remove_cluster(&request.into_inner().name)?;
        Ok(Response::new(proto::RemoveClusterResponse {}))
    }

    async fn status(
        &self,
        request: Request<proto::StatusRequest>,
    ) -> Result<Response<proto::StatusResponse>, Status> {
        require_admin(&self.authority, &request)?;
        Ok(Response::new(self.authority.status()?))
    }

    async fn reissue_cluster(
        &self,
        request: Request<proto::ReissueClusterRequest>,
    ) -> Result<Response<proto::ReissueClusterResponse>, Status> {
        let admin = require_admin(&self.authority, &request)?;
        self.authority
            .reissue_cluster(&request.into_inner().name, &admin)?;
        Ok(Response::new(proto::ReissueClusterResponse {}))
    }

    async fn rotate_plan(
        &self,
        request: Request<proto::RotatePlanRequest>,
    ) -> Result<Response<proto::RotatePlanResponse>, Status> {
        require_admin(&self.authority, &request)?;
        let options = request.into_inner().options.unwrap_or_default();
        Ok(Response::new(self.authority.rotate_plan(&options)?))
    }

    async fn rotate_start(
        &self,
        request: Request<proto::RotateStartRequest>,
    ) -> Result<Response<proto::RotationStatus>, Status> {
        let admin = require_admin(&self.authority, &request)?;
        let options = request.into_inner().options.unwrap_or_default();
        let authority = self.authority.clone();
        // Root key generation and sealing are CPU work: keep them off the
        // async workers.
        let status = tokio::task::spawn_blocking(move || authority.rotate_start(&options, &admin))
            .await
            .map_err(|error| ServerError::Setup(format!("rotation task: {error}")))??;
        Ok(Response::new(status))
    }

    async fn rotate_status(
        &self,
        request: Request<proto::RotateStatusRequest>,
    ) -> Result<Response<proto::RotationStatus>, Status> {
        require_admin(&self.authority, &request)?;
        Ok(Response::new(self.authority.rotation_status()?))
    }

    async fn rotate_advance(
        &self,
        request: Request<proto::RotateAdvanceRequest>,
    ) -> Result<Response<proto::RotationStatus>, Status> {
        let admin = require_admin(&self.authority, &request)?;
        let expected = request.into_inner().expected_phase;
        Ok(Response::new(
            self.authority.rotate_advance(&admin, &expected)?,
        ))
    }

    async fn rotate_abort(
        &self,
        request: Request<proto::RotateAbortRequest>,
    ) -> Result<Response<proto::RotationStatus>, Status> {
        let admin = require_admin(&self.authority, &request)?;
        let expected = request.into_inner().expected_phase;
        Ok(Response::new(
            self.authority.rotate_abort(&admin, &expected)?,
        ))
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
            entries: self.authority.audit_log(limit)?,
        }))
    }
}
