//! Leader election among agent replicas with a Kubernetes Lease
//! (kube-lease-manager): only the holder runs the agent loop; the others
//! wait, and take over within about one lease duration when the holder
//! dies. The loop stops at once when leadership is lost.
//!
//! kube-lease-manager renews the lease in the background but only says so
//! when leadership changes, and a renewal that hangs would leave us acting
//! as leader after the lease expired. So a watchdog also reads the Lease:
//! the loop runs only while the Lease names us and its last renewal plus the
//! lease duration, less a safety margin, lies in the future.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use kube_lease_manager::{LeaseCreateMode, LeaseManager, LeaseManagerError, LeaseParams};
use tokio::sync::watch;
use tokio::time::Instant;

use super::config::{AgentConfig, AgentStatus};
use super::error::AgentError;
use super::handle::{AgentHandle, record_fatal, run_until_fatal, stop_requested};
use super::identity::IdentityStore;
use crate::clock::SystemClock;
use crate::files::random_suffix;
use crate::reconcile::Backoff;
use crate::sink::ClusterSink;
use crate::sink::kube::describe_kube_error;
use crate::telemetry::error_text;

/// The Lease the agent replicas compete for, unless told otherwise.
pub const DEFAULT_LEASE_NAME: &str = "trustplane-agent";
/// How long a lease is valid after its last renewal, unless told otherwise.
pub const DEFAULT_LEASE_DURATION: Duration = Duration::from_secs(15);
/// Shorter leases leave no room for a renewal before expiry.
const MINIMUM_LEASE_DURATION: Duration = Duration::from_secs(2);
/// How long joining the election (reading or creating the Lease) may take.
const JOIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Which Lease to compete for and as whom; see [`LeaseOptions::new`].
#[derive(Clone)]
pub struct LeaseOptions {
    /// The client used for the Lease.
    pub client: kube::Client,
    /// Namespace of the Lease (the agent's namespace).
    pub namespace: String,
    /// Name of the Lease.
    pub name: String,
    /// This replica's identity in the Lease; unique among the replicas.
    pub holder_id: String,
    /// How long the lease stays valid after a renewal, in whole seconds (at
    /// least 2 s). The holder renews when a third of it is left; a dead
    /// holder is replaced about one duration after its last renewal.
    pub duration: Duration,
}

impl std::fmt::Debug for LeaseOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseOptions")
            .field("namespace", &self.namespace)
            .field("name", &self.name)
            .field("holder_id", &self.holder_id)
            .field("duration", &self.duration)
            .finish_non_exhaustive()
    }
}

impl LeaseOptions {
    /// The Lease [`DEFAULT_LEASE_NAME`] in `namespace`, a unique holder id
    /// (`trustplane-agent-<random>`) and [`DEFAULT_LEASE_DURATION`].
    pub fn new(client: kube::Client, namespace: &str) -> Self {
        Self {
            client,
            namespace: namespace.to_string(),
            name: DEFAULT_LEASE_NAME.to_string(),
            holder_id: unique_holder_id(DEFAULT_LEASE_NAME),
            duration: DEFAULT_LEASE_DURATION,
        }
    }

    fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.namespace.is_empty() {
            problems.push("lease namespace must be set".to_string());
        }
        if self.name.is_empty() {
            problems.push("lease name must be set".to_string());
        }
        if self.holder_id.is_empty() {
            problems.push("lease holder id must be set".to_string());
        }
        if self.duration < MINIMUM_LEASE_DURATION {
            problems.push(format!(
                "lease duration {:?} must be at least {:?}",
                self.duration, MINIMUM_LEASE_DURATION
            ));
        }
        problems
    }

    fn describe(&self) -> String {
        format!("Lease {}/{}", self.namespace, self.name)
    }

    /// The duration in whole seconds (validated to be at least 2).
    fn duration_seconds(&self) -> u64 {
        self.duration
            .as_secs()
            .max(MINIMUM_LEASE_DURATION.as_secs())
    }

    /// How long before expiry the holder renews: a third of the duration,
    /// at least 1 s and less than the duration (kube-lease-manager's rule).
    fn grace_seconds(&self) -> u64 {
        let duration = self.duration_seconds();
        (duration / 3).clamp(1, duration - 1)
    }
}

/// `<prefix>-<8 random hex digits>`: a holder id that differs between
/// replicas and restarts (e.g. the pod name as prefix).
pub fn unique_holder_id(prefix: &str) -> String {
    format!("{prefix}-{}", random_suffix())
}

