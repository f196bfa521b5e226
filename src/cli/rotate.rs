//! `trustplane rotate …`: the admin side of mesh-root rotation. The phases,
//! gates and pre-flight are decided by the server ([`crate::rotation`]);
//! this module turns flags into requests and waits for gates with
//! `advance --wait`. What it prints is [`super::rotate_output`]'s.
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Subcommand;
use tonic::transport::Channel;
use zeroize::Zeroizing;

use super::client::{AdminConnection, status_error};
use super::options::parse_generated_algorithm;
use super::output::Format;
use super::rotate_output::{
    phase_of, phase_rank, print_advanced, print_plan, print_status, progress,
};
use crate::ca::KeyAlgorithm;
use crate::proto;
use crate::proto::admin_service_client::AdminServiceClient;
use crate::rotation::Phase;

/// `rotate` subcommands.
#[derive(Debug, Subcommand)]
pub enum RotateCommand {
    /// Show every step a rotation would take, the clusters it waits for and the pre-flight result; changes nothing.
    #[command(
        after_help = "Examples:\n  trustplane rotate plan\n  trustplane rotate plan --grace 48h --key-algorithm ecdsa-p384 -o json\n  trustplane rotate plan --import-root new-root.pem --import-key new-root-key.pem\n\nDuring a rotation it shows the steps still to come. Exits non-zero when the\npre-flight fails (the next step would be refused)."
    )]
    Plan {
        /// What the rotation would use.
        #[command(flatten)]
        flags: RotationFlags,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t)]
        output: Format,
        /// Connection.
        #[command(flatten)]
        connection: AdminConnection,
    },
    /// Create (or import) the new root and enter phase trust-new: the bundle trusts the old and the new root.
    #[command(
        after_help = "Examples:\n  trustplane rotate start\n  trustplane rotate start --grace 48h --auto\n  trustplane rotate start --import-root new-root.pem --import-key new-root-key.pem\n  # the mesh root in Vault: a new issuer in the same PKI mount (or an existing one) as root B\n  trustplane rotate start --vault-issuer mesh-root-2027\n  # do not wait for a cluster that is down for good (audited; it may lose trust)\n  trustplane rotate start --exclude-cluster lab"
    )]
    Start {
        /// What the rotation uses.
        #[command(flatten)]
        flags: RotationFlags,
        /// Let the server advance by itself whenever a gate holds.
        #[arg(long)]
        auto: bool,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t)]
        output: Format,
        /// Connection.
        #[command(flatten)]
        connection: AdminConnection,
    },
    /// Show the rotation: phase, roots, what blocks the next step, and every cluster's acknowledgement.
    #[command(
        after_help = "Examples:\n  trustplane rotate status\n  trustplane rotate status -o json"
    )]
    Status {
        /// Output format.
        #[arg(short, long, value_enum, default_value_t)]
        output: Format,
        /// Connection.
        #[command(flatten)]
        connection: AdminConnection,
    },
    /// Enter the next phase if its gate holds (every cluster acknowledged, grace over); refused otherwise, saying why.
    #[command(
        after_help = "Examples:\n  trustplane rotate advance\n  # wait for the gate (progress on stderr), then advance\n  trustplane rotate advance --wait --timeout 2h\n  # the whole rotation, one phase at a time (the grace of sign-new is 24h by default)\n  trustplane rotate advance --wait &&\n    trustplane rotate advance --wait --timeout 30h &&\n    trustplane rotate advance --wait\n\nWhile waiting it prints a line to stderr whenever the acknowledgements change, and\nthe grace left from time to time. If the server (--auto) or another admin moves\nthe rotation forward meanwhile, it stops there and prints the new status."
    )]
    Advance {
        /// Wait until the gate holds, then advance.
        #[arg(long)]
        wait: bool,
        /// With --wait: give up after this long (nothing is changed then).
        #[arg(long, default_value = "1h", value_parser = parse_positive, requires = "wait")]
        timeout: Duration,
        /// With --wait: how often to ask the server.
        #[arg(long, default_value = "1s", value_parser = parse_positive, requires = "wait")]
        poll: Duration,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t)]
        output: Format,
        /// Connection.
        #[command(flatten)]
        connection: AdminConnection,
    },
    /// Go back to the last phase in which every live certificate verifies (not from retire-old).
    #[command(
        after_help = "Examples:\n  trustplane rotate abort\n  trustplane rotate abort -o json\n\ntrust-new goes back to stable (the old root alone); sign-new goes back to trust-new\nwith intermediates re-issued from the old root. Once the new root has signed,\ngoing back to the old root alone waits for the grace period too. retire-old\ncannot be aborted: finish it with `trustplane rotate advance`."
    )]
    Abort {
        /// Output format.
        #[arg(short, long, value_enum, default_value_t)]
        output: Format,
        /// Connection.
        #[command(flatten)]
        connection: AdminConnection,
    },
}

