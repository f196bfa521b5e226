//! The agent's health endpoints (axum): `/healthz` answers 200 while the
//! process serves, `/readyz` follows [`AgentStatus::readiness`], and
//! `/metrics` shows the status as gauges beside the agent's events. Kept
//! next to the agent because both are readings of its status.

use std::sync::Arc;

use tokio::sync::watch;

use super::config::AgentStatus;
use super::handle::stop_requested;
use crate::ca::system_time_to_unix;
use crate::clock::Clock;
use crate::telemetry::metrics::{self, AgentSnapshot};

/// The agent's state as its `/metrics` shows it at `now_unix`.
fn snapshot(status: &AgentStatus, now_unix: i64) -> AgentSnapshot {
    AgentSnapshot {
        applied_bundle_version: status.applied_bundle_version,
        intermediate_expiry_seconds: (status.intermediate_not_after_unix != 0)
            .then(|| status.intermediate_not_after_unix.saturating_sub(now_unix)),
        ready: status.readiness().is_ok(),
    }
}

/// Serves `GET /healthz` (200 `ok`), `GET /readyz` (200 `ok`, or 503 with
/// the reason: the current error, or that nothing is applied yet) and
/// `GET /metrics` (expiry counted by `clock`) on `listener` until `stop`
/// becomes `true`.
///
/// Errors: the listener fails.
pub async fn serve_health(
    listener: tokio::net::TcpListener,
    status: watch::Receiver<AgentStatus>,
    clock: Arc<dyn Clock>,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let ready_status = status.clone();
    let ready = move || {
        let readiness = ready_status.borrow().readiness();
        async move {
            readiness
                .map(|()| "ok".to_string())
                .map_err(|reason| reason.to_string())
        }
    };
    let encode = move || {
        let state = snapshot(&status.borrow(), system_time_to_unix(clock.now()));
        async move { metrics::agent_exposition(state) }
    };
    crate::telemetry::health::serve_probes(listener, ready, encode, async move {
        stop_requested(&mut stop).await;
    })
    .await
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    async fn get_path(address: std::net::SocketAddr, path: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        response
    }

    #[tokio::test]
    async fn healthz_is_ok_and_readyz_follows_the_status() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (status, status_receiver) = watch::channel(AgentStatus::default());
        let (stop, stop_receiver) = watch::channel(false);
        let server = tokio::spawn(serve_health(
            listener,
            status_receiver,
            crate::clock::SystemClock::shared(),
            stop_receiver,
        ));

        assert!(
            get_path(address, "/healthz")
                .await
                .starts_with("HTTP/1.1 200")
        );
        let not_yet = get_path(address, "/readyz").await;
        assert!(not_yet.starts_with("HTTP/1.1 503"), "{not_yet}");
        assert!(not_yet.contains("no trust bundle applied yet"), "{not_yet}");

        status.send_modify(|current| current.applied_bundle_version = 2);
        let ready = get_path(address, "/readyz").await;
        assert!(
            ready.starts_with("HTTP/1.1 200") && ready.ends_with("ok\n"),
            "{ready}"
        );

        status.send_modify(|current| current.last_error = Some("Secret is foreign".into()));
        let failing = get_path(address, "/readyz").await;
        assert!(failing.starts_with("HTTP/1.1 503"), "{failing}");
        assert!(failing.contains("Secret is foreign"), "{failing}");

        // A follower is ready while healthy, not while it cannot reach (or
        // lost) its Lease: the apiserver may be down.
        status.send_modify(|current| current.leader = Some(false));
        let follower_failing = get_path(address, "/readyz").await;
        assert!(
            follower_failing.starts_with("HTTP/1.1 503"),
            "{follower_failing}"
        );
        status.send_modify(|current| current.last_error = None);
        assert!(
            get_path(address, "/readyz")
                .await
                .starts_with("HTTP/1.1 200")
        );

        stop.send_replace(true);
        tokio::time::timeout(std::time::Duration::from_secs(5), server)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }
}