/// Starts [`run_with_leader_election`] on the current Tokio runtime (must
/// be called from within one).
pub fn spawn_with_leader_election(
    config: AgentConfig,
    identity: Arc<dyn IdentityStore>,
    sink: Arc<dyn ClusterSink>,
    lease: LeaseOptions,
) -> AgentHandle {
    let (status_sender, status) = watch::channel(AgentStatus {
        leader: Some(false),
        ..AgentStatus::default()
    });
    let (stop, stop_receiver) = watch::channel(false);
    let task = tokio::spawn(run_with_leader_election(
        config,
        identity,
        sink,
        lease,
        status_sender,
        stop_receiver,
    ));
    AgentHandle { status, task, stop }
}

/// How a term as leader ended.
enum TermEnd {
    /// Asked to stop.
    Stopped,
    /// Leadership lost, for the reason given.
    Lost(String),
    /// The agent loop ended (only with a problem retrying cannot fix).
    Finished(Result<(), AgentError>),
}

/// Runs the agent as one of several replicas: competes for `lease` and runs
/// the agent loop (enroll, sign, watch, write, report) only while holding
/// it. `status.leader` says whether this replica leads. Lease problems are
/// retried with backoff and shown in `status.last_error`; losing the lease
/// stops the loop at once and this replica competes again. On stop the
/// lease is released so that another replica takes over without waiting.
///
/// Errors: [`AgentError::InvalidConfig`] (config, identity store or lease
/// options; reported before competing), and the agent loop's fatal errors
/// (see [`super::run`]), after which the lease is released.
pub async fn run_with_leader_election(
    config: AgentConfig,
    identity: Arc<dyn IdentityStore>,
    sink: Arc<dyn ClusterSink>,
    lease: LeaseOptions,
    status: watch::Sender<AgentStatus>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), AgentError> {
    let mut problems = config.problems();
    problems.extend(identity.problems());
    problems.extend(lease.problems());
    if !problems.is_empty() {
        let error = AgentError::InvalidConfig(problems.join("; "));
        record_fatal(&status, &error);
        return Err(error);
    }
    status.send_modify(|current| current.leader = Some(false));
    let mut backoff = Backoff::new(config.max_backoff);
    loop {
        let joined = tokio::select! {
            biased;
            () = stop_requested(&mut stop) => return Ok(()),
            joined = join(&lease) => joined,
        };
        let acquired = match joined {
            Err(text) => Err(text),
            Ok(manager) => {
                // The Lease is reachable again: an earlier lease error or
                // lost term no longer makes this follower unready.
                status.send_modify(|current| current.last_error = None);
                tracing::info!(
                    lease = %lease.describe(),
                    holder = %lease.holder_id,
                    "waiting to become the leader"
                );
                tokio::select! {
                    biased;
                    () = stop_requested(&mut stop) => return Ok(()),
                    acquired = acquire(&manager) => acquired.map(|()| manager),
                }
            }
        };
        let manager = match acquired {
            Ok(manager) => manager,
            Err(text) => {
                let delay = backoff.next_delay();
                tracing::warn!(
                    lease = %lease.describe(),
                    error = %text,
                    "leader election failed; retrying in {:.1} s",
                    delay.as_secs_f64()
                );
                status.send_modify(|current| current.last_error = Some(text));
                tokio::select! {
                    biased;
                    () = stop_requested(&mut stop) => return Ok(()),
                    () = tokio::time::sleep(delay) => continue,
                }
            }
        };
        backoff.reset();
        tracing::info!(
            lease = %lease.describe(),
            holder = %lease.holder_id,
            "became the leader; starting the agent loop"
        );
        status.send_modify(|current| {
            current.leader = Some(true);
            current.last_error = None;
        });
        let (confirmed, confirmed_receiver) = watch::channel(false);
        let end = tokio::select! {
            biased;
            () = stop_requested(&mut stop) => TermEnd::Stopped,
            reason = keep_lease(&manager, &lease, &confirmed) => TermEnd::Lost(reason),
            result = lead(&config, &identity, &sink, &status, confirmed_receiver) => {
                TermEnd::Finished(result)
            }
        };
        // The loop has stopped: say so before anything that may wait.
        match &end {
            TermEnd::Stopped | TermEnd::Finished(_) => {
                status.send_modify(|current| current.leader = Some(false));
            }
            TermEnd::Lost(reason) => {
                tracing::warn!(
                    lease = %lease.describe(),
                    reason = %reason,
                    "lost leadership; the agent loop stopped"
                );
                status.send_modify(|current| {
                    *current = AgentStatus {
                        cluster: current.cluster.clone(),
                        leader: Some(false),
                        last_error: Some(format!("lost leadership: {reason}")),
                        ..AgentStatus::default()
                    };
                });
            }
        }
        // Free the lease if the Lease still names us, so that the next leader
        // need not wait for it to expire.
        release_if_held(&manager, &lease).await;
        match end {
            TermEnd::Stopped => {
                tracing::info!("agent stopped");
                return Ok(());
            }
            TermEnd::Finished(result) => {
                if let Err(error) = &result {
                    record_fatal(&status, error);
                }
                return result;
            }
            TermEnd::Lost(_) => {}
        }
    }
}

