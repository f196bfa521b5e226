//! `trustplane bench`: load generators for `benches/run.sh`. Each runs in
//! its own process (the server's file descriptors stay the server's) and
//! prints one JSON object on stdout with what it measured; the script puts
//! the figures side by side with baselines measured in the same run and
//! writes `BENCHMARKS.md`.
//!
//! - `floor.rs`: the crypto floor of one issuance (no server).
//! - `sign.rs`: `SignIntermediate` over gRPC+mTLS against a running server.
//! - `openbao.rs`: OpenBao's `sign-intermediate` over HTTP, the baseline.
//! - `watch.rs`: N `WatchBundle` streams, each its own TLS connection.
//! - `fleet.rs`: bench clusters, registered and enrolled as agents are.
//! - `stats.rs`: latency summaries every bench reports the same way.

// The benches use it as they are written.
#[allow(dead_code)]
mod fleet;
mod floor;
mod openbao;
mod sign;
// The benches use every part of it as they are written.
#[allow(dead_code)]
mod stats;
mod watch;

use clap::Subcommand;

#[allow(unused_imports)]
pub use stats::Latencies;

/// `bench` subcommands.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// The crypto floor of one issuance: one P-256 signature and two verifications, no server.
    #[command(after_help = "Examples:\n  trustplane bench floor --threads 2 --duration 5s")]
    Floor(floor::FloorArgs),
    /// SignIntermediate over gRPC+mTLS against a running server (enrolls its own clusters).
    #[command(
        after_help = "Examples:\n  trustplane bench sign --data-dir trustplane-data --server https://127.0.0.1:8443 --callers 16 --duration 10s"
    )]
    Sign(sign::SignArgs),
    /// OpenBao's sign-intermediate over HTTP at the same concurrency: the baseline for `bench sign`.
    #[command(
        after_help = "Examples:\n  VAULT_ADDR=http://127.0.0.1:8200 VAULT_TOKEN=root trustplane bench openbao --callers 16 --duration 10s"
    )]
    Openbao(openbao::OpenbaoArgs),
    /// N WatchBundle streams, each its own TLS connection; times each receipt of a new bundle version.
    #[command(
        after_help = "Examples:\n  trustplane bench watch --data-dir trustplane-data --server https://127.0.0.1:8443 --watchers 1000"
    )]
    Watch(Box<watch::WatchArgs>),
}

/// Runs one bench; its result is one JSON object on stdout.
pub async fn run(command: BenchCommand) -> anyhow::Result<()> {
    let result = match command {
        BenchCommand::Floor(args) => floor::run(args).await?,
        BenchCommand::Sign(args) => sign::run(args).await?,
        BenchCommand::Openbao(args) => openbao::run(args).await?,
        BenchCommand::Watch(args) => watch::run(*args).await?,
    };
    println!("{}", serde_json::to_string(&result)?);
    Ok(())
}
