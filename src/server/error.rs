//! The server's error type and its one conversion into `tonic::Status`.

use crate::ca::CaError;
use crate::policy::PolicyError;
use crate::reconcile::ReconcileError;
use crate::signer::SignerError;
use crate::sink::{KubernetesError, SinkError};
use crate::store::StoreError;

/// Everything a server operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The call carried no client certificate.
    #[error(
        "this call needs a client certificate: enroll the agent with a join token, or use the admin credential from `trustplane init`"
    )]
    Unauthenticated,
    /// The caller is authenticated but may not do this.
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// The request is malformed (bad CSR, bad name, ...).
    #[error("invalid request: {0}")]
    InvalidArgument(String),
    /// A CSR or certificate problem.
    #[error("{0}")]
    Certificate(#[source] CaError),
    /// The issuance policy refused the request.
    #[error("{0}")]
    Policy(#[source] PolicyError),
    /// A named object does not exist.
    #[error("{0}")]
    NotFound(String),
    /// A named object already exists.
    #[error("{0}")]
    AlreadyExists(String),
    /// A join token problem: unknown, used, expired or for another cluster.
    #[error("{0}")]
    JoinToken(String),
    /// The store failed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// The root signer failed.
    #[error("signer: {0}")]
    Signer(#[source] SignerError),
    /// The server is not initialised or its state is inconsistent.
    #[error("{0}")]
    Setup(String),
    /// Reading or writing a push-mode cluster's cacerts failed.
    #[error("push: could not update the cacerts")]
    Sink(#[from] SinkError),
    /// A push-mode cluster's kubeconfig gives no usable client.
    #[error("push: no Kubernetes client")]
    Kubernetes(#[from] KubernetesError),
    /// A push-mode cluster's cacerts set is unusable or istiod would reject it.
    #[error("push: {0}")]
    Cacerts(#[from] ReconcileError),
    /// A rotation step was refused (gate closed, would strand a cluster,
    /// nothing in progress, …); the message says what to do.
    #[error("rotation: {0}")]
    Rotation(#[from] crate::rotation::RotationError),
}

impl From<CaError> for ServerError {
    fn from(error: CaError) -> Self {
        ServerError::Certificate(error)
    }
}

impl From<PolicyError> for ServerError {
    fn from(error: PolicyError) -> Self {
        ServerError::Policy(error)
    }
}

impl From<SignerError> for ServerError {
    fn from(error: SignerError) -> Self {
        match error {
            SignerError::Ca(inner) => ServerError::Certificate(inner),
            other => ServerError::Signer(other),
        }
    }
}

impl ServerError {
    /// A short label for logs and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            ServerError::Unauthenticated => "unauthenticated",
            ServerError::PermissionDenied(_) => "permission_denied",
            ServerError::InvalidArgument(_) => "invalid_argument",
            ServerError::Certificate(_) => "certificate",
            ServerError::Policy(_) => "policy",
            ServerError::NotFound(_) => "not_found",
            ServerError::AlreadyExists(_) => "already_exists",
            ServerError::JoinToken(_) => "join_token",
            ServerError::Store(_) => "store",
            ServerError::Signer(_) => "signer",
            ServerError::Setup(_) => "setup",
            ServerError::Sink(_) | ServerError::Kubernetes(_) | ServerError::Cacerts(_) => "push",
            ServerError::Rotation(_) => "rotation",
        }
    }
}

impl From<ServerError> for tonic::Status {
    /// Picks the gRPC code by variant. Internal failures (store, signer,
    /// setup) are logged in full here and sent as a generic message, so no
    /// path or key detail leaves the server.
    fn from(error: ServerError) -> Self {
        use tonic::Code;
        let code = match &error {
            ServerError::Unauthenticated => Code::Unauthenticated,
            ServerError::PermissionDenied(_) | ServerError::JoinToken(_) => Code::PermissionDenied,
            ServerError::InvalidArgument(_) => Code::InvalidArgument,
            ServerError::Certificate(error) if error.is_internal() => Code::Internal,
            ServerError::Certificate(_) => Code::InvalidArgument,
            ServerError::Policy(PolicyError::Invalid { .. }) => Code::Internal,
            ServerError::Policy(_) => Code::InvalidArgument,
            ServerError::NotFound(_) => Code::NotFound,
            ServerError::AlreadyExists(_) => Code::AlreadyExists,
            ServerError::Rotation(crate::rotation::RotationError::Bundle(_)) => Code::Internal,
            ServerError::Rotation(crate::rotation::RotationError::NewRoot(_)) => {
                Code::InvalidArgument
            }
            ServerError::Rotation(_) => Code::FailedPrecondition,
            ServerError::Store(StoreError::Conflict { .. }) => Code::Aborted,
            ServerError::Store(_)
            | ServerError::Signer(_)
            | ServerError::Setup(_)
            | ServerError::Sink(_)
            | ServerError::Kubernetes(_)
            | ServerError::Cacerts(_) => Code::Internal,
        };
        if code == Code::Internal || code == Code::Aborted {
            tracing::error!(error = %error, kind = error.label(), "request failed");
            let message = if code == Code::Aborted {
                "a concurrent change won; retry the call"
            } else {
                "internal error in the trustplane server; see its log"
            };
            return tonic::Status::new(code, message);
        }
        tonic::Status::new(code, error.to_string())
    }
}
