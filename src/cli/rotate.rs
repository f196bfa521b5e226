//! `trustplane rotate …` and `trustplane audit`: the admin side of mesh-root
//! rotation. The phases, gates and pre-flight are decided by the server
//! ([`crate::rotation`]); this module turns flags into requests and the
//! answers into tables or JSON, and waits for gates with `advance --wait`.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{Context as _, bail};
use clap::Subcommand;
use tonic::transport::Channel;
use zeroize::Zeroizing;

use super::client::{AdminConnection, status_error};
use super::options::parse_generated_algorithm;
use super::output::{self, Format};
use crate::ca::{KeyAlgorithm, system_time_to_unix};
use crate::proto;
use crate::proto::admin_service_client::AdminServiceClient;
use crate::rotation::{Outcome, Phase};
use crate::wire;

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
        after_help = "Examples:\n  trustplane rotate start\n  trustplane rotate start --grace 48h --auto\n  trustplane rotate start --import-root new-root.pem --import-key new-root-key.pem\n  # do not wait for a cluster that is down for good (audited; it may lose trust)\n  trustplane rotate start --exclude-cluster lab"
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
}

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
            ..Default::default()
        };
        match (&self.import_root, &self.import_key) {
            (Some(root), Some(key)) => {
                options.import_root_pem = read_file(root, "--import-root")?.to_string();
                let key = read_file(key, "--import-key")?;
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
    let current = plan.current.clone().unwrap_or_default();
    let in_progress = phase_of(&current) != Phase::Stable;
    if format == Format::Json {
        let json = serde_json::json!({
            "steps": plan.steps.iter().map(|step| serde_json::json!({
                "phase": step_phase(step).as_str(),
                "bundle_version": step.bundle_version,
                "bundle_roots": step.bundle_roots,
                "newest_repeated": step.newest_repeated,
                "signing_root": step.signing_root,
                "gate": step.gate,
            })).collect::<Vec<_>>(),
            "clusters": plan.clusters,
            "excluded": flags.exclude_clusters,
            "preflight_ok": plan.preflight_ok,
            "preflight_failures": plan.preflight_failures,
            "current": status_json(&current),
        });
        println!("{}", serde_json::to_string_pretty(&json)?);
    } else {
        if in_progress {
            println!(
                "rotation in progress: phase {} (bundle v{}); the steps still to come:",
                phase_of(&current),
                current.phase_bundle_version
            );
        } else {
            println!(
                "phase stable, bundle v{}; a rotation would take these steps:",
                current.bundle.as_ref().map_or(0, |bundle| bundle.version)
            );
        }
        // The root descriptions are long: name them A, B, … once.
        let mut roots: Vec<&str> = Vec::new();
        for step in &plan.steps {
            for root in step.bundle_roots.iter().chain([&step.signing_root]) {
                if !roots.contains(&root.as_str()) {
                    roots.push(root);
                }
            }
        }
        let letter = |root: &str| {
            roots
                .iter()
                .position(|known| *known == root)
                .and_then(|index| u8::try_from(index).ok())
                .map_or_else(
                    || root.to_string(),
                    |index| char::from(b'A' + index).to_string(),
                )
        };
        for root in &roots {
            println!("  {} = {root}", letter(root));
        }
        let mut table = output::table(&[
            "STEP",
            "PHASE",
            "BUNDLE",
            "ROOTS IN root-cert.pem",
            "SIGNS INTERMEDIATES",
            "WAITS FOR",
        ]);
        for (index, step) in plan.steps.iter().enumerate() {
            let mut bundle_roots: Vec<String> =
                step.bundle_roots.iter().map(|root| letter(root)).collect();
            if step.newest_repeated
                && let Some(newest) = step.bundle_roots.last()
            {
                bundle_roots.push(format!(
                    "{} again (new bytes, so istiod pushes it)",
                    letter(newest)
                ));
            }
            table.add_row(vec![
                (index + 1).to_string(),
                step_phase(step).to_string(),
                format!("v{}", step.bundle_version),
                bundle_roots.join(", "),
                letter(&step.signing_root),
                step.gate.clone(),
            ]);
        }
        println!("{table}");
        if plan.clusters.is_empty() {
            println!("clusters waited for: none (no enrolled cluster)");
        } else {
            println!(
                "clusters waited for ({}): {}",
                plan.clusters.len(),
                plan.clusters.join(", ")
            );
        }
        if !flags.exclude_clusters.is_empty() {
            println!(
                "EXCLUDED, not waited for (they may lose trust): {}",
                flags.exclude_clusters.join(", ")
            );
        }
        if plan.preflight_ok {
            println!(
                "pre-flight: ok, every cluster's reported chain verifies under the next bundle"
            );
        } else {
            println!("pre-flight: FAILED, the next step would be refused:");
            for failure in &plan.preflight_failures {
                println!("  {failure}");
            }
        }
        if in_progress {
            println!("nothing was changed; the next step is `trustplane rotate advance`");
        } else {
            println!(
                "nothing was changed; begin with `trustplane rotate start` and the same flags"
            );
        }
    }
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
        eprintln!(
            "WARNING: the rotation does not wait for {} (--exclude-cluster, recorded in the audit log).\nWARNING: they may lose trust: once the old root is retired, their workloads are no longer accepted unless they catch up on their own.",
            flags.exclude_clusters.join(", ")
        );
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

/// The phase a status names: the enum, or the string from an older server.
fn phase_of(status: &proto::RotationStatus) -> Phase {
    wire::phase(status.rotation_phase, &status.phase)
        .ok()
        .flatten()
        .unwrap_or_default()
}

/// How the last rotation ended, as a status says.
fn outcome_of(status: &proto::RotationStatus) -> Option<Outcome> {
    wire::outcome(status.rotation_outcome, &status.outcome)
}

/// The phase a planned step enters.
fn step_phase(step: &proto::PlannedStep) -> Phase {
    wire::phase(step.rotation_phase, &step.phase)
        .ok()
        .flatten()
        .unwrap_or_default()
}

/// Where a phase lies on the way forward; an aborted rotation ranks lowest.
fn phase_rank(status: &proto::RotationStatus) -> u8 {
    match phase_of(status) {
        Phase::TrustNew => 1,
        Phase::SignNew => 2,
        Phase::RetireOld => 3,
        Phase::Stable if outcome_of(status) == Some(Outcome::Completed) => 4,
        Phase::Stable => 0,
    }
}

/// Acknowledged (or excluded) clusters, and every cluster.
fn ack_counts(status: &proto::RotationStatus) -> (usize, usize) {
    let acknowledged = status
        .clusters
        .iter()
        .filter(|cluster| cluster.acknowledged || cluster.excluded)
        .count();
    (acknowledged, status.clusters.len())
}

/// The progress line `advance --wait` prints, without and with the grace.
fn progress(status: &proto::RotationStatus) -> (String, String) {
    let (acknowledged, total) = ack_counts(status);
    let mut line = format!(
        "waiting: {acknowledged}/{total} clusters acknowledged phase {}",
        phase_of(status)
    );
    let waiting: Vec<String> = status
        .clusters
        .iter()
        .filter(|cluster| !cluster.acknowledged && !cluster.excluded)
        .map(|cluster| {
            if cluster.overdue {
                format!("{} (OVERDUE)", cluster.name)
            } else {
                cluster.name.clone()
            }
        })
        .collect();
    if !waiting.is_empty() {
        let shown = waiting
            .iter()
            .take(3)
            .cloned()
            .collect::<Vec<_>>()
            .join(", ");
        line.push_str(&format!("; waiting for {shown}"));
        if waiting.len() > 3 {
            line.push_str(&format!(" and {} more", waiting.len() - 3));
        }
    }
    let with_grace = if status.grace_left_seconds > 0 {
        format!(
            "{line}, grace {} left",
            humantime::format_duration(Duration::from_secs(status.grace_left_seconds))
        )
    } else {
        line.clone()
    };
    (line, with_grace)
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
                    eprintln!("server reachable again");
                    unavailable = false;
                }
                let first = waited_phase.get_or_insert_with(|| status.clone());
                if phase_of(&status) != phase_of(first)
                    || status.phase_bundle_version != first.phase_bundle_version
                {
                    // The server (--auto) or another admin moved the rotation.
                    let moved_forward = phase_rank(&status) > phase_rank(first);
                    eprintln!(
                        "phase {} was left meanwhile (by the server with --auto, or another admin): now {}",
                        phase_of(first),
                        phase_of(&status)
                    );
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
                    eprintln!("{with_grace}");
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
                    eprintln!("server unavailable ({}); still waiting", error.message());
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
                    eprintln!("the server advanced the rotation itself (--auto)");
                    return print_advanced(&now, format);
                }
            }
            Err(status_error(error))
        }
    }
}