/// The agent loop, started once the watchdog has confirmed the lease.
async fn lead(
    config: &AgentConfig,
    identity: &Arc<dyn IdentityStore>,
    sink: &Arc<dyn ClusterSink>,
    status: &watch::Sender<AgentStatus>,
    mut confirmed: watch::Receiver<bool>,
) -> Result<(), AgentError> {
    if confirmed.wait_for(|confirmed| *confirmed).await.is_err() {
        // The watchdog ended first; the select reports why.
        std::future::pending::<()>().await;
    }
    run_until_fatal(config.clone(), identity.clone(), sink.clone(), status).await
}

/// Reads or creates the Lease and returns a manager for it.
async fn join(lease: &LeaseOptions) -> Result<LeaseManager, String> {
    let params = LeaseParams::new(
        lease.holder_id.clone(),
        lease.duration_seconds(),
        lease.grace_seconds(),
    );
    let manager = LeaseManager::new(
        lease.client.clone(),
        &lease.name,
        &lease.namespace,
        params,
        LeaseCreateMode::AutoCreate,
    );
    match tokio::time::timeout(JOIN_TIMEOUT, manager).await {
        Ok(Ok(manager)) => Ok(manager),
        Ok(Err(error)) => Err(format!(
            "could not read or create {}: {}",
            lease.describe(),
            lease_error_text(&error)
        )),
        Err(_) => Err(format!(
            "could not read or create {} within {} s",
            lease.describe(),
            JOIN_TIMEOUT.as_secs()
        )),
    }
}

/// Waits until this replica holds the lease.
async fn acquire(manager: &LeaseManager) -> Result<(), String> {
    loop {
        match manager.changed().await {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(error) => {
                return Err(format!(
                    "competing for the lease failed: {}",
                    lease_error_text(&error)
                ));
            }
        }
    }
}

/// Renews the lease and watches it; returns why leadership ended.
async fn keep_lease(
    manager: &LeaseManager,
    lease: &LeaseOptions,
    confirmed: &watch::Sender<bool>,
) -> String {
    let renewals = async {
        loop {
            match manager.changed().await {
                Ok(false) => return "another replica holds the lease".to_string(),
                Ok(true) => {}
                Err(error) => {
                    return format!("renewing the lease failed: {}", lease_error_text(&error));
                }
            }
        }
    };
    tokio::select! {
        reason = renewals => reason,
        reason = watch_lease(lease, confirmed) => reason,
    }
}

/// The watchdog: the lease counts as ours until its last renewal (by our
/// own clock: we wrote it) plus the duration, less half the grace period,
/// as last seen in the Lease. Right after acquisition nothing is trusted
/// until one read confirms a current renewal (`confirmed` becomes `true`),
/// which must come within the grace period. Returns when that time runs out
/// or the Lease names another holder.
async fn watch_lease(lease: &LeaseOptions, confirmed: &watch::Sender<bool>) -> String {
    let api: Api<Lease> = Api::namespaced(lease.client.clone(), &lease.namespace);
    let duration = Duration::from_secs(lease.duration_seconds());
    let grace = Duration::from_secs(lease.grace_seconds());
    let margin = grace / 2;
    let interval = (grace / 4).max(Duration::from_millis(100));
    let unconfirmed_until = Instant::now() + grace;
    let mut valid_until: Option<Instant> = None;
    loop {
        let deadline = valid_until.unwrap_or(unconfirmed_until);
        let now = Instant::now();
        if now >= deadline {
            return if valid_until.is_some() {
                "the lease could not be confirmed as renewed before it expires (is the API server reachable?)"
                    .to_string()
            } else {
                "the lease could not be confirmed after acquiring it".to_string()
            };
        }
        match tokio::time::timeout(
            deadline.saturating_duration_since(now),
            api.get(&lease.name),
        )
        .await
        {
            Ok(Ok(current)) => {
                let spec = current.spec.unwrap_or_default();
                if spec.holder_identity.as_deref() != Some(lease.holder_id.as_str()) {
                    return format!(
                        "the lease is now held by {}",
                        spec.holder_identity.as_deref().unwrap_or("nobody")
                    );
                }
                let until = spec.renew_time.and_then(|renewed| {
                    let renewed: SystemTime = renewed.0.into();
                    // The lease manager stamps renewals with the system
                    // clock, so they are compared with it, not a test clock.
                    let left = renewed
                        .checked_add(duration)?
                        .checked_sub(margin)?
                        .duration_since(SystemClock.now())
                        .ok()?;
                    Instant::now().checked_add(left)
                });
                if let Some(until) = until {
                    valid_until = Some(until);
                    confirmed.send_if_modified(|confirmed| !std::mem::replace(confirmed, true));
                }
            }
            Ok(Err(error)) => {
                tracing::debug!(error = %describe_kube_error(&error), "could not read the lease");
            }
            Err(_) => {}
        }
        let deadline = valid_until.unwrap_or(unconfirmed_until);
        tokio::time::sleep_until((Instant::now() + interval).min(deadline)).await;
    }
}

