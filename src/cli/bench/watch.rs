//! `trustplane bench watch`.

/// `bench watch` flags.
#[derive(Debug, clap::Args)]
pub struct WatchArgs {}

/// Runs `bench watch`.
pub async fn run(_args: WatchArgs) -> anyhow::Result<serde_json::Value> {
    anyhow::bail!("bench watch is not written yet")
}
