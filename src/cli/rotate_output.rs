//! What `trustplane rotate …` prints: the status table and JSON, the plan,
//! the progress lines of `advance --wait`; and the phase and outcome a
//! status message names. Owns no requests; [`super::rotate`] makes them.

use std::time::Duration;

use super::output::{self, Format};
use crate::ca::system_time_to_unix;
use crate::clock::SystemClock;
use crate::proto;
use crate::rotation::{Outcome, Phase};
use crate::telemetry::printable;
use crate::wire;

/// The phase a status names: the enum, or the string from an older server.
pub fn phase_of(status: &proto::RotationStatus) -> Phase {
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
pub fn phase_rank(status: &proto::RotationStatus) -> u8 {
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
pub fn progress(status: &proto::RotationStatus) -> (String, String) {
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

/// Prints a rotation plan: the steps, the clusters waited for and the
/// pre-flight result, or JSON. `excluded` are the `--exclude-cluster` names.
pub fn print_plan(
    plan: &proto::RotatePlanResponse,
    excluded: &[String],
    format: Format,
) -> anyhow::Result<()> {
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
            "excluded": excluded,
            "preflight_ok": plan.preflight_ok,
            "preflight_failures": plan.preflight_failures.iter().map(|failure| printable(failure)).collect::<Vec<_>>(),
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
        if !excluded.is_empty() {
            println!(
                "EXCLUDED, not waited for (they may lose trust): {}",
                excluded.join(", ")
            );
        }
        if plan.preflight_ok {
            println!(
                "pre-flight: ok, every cluster's reported chain verifies under the next bundle"
            );
        } else {
            println!("pre-flight: FAILED, the next step would be refused:");
            for failure in &plan.preflight_failures {
                println!("  {}", printable(failure));
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
    Ok(())
}

/// Prints what `advance` did, then the status.
pub fn print_advanced(status: &proto::RotationStatus, format: Format) -> anyhow::Result<()> {
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

/// One cluster's acknowledgement as JSON.
fn ack_json(cluster: &proto::ClusterAck) -> serde_json::Value {
    serde_json::json!({
        "name": cluster.name,
        "mode": wire::cluster_mode(cluster.cluster_mode, &cluster.mode).as_str(),
        "applied_bundle_version": cluster.applied_bundle_version,
        "chain_root_subject": printable(&cluster.chain_root_subject),
        "chain_root_serial": printable(&cluster.chain_root_serial),
        "last_report": output::time(cluster.last_report_unix),
        "acknowledged": cluster.acknowledged,
        "blocking_reason": printable(&cluster.blocking_reason),
        "overdue": cluster.overdue,
        "excluded": cluster.excluded,
        "last_error": printable(&cluster.last_error),
    })
}

/// A rotation status as JSON (`-o json`).
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
        "blocking": printable(&status.blocking),
        "next_step": status.next_step,
        "clusters": status.clusters.iter().map(ack_json).collect::<Vec<_>>(),
    })
}

/// A root as its subject and short serial.
fn root(subject: &str, serial: &str) -> String {
    format!(
        "{} ({})",
        printable(subject),
        output::short_hex(&printable(serial))
    )
}

/// Whole seconds as a readable duration.
fn seconds(value: u64) -> String {
    humantime::format_duration(Duration::from_secs(value)).to_string()
}

/// Prints a rotation status: the summary table and one row per cluster, or JSON.
pub fn print_status(status: &proto::RotationStatus, format: Format) -> anyhow::Result<()> {
    if format == Format::Json {
        println!("{}", serde_json::to_string_pretty(&status_json(status))?);
        return Ok(());
    }
    print!(
        "{}",
        status_text(status, system_time_to_unix(SystemClock.now()))
    );
    Ok(())
}

/// A rotation status as tables, at `now` (Unix seconds). Total: any value
/// the server or a cluster sends is shown, never a panic; cluster-supplied
/// text is [`printable`].
fn status_text(status: &proto::RotationStatus, now: i64) -> String {
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
                format!("nothing: the gate holds ({})", printable(&status.blocking))
            } else {
                printable(&status.blocking)
            },
        );
    }
    row("next step", status.next_step.clone());
    let mut text = format!("{table}\n");
    if status.clusters.is_empty() {
        text.push_str("no enrolled clusters\n");
        return text;
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
            printable(&cluster.blocking_reason)
        };
        if !cluster.last_error.is_empty() {
            blocking.push_str(&format!("\nlast error: {}", printable(&cluster.last_error)));
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
    text.push_str(&format!("{clusters}\n"));
    text
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
}

#[cfg(test)]
mod extreme_value_tests {
    use super::*;

    #[test]
    fn rotation_output_is_total_and_printable() {
        let hostile = "x\r\n\u{1b}[2Jfake\u{202e}";
        for (unix, seconds, version) in [
            (i64::MIN, u64::MAX, u64::MAX),
            (-1, 0, 0),
            (i64::MAX, u64::MAX / 2, 1),
        ] {
            for (phase, has_rotation) in [("sign-new", true), ("stable", false), ("", true)] {
                let status = proto::RotationStatus {
                    phase: phase.into(),
                    has_rotation,
                    started_unix: unix,
                    entered_unix: unix,
                    acknowledged_unix: unix,
                    grace_seconds: seconds,
                    grace_left_seconds: seconds,
                    ack_timeout_seconds: seconds,
                    phase_bundle_version: version,
                    blocking: hostile.into(),
                    clusters: vec![proto::ClusterAck {
                        name: "east".into(),
                        applied_bundle_version: version,
                        last_report_unix: unix,
                        chain_root_subject: hostile.into(),
                        chain_root_serial: hostile.into(),
                        blocking_reason: hostile.into(),
                        last_error: hostile.into(),
                        ..Default::default()
                    }],
                    ..Default::default()
                };
                for now in [i64::MIN, 0, i64::MAX] {
                    let text = status_text(&status, now);
                    assert!(!text.contains('\u{1b}') && !text.contains('\r'), "{text}");
                    assert!(!text.contains('\u{202e}'), "{text}");
                }
                let json = status_json(&status).to_string();
                assert!(!json.contains("\\u001b") && !json.contains("\\r"), "{json}");
                let _ = progress(&status);
                let plan = proto::RotatePlanResponse {
                    preflight_failures: vec![hostile.into()],
                    current: Some(status.clone()),
                    ..Default::default()
                };
                assert!(print_plan(&plan, &[], Format::Json).is_ok());
                assert!(print_plan(&plan, &[], Format::Table).is_ok());
            }
        }
    }
}