/// Gives the lease up if the Lease still names this replica (best effort,
/// bounded by the grace period; otherwise it expires on its own).
///
/// The Lease is read first because `LeaseManager::release` trusts the
/// manager's own view, which may be stale: after another replica took the
/// lease it would clear that replica's hold.
async fn release_if_held(manager: &LeaseManager, lease: &LeaseOptions) {
    let limit = Duration::from_secs(lease.grace_seconds());
    let api: Api<Lease> = Api::namespaced(lease.client.clone(), &lease.namespace);
    let result = tokio::time::timeout(limit, async {
        let current = api
            .get(&lease.name)
            .await
            .map_err(|error| describe_kube_error(&error))?;
        let holder = current.spec.and_then(|spec| spec.holder_identity);
        if holder.as_deref() != Some(lease.holder_id.as_str()) {
            return Ok(false);
        }
        manager
            .release()
            .await
            .map(|()| true)
            .map_err(|error| lease_error_text(&error))
    })
    .await;
    match result {
        Ok(Ok(true)) => tracing::info!(lease = %lease.describe(), "released the lease"),
        Ok(Ok(false)) => {}
        Ok(Err(text)) => tracing::debug!(
            lease = %lease.describe(),
            error = %text,
            "could not release the lease; it expires on its own"
        ),
        Err(_) => tracing::debug!(
            lease = %lease.describe(),
            "releasing the lease timed out; it expires on its own"
        ),
    }
}

/// A lease error on one line, with the API server's message rather than
/// kube's debug form.
fn lease_error_text(error: &LeaseManagerError) -> String {
    match error {
        LeaseManagerError::KubeError(error) => describe_kube_error(error),
        other => error_text(other),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn options(duration: Duration) -> LeaseOptions {
        let config = kube::Config::new("https://127.0.0.1:1".parse().unwrap());
        let mut options =
            LeaseOptions::new(kube::Client::try_from(config).unwrap(), "istio-system");
        options.duration = duration;
        options
    }

    #[tokio::test]
    async fn defaults_name_the_lease_and_a_unique_holder() {
        let first = options(DEFAULT_LEASE_DURATION);
        let second = options(DEFAULT_LEASE_DURATION);
        assert_eq!(first.name, "trustplane-agent");
        assert!(first.holder_id.starts_with("trustplane-agent-"));
        assert_ne!(first.holder_id, second.holder_id);
        assert!(first.problems().is_empty());
        assert_eq!(first.grace_seconds(), 5);
        assert!(!format!("{first:?}").is_empty());
    }

    #[tokio::test]
    async fn short_leases_keep_a_grace_period_below_the_duration() {
        assert_eq!(options(Duration::from_secs(2)).grace_seconds(), 1);
        assert_eq!(options(Duration::from_secs(3)).grace_seconds(), 1);
        assert_eq!(options(Duration::from_secs(6)).grace_seconds(), 2);
        let problems = options(Duration::from_secs(1)).problems();
        assert!(problems[0].contains("at least 2s"), "{problems:?}");
    }

    #[tokio::test]
    async fn invalid_options_are_reported_before_competing() {
        let mut lease = options(Duration::from_millis(500));
        lease.name.clear();
        let config = AgentConfig::new("https://127.0.0.1:1", "/tmp/unused".into());
        let handle = spawn_with_leader_election(
            config,
            Arc::new(crate::agent::MemoryIdentityStore::new()),
            Arc::new(crate::sink::MemorySink::new()),
            lease,
        );
        let result = tokio::time::timeout(Duration::from_secs(5), handle.task)
            .await
            .unwrap()
            .unwrap();
        let Err(AgentError::InvalidConfig(text)) = result else {
            panic!("expected an invalid config, got {result:?}");
        };
        assert!(
            text.contains("lease name") && text.contains("lease duration"),
            "{text}"
        );
        assert!(handle.status.borrow().last_error.is_some());
    }
}
