//! `trustplane audit`: the server's audit log (rotation steps, exclusions,
//! reissues) as a table or JSON.

use super::client::{AdminConnection, status_error};
use super::output::{self, Format};
use crate::proto;
use crate::proto::admin_service_client::AdminServiceClient;

/// `audit` flags.
#[derive(Debug, clap::Args)]
pub struct AuditArgs {
    /// How many of the newest entries to show.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..))]
    pub limit: u32,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t)]
    pub output: Format,
    /// Connection.
    #[command(flatten)]
    pub connection: AdminConnection,
}

/// `trustplane audit`: the newest entries, oldest first.
pub async fn run(args: AuditArgs) -> anyhow::Result<()> {
    let mut client = AdminServiceClient::new(args.connection.connect().await?);
    let response = client
        .audit_log(proto::AuditLogRequest { limit: args.limit })
        .await
        .map_err(status_error)?
        .into_inner();
    if args.output == Format::Json {
        let json = serde_json::json!({
            "entries": response.entries.iter().map(|entry| serde_json::json!({
                "time": output::time(entry.unix),
                "actor": entry.actor,
                "action": entry.action,
                "detail": entry.detail,
            })).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&json)?);
        return Ok(());
    }
    if response.entries.is_empty() {
        println!("no audit entries yet");
        return Ok(());
    }
    let mut table = output::table(&["TIME", "ACTOR", "ACTION", "DETAIL"]);
    for entry in &response.entries {
        table.add_row(vec![
            output::time(entry.unix),
            entry.actor.clone(),
            entry.action.clone(),
            entry.detail.clone(),
        ]);
    }
    println!("{table}");
    Ok(())
}
