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

use anyhow::Context as _;
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

/// The load generator's own runtime (`bench sign`, `openbao`, `watch`).
#[derive(Clone, Copy, Debug, clap::Args)]
pub struct ClientRuntime {
    /// Threads of the load generator's runtime: 1 (the default) runs every
    /// caller and connection on one thread, which costs the least CPU
    /// taken from the server sharing the machine; more spreads the load
    /// process over that many cores.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    pub client_threads: u16,
}

impl BenchCommand {
    /// The runtime its load generator asks for (`floor` times its own
    /// threads, on one).
    fn client_runtime(&self) -> ClientRuntime {
        match self {
            BenchCommand::Floor(_) => ClientRuntime { client_threads: 1 },
            BenchCommand::Sign(args) => args.runtime,
            BenchCommand::Openbao(args) => args.runtime,
            BenchCommand::Watch(args) => args.runtime,
        }
    }
}

/// Runs one bench on a runtime of its own (`--client-threads`); its
/// result is one JSON object on stdout.
pub async fn run(command: BenchCommand) -> anyhow::Result<()> {
    let threads = usize::from(command.client_runtime().client_threads);
    let result = tokio::task::spawn_blocking(move || {
        let runtime = if threads == 1 {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
        } else {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(threads)
                .enable_all()
                .build()
        }
        .context("cannot start the load generator's runtime")?;
        runtime.block_on(run_on_this_runtime(command))
    })
    .await
    .context("the load generator stopped")??;
    println!("{}", serde_json::to_string(&result)?);
    Ok(())
}

async fn run_on_this_runtime(command: BenchCommand) -> anyhow::Result<serde_json::Value> {
    Ok(match command {
        BenchCommand::Floor(args) => floor::run(args).await?,
        BenchCommand::Sign(args) => sign::run(args).await?,
        BenchCommand::Openbao(args) => openbao::run(args).await?,
        BenchCommand::Watch(args) => watch::run(*args).await?,
    })
}
