//! `trustplane bench sign`: `SignIntermediate` over gRPC+mTLS end to end
//! against a running server, as agents call it. The clusters are enrolled
//! first and every intermediate key and CSR is made before the clock
//! starts, so only the server's work and the wire are measured.
//!
//! A connection authenticates as one cluster, and a cluster may only sign
//! for itself: each of the `--connections` connections is its own bench
//! cluster, and the callers are spread over them.
//!
//! The server's per-cluster rate (`--sign-intermediate-per-hour`, 20 by
//! default) must be lifted for the bench, e.g. to 4000000000.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde_json::json;
use tokio::task::JoinSet;
use tonic::transport::Channel;

use super::super::client::{AdminConnection, status_error};
use super::fleet;
use super::stats::Latencies;
use crate::ca::{self, KeyAlgorithm, PrivateKey};
use crate::proto;
use crate::proto::intermediate_service_client::IntermediateServiceClient;

/// `bench sign` flags.
#[derive(Debug, clap::Args)]
pub struct SignArgs {
    /// How to reach the server as admin (to register the bench clusters).
    #[command(flatten)]
    pub admin: AdminConnection,
    /// The load generator's runtime.
    #[command(flatten)]
    pub runtime: super::ClientRuntime,
    /// Calls in flight at once (each caller waits for its answer before the next call).
    #[arg(long, default_value_t = 16)]
    pub callers: usize,
    /// TLS connections; each authenticates as its own bench cluster, and the callers are spread over them.
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// How long to measure, e.g. `10s`.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Calls before the clock starts (connections warm, server caches filled), not measured.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub warmup: Duration,
    /// Prefix of the bench clusters' names.
    #[arg(long, default_value = "bench-sign")]
    pub prefix: String,
    /// The server's log file (its stderr, with RUST_LOG including `trustplane::store=debug`): counts the store commits (fsyncs) during the measurement and how many issuances shared each.
    #[arg(long, value_name = "FILE")]
    pub server_log: Option<PathBuf>,
}

/// Runs `bench sign`. Prints `{"bench":"sign", "callers", "connections",
/// "clusters", "duration_s", "count", "per_second", "p50_ms", "p99_ms",
/// "max_ms"}`, with `"store"` (`commits`, `batches`, `batches_per_commit`)
/// when `--server-log` is given.
pub async fn run(args: SignArgs) -> anyhow::Result<serde_json::Value> {
    anyhow::ensure!(args.callers > 0, "--callers must be at least 1");
    anyhow::ensure!(args.connections > 0, "--connections must be at least 1");
    // More connections than callers would leave clusters idle.
    let connections = args.connections.min(args.callers);
    let server = args.admin.server_url().to_string();
    eprintln!("enrolling {connections} bench clusters");
    let clusters = fleet::enroll(&args.admin, &args.prefix, connections).await?;
    let mut channels = Vec::with_capacity(connections);
    for cluster in &clusters {
        channels.push(cluster.connect(&server).await?);
    }
    // One intermediate key and CSR per caller, made now: the bench measures
    // the server, not the client's key generation.
    let mut csrs = Vec::with_capacity(args.callers);
    for caller in 0..args.callers {
        let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256)?;
        let cluster = &clusters[caller % connections].name;
        csrs.push(ca::create_csr(&key, &format!("{cluster} intermediate CA"))?);
    }

    eprintln!("warming up for {}", humantime::format_duration(args.warmup));
    drive(&channels, &csrs, args.warmup).await?;
    let log_start = log_length(args.server_log.as_deref())?;
    eprintln!(
        "measuring {} callers on {connections} connections for {}",
        args.callers,
        humantime::format_duration(args.duration)
    );
    let started = Instant::now();
    let latencies = drive(&channels, &csrs, args.duration).await?;
    let elapsed = started.elapsed();
    let summary = latencies.summary(elapsed);
    let mut result = json!({
        "bench": "sign",
        "callers": args.callers,
        "connections": connections,
        "clusters": connections,
        "duration_s": elapsed.as_secs_f64(),
    });
    merge(&mut result, serde_json::to_value(&summary)?);
    if let (Some(path), Some(start)) = (args.server_log.as_deref(), log_start) {
        let commits = group_commits(path, start)?;
        result["store"] = commits.to_json();
    }
    Ok(result)
}

