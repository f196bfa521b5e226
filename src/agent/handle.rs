//! Starting and stopping the agent: [`spawn`], [`run`] and their
//! variants with an explicit identity store, and the [`AgentHandle`].

use std::sync::Arc;

use tokio::sync::watch;

use super::config::{AgentConfig, AgentStatus};
use super::driver::Agent;
use super::enroll::obtain_identity;
use super::error::AgentError;
use super::identity::{FileIdentityStore, IdentityStore};
use crate::sink::ClusterSink;
use crate::telemetry::error_text;

/// A running agent started by [`spawn`].
#[derive(Debug)]
pub struct AgentHandle {
    /// The agent's state after every change.
    pub status: watch::Receiver<AgentStatus>,
    /// The agent task: `Ok(())` after [`AgentHandle::stop`], an error when it
    /// met a problem it cannot retry (bad config, refused join token).
    pub task: tokio::task::JoinHandle<Result<(), AgentError>>,
    pub(crate) stop: watch::Sender<bool>,
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
    /// e.g. for [`crate::agent::serve_health`] to end with the agent.
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
pub(crate) fn record_fatal(status: &watch::Sender<AgentStatus>, error: &AgentError) {
    let text = error_text(error);
    tracing::error!(error = %text, "agent cannot continue");
    status.send_modify(|current| current.last_error = Some(text));
}

/// Completes once `stop` is `true`; never if its sender is dropped first.
pub(crate) async fn stop_requested(stop: &mut watch::Receiver<bool>) {
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

/// Checks the config, obtains the identity and runs the bundle loop.
pub(crate) async fn run_until_fatal(
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
    tracing::info!(
        cluster = %identity.cluster,
        server = %config.server,
        identity = %store.describe(),
        sink = %sink.describe(),
        "agent started"
    );
    Agent::new(config, identity, store, sink, status)?
        .watch_and_apply()
        .await
}
