//! `trustplane bench openbao`.

/// `bench openbao` flags.
#[derive(Debug, clap::Args)]
pub struct OpenbaoArgs {}

/// Runs `bench openbao`.
pub async fn run(_args: OpenbaoArgs) -> anyhow::Result<serde_json::Value> {
    anyhow::bail!("bench openbao is not written yet")
}
