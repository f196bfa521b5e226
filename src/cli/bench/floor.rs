//! `trustplane bench floor`.

/// `bench floor` flags.
#[derive(Debug, clap::Args)]
pub struct FloorArgs {}

/// Runs `bench floor`.
pub async fn run(_args: FloorArgs) -> anyhow::Result<serde_json::Value> {
    anyhow::bail!("bench floor is not written yet")
}