/// Flags shared by `rotate plan` and `rotate start`.
#[derive(Debug, clap::Args)]
pub struct RotationFlags {
    /// Grace after every cluster acknowledged sign-new, before the old root is retired: at least the longest workload certificate lifetime.
    #[arg(long, default_value = "24h", value_parser = parse_seconds)]
    pub grace: Duration,
    /// Show a cluster that has not acknowledged a phase after this long as OVERDUE (it keeps blocking).
    #[arg(long, default_value = "15m", value_parser = parse_seconds)]
    pub ack_timeout: Duration,
    /// Do not wait for this cluster (repeatable). Audited; the cluster may lose trust.
    #[arg(long = "exclude-cluster", value_name = "NAME")]
    pub exclude_clusters: Vec<String>,
    /// New root key algorithm.
    #[arg(long, default_value = "ecdsa-p256", value_parser = parse_generated_algorithm, conflicts_with = "import_root")]
    pub key_algorithm: KeyAlgorithm,
    /// New root validity.
    #[arg(long, default_value = "10y", value_parser = parse_seconds, conflicts_with = "import_root")]
    pub root_validity: Duration,
    /// Import the new root certificate (PEM) instead of creating one.
    #[arg(long, requires = "import_key")]
    pub import_root: Option<PathBuf>,
    /// The imported root's key (PKCS#8, SEC1 or PKCS#1 PEM); `plan` only checks it can be read.
    #[arg(long, requires = "import_root")]
    pub import_key: Option<PathBuf>,
    /// Vault-held roots: the PKI issuer (name or id) in the signing root's mount to use as the new root; created there (root/generate/internal, the key never leaves Vault) when it does not exist.
    #[arg(long, conflicts_with = "import_root")]
    pub vault_issuer: Option<String>,
}

/// A duration of at least one second (the server counts whole seconds, and
/// 0 would mean its default).
fn parse_seconds(text: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(text).map_err(|error| error.to_string())?;
    if duration < Duration::from_secs(1) {
        return Err("must be at least 1s".into());
    }
    Ok(duration)
}

fn parse_positive(text: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(text).map_err(|error| error.to_string())?;
    if duration.is_zero() {
        return Err("must be more than 0".into());
    }
    Ok(duration)
}

fn read_file(path: &Path, flag: &str) -> anyhow::Result<Zeroizing<String>> {
    Ok(Zeroizing::new(std::fs::read_to_string(path).with_context(
        || format!("cannot read {flag} {}", path.display()),
    )?))
}

impl RotationFlags {
    /// The request options. The imported key is read (so a wrong path shows
    /// up in `plan`) but sent only when `send_key`.
    fn options(
        &self,
        auto_advance: bool,
        send_key: bool,
    ) -> anyhow::Result<proto::RotationOptions> {
        let mut options = proto::RotationOptions {
            grace_seconds: self.grace.as_secs(),
            ack_timeout_seconds: self.ack_timeout.as_secs(),
            exclude_clusters: self.exclude_clusters.clone(),
            auto_advance,
            vault_issuer: self.vault_issuer.clone().unwrap_or_default(),
            ..Default::default()
        };
        match (&self.import_root, &self.import_key) {
            (Some(root), Some(key)) => {
                options.import_root_pem = read_file(root, "--import-root")?.to_string();
                let key = crate::files::read_private(key)
                    .with_context(|| format!("cannot use --import-key {}", key.display()))?;
                if send_key {
                    options.import_key_pem = key.to_string();
                }
            }
            _ => {
                options.key_algorithm = self.key_algorithm.to_string();
                options.root_validity_seconds = self.root_validity.as_secs();
            }
        }
        Ok(options)
    }
}

