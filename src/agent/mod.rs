//! The per-cluster agent: obtains the cluster's control-plane identity
//! (enrollment with a one-time join token), generates the intermediate CA
//! key inside the cluster, has the server sign it from a CSR, watches the
//! trust bundle, renews before expiry, and keeps Istio's `cacerts` current
//! through a [`crate::sink::ClusterSink`] with one atomic write per change.
//!
//! It owns enrollment, the bundle loop, the identity stores (directory,
//! Kubernetes Secret), leader election among replicas and the health
//! endpoints. What to write is decided by [`crate::reconcile`] and written
//! through a [`crate::sink::Keeper`] (shared with push mode); certificate
//! work is delegated to [`crate::ca`], and the server decides every
//! certificate field. The intermediate key never leaves this process except
//! into the sink.
//!
//! Files: `config` (what the agent is told and shows), `error`, `handle`
//! (start and stop), `enroll`, `driver` (the loop and the CSR source),
//! `identity` and `identity_secret` (where the identity is kept), `leader`,
//! `health`.

mod config;
mod driver;
mod enroll;
mod error;
mod handle;
mod health;
mod identity;
mod identity_secret;
mod leader;

pub use config::{AgentConfig, AgentStatus};
pub use error::AgentError;
pub use handle::{AgentHandle, run, run_with_identity, spawn, spawn_with_identity};
pub use health::serve_health;
pub use identity::{
    ClientIdentity, FileIdentityStore, IdentityStore, MemoryIdentityStore, StoredIdentity,
};
pub use identity_secret::KubernetesIdentityStore;
pub use leader::{
    DEFAULT_LEASE_DURATION, DEFAULT_LEASE_NAME, LeaseOptions, run_with_leader_election,
    spawn_with_leader_election, unique_holder_id,
};

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests;
