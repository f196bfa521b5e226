//! What the server bounds, and the per-caller counters that enforce the
//! limits tonic does not: watch streams per caller identity and the call
//! rates of `SignIntermediate` and `ReportStatus` per cluster.
//!
//! Owns: [`Limits`] (every bound, with defaults sized for a 10 000-cluster
//! mesh; README "Limits" argues them), [`WatchStreams`] and [`CallRates`].
//! Does not own: connection limits (the accept loop in `listener`) nor the
//! HTTP/2 settings (handed to tonic's builder in `start`).

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use governor::{Quota, RateLimiter, state::keyed::DefaultKeyedStateStore};

use super::error::ServerError;
use crate::clock::Clock;

/// Every bound the server keeps. The defaults hold a 10 000-cluster mesh
/// well inside them on a host with 20 000 file descriptors (README,
/// "Limits").
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// A TCP connection that has not finished its TLS handshake by then is
    /// closed.
    pub tls_handshake_timeout: Duration,
    /// At most this many connections at once (handshaking or not); more are
    /// closed at once, so the process stays below its file-descriptor limit.
    pub max_connections: usize,
    /// At most this many connections at once that have not authenticated:
    /// those still in their TLS handshake and those without a client
    /// certificate (enrollment). More are closed at once.
    pub max_unauthenticated_connections: usize,
    /// A connection without a client certificate is closed after this long
    /// (enrollment is one call).
    pub unauthenticated_connection_lifetime: Duration,
    /// A unary call that has not answered by then fails with
    /// `DeadlineExceeded` (watch streams are not cut).
    pub request_timeout: Duration,
    /// HTTP/2 streams (calls) open at once on one connection.
    pub max_concurrent_streams: u32,
    /// How often the server pings an idle HTTP/2 connection.
    pub http2_keepalive_interval: Duration,
    /// A connection whose peer does not answer a ping by then is closed.
    pub http2_keepalive_timeout: Duration,
    /// TCP keepalive idle time on accepted sockets.
    pub tcp_keepalive: Duration,
    /// `WatchBundle` streams open at once per caller identity (a cluster or
    /// an admin); more are refused with `ResourceExhausted`.
    pub max_watch_streams_per_identity: usize,
    /// `SignIntermediate` calls per cluster per hour (also the burst).
    pub sign_intermediate_per_hour: NonZeroU32,
    /// `ReportStatus` calls per cluster per minute (also the burst).
    pub report_status_per_minute: NonZeroU32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            tls_handshake_timeout: Duration::from_secs(10),
            max_connections: 16_000,
            max_unauthenticated_connections: 1_000,
            unauthenticated_connection_lifetime: Duration::from_secs(60),
            request_timeout: Duration::from_secs(30),
            max_concurrent_streams: 64,
            http2_keepalive_interval: Duration::from_secs(30),
            http2_keepalive_timeout: Duration::from_secs(20),
            tcp_keepalive: Duration::from_secs(60),
            max_watch_streams_per_identity: 4,
            sign_intermediate_per_hour: NonZeroU32::new(20).unwrap_or(NonZeroU32::MIN),
            report_status_per_minute: NonZeroU32::new(30).unwrap_or(NonZeroU32::MIN),
        }
    }
}

impl Limits {
    /// The settings that cannot work, each with the flag to fix.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let mut positive = |value: bool, flag: &str| {
            if !value {
                problems.push(format!("--{flag} must be greater than zero"));
            }
        };
        positive(
            !self.tls_handshake_timeout.is_zero(),
            "tls-handshake-timeout",
        );
        positive(self.max_connections > 0, "max-connections");
        positive(
            self.max_unauthenticated_connections > 0,
            "max-unauthenticated-connections",
        );
        positive(
            !self.unauthenticated_connection_lifetime.is_zero(),
            "unauthenticated-connection-lifetime",
        );
        positive(!self.request_timeout.is_zero(), "request-timeout");
        positive(self.max_concurrent_streams > 0, "max-concurrent-streams");
        positive(
            !self.http2_keepalive_interval.is_zero(),
            "http2-keepalive-interval",
        );
        positive(
            !self.http2_keepalive_timeout.is_zero(),
            "http2-keepalive-timeout",
        );
        positive(!self.tcp_keepalive.is_zero(), "tcp-keepalive");
        positive(
            self.max_watch_streams_per_identity > 0,
            "max-watch-streams-per-identity",
        );
        if self.max_unauthenticated_connections > self.max_connections {
            problems.push(format!(
                "--max-unauthenticated-connections ({}) must not exceed --max-connections ({})",
                self.max_unauthenticated_connections, self.max_connections
            ));
        }
        problems
    }
}

/// Open `WatchBundle` streams per caller identity.
#[derive(Debug)]
pub struct WatchStreams {
    limit: usize,
    open: Arc<Mutex<HashMap<String, usize>>>,
}

/// One open watch stream; dropping it (the stream ended) frees its place.
#[derive(Debug)]
pub struct WatchSlot {
    identity: String,
    open: Arc<Mutex<HashMap<String, usize>>>,
}

impl WatchStreams {
    /// At most `limit` streams per identity.
    pub fn new(limit: usize) -> Self {
        WatchStreams {
            limit,
            open: Arc::default(),
        }
    }

