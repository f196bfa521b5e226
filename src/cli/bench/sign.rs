//! `trustplane bench sign`.

/// `bench sign` flags.
#[derive(Debug, clap::Args)]
pub struct SignArgs {}

/// Runs `bench sign`.
pub async fn run(_args: SignArgs) -> anyhow::Result<serde_json::Value> {
    anyhow::bail!("bench sign is not written yet")
}
