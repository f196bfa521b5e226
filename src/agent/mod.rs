//! The per-cluster agent: obtains the cluster's control-plane identity
//! (enrollment with a one-time join token), generates the intermediate CA
//! key inside the cluster, has the server sign it from a CSR, watches the
//! trust bundle, renews before expiry, and keeps Istio's `cacerts` current
//! through a [`ClusterSink`] with one atomic write per change.
//!
//! It owns the loop and its I/O: the sinks (directory, Kubernetes Secret),
//! the identity stores (directory, Kubernetes Secret), leader election
//! among replicas and the health endpoints. Certificate work is delegated
//! to [`crate::ca`], and the server decides every certificate field. The
//! intermediate key never leaves this process except into the sink.

mod directory;
mod health;
mod identity;
mod kube;
mod leader;
pub mod sink;
mod timing;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio::time::Instant;
use tonic::transport::Channel;

use crate::ca::{self, CaError, CacertsCheck, Certificate, KeyAlgorithm, PrivateKey, Severity};
use crate::proto::intermediate_service_client::IntermediateServiceClient;
use crate::proto::trust_bundle_service_client::TrustBundleServiceClient;
use crate::proto::{
    Bundle, EnrollRequest, ReportStatusRequest, SignIntermediateRequest, WatchBundleRequest,
};
use timing::Backoff;

pub use self::kube::{
    BUNDLE_VERSION_ANNOTATION, DEFAULT_NAMESPACE, DEFAULT_SECRET_NAME, IDENTITY_SECRET_NAME,
    INTERMEDIATE_SERIAL_ANNOTATION, KubernetesError, KubernetesIdentityStore, KubernetesSink,
    KubernetesSinkOptions, MANAGED_BY_LABEL, MANAGER, SecretFormat, connect,
};
pub use health::serve_health;
pub use identity::{
    ClientIdentity, FileIdentityStore, IdentityStore, MemoryIdentityStore, StoredIdentity,
};
pub use leader::{
    DEFAULT_LEASE_DURATION, DEFAULT_LEASE_NAME, LeaseOptions, run_with_leader_election,
    spawn_with_leader_election, unique_holder_id,
};
pub use sink::{CacertsMaterial, ClusterSink, DirectorySink, MemorySink, SinkError};

/// How often the agent reports its state even when nothing changed.
const REPORT_INTERVAL: Duration = Duration::from_secs(60);
/// How long a unary call (or opening the watch stream) may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Expiry within this window is logged as a warning by the cacerts check.
const EXPIRY_WARNING: Duration = Duration::from_secs(30 * 24 * 3600);
/// What to do about a refused or malformed join token.
const NEW_TOKEN_ADVICE: &str = "ask your admin for a new token (`trustplane cluster add <name>`)";

/// Everything the agent needs; see [`AgentConfig::new`] for the defaults.
#[derive(Clone)]
pub struct AgentConfig {
    /// The trustplane server, e.g. `https://127.0.0.1:8443` (TLS only).
    pub server: String,
    /// The control-plane CA (PEM) that verifies the server. Required for the
    /// first enrollment; afterwards read from the identity store.
    pub server_ca_pem: Option<String>,
    /// One-time join token `tp1.<cluster>.<secret>`; only used when the
    /// identity store holds no identity yet. Never printed.
    pub join_token: Option<zeroize::Zeroizing<String>>,
    /// Directory holding `cluster`, `server-ca.pem`, `client.pem`,
    /// `client-key.pem` (0600) and `server`: the identity store of [`spawn`]
    /// and [`run`]. Ignored by the entry points that take an
    /// [`IdentityStore`] ([`spawn_with_identity`], [`run_with_identity`],
    /// [`run_with_leader_election`]).
    pub identity_dir: PathBuf,
    /// Algorithm of the intermediate CA key (ECDSA only: ring cannot
    /// generate RSA keys).
    pub key_algorithm: KeyAlgorithm,
    /// Share of the intermediate's lifetime after which it is renewed
    /// (±5 % jitter), strictly between 0 and 1.
    pub renew_fraction: f64,
    /// Upper bound of the retry delay (retries start at 200 ms and double).
    pub max_backoff: Duration,
}

impl AgentConfig {
    /// A config for `server` with the identity in `identity_dir` and the
    /// defaults: no server CA, no join token, ECDSA P-256, renewal at 2/3 of
    /// the lifetime, retries capped at 30 s.
    pub fn new(server: impl Into<String>, identity_dir: PathBuf) -> Self {
        Self {
            server: server.into(),
            server_ca_pem: None,
            join_token: None,
            identity_dir,
            key_algorithm: KeyAlgorithm::EcdsaP256,
            renew_fraction: 2.0 / 3.0,
            max_backoff: Duration::from_secs(30),
        }
    }

