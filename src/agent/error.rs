//! The agent's errors, and how a gRPC call to the server fails.

use std::path::PathBuf;
use std::time::Duration;

use crate::ca::CaError;
use crate::reconcile::ReconcileError;
use crate::sink::{KubernetesError, SinkError};

/// How long a unary call (or opening the watch stream) may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// What to do about a refused or malformed join token.
pub(crate) const NEW_TOKEN_ADVICE: &str =
    "ask your admin for a new token (`trustplane cluster add <name>`)";

/// The advice after a refusal from the server, unless the server's
/// `message` already gives one (a used token's advice differs: the
/// cluster must be removed before it is added again).
fn token_advice(message: &str) -> String {
    if message.contains("trustplane cluster") {
        String::new()
    } else {
        format!("; {NEW_TOKEN_ADVICE}")
    }
}

/// Errors of the agent. Messages never contain key material or join tokens.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The configuration cannot work; the message lists every problem.
    #[error("invalid agent configuration: {0}")]
    InvalidConfig(String),
    /// No identity stored and no join token to enroll with.
    #[error(
        "no agent identity in {location} and no join token: pass the join token printed by `trustplane cluster add <name>`"
    )]
    NoIdentity {
        /// Where the identity was looked for, e.g. "directory /var/lib/trustplane".
        location: String,
    },
    /// Some parts of the identity exist but not all, and there is no join token.
    #[error(
        "the agent identity in {location} is incomplete (missing {missing}); {NEW_TOKEN_ADVICE} and pass it to enroll again"
    )]
    IncompleteIdentity {
        /// Where the identity is stored.
        location: String,
        /// The missing parts (file or Secret key names).
        missing: String,
    },
    /// Enrollment needs the control-plane CA to verify the server.
    #[error(
        "enrolling needs the control-plane CA certificate (server CA PEM) to verify the server: get it from your admin"
    )]
    MissingServerCa,
    /// The join token is not of the form `tp1.<cluster>.<secret>`.
    #[error("the join token is malformed (expected tp1.<cluster>.<secret>); {NEW_TOKEN_ADVICE}")]
    InvalidJoinToken,
    /// The server refused the join token (used, expired or unknown). The
    /// server's message says what to do; generic advice only when it does not.
    #[error("the server refused the join token: {message}{}", token_advice(.message))]
    EnrollmentRefused {
        /// The server's explanation.
        message: String,
    },
    /// Reading or writing the identity Secret failed.
    #[error("could not {action} the identity Secret {namespace}/{name}")]
    IdentitySecret {
        /// What was being done, e.g. "read", "replace".
        action: &'static str,
        /// The Secret's namespace.
        namespace: String,
        /// The Secret's name.
        name: String,
        /// What the API said.
        #[source]
        source: KubernetesError,
    },
    /// Reading or writing the identity directory failed.
    #[error("could not {action} {}", path.display())]
    IdentityIo {
        /// What was being done.
        action: &'static str,
        /// The path it was done to.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The server address or TLS settings are unusable.
    #[error("cannot set up a connection to {server}")]
    Transport {
        /// The server address.
        server: String,
        /// tonic's error.
        #[source]
        source: tonic::transport::Error,
    },
    /// A gRPC call failed (network, or refused by the server).
    #[error("{call} failed")]
    Rpc {
        /// The call, e.g. `SignIntermediate`.
        call: &'static str,
        /// The gRPC status.
        #[source]
        source: tonic::Status,
    },
    /// A gRPC call got no answer in time.
    #[error("{call} got no answer within {} s", timeout.as_secs())]
    Timeout {
        /// The call.
        call: &'static str,
        /// The limit.
        timeout: Duration,
    },
    /// Certificate or key work failed.
    #[error("{context}")]
    Certificate {
        /// What was being done.
        context: &'static str,
        /// The certificate error.
        #[source]
        source: CaError,
    },
    /// The set in the sink or the one obtained is unusable, or fails the
    /// istiod checks (then it is not written).
    #[error(transparent)]
    Cacerts(#[from] ReconcileError),
    /// Reading or writing the sink failed.
    #[error("could not update the cacerts")]
    Sink(#[from] SinkError),
    /// A blocking background task failed.
    #[error("a background task failed")]
    Background(#[source] tokio::task::JoinError),
}

pub(crate) fn certificate_error(context: &'static str) -> impl FnOnce(CaError) -> AgentError {
    move |source| AgentError::Certificate { context, source }
}

/// Waits for a unary gRPC call (or a stream's opening) at most [`CALL_TIMEOUT`].
pub(crate) async fn call<T>(
    call: &'static str,
    future: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, AgentError> {
    match tokio::time::timeout(CALL_TIMEOUT, future).await {
        Err(_) => Err(AgentError::Timeout {
            call,
            timeout: CALL_TIMEOUT,
        }),
        Ok(Err(source)) => Err(AgentError::Rpc { call, source }),
        Ok(Ok(response)) => Ok(response.into_inner()),
    }
}

impl From<crate::files::FileError> for AgentError {
    fn from(error: crate::files::FileError) -> Self {
        AgentError::IdentityIo {
            action: error.action,
            path: error.path,
            source: error.source,
        }
    }
}
