//! `trustplane bundle show`: the current trust bundle as a table, Istio's
//! `root-cert.pem`, a SPIFFE bundle or JSON.

use clap::Subcommand;

use super::client::{AdminConnection, status_error};
use super::output;
use crate::ca::{self, system_time_to_unix};
use crate::proto;
use crate::proto::trust_bundle_service_client::TrustBundleServiceClient;

/// Bundle output formats.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum BundleFormat {
    /// Summary table.
    #[default]
    Table,
    /// Istio's root-cert.pem.
    Pem,
    /// SPIFFE bundle (JWKS).
    Spiffe,
    /// The whole bundle message as JSON.
    Json,
}

/// `bundle` subcommands.
#[derive(Debug, Subcommand)]
pub enum BundleCommand {
    /// Show the current trust bundle.
    #[command(
        after_help = "Examples:\n  trustplane bundle show\n  trustplane bundle show -o pem > root-cert.pem\n  trustplane bundle show -o spiffe"
    )]
    Show {
        /// Output format.
        #[arg(short, long, value_enum, default_value_t)]
        output: BundleFormat,
        /// Connection.
        #[command(flatten)]
        connection: AdminConnection,
    },
}

/// `trustplane bundle show`: prints the current trust bundle in `format`.
pub async fn show(format: BundleFormat, connection: AdminConnection) -> anyhow::Result<()> {
    let mut client = TrustBundleServiceClient::new(connection.connect().await?);
    let bundle = client
        .get_bundle(proto::GetBundleRequest {})
        .await
        .map_err(status_error)?
        .into_inner();
    match format {
        BundleFormat::Pem => print!("{}", bundle.root_cert_pem),
        BundleFormat::Spiffe => println!("{}", bundle.spiffe_bundle_json),
        BundleFormat::Json => {
            let json = serde_json::json!({
                "trust_domain": bundle.trust_domain,
                "version": bundle.version,
                "digest": bundle.digest,
                "root_cert_pem": bundle.root_cert_pem,
                "spiffe_bundle": serde_json::from_str::<serde_json::Value>(&bundle.spiffe_bundle_json).unwrap_or(serde_json::Value::Null),
            });
            println!("{}", serde_json::to_string_pretty(&json)?);
        }
        BundleFormat::Table => {
            let roots = ca::Certificate::parse_pem_chain(&bundle.root_cert_pem)?;
            println!(
                "trust domain {}  version {}  sha256:{}",
                bundle.trust_domain, bundle.version, bundle.digest
            );
            let mut table = output::table(&["#", "ROOT", "SERIAL", "EXPIRES"]);
            for (index, root) in roots.iter().enumerate() {
                table.add_row(vec![
                    (index + 1).to_string(),
                    root.subject()?,
                    root.serial_hex()?,
                    output::time(system_time_to_unix(root.not_after()?)),
                ]);
            }
            println!("{table}");
        }
    }
    Ok(())
}