    /// Checks the whole config and reports every problem at once (the
    /// identity store's own settings are checked when the agent starts).
    ///
    /// Errors: [`AgentError::InvalidConfig`].
    pub fn validate(&self) -> Result<(), AgentError> {
        let problems = self.problems();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(AgentError::InvalidConfig(problems.join("; ")))
        }
    }

    fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if !self.server.starts_with("https://") {
            problems.push(format!(
                "server {:?} must be an https:// address (the agent only talks TLS)",
                self.server
            ));
        }
        if !(self.renew_fraction.is_finite()
            && self.renew_fraction > 0.0
            && self.renew_fraction < 1.0)
        {
            problems.push(format!(
                "renew fraction {} must be between 0 and 1 (e.g. 0.67)",
                self.renew_fraction
            ));
        }
        if self.max_backoff < timing::INITIAL_BACKOFF {
            problems.push(format!(
                "max backoff {:?} must be at least {:?}",
                self.max_backoff,
                timing::INITIAL_BACKOFF
            ));
        }
        if self.key_algorithm == KeyAlgorithm::Rsa {
            problems.push(
                "key algorithm rsa cannot be generated by the agent: use ecdsa-p256 or ecdsa-p384"
                    .to_string(),
            );
        }
        problems
    }
}

impl std::fmt::Debug for AgentConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentConfig")
            .field("server", &self.server)
            .field(
                "server_ca_pem",
                &self.server_ca_pem.as_ref().map(|_| "[set]"),
            )
            .field(
                "join_token",
                &self.join_token.as_ref().map(|_| "[redacted]"),
            )
            .field("identity_dir", &self.identity_dir)
            .field("key_algorithm", &self.key_algorithm)
            .field("renew_fraction", &self.renew_fraction)
            .field("max_backoff", &self.max_backoff)
            .finish()
    }
}

/// What the agent has applied, published on [`AgentHandle::status`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AgentStatus {
    /// The cluster this agent acts for (empty until known).
    pub cluster: String,
    /// The trust-bundle version written to the sink (0 for none yet).
    pub applied_bundle_version: u64,
    /// Lowercase hex serial of the intermediate in use (empty for none).
    pub intermediate_serial: String,
    /// Its expiry, seconds since the Unix epoch (0 for none).
    pub intermediate_not_after_unix: i64,
    /// The last error met, cleared by the next success.
    pub last_error: Option<String>,
    /// With leader election: whether this replica leads (and runs the agent
    /// loop). `None` without leader election.
    pub leader: Option<bool>,
}

impl AgentStatus {
    /// Whether the agent is ready: never while an error is current (for a
    /// replica that does not lead: it cannot reach its Lease, or lost it);
    /// a replica that does not lead is ready otherwise; one that runs the
    /// loop once a trust bundle is applied.
    ///
    /// Errors: the reason it is not ready (the current error's text, or that
    /// nothing is applied yet).
    pub fn readiness(&self) -> Result<(), String> {
        if let Some(error) = &self.last_error {
            return Err(error.clone());
        }
        if self.leader == Some(false) {
            return Ok(());
        }
        if self.applied_bundle_version == 0 {
            return Err("no trust bundle applied yet".to_string());
        }
        Ok(())
    }
}

/// A running agent started by [`spawn`].
#[derive(Debug)]
pub struct AgentHandle {
    /// The agent's state after every change.
    pub status: watch::Receiver<AgentStatus>,
    /// The agent task: `Ok(())` after [`AgentHandle::stop`], an error when it
    /// met a problem it cannot retry (bad config, refused join token).
    pub task: tokio::task::JoinHandle<Result<(), AgentError>>,
    stop: watch::Sender<bool>,
}

impl AgentHandle {
    /// Asks the agent to stop. It ends promptly, also while waiting for a
    /// retry or for the next bundle; a sink write already under way finishes
    /// (a Kubernetes write may be abandoned: the API server applies a write
    /// whole or not at all). With leader election the lease is released.
    pub fn stop(&self) {
        self.stop.send_replace(true);
    }

    /// A receiver that becomes `true` once [`AgentHandle::stop`] is called,
    /// e.g. for [`serve_health`] to end with the agent.
    pub fn stop_signal(&self) -> watch::Receiver<bool> {
        self.stop.subscribe()
    }
}

/// Starts the agent on the current Tokio runtime (must be called from
/// within one), with its identity in `config.identity_dir`.
pub fn spawn(config: AgentConfig, sink: Arc<dyn ClusterSink>) -> AgentHandle {
    let identity = Arc::new(FileIdentityStore::new(config.identity_dir.clone()));
    spawn_with_identity(config, identity, sink)
}