fn print_advanced(status: &proto::RotationStatus, format: Format) -> anyhow::Result<()> {
    if format == Format::Table {
        match phase_of(status) {
            Phase::Stable => println!(
                "rotation complete: the mesh trusts only the new root, which signs every intermediate\n"
            ),
            Phase::SignNew => println!(
                "entered phase sign-new (bundle v{}): intermediates are re-issued from the new root\n",
                status.phase_bundle_version
            ),
            Phase::RetireOld => println!(
                "entered phase retire-old (bundle v{}): the old root is no longer trusted\n",
                status.phase_bundle_version
            ),
            phase @ Phase::TrustNew => println!(
                "entered phase {phase} (bundle v{})\n",
                status.phase_bundle_version
            ),
        }
    }
    print_status(status, format)
}

fn ack_json(cluster: &proto::ClusterAck) -> serde_json::Value {
    serde_json::json!({
        "name": cluster.name,
        "mode": wire::cluster_mode(cluster.cluster_mode, &cluster.mode).as_str(),
        "applied_bundle_version": cluster.applied_bundle_version,
        "chain_root_subject": cluster.chain_root_subject,
        "chain_root_serial": cluster.chain_root_serial,
        "last_report": output::time(cluster.last_report_unix),
        "acknowledged": cluster.acknowledged,
        "blocking_reason": cluster.blocking_reason,
        "overdue": cluster.overdue,
        "excluded": cluster.excluded,
        "last_error": cluster.last_error,
    })
}

