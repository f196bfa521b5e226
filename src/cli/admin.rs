//! `trustplane admin add|revoke|list`: named admin credentials, offline
//! (with the data directory and the KEK; the server must be stopped, since
//! the store is single-process). Each mint and revocation is audited with
//! the local OS user as actor.

use std::path::PathBuf;
use std::time::Duration;

use clap::builder::TypedValueParser as _;

use super::data_dir::open_authority;
use super::options::{DataDirOption, KekOption, PolicyOption};
use super::output::{self, Format};
use crate::ca::system_time_to_unix;
use crate::config;
use crate::server::ADMIN_CERT_LIFETIME;
use crate::store::records::{AdminRecord, AdminRole};

/// Where the store is and how to open it.
#[derive(Debug, clap::Args)]
pub struct OfflineStore {
    /// `--data-dir`.
    #[command(flatten)]
    pub data_dir: DataDirOption,
    /// `--store` and the Vault settings.
    #[command(flatten)]
    pub store: super::options::StoreOption,
    /// `--kek-file` and the KEK lookup order.
    #[command(flatten)]
    pub kek: KekOption,
    /// `--policy`.
    #[command(flatten)]
    pub policy: PolicyOption,
}

/// `admin` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum AdminCommand {
    /// Mint a credential for a named admin with a role (offline: the server must be stopped).
    #[command(
        after_help = "Roles: admin (everything), operator (add/enroll, remove, reissue, rotate; and read), auditor (read only).\n\nExamples:\n  trustplane admin add alice --role operator\n  trustplane admin add ci-audit --role auditor --out ./ci-credential --lifetime 90d\n  # then, with the server running again:\n  trustplane cluster list --admin-cert ./ci-credential/ci-audit.pem --admin-key ./ci-credential/ci-audit-key.pem"
    )]
    Add {
        /// Admin name (a person or system; a DNS label, e.g. `alice`, `ci-bot`).
        name: String,
        /// What the credential may do.
        #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(["admin", "operator", "auditor"]).try_map(|text: String| text.parse::<AdminRole>()))]
        role: AdminRole,
        /// Directory for `<name>.pem`, `<name>-key.pem` (0600) and `control-plane-ca.pem` [default: <data-dir>/admin].
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// Certificate lifetime [default: 365d, as `init`'s credential].
        #[arg(long, value_parser = humantime::parse_duration)]
        lifetime: Option<Duration>,
        /// The store.
        #[command(flatten)]
        store: OfflineStore,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t)]
        output: Format,
    },
    /// Revoke a named admin credential: the server refuses it from then on (offline).
    #[command(after_help = "Examples:\n  trustplane admin revoke alice")]
    Revoke {
        /// Admin name.
        name: String,
        /// The store.
        #[command(flatten)]
        store: OfflineStore,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t)]
        output: Format,
    },
    /// List admin credentials with their roles (offline).
    #[command(after_help = "Examples:\n  trustplane admin list\n  trustplane admin list -o json")]
    List {
        /// The store.
        #[command(flatten)]
        store: OfflineStore,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t)]
        output: Format,
    },
    /// Print the CustomResourceDefinitions of `--store kubernetes` as YAML (the source of deploy/crds/trustplane.io.yaml).
    #[command(
        after_help = "Examples:\n  trustplane admin crds | kubectl apply --server-side -f -\n  trustplane admin crds > deploy/crds/trustplane.io.yaml"
    )]
    Crds,
}

fn record_json(record: &AdminRecord) -> serde_json::Value {
    serde_json::json!({
        "name": record.name,
        "role": record.role.as_str(),
        "serial": record.client_cert_serial,
        "created": output::time(record.created_unix),
        "not_after": record.not_after_unix.map(output::time),
        "revoked": record.revoked_unix.map(output::time),
    })
}

/// Runs an `admin` subcommand.
pub async fn run(command: AdminCommand) -> anyhow::Result<()> {
    let actor = config::local_user();
    match command {
        AdminCommand::Add {
            name,
            role,
            out,
            lifetime,
            store,
            output,
        } => {
            let data_dir = store.data_dir.layout();
            let authority = open_authority(&data_dir, &store.store, &store.kek, &store.policy)?;
            let out = out.unwrap_or_else(|| data_dir.admin_dir());
            let minted = authority.admins.add(
                &authority.audit,
                &actor,
                &name,
                role,
                lifetime.unwrap_or(ADMIN_CERT_LIFETIME),
                &out,
            )?;
            let ca_path = out.join("control-plane-ca.pem");
            crate::files::replace_atomically(
                &ca_path,
                authority.control_plane_ca().to_pem().as_bytes(),
                crate::files::PUBLIC_MODE,
            )?;
            if output == Format::Json {
                let mut json = record_json(&minted.record);
                json["cert"] = minted.cert_path.display().to_string().into();
                json["key"] = minted.key_path.display().to_string().into();
                json["control_plane_ca"] = ca_path.display().to_string().into();
                println!("{}", serde_json::to_string_pretty(&json)?);
            } else {
                println!(
                    "admin {name:?} (role {role}) minted: serial {}, expires {}\n  certificate {}\n  key         {} (0600)\n  server CA   {}\nuse it with: trustplane status --admin-cert {} --admin-key {} --server-ca {}",
                    minted.record.client_cert_serial,
                    output::time(system_time_to_unix(minted.certificate.not_after()?)),
                    minted.cert_path.display(),
                    minted.key_path.display(),
                    ca_path.display(),
                    minted.cert_path.display(),
                    minted.key_path.display(),
                    ca_path.display(),
                );
            }
        }
        AdminCommand::Revoke {
            name,
            store,
            output,
        } => {
            let data_dir = store.data_dir.layout();
            let authority = open_authority(&data_dir, &store.store, &store.kek, &store.policy)?;
            let record = authority.admins.revoke(&authority.audit, &actor, &name)?;
            if output == Format::Json {
                println!("{}", serde_json::to_string_pretty(&record_json(&record))?);
            } else {
                println!(
                    "admin {name:?} (role {}, serial {}) revoked: the server refuses it from now on",
                    record.role, record.client_cert_serial
                );
            }
        }
        AdminCommand::Crds => {
            print!("{}", crate::store::kube_resources::crds_yaml()?);
        }
        AdminCommand::List { store, output } => {
            let data_dir = store.data_dir.layout();
            let authority = open_authority(&data_dir, &store.store, &store.kek, &store.policy)?;
            let records = authority.admins.list()?;
            if output == Format::Json {
                let json = serde_json::json!({
                    "admins": records.iter().map(record_json).collect::<Vec<_>>(),
                });
                println!("{}", serde_json::to_string_pretty(&json)?);
                return Ok(());
            }
            let mut table =
                output::table(&["NAME", "ROLE", "SERIAL", "CREATED", "EXPIRES", "REVOKED"]);
            for record in &records {
                table.add_row(vec![
                    record.name.clone(),
                    record.role.to_string(),
                    output::short_hex(&record.client_cert_serial),
                    output::time(record.created_unix),
                    record.not_after_unix.map_or("-".into(), output::time),
                    record.revoked_unix.map_or("-".into(), output::time),
                ]);
            }
            println!("{table}");
        }
    }
    Ok(())
}
