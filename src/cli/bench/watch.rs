//! `trustplane bench watch`: bundle fan-out. Opens N `WatchBundle`
//! streams, each on its own TCP and TLS connection, waits until every
//! stream holds the current bundle, then publishes new versions (a
//! rotation start, then its abort) and times, from just before each admin
//! call, every stream's receipt of the version it published. With
//! `--server-pid` it also reads the server's resident memory with no
//! stream open and with N idle streams.
//!
//! Several sizes (`--watchers 100,1000,10000`) run in one process: the
//! streams of a size stay open and the next size adds to them, so the
//! bench clusters are enrolled once.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde_json::json;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tonic::transport::Channel;

use super::super::client::{AdminConnection, status_error};
use super::fleet::{self, BenchCluster};
use super::stats::Latencies;
use crate::proto;
use crate::proto::admin_service_client::AdminServiceClient;
use crate::proto::trust_bundle_service_client::TrustBundleServiceClient;

/// What publishes a new bundle version, as the JSON names it.
const TRIGGER: &str = "RotateStart (publishes {A,B}) then RotateAbort (publishes {A}); each is one new bundle version, timed from just before the admin call";

/// `bench watch` flags.
#[derive(Debug, clap::Args)]
pub struct WatchArgs {
    /// The server and the admin credential.
    #[command(flatten)]
    pub admin: AdminConnection,
    /// The load generator's runtime.
    #[command(flatten)]
    pub runtime: super::ClientRuntime,
    /// Watch streams, each on its own TLS connection; a comma-separated,
    /// ascending list measures each size in one run (the streams of one
    /// size stay open for the next).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "100",
        value_name = "N[,N...]"
    )]
    pub watchers: Vec<usize>,
    /// Bench clusters (identities) the streams are spread over, round
    /// robin [default: one per watcher]. Fewer clusters enroll faster; the
    /// server's --max-watch-streams-per-identity must then be at least
    /// watchers / clusters.
    #[arg(long, value_name = "K")]
    pub clusters: Option<usize>,
    /// Rounds at each size; a round is two publications (rotation start
    /// and abort), each timed at every stream.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Connections being opened at once (each is a TLS handshake; keep it
    /// below the server's --max-unauthenticated-connections).
    #[arg(long, default_value_t = 64)]
    pub connect_concurrency: usize,
    /// The server's process id: its VmRSS is read from /proc/<pid>/status
    /// before any stream is open and with each size's streams idle.
    #[arg(long, value_name = "PID")]
    pub server_pid: Option<u32>,
    /// When a size's streams are open and idle, write this file (its
    /// content: the number of streams) and wait until it is deleted before
    /// publishing: a hook for reading the server's memory or profiling it.
    #[arg(long, value_name = "FILE")]
    pub hold_file: Option<PathBuf>,
    /// How long to wait for every stream to receive a version (and for
    /// --hold-file to be deleted).
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Name prefix of the bench clusters (`<prefix>-<n>`).
    #[arg(long, default_value = "bench-watch")]
    pub prefix: String,
}

/// What a stream tells the bench.
enum Event {
    /// Stream `watcher` received `version` at `at`.
    Received {
        watcher: usize,
        version: u64,
        at: Instant,
    },
    /// Stream `watcher` failed or ended.
    Failed { watcher: usize, error: String },
}