/// Starts the agent on the current Tokio runtime (must be called from
/// within one), with its identity in `identity`.
pub fn spawn_with_identity(
    config: AgentConfig,
    identity: Arc<dyn IdentityStore>,
    sink: Arc<dyn ClusterSink>,
) -> AgentHandle {
    let (status_sender, status) = watch::channel(AgentStatus::default());
    let (stop, stop_receiver) = watch::channel(false);
    let task = tokio::spawn(run_with_identity(
        config,
        identity,
        sink,
        status_sender,
        stop_receiver,
    ));
    AgentHandle { status, task, stop }
}

/// Runs the agent, with its identity in `config.identity_dir`, until `stop`
/// becomes `true` (then `Ok(())`) or a problem that retrying cannot fix;
/// see [`run_with_identity`].
///
/// Errors: as [`run_with_identity`].
pub async fn run(
    config: AgentConfig,
    sink: Arc<dyn ClusterSink>,
    status: watch::Sender<AgentStatus>,
    stop: watch::Receiver<bool>,
) -> Result<(), AgentError> {
    let identity = Arc::new(FileIdentityStore::new(config.identity_dir.clone()));
    run_with_identity(config, identity, sink, status, stop).await
}

/// Runs the agent until `stop` becomes `true` (then `Ok(())`) or a problem
/// that retrying cannot fix. Network, API server and sink problems (a
/// foreign `cacerts` Secret included) are retried with capped exponential
/// backoff; `status` is updated after every change and error. If the `stop`
/// sender is dropped without sending `true`, the agent runs on.
///
/// Errors: [`AgentError::InvalidConfig`], [`AgentError::NoIdentity`],
/// [`AgentError::IncompleteIdentity`], [`AgentError::MissingServerCa`],
/// [`AgentError::InvalidJoinToken`], [`AgentError::EnrollmentRefused`], and
/// failures of the identity store or key generation while enrolling.
pub async fn run_with_identity(
    config: AgentConfig,
    identity: Arc<dyn IdentityStore>,
    sink: Arc<dyn ClusterSink>,
    status: watch::Sender<AgentStatus>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), AgentError> {
    let result = tokio::select! {
        biased;
        () = stop_requested(&mut stop) => {
            tracing::info!("agent stopped");
            Ok(())
        }
        result = run_until_fatal(config, identity, sink, &status) => result,
    };
    if let Err(error) = &result {
        record_fatal(&status, error);
    }
    result
}

/// Logs a fatal error and shows it in `status`.
fn record_fatal(status: &watch::Sender<AgentStatus>, error: &AgentError) {
    let text = error_text(error);
    tracing::error!(error = %text, "agent cannot continue");
    status.send_modify(|current| current.last_error = Some(text));
}

async fn stop_requested(stop: &mut watch::Receiver<bool>) {
    loop {
        if *stop.borrow_and_update() {
            return;
        }
        if stop.changed().await.is_err() {
            // Nobody can ask us to stop any more: run until the task is dropped.
            std::future::pending::<()>().await;
        }
    }
}