fn status_json(status: &proto::RotationStatus) -> serde_json::Value {
    let bundle = status.bundle.clone().unwrap_or_default();
    serde_json::json!({
        "phase": phase_of(status).as_str(),
        "has_rotation": status.has_rotation,
        "outcome": outcome_of(status).map(Outcome::as_str).unwrap_or_default(),
        "old_root_serial": status.old_root_serial,
        "old_root_subject": status.old_root_subject,
        "new_root_serial": status.new_root_serial,
        "new_root_subject": status.new_root_subject,
        "signing_root_serial": status.signing_root_serial,
        "phase_bundle_version": status.phase_bundle_version,
        "bundle_version": bundle.version,
        "bundle_digest": bundle.digest,
        "started": output::time(status.started_unix),
        "entered": output::time(status.entered_unix),
        "acknowledged": output::time(status.acknowledged_unix),
        "grace_seconds": status.grace_seconds,
        "grace_left_seconds": status.grace_left_seconds,
        "ack_timeout_seconds": status.ack_timeout_seconds,
        "auto_advance": status.auto_advance,
        "excluded": status.excluded,
        "gate_holds": status.gate_holds,
        "blocking": status.blocking,
        "next_step": status.next_step,
        "clusters": status.clusters.iter().map(ack_json).collect::<Vec<_>>(),
    })
}

fn root(subject: &str, serial: &str) -> String {
    format!("{subject} ({})", output::short_hex(serial))
}

fn seconds(value: u64) -> String {
    humantime::format_duration(Duration::from_secs(value)).to_string()
}

