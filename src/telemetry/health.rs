//! The health endpoints every long-running command serves (axum):
//! `GET /healthz` answers 200 while the process serves; `GET /readyz`
//! answers 200 or 503 with the reason, from a readiness check the command
//! supplies (the agent's status, the server's Vault); `GET /metrics`
//! answers the command's Prometheus metrics ([`super::metrics`]).

use std::future::Future;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;

/// Serves `/healthz`, `/readyz` and `/metrics` on `listener` until `stop`
/// resolves. `ready` is asked on each `/readyz`: `Ok(text)` answers 200
/// with it, `Err(reason)` answers 503 with the reason. `metrics` is asked
/// on each `/metrics` for the exposition (OpenMetrics text).
///
/// Errors: the listener fails.
pub async fn serve_probes<Ready, Checked, Metrics, Encoded>(
    listener: tokio::net::TcpListener,
    ready: Ready,
    metrics: Metrics,
    stop: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()>
where
    Ready: Fn() -> Checked + Clone + Send + Sync + 'static,
    Checked: Future<Output = Result<String, String>> + Send + 'static,
    Metrics: Fn() -> Encoded + Clone + Send + Sync + 'static,
    Encoded: Future<Output = String> + Send + 'static,
{
    let router = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let checked = ready();
                async move {
                    match checked.await {
                        Ok(text) => (StatusCode::OK, format!("{text}\n")),
                        Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n")),
                    }
                }
            }),
        )
        .route(
            "/metrics",
            get(move || {
                let encoded = metrics();
                async move {
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            super::metrics::CONTENT_TYPE,
                        )],
                        encoded.await,
                    )
                }
            }),
        );
    axum::serve(listener, router)
        .with_graceful_shutdown(stop)
        .await
}