async fn run_until_fatal(
    config: AgentConfig,
    store: Arc<dyn IdentityStore>,
    sink: Arc<dyn ClusterSink>,
    status: &watch::Sender<AgentStatus>,
) -> Result<(), AgentError> {
    let mut problems = config.problems();
    problems.extend(store.problems());
    if !problems.is_empty() {
        return Err(AgentError::InvalidConfig(problems.join("; ")));
    }
    let identity = obtain_identity(&config, store.as_ref(), status).await?;
    status.send_modify(|current| current.cluster.clone_from(&identity.cluster));
    let channel = identity::mtls_channel(&config.server, &identity)?;
    tracing::info!(
        cluster = %identity.cluster,
        server = %config.server,
        identity = %store.describe(),
        sink = %sink.describe(),
        "agent started"
    );
    let mut agent = Agent {
        cluster: identity.cluster,
        intermediates: IntermediateServiceClient::new(channel.clone()),
        bundles: TrustBundleServiceClient::new(channel),
        config,
        sink,
        status,
        applied: None,
        last_error: None,
    };
    agent.watch_and_apply().await
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
    /// The server refused the join token (used, expired or unknown).
    #[error("the server refused the join token: {message}; {NEW_TOKEN_ADVICE}")]
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
    /// The server's answer lacks something the agent needs.
    #[error("the server's answer is unusable: {0}")]
    InvalidResponse(String),
    /// The assembled `cacerts` set fails the istiod checks; not written.
    #[error("refusing to write cacerts that istiod would reject: {0}")]
    CacertsRejected(String),
    /// Reading or writing the sink failed.
    #[error("could not update the cacerts")]
    Sink(#[from] SinkError),
    /// A blocking background task failed.
    #[error("a background task failed")]
    Background(#[source] tokio::task::JoinError),
}

fn certificate_error(context: &'static str) -> impl FnOnce(CaError) -> AgentError {
    move |source| AgentError::Certificate { context, source }
}

/// The error and its causes on one line ("a: b: c"), skipping a cause whose
/// text is already included.
fn error_text(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(current) = cause {
        let part = current.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        cause = current.source();
    }
    text
}

/// Waits for a unary gRPC call (or a stream's opening) at most [`CALL_TIMEOUT`].
async fn call<T>(
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

/// Whether a gRPC code on `Enroll` means the token will never work.
fn enrollment_refused(code: tonic::Code) -> bool {
    matches!(
        code,
        tonic::Code::PermissionDenied
            | tonic::Code::Unauthenticated
            | tonic::Code::InvalidArgument
            | tonic::Code::NotFound
    )
}

/// Loads the identity (recording a new server URL in it), or enrolls with
/// the join token and saves it.
async fn obtain_identity(
    config: &AgentConfig,
    store: &dyn IdentityStore,
    status: &watch::Sender<AgentStatus>,
) -> Result<ClientIdentity, AgentError> {
    match store.load().await? {
        StoredIdentity::Complete(mut identity) => {
            if let Some(token) = &config.join_token
                && identity::join_token_cluster(token)
                    .is_ok_and(|cluster| cluster != identity.cluster)
            {
                tracing::warn!(
                    cluster = %identity.cluster,
                    "ignoring the join token: it names another cluster and an identity already exists"
                );
            }
            if identity.server.as_deref() != Some(config.server.as_str()) {
                identity.server = Some(config.server.clone());
                // Only a convenience for the next start: the identity works without it.
                if let Err(error) = store.save(&identity).await {
                    tracing::warn!(
                        identity = %store.describe(),
                        error = %error_text(&error),
                        "could not record the server URL with the identity"
                    );
                }
            }
            return Ok(identity);
        }
        StoredIdentity::Absent => {}
        StoredIdentity::Incomplete(missing) => {
            if config.join_token.is_none() {
                return Err(AgentError::IncompleteIdentity {
                    location: store.describe(),
                    missing: missing.join(", "),
                });
            }
            tracing::warn!(
                identity = %store.describe(),
                missing = %missing.join(", "),
                "the identity is incomplete; enrolling again with the join token"
            );
        }
    }
    let token = config
        .join_token
        .as_ref()
        .ok_or_else(|| AgentError::NoIdentity {
            location: store.describe(),
        })?;
    let cluster = identity::join_token_cluster(token)?.to_string();
    let server_ca_pem = config
        .server_ca_pem
        .clone()
        .ok_or(AgentError::MissingServerCa)?;
    Certificate::parse_pem_chain(&server_ca_pem)
        .map_err(certificate_error("the server CA is not a PEM certificate"))?;
    status.send_modify(|current| current.cluster.clone_from(&cluster));
    // Fail on an unwritable store before the one-time token is spent.
    store.prepare().await?;

    let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256)
        .map_err(certificate_error("could not generate the client key"))?;
    let csr = ca::create_csr(&key, &format!("trustplane agent {cluster}"))
        .map_err(certificate_error("could not create the client CSR"))?;
    let mut client = IntermediateServiceClient::new(identity::enrollment_channel(
        &config.server,
        &server_ca_pem,
    )?);
    let mut backoff = Backoff::new(config.max_backoff);
    let response = loop {
        let request = EnrollRequest {
            cluster: cluster.clone(),
            join_token: token.to_string(),
            client_csr_pem: csr.clone(),
        };
        match call("Enroll", client.enroll(request)).await {
            Ok(response) => break response,
            Err(AgentError::Rpc { source, .. }) if enrollment_refused(source.code()) => {
                return Err(AgentError::EnrollmentRefused {
                    message: source.message().to_string(),
                });
            }
            Err(error) => {
                let text = error_text(&error);
                let delay = backoff.next_delay();
                tracing::warn!(
                    error = %text,
                    server = %config.server,
                    "enrollment failed; retrying in {:.1} s",
                    delay.as_secs_f64()
                );
                status.send_modify(|current| current.last_error = Some(text));
                tokio::time::sleep(delay).await;
            }
        }
    };
    Certificate::parse_pem_chain(&response.client_cert_pem).map_err(certificate_error(
        "the server sent an unusable client certificate",
    ))?;
    let server_ca_pem = if response.control_plane_ca_pem.trim().is_empty() {
        server_ca_pem
    } else {
        response.control_plane_ca_pem
    };
    let identity = ClientIdentity {
        cluster,
        server_ca_pem,
        client_cert_pem: response.client_cert_pem,
        client_key_pem: key.to_pkcs8_pem(),
        server: Some(config.server.clone()),
    };
    store.save(&identity).await?;
    status.send_modify(|current| current.last_error = None);
    tracing::info!(
        cluster = %identity.cluster,
        trust_domain = %response.trust_domain,
        identity = %store.describe(),
        "enrolled; identity saved"
    );
    Ok(identity)
}

/// What to do with a newly received bundle or at a timer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Action {
    /// Nothing to change.
    Keep,
    /// Same key and certificate, new `root-cert.pem` (or just record the
    /// version when the bytes are unchanged).
    RewriteRoot,
    /// New key, CSR and intermediate.
    Issue(IssueReason),
}

/// Why a new intermediate is requested.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum IssueReason {
    /// The sink holds no usable set.
    NoIntermediate,
    /// The renewal time has come.
    Renewal,
    /// The new bundle no longer holds the root our chain ends in.
    RootRetired,
    /// Another root signs intermediates now (root rotation).
    SignerChanged,
    /// An operator asked for a new intermediate (`cluster reissue`).
    Requested,
}