/// Runs `bench watch`.
pub async fn run(args: WatchArgs) -> anyhow::Result<serde_json::Value> {
    let sizes = sizes(&args.watchers)?;
    let largest = sizes.last().copied().unwrap_or_default();
    let cluster_count = args.clusters.unwrap_or(largest).clamp(1, largest);
    let descriptors = raise_open_files_limit()?;
    if (descriptors as usize) < largest + 64 {
        anyhow::bail!(
            "{largest} watchers need about {} open files, and this process may have {descriptors}: raise the hard limit (ulimit -Hn)",
            largest + 64
        );
    }
    let admin_channel = args.admin.connect().await?;
    let mut admin = AdminServiceClient::new(admin_channel.clone());
    let mut bundles = TrustBundleServiceClient::new(admin_channel);
    let rotation = admin
        .rotate_status(proto::RotateStatusRequest {})
        .await
        .map_err(status_error)?
        .into_inner();
    if rotation.phase != "stable" {
        anyhow::bail!(
            "a root rotation is in progress (phase {}); the bench publishes by starting and aborting one: finish or abort it first (`trustplane rotate abort`)",
            rotation.phase
        );
    }
    eprintln!("enrolling {cluster_count} bench clusters");
    let started = Instant::now();
    let clusters: Arc<[BenchCluster]> = fleet::enroll(&args.admin, &args.prefix, cluster_count)
        .await?
        .into();
    let enroll_seconds = started.elapsed().as_secs_f64();
    eprintln!("enrolled {cluster_count} bench clusters in {enroll_seconds:.1} s");
    let server: Arc<str> = args.admin.server_url().into();
    let rss_none_kib = match args.server_pid {
        Some(pid) => Some(settled_rss_kib(pid).await?),
        None => None,
    };

    let (events, mut received) = mpsc::unbounded_channel();
    let mut streams = JoinSet::new();
    let mut latest: Vec<u64> = Vec::with_capacity(largest);
    let mut runs = Vec::new();
    for &size in &sizes {
        let opening = Instant::now();
        open_streams(
            &clusters,
            &server,
            latest.len()..size,
            args.connect_concurrency,
            &events,
            &mut streams,
        )
        .await?;
        latest.resize(size, 0);
        let current = current_version(&mut bundles).await?;
        wait_for(&mut received, &mut latest, current, args.timeout, None).await?;
        let connect_seconds = opening.elapsed().as_secs_f64();
        eprintln!("{size} streams open and current (version {current}) in {connect_seconds:.1} s");
        let rss_kib = match args.server_pid {
            Some(pid) => Some(settled_rss_kib(pid).await?),
            None => None,
        };

        if let Some(path) = &args.hold_file {
            hold(path, size, args.timeout).await?;
        }
        let mut latencies = Latencies::new();
        let mut spread = Latencies::new();
        let mut trigger = Latencies::new();
        let measuring = Instant::now();
        for round in 0..args.rounds {
            for step in [Step::Start, Step::Abort] {
                let before = Instant::now();
                let version = step.publish(&mut admin, &mut bundles).await?;
                trigger.push(before.elapsed());
                let times = wait_for(
                    &mut received,
                    &mut latest,
                    version,
                    args.timeout,
                    Some(before),
                )
                .await?;
                let first = times.iter().min().copied().unwrap_or_default();
                for latency in times {
                    latencies.push(latency);
                    spread.push(latency - first);
                }
            }
            eprintln!(
                "{size} streams: round {} of {} done",
                round + 1,
                args.rounds
            );
        }
        let summary = latencies.summary(measuring.elapsed());
        let trigger = trigger.summary(measuring.elapsed());
        let spread = spread.summary(measuring.elapsed());
        runs.push(json!({
            "watchers": size,
            "publications": 2 * args.rounds,
            "expected": 2 * args.rounds * size,
            "count": summary.count,
            "p50_ms": summary.p50_ms,
            "p99_ms": summary.p99_ms,
            "max_ms": summary.max_ms,
            "after_first_p50_ms": spread.p50_ms,
            "after_first_p99_ms": spread.p99_ms,
            "after_first_max_ms": spread.max_ms,
            "trigger_p50_ms": trigger.p50_ms,
            "trigger_max_ms": trigger.max_ms,
            "connect_seconds": connect_seconds,
            "server_rss_kib": rss_kib,
            "server_rss_per_watcher_bytes": rss_none_kib
                .zip(rss_kib)
                .map(|(none, idle)| (idle.saturating_sub(none) * 1024) as f64 / size as f64),
        }));
    }
    streams.abort_all();
    Ok(json!({
        "bench": "watch",
        "trigger": TRIGGER,
        "clusters": cluster_count,
        "streams_per_cluster": largest.div_ceil(cluster_count),
        "rounds": args.rounds,
        "enroll_seconds": enroll_seconds,
        "server_rss_kib_no_watchers": rss_none_kib,
        "runs": runs,
    }))
}

/// The sizes to measure: ascending, none zero.
fn sizes(watchers: &[usize]) -> anyhow::Result<Vec<usize>> {
    if watchers.is_empty() || watchers.contains(&0) || !watchers.is_sorted() {
        anyhow::bail!(
            "--watchers takes ascending sizes greater than zero, e.g. --watchers 100,1000,10000"
        );
    }
    let mut sizes = watchers.to_vec();
    sizes.dedup();
    Ok(sizes)
}

/// The two publications of a round.
#[derive(Clone, Copy)]
enum Step {
    Start,
    Abort,
}

impl Step {
    /// Publishes one version; returns it.
    async fn publish(
        self,
        admin: &mut AdminServiceClient<Channel>,
        bundles: &mut TrustBundleServiceClient<Channel>,
    ) -> anyhow::Result<u64> {
        let status = match self {
            Step::Start => admin
                .rotate_start(proto::RotateStartRequest {
                    options: Some(proto::RotationOptions::default()),
                })
                .await
                .map_err(status_error)
                .context("starting a rotation to publish a bundle version")?,
            Step::Abort => admin
                .rotate_abort(proto::RotateAbortRequest::default())
                .await
                .map_err(status_error)
                .context("aborting the bench's rotation to publish a bundle version")?,
        }
        .into_inner();
        match status.bundle {
            Some(bundle) => Ok(bundle.version),
            None => current_version(bundles).await,
        }
    }
}

async fn current_version(bundles: &mut TrustBundleServiceClient<Channel>) -> anyhow::Result<u64> {
    Ok(bundles
        .get_bundle(proto::GetBundleRequest {})
        .await
        .map_err(status_error)?
        .into_inner()
        .version)
}