/// Runs one `rotate` subcommand.
pub async fn run(command: RotateCommand) -> anyhow::Result<()> {
    match command {
        RotateCommand::Plan {
            flags,
            output,
            connection,
        } => plan(&flags, output, &connection).await,
        RotateCommand::Start {
            flags,
            auto,
            output,
            connection,
        } => start(&flags, auto, output, &connection).await,
        RotateCommand::Status { output, connection } => {
            let mut client = AdminServiceClient::new(connection.connect().await?);
            let status = client
                .rotate_status(proto::RotateStatusRequest {})
                .await
                .map_err(status_error)?
                .into_inner();
            print_status(&status, output)
        }
        RotateCommand::Advance {
            wait,
            timeout,
            poll,
            output,
            connection,
        } => {
            let mut client = AdminServiceClient::new(connection.connect().await?);
            if wait {
                advance_when_ready(&mut client, timeout, poll, output).await
            } else {
                let status = client
                    .rotate_advance(proto::RotateAdvanceRequest::default())
                    .await
                    .map_err(status_error)?
                    .into_inner();
                print_advanced(&status, output)
            }
        }
        RotateCommand::Abort { output, connection } => {
            let mut client = AdminServiceClient::new(connection.connect().await?);
            let status = client
                .rotate_abort(proto::RotateAbortRequest::default())
                .await
                .map_err(status_error)?
                .into_inner();
            if output == Format::Table {
                if phase_of(&status) == Phase::Stable {
                    println!(
                        "rotation aborted: back to phase stable, bundle v{} trusts the old root only",
                        status.phase_bundle_version
                    );
                } else {
                    println!(
                        "rotation aborted: back to phase {} (bundle v{}); intermediates are re-issued from the old root.\n`trustplane rotate abort` again returns to the old root alone once every cluster is re-issued and the grace has passed; `trustplane rotate advance` retries sign-new.\n",
                        phase_of(&status),
                        status.phase_bundle_version
                    );
                }
            }
            print_status(&status, output)
        }
    }
}

async fn plan(
    flags: &RotationFlags,
    format: Format,
    connection: &AdminConnection,
) -> anyhow::Result<()> {
    let options = flags.options(false, false)?;
    let mut client = AdminServiceClient::new(connection.connect().await?);
    let plan = client
        .rotate_plan(proto::RotatePlanRequest {
            options: Some(options),
        })
        .await
        .map_err(status_error)?
        .into_inner();
    print_plan(&plan, &flags.exclude_clusters, format)?;
    if !plan.preflight_ok {
        bail!(
            "pre-flight failed for the next step: {}",
            plan.preflight_failures.join("; ")
        );
    }
    Ok(())
}

async fn start(
    flags: &RotationFlags,
    auto: bool,
    format: Format,
    connection: &AdminConnection,
) -> anyhow::Result<()> {
    let options = flags.options(auto, true)?;
    let mut client = AdminServiceClient::new(connection.connect().await?);
    let status = client
        .rotate_start(proto::RotateStartRequest {
            options: Some(options),
        })
        .await
        .map_err(status_error)?
        .into_inner();
    if !flags.exclude_clusters.is_empty() {
        crate::telemetry::warning(&format!(
            "WARNING: the rotation does not wait for {} (--exclude-cluster, recorded in the audit log).\nWARNING: they may lose trust: once the old root is retired, their workloads are no longer accepted unless they catch up on their own.",
            flags.exclude_clusters.join(", ")
        ));
    }
    if format == Format::Table {
        println!(
            "rotation started: phase trust-new, bundle v{} trusts the old and the new root; the old root still signs.",
            status.phase_bundle_version
        );
        if auto {
            println!(
                "--auto: the server advances by itself whenever a gate holds; follow it with `trustplane rotate status`.\n"
            );
        } else {
            println!(
                "Next: wait until every cluster has applied v{} (`trustplane rotate status`), then `trustplane rotate advance --wait`.\n",
                status.phase_bundle_version
            );
        }
    }
    print_status(&status, format)
}