impl std::fmt::Display for IssueReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            IssueReason::NoIntermediate => "no usable intermediate",
            IssueReason::Renewal => "renewal time reached",
            IssueReason::RootRetired => "the bundle no longer holds our root",
            IssueReason::SignerChanged => "another root signs intermediates now (rotation)",
            IssueReason::Requested => "a reissue was requested",
        })
    }
}

/// The decision, as a pure function of the applied state (bundle version,
/// renewal time), the bundle's version, whether the bundle holds the root of
/// our chain, and `now`.
fn decide(
    applied: Option<(u64, SystemTime)>,
    bundle_version: u64,
    bundle_has_chain_root: bool,
    now: SystemTime,
) -> Action {
    let Some((applied_version, renew_at)) = applied else {
        return Action::Issue(IssueReason::NoIntermediate);
    };
    if now >= renew_at {
        Action::Issue(IssueReason::Renewal)
    } else if bundle_version <= applied_version {
        Action::Keep
    } else if bundle_has_chain_root {
        Action::RewriteRoot
    } else {
        Action::Issue(IssueReason::RootRetired)
    }
}

/// Whether the intermediate in use must be replaced although it is valid:
/// the server names another signing root (`signing_root_sha256`, empty for
/// none) than the one our chain ends in, or asked for the intermediate with
/// serial `reissue_serial` (empty for none) to be replaced and ours
/// (`serial`) is that one.
fn replacement_reason(
    chain_root_sha256: &str,
    signing_root_sha256: &str,
    serial: &str,
    reissue_serial: &str,
) -> Option<IssueReason> {
    if !signing_root_sha256.is_empty() && chain_root_sha256 != signing_root_sha256 {
        Some(IssueReason::SignerChanged)
    } else if !reissue_serial.is_empty() && serial == reissue_serial {
        Some(IssueReason::Requested)
    } else {
        None
    }
}

/// The last certificate of a `cert-chain.pem` (the root).
fn chain_root(cert_chain_pem: &str) -> Result<Certificate, AgentError> {
    Certificate::parse_pem_chain(cert_chain_pem)
        .map_err(certificate_error("cert-chain.pem does not parse"))?
        .pop()
        .ok_or_else(|| AgentError::InvalidResponse("empty certificate chain".into()))
}

/// Whether `root` is one of the certificates in `root_cert_pem`.
fn bundle_contains(root_cert_pem: &str, root: &Certificate) -> Result<bool, AgentError> {
    Ok(Certificate::parse_pem_chain(root_cert_pem)
        .map_err(certificate_error("the trust bundle does not parse"))?
        .iter()
        .any(|candidate| candidate == root))
}

/// The errors of a check, joined for a message.
fn check_errors(check: &CacertsCheck) -> String {
    check
        .findings
        .iter()
        .filter(|finding| finding.severity == Severity::Error)
        .map(|finding| format!("{}: {}", finding.check, finding.message))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Checks `material` like istiod would and writes it in one sink write.
async fn check_and_write(
    sink: &dyn ClusterSink,
    material: &CacertsMaterial,
    now: SystemTime,
) -> Result<(), AgentError> {
    let check = ca::check_cacerts(&material.to_files(), now, EXPIRY_WARNING);
    if !check.passed() {
        return Err(AgentError::CacertsRejected(check_errors(&check)));
    }
    for finding in check
        .findings
        .iter()
        .filter(|finding| finding.severity == Severity::Warning)
    {
        tracing::warn!(check = %finding.check, "{}", finding.message);
    }
    sink.write(material).await?;
    Ok(())
}

/// The set in the sink and what we know about it.
struct Applied {
    material: CacertsMaterial,
    bundle_version: u64,
    serial: String,
    not_before: SystemTime,
    not_after: SystemTime,
    chain_root: Certificate,
    renew_at: SystemTime,
}

impl Applied {
    fn new(
        material: CacertsMaterial,
        bundle_version: u64,
        renew_fraction: f64,
    ) -> Result<Self, AgentError> {
        let certificate = Certificate::from_pem(&material.ca_cert_pem)
            .map_err(certificate_error("ca-cert.pem is not one certificate"))?;
        let serial = certificate
            .serial_hex()
            .map_err(certificate_error("ca-cert.pem has no readable serial"))?;
        let not_after = certificate
            .not_after()
            .map_err(certificate_error("ca-cert.pem has no readable validity"))?;
        // The issuer backdates NotBefore for clock skew; that slack is not
        // lifetime, so renewal is timed from the issuance moment.
        let not_before = timing::issued_at(
            certificate
                .not_before()
                .map_err(certificate_error("ca-cert.pem has no readable validity"))?,
            not_after,
        );
        let chain_root = chain_root(&material.cert_chain_pem)?;
        let renew_at =
            timing::renewal_time(not_before, not_after, renew_fraction, timing::random_unit());
        Ok(Self {
            material,
            bundle_version,
            serial,
            not_before,
            not_after,
            chain_root,
            renew_at,
        })
    }
}

struct Agent<'a> {
    config: AgentConfig,
    sink: Arc<dyn ClusterSink>,
    status: &'a watch::Sender<AgentStatus>,
    cluster: String,
    intermediates: IntermediateServiceClient<Channel>,
    bundles: TrustBundleServiceClient<Channel>,
    applied: Option<Applied>,
    last_error: Option<String>,
}

