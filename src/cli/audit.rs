//! `trustplane audit`: the server's audit trail (every state change and
//! refused admin call, with its actor) as a table or JSON, filtered by time
//! and action; `audit verify` checks the hash chain offline with the data
//! directory and the KEK; `audit upgrade` authenticates a store written by
//! an older trustplane.

use anyhow::bail;

use super::client::{AdminConnection, status_error};
use super::options::{DataDirOption, KekOption, MissingKek};
use super::output::{self, Format};
use crate::ca::system_time_to_unix;
use crate::clock::SystemClock;
use crate::proto;
use crate::proto::admin_service_client::AdminServiceClient;
use crate::server::{self, DataDir, ServerError};

/// `audit` flags and subcommands.
#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct AuditArgs {
    /// `verify` or `upgrade`; without one, the entries are listed.
    #[command(subcommand)]
    pub command: Option<AuditCommand>,
    /// Listing flags.
    #[command(flatten)]
    pub list: ListArgs,
}

/// `audit` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum AuditCommand {
    /// Verify the audit hash chain and its KEK-authenticated head, offline (stop the server first). Exit 1 names the first bad entry.
    #[command(
        after_help = "Examples:\n  trustplane audit verify --data-dir trustplane-data\n  trustplane audit verify --data-dir trustplane-data --kek-file /secure/trustplane-kek -o json"
    )]
    Verify(OfflineArgs),
    /// Authenticate a store written by a trustplane older than record MACs and the audit chain (offline, once; only for a store you trust).
    #[command(
        after_help = "Examples:\n  trustplane audit upgrade --data-dir trustplane-data\n  trustplane audit verify --data-dir trustplane-data"
    )]
    Upgrade(OfflineArgs),
}

/// Flags of the offline subcommands.
#[derive(Debug, clap::Args)]
pub struct OfflineArgs {
    /// `--data-dir`.
    #[command(flatten)]
    pub data_dir: DataDirOption,
    /// `--store` and the Vault settings.
    #[command(flatten)]
    pub store: super::options::StoreOption,
    /// `--kek-file` and the KEK lookup order.
    #[command(flatten)]
    pub kek: KekOption,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t)]
    pub output: Format,
}

/// Listing flags.
#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// How many of the newest matching entries to show.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..))]
    pub limit: u32,
    /// Only entries since this time: a duration back from now (`1h`, `7d`) or an RFC 3339 time.
    #[arg(long, value_name = "DURATION|TIME", value_parser = parse_since)]
    pub since: Option<Since>,
    /// Only this action, or the actions it is a `-`-separated prefix of (`rotate` matches `rotate-start`).
    #[arg(long)]
    pub action: Option<String>,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t)]
    pub output: Format,
    /// Connection.
    #[command(flatten)]
    pub connection: AdminConnection,
}

/// `--since`: relative or absolute.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Since {
    /// This long before now.
    Ago(std::time::Duration),
    /// This time.
    At(std::time::SystemTime),
}

impl Since {
    /// The Unix second it names, `now` being the present.
    pub fn unix(self, now: std::time::SystemTime) -> i64 {
        match self {
            Since::Ago(duration) => system_time_to_unix(now)
                .saturating_sub(duration.as_secs().min(i64::MAX as u64) as i64),
            Since::At(time) => system_time_to_unix(time),
        }
    }
}

fn parse_since(text: &str) -> Result<Since, String> {
    if let Ok(duration) = humantime::parse_duration(text) {
        return Ok(Since::Ago(duration));
    }
    humantime::parse_rfc3339_weak(text)
        .map(Since::At)
        .map_err(|_| {
            format!("{text:?} is neither a duration (e.g. 1h, 7d) nor an RFC 3339 time (e.g. 2026-12-01T10:00:00Z)")
        })
}

/// `trustplane audit`.
pub async fn run(args: AuditArgs) -> anyhow::Result<()> {
    match args.command {
        Some(AuditCommand::Verify(offline)) => verify(offline),
        Some(AuditCommand::Upgrade(offline)) => upgrade(offline),
        None => list(args.list).await,
    }
}

