//! The server's state as its `/metrics` shows it, read from the store at
//! each scrape (so a follower sharing the store shows what the leader
//! did): the published version, the rotation phase and its gate, and each
//! enrolled cluster's last report. The encoding is
//! [`crate::telemetry::metrics`]'s.

use std::sync::Arc;

use super::authority::Authority;
use super::error::ServerError;
use super::registry::ClusterState;
use crate::ca::system_time_to_unix;
use crate::rotation::Phase;
use crate::telemetry::error_text;
use crate::telemetry::metrics::{self, ClusterSample, ServerSnapshot};

impl Authority {
    /// The state `/metrics` shows now.
    ///
    /// Errors: store errors.
    pub fn metrics_snapshot(&self) -> Result<ServerSnapshot, ServerError> {
        let now = system_time_to_unix(self.now());
        let rotation = self.rotation.current()?.map(|(rotation, _)| rotation);
        let (phase, phase_seconds, gate_wait_seconds) = match &rotation {
            None => (Phase::Stable, None, 0),
            Some(rotation) => {
                let in_phase = now.saturating_sub(rotation.entered_unix).max(0);
                // The leader notes the first moment every cluster
                // acknowledged; until then the phase waits on its gate.
                let waiting = rotation.in_progress() && rotation.acknowledged_unix.is_none();
                (
                    rotation.phase,
                    Some(in_phase),
                    if waiting { in_phase } else { 0 },
                )
            }
        };
        let clusters = self
            .registry
            .list_clusters()?
            .into_iter()
            .filter(|cluster| cluster.state == ClusterState::Enrolled)
            .map(|cluster| {
                let report = &cluster.report;
                let reported = if report.reported_unix == 0 {
                    cluster.created_unix
                } else {
                    report.reported_unix
                };
                ClusterSample {
                    intermediate_expiry_seconds: (report.intermediate_not_after_unix != 0)
                        .then(|| report.intermediate_not_after_unix.saturating_sub(now)),
                    applied_bundle_version: report.applied_bundle_version,
                    report_age_seconds: now.saturating_sub(reported).max(0),
                    name: cluster.name,
                }
            })
            .collect();
        Ok(ServerSnapshot {
            trust_domain: self.trust_domain().to_string(),
            bundle_version: self.publication.current().bundle.version(),
            phase,
            phase_seconds,
            gate_wait_seconds,
            clusters,
        })
    }
}

/// The server's `/metrics` answer: the state read off the async workers
/// (the store is synchronous), and the events. When the state cannot be
/// read the answer has the events alone, and the failure is logged.
pub async fn scrape(authority: Arc<Authority>) -> String {
    let snapshot = match tokio::task::spawn_blocking(move || authority.metrics_snapshot()).await {
        Ok(Ok(snapshot)) => Some(snapshot),
        Ok(Err(error)) => {
            tracing::warn!(error = %error_text(&error), "metrics: cannot read the server's state");
            None
        }
        Err(error) => {
            tracing::warn!(error = %error, "metrics: the state task failed");
            None
        }
    };
    metrics::server_exposition(snapshot)
}