impl Agent<'_> {
    /// The main loop: (re)open the bundle stream, apply every new bundle,
    /// renew on time, report periodically. Returns only on a fatal error
    /// (none today: everything here is retried).
    async fn watch_and_apply(&mut self) -> Result<(), AgentError> {
        let max_backoff = self.config.max_backoff;
        let mut stream_backoff = Backoff::new(max_backoff);
        let mut apply_backoff = Backoff::new(max_backoff);
        let mut report_backoff = Backoff::new(max_backoff);
        let mut latest: Option<Bundle> = None;
        // When to (re)try applying `latest`; `None` when it is applied.
        let mut apply_at: Option<Instant> = None;
        let mut report_at = Instant::now() + REPORT_INTERVAL;
        loop {
            let stream_error = match self.open_watch().await {
                Err(error) => error,
                Ok(mut stream) => loop {
                    let wake = self.next_wake(apply_at, latest.is_some(), report_at);
                    tokio::select! {
                        message = stream.message() => match message {
                            Ok(Some(bundle)) => {
                                stream_backoff.reset();
                                tracing::debug!(version = bundle.version, "received trust bundle");
                                latest = Some(bundle);
                                apply_at = Some(Instant::now());
                            }
                            Ok(None) => break AgentError::Rpc {
                                call: "WatchBundle",
                                source: tonic::Status::unavailable("the server closed the stream"),
                            },
                            Err(source) => break AgentError::Rpc { call: "WatchBundle", source },
                        },
                        () = tokio::time::sleep_until(wake) => {}
                    }
                    if apply_at.is_none() && self.renewal_due() {
                        apply_at = Some(Instant::now());
                    }
                    if let (Some(at), Some(bundle)) = (apply_at, &latest)
                        && at <= Instant::now()
                    {
                        let report_now;
                        (apply_at, report_now) = self.apply(bundle, &mut apply_backoff).await;
                        if report_now {
                            report_at = Instant::now();
                        }
                    }
                    if report_at <= Instant::now() {
                        report_at = self.report_and_schedule(&mut report_backoff).await;
                    }
                },
            };
            let delay = stream_backoff.next_delay();
            let text = error_text(&stream_error);
            tracing::warn!(
                error = %text,
                server = %self.config.server,
                "watching the trust bundle failed; retrying in {:.1} s",
                delay.as_secs_f64()
            );
            self.record_error(text);
            tokio::time::sleep(delay).await;
        }
    }

    /// Applies `bundle`. Returns when to try again (`None` once applied)
    /// and whether to report at once (something changed, or a new error).
    async fn apply(&mut self, bundle: &Bundle, backoff: &mut Backoff) -> (Option<Instant>, bool) {
        match self.reconcile(bundle).await {
            Ok(changed) => {
                backoff.reset();
                let recovered = self.last_error.take().is_some();
                self.publish_status();
                (None, changed || recovered)
            }
            Err(error) => {
                let delay = backoff.next_delay();
                let text = error_text(&error);
                tracing::warn!(
                    error = %text,
                    sink = %self.sink.describe(),
                    "applying trust bundle {} failed; retrying in {:.1} s",
                    bundle.version,
                    delay.as_secs_f64()
                );
                let new_error = self.record_error(text);
                (Some(Instant::now() + delay), new_error)
            }
        }
    }

    /// Reports the applied state; returns when to report next (sooner
    /// after a failure).
    async fn report_and_schedule(&mut self, backoff: &mut Backoff) -> Instant {
        match self.report().await {
            Ok(()) => {
                backoff.reset();
                Instant::now() + REPORT_INTERVAL
            }
            Err(error) => {
                let delay = backoff.next_delay().min(REPORT_INTERVAL);
                tracing::warn!(
                    error = %error_text(&error),
                    "status report failed; retrying in {:.1} s",
                    delay.as_secs_f64()
                );
                Instant::now() + delay
            }
        }
    }

    async fn open_watch(&mut self) -> Result<tonic::Streaming<Bundle>, AgentError> {
        let request = WatchBundleRequest {
            known_version: self
                .applied
                .as_ref()
                .map_or(0, |applied| applied.bundle_version),
        };
        call("WatchBundle", self.bundles.watch_bundle(request)).await
    }

    /// The earliest of the pending apply (only with a bundle to apply), the
    /// renewal time (only when no apply is pending: a failed renewal waits
    /// for its backoff) and the report, never later than one report interval
    /// from now.
    fn next_wake(
        &self,
        apply_at: Option<Instant>,
        has_bundle: bool,
        report_at: Instant,
    ) -> Instant {
        let now = Instant::now();
        let mut wake = report_at.min(now + REPORT_INTERVAL);
        match (apply_at, &self.applied) {
            (Some(apply_at), _) if has_bundle => wake = wake.min(apply_at),
            (Some(_), _) | (None, None) => {}
            (None, Some(applied)) => {
                let until_renewal = applied
                    .renew_at
                    .duration_since(SystemTime::now())
                    .unwrap_or(Duration::ZERO);
                wake = wake.min(now + until_renewal.min(REPORT_INTERVAL));
            }
        }
        wake
    }

    fn renewal_due(&self) -> bool {
        self.applied
            .as_ref()
            .is_some_and(|applied| SystemTime::now() >= applied.renew_at)
    }

    /// Brings the sink in line with `bundle`; `Ok(true)` when something was
    /// applied (written, adopted or a new version recorded).
    async fn reconcile(&mut self, bundle: &Bundle) -> Result<bool, AgentError> {
        let now = SystemTime::now();
        let mut changed = false;
        if self.applied.is_none() {
            self.applied = self.adopt(bundle, now).await?;
            changed = self.applied.is_some();
        }
        let bundle_has_chain_root = match &self.applied {
            Some(applied) => bundle_contains(&bundle.root_cert_pem, &applied.chain_root)?,
            None => false,
        };
        let state = self
            .applied
            .as_ref()
            .map(|applied| (applied.bundle_version, applied.renew_at));
        let replacement = self.applied.as_ref().and_then(|applied| {
            replacement_reason(
                &applied.chain_root.sha256_hex(),
                &bundle.signing_root_sha256,
                &applied.serial,
                &bundle.reissue_intermediate_serial,
            )
        });
        let action = match replacement {
            Some(reason) => Action::Issue(reason),
            None => decide(state, bundle.version, bundle_has_chain_root, now),
        };
        match action {
            Action::Keep => Ok(changed),
            Action::RewriteRoot => {
                self.rewrite_root(bundle, now).await?;
                Ok(true)
            }
            Action::Issue(reason) => {
                self.issue(bundle, reason, now).await?;
                Ok(true)
            }
        }
    }

    /// The set already in the sink, if it passes the checks, is not due for
    /// renewal and chains to a root of `bundle` (recorded as bundle version
    /// 0 so that the bundle is applied next).
    async fn adopt(&self, bundle: &Bundle, now: SystemTime) -> Result<Option<Applied>, AgentError> {
        let target = self.sink.describe();
        let Some(files) = self.sink.read().await? else {
            tracing::info!(sink = %target, "no cacerts yet");
            return Ok(None);
        };
        let check = ca::check_cacerts(&files, now, EXPIRY_WARNING);
        if !check.passed() {
            tracing::info!(
                sink = %target,
                problems = %check_errors(&check),
                "the existing cacerts do not pass the checks; replacing them"
            );
            return Ok(None);
        }
        let (Some(ca_cert_pem), Some(ca_key_pem), Some(cert_chain_pem), Some(root_cert_pem)) = (
            files.ca_cert,
            files.ca_key,
            files.cert_chain,
            files.root_cert,
        ) else {
            return Ok(None);
        };
        let material = CacertsMaterial {
            ca_cert_pem,
            ca_key_pem,
            cert_chain_pem,
            root_cert_pem,
            bundle_version: 0,
        };
        let applied = match Applied::new(material, 0, self.config.renew_fraction) {
            Ok(applied) => applied,
            Err(error) => {
                tracing::info!(sink = %target, error = %error_text(&error), "the existing cacerts are unusable; replacing them");
                return Ok(None);
            }
        };
        if timing::renewal_due(
            applied.not_before,
            applied.not_after,
            self.config.renew_fraction,
            now,
        ) {
            tracing::info!(sink = %target, serial = %applied.serial, "the existing intermediate is due for renewal");
            return Ok(None);
        }
        if !bundle_contains(&bundle.root_cert_pem, &applied.chain_root)? {
            tracing::info!(sink = %target, serial = %applied.serial, "the existing intermediate chains to a root outside the trust bundle");
            return Ok(None);
        }
        tracing::info!(
            sink = %target,
            serial = %applied.serial,
            not_after = ca::system_time_to_unix(applied.not_after),
            "adopting the existing intermediate"
        );
        Ok(Some(applied))
    }

    async fn rewrite_root(&mut self, bundle: &Bundle, now: SystemTime) -> Result<(), AgentError> {
        let Some(applied) = self.applied.as_mut() else {
            return Ok(());
        };
        if applied.material.root_cert_pem != bundle.root_cert_pem {
            let mut material = applied.material.clone();
            material.root_cert_pem.clone_from(&bundle.root_cert_pem);
            material.bundle_version = bundle.version;
            check_and_write(self.sink.as_ref(), &material, now).await?;
            applied.material = material;
        }
        applied.bundle_version = bundle.version;
        tracing::info!(
            version = bundle.version,
            sink = %self.sink.describe(),
            "applied trust bundle"
        );
        Ok(())
    }

    async fn issue(
        &mut self,
        bundle: &Bundle,
        reason: IssueReason,
        now: SystemTime,
    ) -> Result<(), AgentError> {
        tracing::info!(cluster = %self.cluster, %reason, "requesting a new intermediate");
        let key = PrivateKey::generate(self.config.key_algorithm)
            .map_err(certificate_error("could not generate the intermediate key"))?;
        let csr = ca::create_csr(&key, &format!("{} intermediate CA", self.cluster))
            .map_err(certificate_error("could not create the intermediate CSR"))?;
        let request = SignIntermediateRequest {
            csr: csr.into_bytes(),
            cluster: self.cluster.clone(),
        };
        let response = call(
            "SignIntermediate",
            self.intermediates.sign_intermediate(request),
        )
        .await?;
        // Use whichever bundle is newer: the one signed against or the watched one.
        let (root_cert_pem, bundle_version) = match response.bundle {
            Some(signed) if signed.version >= bundle.version => {
                (signed.root_cert_pem, signed.version)
            }
            _ => (bundle.root_cert_pem.clone(), bundle.version),
        };
        let material = CacertsMaterial {
            ca_cert_pem: response.certificate_pem,
            ca_key_pem: key.to_pkcs8_pem(),
            cert_chain_pem: response.cert_chain_pem,
            root_cert_pem,
            bundle_version,
        };
        let applied = Applied::new(material, bundle_version, self.config.renew_fraction)?;
        check_and_write(self.sink.as_ref(), &applied.material, now).await?;
        tracing::info!(
            cluster = %self.cluster,
            serial = %applied.serial,
            not_after = ca::system_time_to_unix(applied.not_after),
            version = bundle_version,
            sink = %self.sink.describe(),
            "wrote a new intermediate"
        );
        self.applied = Some(applied);
        Ok(())
    }

    async fn report(&mut self) -> Result<(), AgentError> {
        let request = match &self.applied {
            Some(applied) => ReportStatusRequest {
                applied_bundle_version: applied.bundle_version,
                intermediate_serial: applied.serial.clone(),
                intermediate_not_after_unix: ca::system_time_to_unix(applied.not_after),
                cert_chain_pem: applied.material.cert_chain_pem.clone(),
                error: self.last_error.clone().unwrap_or_default(),
                cluster: self.cluster.clone(),
            },
            None => ReportStatusRequest {
                error: self.last_error.clone().unwrap_or_default(),
                cluster: self.cluster.clone(),
                ..ReportStatusRequest::default()
            },
        };
        call("ReportStatus", self.intermediates.report_status(request)).await?;
        Ok(())
    }

    /// Records `text` as the last error; `true` when it differs from the
    /// previous one (worth reporting at once).
    fn record_error(&mut self, text: String) -> bool {
        let new = self.last_error.as_deref() != Some(text.as_str());
        self.last_error = Some(text);
        self.publish_status();
        new
    }

    fn publish_status(&self) {
        let mut next = AgentStatus {
            cluster: self.cluster.clone(),
            applied_bundle_version: self
                .applied
                .as_ref()
                .map_or(0, |applied| applied.bundle_version),
            intermediate_serial: self
                .applied
                .as_ref()
                .map(|applied| applied.serial.clone())
                .unwrap_or_default(),
            intermediate_not_after_unix: self
                .applied
                .as_ref()
                .map_or(0, |applied| ca::system_time_to_unix(applied.not_after)),
            last_error: self.last_error.clone(),
            leader: None,
        };
        self.status.send_if_modified(|current| {
            // Leadership is the election's to publish.
            next.leader = current.leader;
            if *current == next {
                false
            } else {
                *current = next;
                true
            }
        });
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests;