fn print_status(status: &proto::RotationStatus, format: Format) -> anyhow::Result<()> {
    if format == Format::Json {
        println!("{}", serde_json::to_string_pretty(&status_json(status))?);
        return Ok(());
    }
    let now = system_time_to_unix(SystemTime::now());
    let in_progress = phase_of(status) != Phase::Stable;
    let bundle = status.bundle.clone().unwrap_or_default();
    let mut table = output::table(&["", ""]);
    let mut row = |name: &str, value: String| {
        table.add_row(vec![name.to_string(), value]);
    };
    let phase = match (status.has_rotation, in_progress) {
        (false, _) => "stable (no rotation started yet)".to_string(),
        (true, false) if outcome_of(status).is_some() => {
            format!(
                "stable (last rotation {})",
                outcome_of(status).map(Outcome::as_str).unwrap_or_default()
            )
        }
        (true, _) if status.auto_advance && in_progress => {
            format!(
                "{} (--auto: the server advances by itself)",
                phase_of(status)
            )
        }
        _ => phase_of(status).to_string(),
    };
    row("phase", phase);
    if status.has_rotation {
        row(
            "old root",
            root(&status.old_root_subject, &status.old_root_serial),
        );
        row(
            "new root",
            root(&status.new_root_subject, &status.new_root_serial),
        );
    }
    let signing_serial = output::short_hex(&status.signing_root_serial);
    let signer = if !status.new_root_serial.is_empty()
        && status.signing_root_serial == status.new_root_serial
    {
        format!("new root ({signing_serial})")
    } else if !status.old_root_serial.is_empty()
        && status.signing_root_serial == status.old_root_serial
    {
        format!("old root ({signing_serial})")
    } else {
        signing_serial
    };
    row("signing root", signer);
    row(
        "bundle",
        format!(
            "v{} sha256:{}",
            bundle.version,
            output::short_hex(&bundle.digest)
        ),
    );
    if in_progress {
        row(
            "phase bundle",
            format!("v{} (acks must reach it)", status.phase_bundle_version),
        );
        row(
            "in phase",
            format!(
                "since {} ({})",
                output::time(status.entered_unix),
                output::age(status.entered_unix, now)
            ),
        );
        row("started", output::time(status.started_unix));
        row(
            "all acknowledged",
            if status.acknowledged_unix == 0 {
                "not yet".to_string()
            } else {
                output::time(status.acknowledged_unix)
            },
        );
        let grace = if status.grace_left_seconds > 0 {
            format!(
                "{} left of {}",
                seconds(status.grace_left_seconds),
                seconds(status.grace_seconds)
            )
        } else if phase_of(status) == Phase::SignNew && status.acknowledged_unix == 0 {
            format!(
                "{}, counted from when every cluster has acknowledged",
                seconds(status.grace_seconds)
            )
        } else if phase_of(status) == Phase::TrustNew {
            format!(
                "{}, waited after every cluster acknowledged sign-new",
                seconds(status.grace_seconds)
            )
        } else {
            format!("{}, over", seconds(status.grace_seconds))
        };
        row("grace", grace);
        row(
            "ack timeout",
            format!(
                "{} (then OVERDUE; still waited for)",
                seconds(status.ack_timeout_seconds)
            ),
        );
        row(
            "excluded",
            if status.excluded.is_empty() {
                "none".to_string()
            } else {
                format!(
                    "{} (not waited for; may lose trust)",
                    status.excluded.join(", ")
                )
            },
        );
        row(
            "blocking",
            if status.gate_holds {
                format!("nothing: the gate holds ({})", status.blocking)
            } else {
                status.blocking.clone()
            },
        );
    }
    row("next step", status.next_step.clone());
    println!("{table}");
    if status.clusters.is_empty() {
        println!("no enrolled clusters");
        return Ok(());
    }
    let mut clusters = output::table(&[
        "CLUSTER",
        "MODE",
        "BUNDLE",
        "CHAIN ROOT",
        "LAST REPORT",
        "ACK",
        "BLOCKING",
        "",
    ]);
    for cluster in &status.clusters {
        let ack = if !in_progress {
            "-"
        } else if cluster.excluded {
            "excluded"
        } else if cluster.acknowledged {
            "yes"
        } else {
            "NO"
        };
        let mut blocking = if cluster.blocking_reason.is_empty() {
            "-".to_string()
        } else {
            cluster.blocking_reason.clone()
        };
        if !cluster.last_error.is_empty() {
            blocking.push_str(&format!("\nlast error: {}", cluster.last_error));
        }
        clusters.add_row(vec![
            cluster.name.clone(),
            wire::cluster_mode(cluster.cluster_mode, &cluster.mode)
                .as_str()
                .to_string(),
            if cluster.last_report_unix == 0 {
                "-".to_string()
            } else {
                format!("v{}", cluster.applied_bundle_version)
            },
            if cluster.chain_root_serial.is_empty() {
                "-".to_string()
            } else {
                root(&cluster.chain_root_subject, &cluster.chain_root_serial)
            },
            output::age(cluster.last_report_unix, now),
            ack.to_string(),
            blocking,
            if cluster.overdue { "OVERDUE" } else { "" }.to_string(),
        ]);
    }
    println!("{clusters}");
    Ok(())
}

