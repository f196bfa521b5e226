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
    /// A push-mode kubeconfig refused by [`crate::kubeconfig::validate`].
    #[error("invalid request: push-mode kubeconfig refused: {source}")]
    InvalidKubeconfig {
        /// The validator's error (names the field).
        #[source]
        source: crate::kubeconfig::KubeconfigError,
    },
    /// A push-mode kubeconfig in the store that no longer passes
    /// [`crate::kubeconfig::validate`] (stored by an older version): it is
    /// not used, and the message is what `cluster list` shows.
    #[error(
        "the stored kubeconfig is refused and not used: {source}; register the cluster again: `trustplane cluster remove NAME`, then `trustplane cluster add NAME --kubeconfig FILE`"
    )]
    StoredKubeconfigRefused {
        /// The validator's error (names the field).
        #[source]
        source: crate::kubeconfig::KubeconfigError,
    },
    /// A request that is well-formed but contradicts the server's state
    /// (e.g. a status report naming an intermediate the caller was not
    /// issued).
    #[error("failed precondition: {0}")]
    FailedPrecondition(String),
    /// A client certificate the control-plane CA did not issue, or that is
    /// not valid now.
    #[error(
        "permission denied: client certificate is not a current trustplane control-plane certificate: {source}"
    )]
    NotControlPlaneCertificate {
        /// Why it does not verify.
        #[source]
        source: CaError,
    },
    /// A CSR or certificate problem.
    #[error(transparent)]
    Certificate(CaError),
    /// The issuance policy refused the request.
    #[error(transparent)]
    Policy(PolicyError),
    /// A named object does not exist.
    #[error("{0}")]
    NotFound(String),
    /// A named object already exists.
    #[error("{0}")]
    AlreadyExists(String),
    /// A join token problem: unknown, used, expired or for another cluster.
    #[error("{0}")]
    JoinToken(String),
    /// The store failed (counted in `trustplane_store_errors_total` when
    /// converted from a [`StoreError`]).
    #[error("store: {0}")]
    Store(#[source] StoreError),
    /// The root signer failed.
    #[error("signer: {0}")]
    Signer(#[source] SignerError),
    /// The data directory holds no initialised store.
    #[error(
        "the data directory is not initialised: run `trustplane init --trust-domain <td>` first"
    )]
    NotInitialised,
    /// The store was written by a trustplane older than record MACs and the
    /// audit chain.
    #[error(
        "the store was written by a trustplane older than record MACs and the audit chain: stop the server and run `trustplane audit upgrade --data-dir <dir>` once to authenticate it with the KEK (only for a store you trust: whatever it holds now will be vouched for), then start again"
    )]
    LegacyStore,
    /// The audit chain does not verify (an entry edited, deleted, reordered
    /// or added, or a head that does not authenticate).
    #[error("audit chain: {0}")]
    AuditChain(#[from] ChainError),
    /// A record the store must hold is missing (the store is inconsistent).
    #[error("{what} is missing from the store")]
    Missing {
        /// What is missing, e.g. "signing root 0a1b".
        what: String,
    },
    /// A root is stored without a local key (the local signer needs one).
    #[error(
        "the root has neither a key in this store nor a Vault issuer: the store is incomplete; restore it from a backup"
    )]
    NoLocalKey,
    /// A published bundle version does not follow the current one.
    #[error("bundle version {version} does not follow {current}")]
    BundleVersion {
        /// The version offered.
        version: u64,
        /// The version published now.
        current: u64,
    },
    /// A bundle cannot be built or served.
    #[error("trust bundle")]
    Bundle(#[from] crate::bundle::BundleError),
    /// A stored value is not UTF-8 text.
    #[error("{what} is not UTF-8 text")]
    NotUtf8 {
        /// What was read.
        what: &'static str,
    },
    /// The system random number generator failed.
    #[error("the system random number generator failed")]
    Random,
    /// A file could not be written or read.
    #[error(transparent)]
    File(#[from] crate::files::FileError),
    /// The server cannot listen on its address.
    #[error("cannot listen on {address}; pick another address with --listen")]
    Listen {
        /// The address asked for.
        address: std::net::SocketAddr,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The gRPC server failed (TLS setup or serving).
    #[error("gRPC server")]
    Transport(#[from] tonic::transport::Error),
    /// A background task of the server failed.
    #[error("{task} task failed")]
    Task {
        /// Which task.
        task: &'static str,
        /// Why.
        #[source]
        source: tokio::task::JoinError,
    },
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
    /// rustls refused the server's TLS settings or key.
    #[error("TLS settings: {source}")]
    Tls {
        /// Why.
        #[source]
        source: rustls::Error,
    },
    /// A caller already holds the most watch streams one identity may.
    #[error(
        "{identity} already has {limit} open WatchBundle streams (the server's --max-watch-streams-per-identity); close one before opening another"
    )]
    TooManyWatchStreams {
        /// The caller, as `cluster "name"` or `admin "name"`.
        identity: String,
        /// The limit.
        limit: usize,
    },
    /// A cluster called too often.
    #[error(
        "cluster {cluster:?} called {call} more often than the server allows ({limit}); retry after {retry_after_seconds} s"
    )]
    RateLimited {
        /// The RPC.
        call: &'static str,
        /// The caller.
        cluster: String,
        /// The limit and its flag, as text.
        limit: String,
        /// Whole seconds until a call is accepted again.
        retry_after_seconds: u64,
    },
}