async fn advance_when_ready(
    client: &mut AdminServiceClient<Channel>,
    timeout: Duration,
    poll: Duration,
    format: Format,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut waited_phase: Option<proto::RotationStatus> = None;
    let mut last_line = String::new();
    let mut last_printed = tokio::time::Instant::now();
    let mut unavailable = false;
    let status = loop {
        match client.rotate_status(proto::RotateStatusRequest {}).await {
            Ok(response) => {
                let status = response.into_inner();
                if unavailable {
                    crate::telemetry::progress("server reachable again");
                    unavailable = false;
                }
                let first = waited_phase.get_or_insert_with(|| status.clone());
                if phase_of(&status) != phase_of(first)
                    || status.phase_bundle_version != first.phase_bundle_version
                {
                    // The server (--auto) or another admin moved the rotation.
                    let moved_forward = phase_rank(&status) > phase_rank(first);
                    crate::telemetry::progress(&format!(
                        "phase {} was left meanwhile (by the server with --auto, or another admin): now {}",
                        phase_of(first),
                        phase_of(&status)
                    ));
                    print_status(&status, format)?;
                    if !moved_forward {
                        bail!(
                            "the rotation went back from {} to {} instead of forward (aborted?); not advancing",
                            phase_of(first),
                            phase_of(&status)
                        );
                    }
                    return Ok(());
                }
                if status.gate_holds {
                    break status;
                }
                let (line, with_grace) = progress(&status);
                // Acks are printed as they change; the grace countdown only
                // every tenth of what is left (between 1 s and 1 min).
                let grace_step = Duration::from_secs(status.grace_left_seconds / 10)
                    .clamp(Duration::from_secs(1), Duration::from_secs(60));
                if line != last_line
                    || (status.grace_left_seconds > 0 && last_printed.elapsed() >= grace_step)
                {
                    crate::telemetry::progress(&with_grace);
                    last_line = line;
                    last_printed = tokio::time::Instant::now();
                }
                if tokio::time::Instant::now() >= deadline {
                    bail!(
                        "timed out after {} waiting for the gate of phase {}: {}; nothing was changed (see `trustplane rotate status`)",
                        humantime::format_duration(timeout),
                        phase_of(&status),
                        status.blocking
                    );
                }
            }
            Err(error) if error.code() == tonic::Code::Unavailable => {
                if !unavailable {
                    crate::telemetry::progress(&format!(
                        "server unavailable ({}); still waiting",
                        error.message()
                    ));
                    unavailable = true;
                }
                if tokio::time::Instant::now() >= deadline {
                    bail!(
                        "timed out after {} waiting for the server to come back: {}",
                        humantime::format_duration(timeout),
                        error.message()
                    );
                }
            }
            Err(error) => return Err(status_error(error)),
        }
        tokio::time::sleep(poll).await;
    };
    // Name the phase whose gate was seen to hold, so that a step taken
    // meanwhile (by --auto or another admin) is not taken twice.
    let request = proto::RotateAdvanceRequest {
        expected_phase: phase_of(&status).as_str().to_string(),
        expected: proto::RotationPhase::from(phase_of(&status)).into(),
    };
    match client.rotate_advance(request).await {
        Ok(response) => print_advanced(&response.into_inner(), format),
        Err(error) => {
            // The server may have advanced by itself (--auto) between the
            // two calls.
            if let Ok(response) = client.rotate_status(proto::RotateStatusRequest {}).await {
                let now = response.into_inner();
                if phase_rank(&now) > phase_rank(&status) {
                    crate::telemetry::progress("the server advanced the rotation itself (--auto)");
                    return print_advanced(&now, format);
                }
            }
            Err(status_error(error))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_the_server_would_read_as_its_default_are_refused() {
        assert!(parse_seconds("0s").is_err());
        assert!(parse_seconds("500ms").is_err());
        assert_eq!(parse_seconds("24h"), Ok(Duration::from_secs(86_400)));
        assert!(parse_positive("0s").is_err());
        assert_eq!(parse_positive("200ms"), Ok(Duration::from_millis(200)));
    }
}