    /// A place for one more stream of `identity`.
    ///
    /// Errors: [`ServerError::TooManyWatchStreams`] when it has `limit` open.
    pub fn open(&self, identity: &str) -> Result<WatchSlot, ServerError> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let count = open.entry(identity.to_string()).or_insert(0);
        if *count >= self.limit {
            return Err(ServerError::TooManyWatchStreams {
                identity: identity.to_string(),
                limit: self.limit,
            });
        }
        *count += 1;
        crate::telemetry::metrics::watch_stream_opened();
        Ok(WatchSlot {
            identity: identity.to_string(),
            open: self.open.clone(),
        })
    }
}

impl Drop for WatchSlot {
    fn drop(&mut self) {
        crate::telemetry::metrics::watch_stream_closed();
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = open.get_mut(&self.identity) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.identity);
            }
        }
    }
}

/// The server's [`Clock`] as governor's clock, so that rate limits follow
/// the injected time (tests move it).
#[derive(Clone, Debug)]
struct RateClock(Arc<dyn Clock>);

impl governor::clock::Clock for RateClock {
    type Instant = SystemTime;

    fn now(&self) -> SystemTime {
        self.0.now()
    }
}

type ClusterLimiter = RateLimiter<
    String,
    DefaultKeyedStateStore<String>,
    RateClock,
    governor::middleware::NoOpMiddleware<SystemTime>,
>;

/// Per-cluster call rates (GCRA token buckets, keyed by cluster name).
#[derive(Debug)]
pub struct CallRates {
    clock: Arc<dyn Clock>,
    sign_intermediate: ClusterLimiter,
    report_status: ClusterLimiter,
    limits: Limits,
}

impl CallRates {
    /// The rates of `limits`, timed by `clock`.
    pub fn new(limits: &Limits, clock: Arc<dyn Clock>) -> Self {
        let limiter = |quota: Quota| {
            RateLimiter::new(
                quota,
                DefaultKeyedStateStore::default(),
                RateClock(clock.clone()),
            )
        };
        CallRates {
            sign_intermediate: limiter(Quota::per_hour(limits.sign_intermediate_per_hour)),
            report_status: limiter(Quota::per_minute(limits.report_status_per_minute)),
            clock,
            limits: limits.clone(),
        }
    }

    /// Counts one `SignIntermediate` call of `cluster`.
    ///
    /// Errors: [`ServerError::RateLimited`] with the wait before a call is
    /// accepted again.
    pub fn sign_intermediate(&self, cluster: &str) -> Result<(), ServerError> {
        self.check(
            &self.sign_intermediate,
            cluster,
            "SignIntermediate",
            format!(
                "{} per hour (--sign-intermediate-per-hour)",
                self.limits.sign_intermediate_per_hour
            ),
        )
    }

    /// Counts one `ReportStatus` call of `cluster`.
    ///
    /// Errors: as [`CallRates::sign_intermediate`].
    pub fn report_status(&self, cluster: &str) -> Result<(), ServerError> {
        self.check(
            &self.report_status,
            cluster,
            "ReportStatus",
            format!(
                "{} per minute (--report-status-per-minute)",
                self.limits.report_status_per_minute
            ),
        )
    }

    fn check(
        &self,
        limiter: &ClusterLimiter,
        cluster: &str,
        call: &'static str,
        limit: String,
    ) -> Result<(), ServerError> {
        limiter
            .check_key(&cluster.to_string())
            .map_err(|not_until| {
                let wait = not_until
                    .earliest_possible()
                    .duration_since(self.clock.now())
                    .unwrap_or_default();
                ServerError::RateLimited {
                    call,
                    cluster: cluster.to_string(),
                    limit,
                    // Whole seconds, rounded up: a client that waits this long
                    // is accepted.
                    retry_after_seconds: wait.as_secs() + u64::from(wait.subsec_nanos() > 0),
                }
            })
    }

    /// Forgets clusters that are back to a full allowance (bounds memory
    /// to the clusters calling now).
    pub fn forget_idle(&self) {
        self.sign_intermediate.retain_recent();
        self.report_status.retain_recent();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::clock::TestClock;

    #[test]
    fn the_defaults_are_valid_and_zero_is_refused_with_its_flag() {
        assert!(Limits::default().problems().is_empty());
        let limits = Limits {
            tls_handshake_timeout: Duration::ZERO,
            max_unauthenticated_connections: 20_000,
            ..Limits::default()
        };
        let problems = limits.problems();
        assert!(
            problems
                .iter()
                .any(|p| p.contains("--tls-handshake-timeout"))
        );
        assert!(
            problems
                .iter()
                .any(|p| p.contains("must not exceed --max-connections"))
        );
    }

    #[test]
    fn a_watch_slot_is_freed_when_dropped() {
        let streams = WatchStreams::new(2);
        let first = streams.open("east").unwrap();
        let _second = streams.open("east").unwrap();
        let error = streams.open("east").unwrap_err();
        assert!(error.to_string().contains("2"), "{error}");
        streams.open("west").unwrap();
        drop(first);
        streams.open("east").unwrap();
    }

    #[test]
    fn a_cluster_over_its_rate_waits_by_the_injected_clock() {
        let clock = TestClock::starting_now();
        let limits = Limits {
            report_status_per_minute: NonZeroU32::new(2).unwrap(),
            ..Limits::default()
        };
        let rates = CallRates::new(&limits, clock.clone());
        rates.report_status("east").unwrap();
        rates.report_status("east").unwrap();
        match rates.report_status("east").unwrap_err() {
            ServerError::RateLimited {
                retry_after_seconds,
                ..
            } => assert_eq!(retry_after_seconds, 30),
            other => panic!("{other}"),
        }
        // Another cluster has its own allowance.
        rates.report_status("west").unwrap();
        clock.advance(Duration::from_secs(30));
        rates.report_status("east").unwrap();
    }
}