impl ServerError {
    /// [`ServerError::Missing`] for `what`.
    pub fn missing(what: impl Into<String>) -> Self {
        ServerError::Missing { what: what.into() }
    }
}

impl From<StoreError> for ServerError {
    /// Every store failure the server meets passes here once: the one
    /// place it is counted by kind.
    fn from(error: StoreError) -> Self {
        crate::telemetry::metrics::record_store_error(error.metric_label());
        ServerError::Store(error)
    }
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
            ServerError::InvalidArgument(_) | ServerError::InvalidKubeconfig { .. } => {
                "invalid_argument"
            }
            ServerError::NotControlPlaneCertificate { .. } => "permission_denied",
            ServerError::FailedPrecondition(_) => "failed_precondition",
            ServerError::StoredKubeconfigRefused { .. } => "push",
            ServerError::Certificate(_) => "certificate",
            ServerError::Policy(_) => "policy",
            ServerError::NotFound(_) => "not_found",
            ServerError::AlreadyExists(_) => "already_exists",
            ServerError::JoinToken(_) => "join_token",
            ServerError::Store(_) => "store",
            ServerError::Signer(_) => "signer",
            ServerError::Sink(_) | ServerError::Kubernetes(_) | ServerError::Cacerts(_) => "push",
            ServerError::Rotation(_) => "rotation",
            ServerError::TooManyWatchStreams { .. } | ServerError::RateLimited { .. } => {
                "resource_exhausted"
            }
            // The server itself: data, files, listener, tasks.
            _ => "setup",
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
            ServerError::InvalidArgument(_) | ServerError::InvalidKubeconfig { .. } => {
                Code::InvalidArgument
            }
            ServerError::NotControlPlaneCertificate { .. } => Code::PermissionDenied,
            ServerError::FailedPrecondition(_) => Code::FailedPrecondition,
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
            ServerError::Signer(SignerError::Vault(vault)) if vault.is_transient() => {
                // Logged in full; the caller (an agent) retries with backoff.
                tracing::warn!(error = %error, "root signer unavailable");
                return tonic::Status::unavailable(
                    "the mesh root signer (Vault) is unavailable (sealed, unreachable or failing); retry later",
                );
            }
            ServerError::Signer(SignerError::Refused(_)) => Code::FailedPrecondition,
            ServerError::Store(StoreError::Unavailable { .. }) => Code::Unavailable,
            ServerError::TooManyWatchStreams { .. } | ServerError::RateLimited { .. } => {
                Code::ResourceExhausted
            }
            // Store, signer, push and setup failures: the server's own.
            _ => Code::Internal,
        };
        if code == Code::Internal || code == Code::Aborted || code == Code::Unavailable {
            tracing::error!(error = %error, kind = error.label(), "request failed");
            let message = match code {
                Code::Aborted => "a concurrent change won; retry the call",
                Code::Unavailable => {
                    "the trustplane server's store is unavailable (Vault sealed or unreachable; see the server's log); nothing was changed, retry later"
                }
                _ => "internal error in the trustplane server; see its log",
            };
            return tonic::Status::new(code, message);
        }
        let mut status = tonic::Status::new(code, error.to_string());
        if let ServerError::RateLimited {
            retry_after_seconds,
            ..
        } = error
        {
            // Like HTTP's Retry-After: whole seconds.
            status.metadata_mut().insert(
                "retry-after",
                tonic::metadata::MetadataValue::from(retry_after_seconds),
            );
        }
        status
    }
}

/// The first entry (or the head) that does not verify, and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.describe())]
pub struct ChainError {
    /// Sequence number of the first bad entry (`None`: the head itself).
    pub seq: Option<u64>,
    /// Its store key.
    pub key: String,
    /// Its time (Unix seconds), when it decodes.
    pub unix: Option<i64>,
    /// What is wrong.
    pub problem: String,
}

impl ChainError {
    fn describe(&self) -> String {
        let time = self.unix.map_or_else(String::new, |unix| {
            format!(
                ", {}",
                humantime::format_rfc3339_seconds(crate::ca::unix_to_system_time(unix))
            )
        });
        match self.seq {
            Some(seq) => format!("entry {seq} (key {}{time}): {}", self.key, self.problem),
            None => format!("{}: {}", self.key, self.problem),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::telemetry::metrics::ISSUANCE_REFUSALS;

    /// Every refusal `SignIntermediate` can answer has its series from the
    /// start (metrics list the labels, this checks them).
    #[test]
    fn every_sign_intermediate_refusal_is_a_listed_issuance_outcome() {
        let refusals = [
            ServerError::Unauthenticated,
            ServerError::PermissionDenied("p".into()),
            ServerError::NotFound("n".into()),
            ServerError::InvalidArgument("i".into()),
            ServerError::FailedPrecondition("f".into()),
            ServerError::from(crate::ca::verify_csr(b"not a CSR").unwrap_err()),
            ServerError::Policy(PolicyError::UnknownTrustDomain("t".into())),
            ServerError::RateLimited {
                call: "SignIntermediate",
                cluster: "east".into(),
                limit: "l".into(),
                retry_after_seconds: 1,
            },
            ServerError::Signer(SignerError::Kek("k".into())),
            ServerError::from(StoreError::Locked { path: "p".into() }),
            ServerError::missing("a record"),
        ];
        let labels: Vec<&str> = refusals.iter().map(ServerError::label).collect();
        assert_eq!(labels, ISSUANCE_REFUSALS);
    }
}
