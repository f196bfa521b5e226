//! `trustplane server`'s limit flags: one flag per [`Limits`] field, with
//! the same defaults (a unit test keeps them equal).

use std::num::NonZeroU32;
use std::time::Duration;

use crate::server::Limits;

/// Timeouts, connection caps and call rates of `trustplane server`. The
/// defaults keep a 10 000-cluster mesh well inside them (README, "Limits").
#[derive(Clone, Debug, clap::Args)]
#[command(next_help_heading = "Limits")]
pub struct LimitsOptions {
    /// A TCP connection that has not finished its TLS handshake by then is closed.
    #[arg(long, env = "TRUSTPLANE_TLS_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub tls_handshake_timeout: Duration,
    /// Connections open at once; more are closed at once (keep it below the process's file-descriptor limit).
    #[arg(long, env = "TRUSTPLANE_MAX_CONNECTIONS", default_value_t = 16_000)]
    pub max_connections: usize,
    /// Connections open at once that have not authenticated (in their TLS handshake, or without a client certificate); more are closed at once.
    #[arg(
        long,
        env = "TRUSTPLANE_MAX_UNAUTHENTICATED_CONNECTIONS",
        default_value_t = 1_000
    )]
    pub max_unauthenticated_connections: usize,
    /// A connection without a client certificate (enrollment) is closed after this long.
    #[arg(long, env = "TRUSTPLANE_UNAUTHENTICATED_CONNECTION_LIFETIME", default_value = "60s", value_parser = humantime::parse_duration)]
    pub unauthenticated_connection_lifetime: Duration,
    /// A call that has not answered by then fails with DeadlineExceeded (watch streams are not cut).
    #[arg(long, env = "TRUSTPLANE_REQUEST_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub request_timeout: Duration,
    /// Calls (HTTP/2 streams) open at once on one connection.
    #[arg(long, env = "TRUSTPLANE_MAX_CONCURRENT_STREAMS", default_value_t = 64)]
    pub max_concurrent_streams: u32,
    /// How often an idle HTTP/2 connection is pinged.
    #[arg(long, env = "TRUSTPLANE_HTTP2_KEEPALIVE_INTERVAL", default_value = "30s", value_parser = humantime::parse_duration)]
    pub http2_keepalive_interval: Duration,
    /// A connection whose peer does not answer a ping by then is closed.
    #[arg(long, env = "TRUSTPLANE_HTTP2_KEEPALIVE_TIMEOUT", default_value = "20s", value_parser = humantime::parse_duration)]
    pub http2_keepalive_timeout: Duration,
    /// TCP keepalive idle time (and probe interval) on accepted connections.
    #[arg(long, env = "TRUSTPLANE_TCP_KEEPALIVE", default_value = "60s", value_parser = humantime::parse_duration)]
    pub tcp_keepalive: Duration,
    /// WatchBundle streams open at once per cluster (or admin); more are refused with ResourceExhausted.
    #[arg(
        long,
        env = "TRUSTPLANE_MAX_WATCH_STREAMS_PER_IDENTITY",
        default_value_t = 4
    )]
    pub max_watch_streams_per_identity: usize,
    /// SignIntermediate calls per cluster per hour (also the burst); more are refused with ResourceExhausted and a retry-after.
    #[arg(
        long,
        env = "TRUSTPLANE_SIGN_INTERMEDIATE_PER_HOUR",
        default_value = "20"
    )]
    pub sign_intermediate_per_hour: NonZeroU32,
    /// ReportStatus calls per cluster per minute (also the burst); more are refused with ResourceExhausted and a retry-after.
    #[arg(
        long,
        env = "TRUSTPLANE_REPORT_STATUS_PER_MINUTE",
        default_value = "30"
    )]
    pub report_status_per_minute: NonZeroU32,
}

impl From<LimitsOptions> for Limits {
    fn from(options: LimitsOptions) -> Self {
        Limits {
            tls_handshake_timeout: options.tls_handshake_timeout,
            max_connections: options.max_connections,
            max_unauthenticated_connections: options.max_unauthenticated_connections,
            unauthenticated_connection_lifetime: options.unauthenticated_connection_lifetime,
            request_timeout: options.request_timeout,
            max_concurrent_streams: options.max_concurrent_streams,
            http2_keepalive_interval: options.http2_keepalive_interval,
            http2_keepalive_timeout: options.http2_keepalive_timeout,
            tcp_keepalive: options.tcp_keepalive,
            max_watch_streams_per_identity: options.max_watch_streams_per_identity,
            sign_intermediate_per_hour: options.sign_intermediate_per_hour,
            report_status_per_minute: options.report_status_per_minute,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Flags {
        #[command(flatten)]
        limits: LimitsOptions,
    }

    #[test]
    fn the_flag_defaults_are_the_library_defaults() {
        let flags = Flags::try_parse_from(["server"]).unwrap();
        assert_eq!(Limits::from(flags.limits), Limits::default());
    }

    #[test]
    fn a_flag_sets_its_limit() {
        let flags = Flags::try_parse_from([
            "server",
            "--tls-handshake-timeout",
            "3s",
            "--max-watch-streams-per-identity",
            "2",
        ])
        .unwrap();
        let limits = Limits::from(flags.limits);
        assert_eq!(limits.tls_handshake_timeout, Duration::from_secs(3));
        assert_eq!(limits.max_watch_streams_per_identity, 2);
    }
}