/// Runs every caller for `duration`; caller `i` signs on channel
/// `i % channels` with CSR `i`.
async fn drive(
    channels: &[Channel],
    csrs: &[String],
    duration: Duration,
) -> anyhow::Result<Latencies> {
    let deadline = Instant::now() + duration;
    let mut callers = JoinSet::new();
    for (index, csr) in csrs.iter().enumerate() {
        let client = IntermediateServiceClient::new(channels[index % channels.len()].clone());
        callers.spawn(call_until(client, csr.clone().into_bytes(), deadline));
    }
    let mut latencies = Latencies::new();
    while let Some(done) = callers.join_next().await {
        latencies.extend(done.context("a bench caller failed")??);
    }
    Ok(latencies)
}

/// One caller: `SignIntermediate` again and again until `deadline`.
async fn call_until(
    mut client: IntermediateServiceClient<Channel>,
    csr: Vec<u8>,
    deadline: Instant,
) -> anyhow::Result<Latencies> {
    let mut latencies = Latencies::new();
    loop {
        let started = Instant::now();
        if started >= deadline {
            return Ok(latencies);
        }
        client
            .sign_intermediate(proto::SignIntermediateRequest {
                csr: csr.clone(),
                cluster: String::new(),
            })
            .await
            .map_err(status_error)
            .context(
                "SignIntermediate failed during the bench (a ResourceExhausted refusal means the server needs --sign-intermediate-per-hour 4000000000)",
            )?;
        latencies.push(started.elapsed());
    }
}

/// Adds the fields of `extra` (an object) to `into`.
fn merge(into: &mut serde_json::Value, extra: serde_json::Value) {
    if let (Some(into), serde_json::Value::Object(extra)) = (into.as_object_mut(), extra) {
        into.extend(extra);
    }
}

/// The length of the server's log now, where the measured part starts.
fn log_length(path: Option<&std::path::Path>) -> anyhow::Result<Option<u64>> {
    path.map(|path| {
        std::fs::metadata(path)
            .map(|metadata| metadata.len())
            .with_context(|| format!("cannot read the server log {}", path.display()))
    })
    .transpose()
}

/// Store commits counted in a server log.
#[derive(Debug, Default, PartialEq)]
pub(super) struct GroupCommits {
    /// Durable transactions (one fsync each).
    commits: u64,
    /// Batches they carried (one per issuance).
    batches: u64,
}

impl GroupCommits {
    fn to_json(&self) -> serde_json::Value {
        json!({
            "commits": self.commits,
            "batches": self.batches,
            "batches_per_commit": if self.commits > 0 { self.batches as f64 / self.commits as f64 } else { 0.0 },
        })
    }
}

/// Counts the `store group commit` lines written to `path` after byte `start`.
fn group_commits(path: &std::path::Path, start: u64) -> anyhow::Result<GroupCommits> {
    let text = std::fs::read(path)
        .with_context(|| format!("cannot read the server log {}", path.display()))?;
    let tail = text.get(start as usize..).unwrap_or_default();
    Ok(count_group_commits(&String::from_utf8_lossy(tail)))
}

/// Counts the `store group commit` lines of `log` and sums their
/// `batches=` fields (ANSI colours, if any, are skipped).
pub(super) fn count_group_commits(log: &str) -> GroupCommits {
    let mut counted = GroupCommits::default();
    for line in log.lines() {
        let plain = strip_ansi(line);
        if !plain.contains(crate::store::GROUP_COMMIT_LOG) {
            continue;
        }
        let batches = plain
            .split_once("batches=")
            .map(|(_, rest)| {
                rest.chars()
                    .take_while(char::is_ascii_digit)
                    .collect::<String>()
            })
            .and_then(|digits| digits.parse::<u64>().ok());
        if let Some(batches) = batches {
            counted.commits += 1;
            counted.batches += batches;
        }
    }
    counted
}

/// `line` without ANSI escape sequences (`ESC [ … letter`).
fn strip_ansi(line: &str) -> String {
    let mut plain = String::with_capacity(line.len());
    let mut characters = line.chars();
    while let Some(character) = characters.next() {
        if character == '\u{1b}' {
            for inside in characters.by_ref() {
                if inside.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            plain.push(character);
        }
    }
    plain
}

#[cfg(test)]
mod tests {
    use super::{GroupCommits, count_group_commits};

    #[test]
    fn group_commit_lines_are_counted_with_or_without_colours() {
        let log = "2026-12-02T08:00:00Z DEBUG store group commit batches=3\n\
            2026-12-02T08:00:00Z  INFO intermediate issued cluster=a\n\
            \u{1b}[2m2026\u{1b}[0m \u{1b}[34mDEBUG\u{1b}[0m store group commit \u{1b}[3mbatches\u{1b}[0m\u{1b}[2m=\u{1b}[0m5\n";
        assert_eq!(
            count_group_commits(log),
            GroupCommits {
                commits: 2,
                batches: 8
            }
        );
    }
}