/// Opens the streams `watchers`, each on its own connection as cluster
/// `watcher % clusters`, `concurrency` connections at a time; each stream
/// reports what it receives to `events`.
async fn open_streams(
    clusters: &Arc<[BenchCluster]>,
    server: &Arc<str>,
    watchers: std::ops::Range<usize>,
    concurrency: usize,
    events: &mpsc::UnboundedSender<Event>,
    streams: &mut JoinSet<()>,
) -> anyhow::Result<()> {
    let mut connecting = JoinSet::new();
    let mut watchers = watchers.peekable();
    let concurrency = concurrency.max(1);
    loop {
        while connecting.len() < concurrency
            && let Some(watcher) = watchers.next()
        {
            let clusters = clusters.clone();
            let server = server.clone();
            connecting.spawn(async move {
                let cluster = &clusters[watcher % clusters.len()];
                let name = &cluster.name;
                let channel = cluster
                    .connect(&server)
                    .await
                    .with_context(|| format!("connecting watch stream {watcher}"))?;
                let stream = TrustBundleServiceClient::new(channel)
                    .watch_bundle(proto::WatchBundleRequest { known_version: 0 })
                    .await
                    .map_err(status_error)
                    .with_context(|| format!("watch stream {watcher} as bench cluster {name}"))?
                    .into_inner();
                Ok::<_, anyhow::Error>((watcher, stream))
            });
        }
        let Some(opened) = connecting.join_next().await else {
            return Ok(());
        };
        let (watcher, mut stream) = opened.context("a connecting task failed")??;
        let events = events.clone();
        streams.spawn(async move {
            loop {
                match stream.message().await {
                    Ok(Some(bundle)) => {
                        let at = Instant::now();
                        let _ = events.send(Event::Received {
                            watcher,
                            version: bundle.version,
                            at,
                        });
                    }
                    Ok(None) => {
                        let _ = events.send(Event::Failed {
                            watcher,
                            error: "the server ended the stream".into(),
                        });
                        return;
                    }
                    Err(status) => {
                        let _ = events.send(Event::Failed {
                            watcher,
                            error: format!("{:?}: {}", status.code(), status.message()),
                        });
                        return;
                    }
                }
            }
        });
    }
}

/// Waits until every stream in `latest` holds `version` (or newer);
/// returns, with `since`, how long after it each stream received exactly
/// `version`.
async fn wait_for(
    received: &mut mpsc::UnboundedReceiver<Event>,
    latest: &mut [u64],
    version: u64,
    timeout: Duration,
    since: Option<Instant>,
) -> anyhow::Result<Vec<Duration>> {
    let mut behind = latest.iter().filter(|held| **held < version).count();
    let mut times = Vec::with_capacity(behind);
    let mut seen = HashSet::new();
    let deadline = tokio::time::Instant::now() + timeout;
    while behind > 0 {
        let event = tokio::time::timeout_at(deadline, received.recv())
            .await
            .map_err(|_| {
                anyhow::anyhow!(
                    "{behind} of {} streams did not receive bundle version {version} within {} (--timeout)",
                    latest.len(),
                    humantime::format_duration(timeout)
                )
            })?
            .context("every stream ended")?;
        match event {
            Event::Received {
                watcher,
                version: got,
                at,
            } => {
                let Some(held) = latest.get_mut(watcher) else {
                    continue;
                };
                if *held < version && got >= version {
                    behind -= 1;
                }
                *held = (*held).max(got);
                if got == version
                    && let Some(since) = since
                    && seen.insert(watcher)
                {
                    times.push(at.saturating_duration_since(since));
                }
            }
            Event::Failed { watcher, error } => {
                anyhow::bail!("watch stream {watcher} failed: {error}")
            }
        }
    }
    Ok(times)
}

/// Writes `path` (the number of open streams) and waits until someone
/// deletes it.
async fn hold(path: &std::path::Path, size: usize, timeout: Duration) -> anyhow::Result<()> {
    std::fs::write(path, format!("{size}\n"))
        .with_context(|| format!("cannot write --hold-file {}", path.display()))?;
    eprintln!(
        "{size} streams idle: holding until {} is deleted",
        path.display()
    );
    let deadline = Instant::now() + timeout;
    while path.exists() {
        if Instant::now() > deadline {
            anyhow::bail!(
                "--hold-file {} was not deleted within {} (--timeout)",
                path.display(),
                humantime::format_duration(timeout)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// The server's resident memory once it stopped moving (read twice, half a
/// second apart, up to ten times), in KiB.
async fn settled_rss_kib(pid: u32) -> anyhow::Result<u64> {
    let mut last = rss_kib(pid)?;
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = rss_kib(pid)?;
        if now.abs_diff(last) * 100 <= last {
            return Ok(now);
        }
        last = now;
    }
    Ok(last)
}

/// `VmRSS` of process `pid`, in KiB.
fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let path = PathBuf::from(format!("/proc/{pid}/status"));
    let status = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "cannot read {}: is --server-pid the server's process id?",
            path.display()
        )
    })?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no VmRSS line in {}", path.display()))
}

/// Raises this process's soft limit of open files to its hard limit;
/// returns the limit now in force.
fn raise_open_files_limit() -> anyhow::Result<u64> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        setrlimit(
            Resource::Nofile,
            rustix::process::Rlimit {
                current: limit.maximum,
                maximum: limit.maximum,
            },
        )
        .context("raising the open-files limit to its hard limit")?;
    }
    Ok(getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX))
}