/// The newest matching entries, oldest first.
async fn list(args: ListArgs) -> anyhow::Result<()> {
    let mut client = AdminServiceClient::new(args.connection.connect().await?);
    let response = client
        .audit_log(proto::AuditLogRequest {
            limit: args.limit,
            since_unix: args.since.map_or(0, |since| since.unix(SystemClock.now())),
            action: args.action.unwrap_or_default(),
        })
        .await
        .map_err(status_error)?
        .into_inner();
    if args.output == Format::Json {
        let json = serde_json::json!({
            "entries": response.entries.iter().map(|entry| serde_json::json!({
                "seq": entry.seq,
                "time": output::time(entry.unix),
                "actor": entry.actor,
                "action": entry.action,
                "detail": entry.detail,
                "hash": entry.hash,
            })).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&json)?);
        return Ok(());
    }
    if response.entries.is_empty() {
        println!("no matching audit entries");
        return Ok(());
    }
    let mut table = output::table(&["SEQ", "TIME", "ACTOR", "ACTION", "DETAIL"]);
    for entry in &response.entries {
        table.add_row(vec![
            entry.seq.to_string(),
            output::time(entry.unix),
            entry.actor.clone(),
            entry.action.clone(),
            entry.detail.clone(),
        ]);
    }
    println!("{table}");
    Ok(())
}

/// Opens the store offline (the server must be stopped) with the KEK.
fn open_offline(
    args: &OfflineArgs,
) -> anyhow::Result<(
    DataDir,
    std::sync::Arc<dyn crate::store::Store>,
    crate::signer::sealed::Kek,
)> {
    let data_dir = args.data_dir.layout();
    if args.store.is_embedded() && !data_dir.store_path().exists() {
        bail!(
            "no trustplane data in {}: pass the --data-dir the server uses",
            data_dir.path.display()
        );
    }
    let store = args.store.open(&data_dir, None)?;
    let (kek, _) = args.kek.load(&data_dir, MissingKek::Fail)?;
    Ok((data_dir, store, kek))
}

/// `trustplane audit verify`: exit 0 with the count and head, or exit 1
/// naming the first bad entry.
fn verify(args: OfflineArgs) -> anyhow::Result<()> {
    let (data_dir, store, kek) = open_offline(&args)?;
    match server::verify_chain(store.as_ref(), &kek) {
        Ok(summary) => {
            if args.output == Format::Json {
                let json = serde_json::json!({
                    "ok": true,
                    "entries": summary.count,
                    "head_seq": summary.head_seq,
                    "head_hash": summary.head_hash,
                });
                println!("{}", serde_json::to_string_pretty(&json)?);
            } else {
                println!(
                    "audit chain of {} verified: {} entries, head {} (hash {}), authenticated with the KEK",
                    data_dir.path.display(),
                    summary.count,
                    summary.head_seq,
                    summary.head_hash
                );
            }
            Ok(())
        }
        Err(ServerError::AuditChain(chain)) => {
            if args.output == Format::Json {
                let json = serde_json::json!({
                    "ok": false,
                    "seq": chain.seq,
                    "key": chain.key,
                    "time": chain.unix.map(output::time),
                    "problem": chain.problem,
                });
                println!("{}", serde_json::to_string_pretty(&json)?);
            }
            bail!(
                "the audit chain of {} does not verify: {chain}",
                data_dir.path.display()
            )
        }
        Err(other) => Err(other.into()),
    }
}

/// `trustplane audit upgrade`.
fn upgrade(args: OfflineArgs) -> anyhow::Result<()> {
    let (data_dir, store, kek) = open_offline(&args)?;
    let upgraded = server::upgrade_store(
        store.as_ref(),
        &kek,
        server::OFFLINE_ACTOR,
        SystemClock.now(),
    )?;
    if args.output == Format::Json {
        let json = serde_json::json!({
            "authenticated": upgraded.authenticated,
            "chained_entries": upgraded.chained,
        });
        println!("{}", serde_json::to_string_pretty(&json)?);
    } else {
        println!(
            "{}: authenticated {} records with the KEK and chained {} earlier audit entries; the server starts on it again",
            data_dir.path.display(),
            upgraded.authenticated.len(),
            upgraded.chained
        );
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_a_duration_back_from_now_or_an_rfc3339_time() {
        let now = crate::ca::unix_to_system_time(1_000_000);
        assert_eq!(parse_since("1h").unwrap().unix(now), 1_000_000 - 3600);
        assert_eq!(
            parse_since("2026-12-01T00:00:00Z").unwrap().unix(now),
            1_796_083_200
        );
        let error = parse_since("yesterday").unwrap_err();
        assert!(error.contains("neither a duration"), "{error}");
    }
}