/// `trustplane audit`: the newest entries, oldest first.
pub async fn audit(args: AuditArgs) -> anyhow::Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(name: &str, acknowledged: bool, excluded: bool, overdue: bool) -> proto::ClusterAck {
        proto::ClusterAck {
            name: name.into(),
            acknowledged,
            excluded,
            overdue,
            ..Default::default()
        }
    }

    #[test]
    fn progress_counts_excluded_clusters_as_acknowledged_and_names_the_waited_for() {
        let status = proto::RotationStatus {
            phase: "sign-new".into(),
            clusters: vec![
                ack("east", true, false, false),
                ack("lab", true, true, false),
                ack("west", false, false, true),
                ack("north", false, false, false),
                ack("south", false, false, false),
                ack("edge", false, false, false),
            ],
            ..Default::default()
        };
        let (line, with_grace) = progress(&status);
        assert_eq!(
            line,
            "waiting: 2/6 clusters acknowledged phase sign-new; waiting for west (OVERDUE), north, south and 1 more"
        );
        assert_eq!(line, with_grace);
    }

    #[test]
    fn progress_shows_the_grace_apart_from_the_acks() {
        let status = proto::RotationStatus {
            phase: "sign-new".into(),
            clusters: vec![ack("east", true, false, false)],
            grace_left_seconds: 12,
            ..Default::default()
        };
        let (line, with_grace) = progress(&status);
        assert_eq!(line, "waiting: 1/1 clusters acknowledged phase sign-new");
        assert_eq!(
            with_grace,
            "waiting: 1/1 clusters acknowledged phase sign-new, grace 12s left"
        );
    }

    #[test]
    fn an_abort_is_not_progress() {
        let status = |phase: &str, outcome: &str| proto::RotationStatus {
            phase: phase.into(),
            outcome: outcome.into(),
            ..Default::default()
        };
        let order = [
            status("trust-new", ""),
            status("sign-new", ""),
            status("retire-old", ""),
            status("stable", "completed"),
        ];
        for pair in order.windows(2) {
            assert!(phase_rank(&pair[1]) > phase_rank(&pair[0]));
        }
        assert!(phase_rank(&status("stable", "aborted")) < phase_rank(&order[0]));
    }

    #[test]
    fn durations_the_server_would_read_as_its_default_are_refused() {
        assert!(parse_seconds("0s").is_err());
        assert!(parse_seconds("500ms").is_err());
        assert_eq!(parse_seconds("24h"), Ok(Duration::from_secs(86_400)));
        assert!(parse_positive("0s").is_err());
        assert_eq!(parse_positive("200ms"), Ok(Duration::from_millis(200)));
    }

    #[test]
    fn short_hexs() {
        assert_eq!(output::short_hex(""), "-");
        assert_eq!(output::short_hex("abcd"), "abcd");
        assert_eq!(
            output::short_hex("0123456789abcdef0123"),
            "0123456789abcdef…"
        );
    }
}
