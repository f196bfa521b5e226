//! Rotation at scale: a full four-phase root rotation (trust-new, sign-new,
//! retire-old, stable) of N in-process clusters — real agents with
//! in-memory sinks and identities against a real in-process server on
//! 127.0.0.1 over mTLS, on the embedded store — each gate advanced as soon
//! as it holds. The grace after sign-new is passed by moving the server's
//! test clock (grace 0 in effect; a gate still needs the server's ack
//! observation, which its once-a-second tick makes).
//!
//! `cargo bench --bench rotation` (env `TRUSTPLANE_BENCH_CLUSTERS`, default
//! 1000). Progress on stderr, one JSON object on stdout; exits non-zero with
//! the reason when a phase does not complete.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;
use tonic::transport::Channel;
use trustplane::agent::{self, AgentConfig, AgentHandle, MemoryIdentityStore};
use trustplane::ca::KeyAlgorithm;
use trustplane::proto;
use trustplane::proto::admin_service_client::AdminServiceClient;
use trustplane::sink::{ClusterSink, MemorySink};

/// A phase that does not complete within this fails the bench.
const PHASE_TIMEOUT: Duration = Duration::from_secs(600);
/// The target of the issue: the whole rotation of 1 000 clusters.
const TARGET_SECONDS: f64 = 10.0;

fn fail(message: impl std::fmt::Display) -> ! {
    eprintln!("rotation bench FAILED: {message}");
    std::process::exit(1)
}

#[allow(clippy::disallowed_methods)] // the bench's own knob, not product configuration
fn clusters_from_env() -> usize {
    match std::env::var("TRUSTPLANE_BENCH_CLUSTERS") {
        Err(_) => 1000,
        Ok(text) => text.parse().unwrap_or_else(|_| {
            fail(format!(
                "TRUSTPLANE_BENCH_CLUSTERS={text:?} is not a number of clusters"
            ))
        }),
    }
}

struct Agents {
    handles: Vec<AgentHandle>,
}

impl Agents {
    /// Waits until every agent has applied bundle `version` and, when
    /// `serials_other_than` is given, serves an intermediate whose serial is
    /// not the one it had then (re-issued).
    async fn wait_applied(&self, version: u64, serials_other_than: Option<&[String]>, what: &str) {
        let deadline = Instant::now() + PHASE_TIMEOUT;
        for (index, handle) in self.handles.iter().enumerate() {
            let mut status = handle.status.clone();
            let done = |status: &trustplane::agent::AgentStatus| {
                status.applied_bundle_version >= version
                    && !status.intermediate_serial.is_empty()
                    && serials_other_than
                        .is_none_or(|serials| status.intermediate_serial != serials[index])
            };
            let waited =
                tokio::time::timeout_at(deadline.into(), status.wait_for(|status| done(status)))
                    .await;
            match waited {
                Ok(Ok(_)) => {}
                Ok(Err(_)) => fail(format!("agent {index} stopped while waiting for {what}")),
                Err(_) => {
                    let status = handle.status.borrow().clone();
                    fail(format!(
                        "agent {index} never reached {what} in {PHASE_TIMEOUT:?}: {status:?}"
                    ))
                }
            }
        }
    }

    fn serials(&self) -> Vec<String> {
        self.handles
            .iter()
            .map(|handle| handle.status.borrow().intermediate_serial.clone())
            .collect()
    }
}

/// Polls the server's rotation status until `condition` holds; with a
/// grace running on a test clock, moves the clock past it. Returns the
/// status and how many polls it took.
async fn wait_status(
    admin: &mut AdminServiceClient<Channel>,
    clock: &trustplane::TestClock,
    what: &str,
    condition: impl Fn(&proto::RotationStatus) -> bool,
) -> (proto::RotationStatus, u32) {
    let deadline = Instant::now() + PHASE_TIMEOUT;
    let mut polls = 0;
    loop {
        polls += 1;
        let status = admin
            .rotate_status(proto::RotateStatusRequest {})
            .await
            .unwrap_or_else(|status| fail(format!("RotateStatus failed: {status}")))
            .into_inner();
        if condition(&status) {
            return (status, polls);
        }
        if status.acknowledged_unix != 0 && status.grace_left_seconds > 0 {
            clock.advance(Duration::from_secs(status.grace_left_seconds + 1));
            continue;
        }
        if Instant::now() > deadline {
            fail(format!(
                "never reached: {what}; phase {} blocked by: {}",
                status.phase, status.blocking
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn advance(admin: &mut AdminServiceClient<Channel>, expected: &str) -> proto::RotationStatus {
    admin
        .rotate_advance(proto::RotateAdvanceRequest {
            expected_phase: expected.into(),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|status| fail(format!("RotateAdvance from {expected} refused: {status}")))
        .into_inner()
}

fn seconds(duration: Duration) -> f64 {
    (duration.as_secs_f64() * 1000.0).round() / 1000.0
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if std::env::args().any(|argument| argument == "--list") {
        // `cargo bench -- --list` asks for the benchmarks: there is one.
        println!("rotation: bench");
        return;
    }
    let clusters = clusters_from_env();
    let (soft, hard) = rlimit::Resource::NOFILE
        .get()
        .unwrap_or_else(|error| fail(format!("reading the open-file limit: {error}")));
    if soft < hard {
        let _ = rlimit::Resource::NOFILE.set(hard, hard);
    }
    let needed = clusters as u64 * 2 + 256;
    if hard < needed {
        fail(format!(
            "{clusters} clusters need about {needed} open files (an agent connection and the server's end of it); the hard limit is {hard}"
        ));
    }
    let (server, clock) = common::fleet::in_process_server().await;
    let mut admin = server.admin().await;
    eprintln!(
        "rotation bench: server at {}, {clusters} clusters",
        server.url()
    );

    // Enrollment (reported, not part of the rotation's time).
    let enroll_started = Instant::now();
    let mut tokens = JoinSet::new();
    let mut names = Vec::with_capacity(clusters);
    let mut handles = Vec::with_capacity(clusters);
    for index in 0..clusters {
        let name = format!("bench-{index:05}");
        names.push(name.clone());
        let mut admin = admin.clone();
        tokens.spawn(async move {
            let token = admin
                .add_cluster(proto::AddClusterRequest {
                    name: name.clone(),
                    ..Default::default()
                })
                .await
                .unwrap_or_else(|status| fail(format!("AddCluster {name}: {status}")))
                .into_inner()
                .join_token;
            (index, token)
        });
        if tokens.len() >= 16 || index + 1 == clusters {
            while let Some(done) = tokens.join_next().await {
                let (index, token) = done.unwrap_or_else(|error| fail(error));
                handles.push((index, token));
            }
        }
    }
    handles.sort_by_key(|(index, _)| *index);
    let mut agents = Agents {
        handles: Vec::with_capacity(clusters),
    };
    let sinks: Vec<Arc<MemorySink>> = (0..clusters).map(|_| Arc::new(MemorySink::new())).collect();
    for ((_, token), sink) in handles.into_iter().zip(&sinks) {
        let sink: Arc<dyn ClusterSink> = sink.clone();
        agents.handles.push(agent::spawn_with_identity(
            AgentConfig {
                server_ca_pem: Some(server.control_plane_ca_pem.clone()),
                join_token: Some(zeroize::Zeroizing::new(token)),
                key_algorithm: KeyAlgorithm::EcdsaP256,
                max_backoff: Duration::from_millis(500),
                ..AgentConfig::new(server.url(), std::path::PathBuf::new())
            },
            Arc::new(MemoryIdentityStore::new()),
            sink,
        ));
    }
    let initial = server.authority().publication.current().bundle.version();
    agents.wait_applied(initial, None, "the first bundle").await;
    // Every cluster acknowledged on the server (its report stored).
    let deadline = Instant::now() + PHASE_TIMEOUT;
    loop {
        let listed = admin
            .list_clusters(proto::ListClustersRequest {})
            .await
            .unwrap_or_else(|status| fail(format!("ListClusters failed: {status}")))
            .into_inner();
        let reported = listed
            .clusters
            .iter()
            .filter(|cluster| {
                cluster.applied_bundle_version >= initial && cluster.last_report_unix != 0
            })
            .count();
        if reported == clusters {
            break;
        }
        if Instant::now() > deadline {
            fail(format!(
                "only {reported}/{clusters} clusters reported the first bundle"
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let enrollment = enroll_started.elapsed();
    eprintln!(
        "enrolled {clusters} clusters in {:.1} s; rotating",
        enrollment.as_secs_f64()
    );

    // trust-new: bundle {A, B}.
    let rotation_started = Instant::now();
    let started = admin
        .rotate_start(proto::RotateStartRequest {
            options: Some(proto::RotationOptions {
                // The smallest grace the API takes; the test clock passes it.
                grace_seconds: 1,
                ack_timeout_seconds: 3600,
                ..Default::default()
            }),
        })
        .await
        .unwrap_or_else(|status| fail(format!("RotateStart refused: {status}")))
        .into_inner();
    let start_call = rotation_started.elapsed();
    agents
        .wait_applied(started.phase_bundle_version, None, "trust-new's bundle")
        .await;
    let trust_new_applied = rotation_started.elapsed();
    let (_, mut polls) = wait_status(&mut admin, &clock, "trust-new's gate", |status| {
        status.gate_holds
    })
    .await;
    let trust_new = rotation_started.elapsed();
    eprintln!("trust-new: {:.2} s", trust_new.as_secs_f64());

    // sign-new: every cluster re-issued from B, then the grace.
    let before = agents.serials();
    let signing = advance(&mut admin, "trust-new").await;
    if signing.phase != "sign-new" {
        fail(format!("advance from trust-new entered {}", signing.phase));
    }
    agents
        .wait_applied(
            signing.phase_bundle_version,
            Some(&before),
            "an intermediate from the new root",
        )
        .await;
    let sign_new_applied = rotation_started.elapsed();
    let (_, more) = wait_status(&mut admin, &clock, "sign-new's gate and grace", |status| {
        status.gate_holds
    })
    .await;
    polls += more;
    let sign_new = rotation_started.elapsed();
    eprintln!("sign-new: {:.2} s", (sign_new - trust_new).as_secs_f64());

    // retire-old: bundle {B}.
    let retiring = advance(&mut admin, "sign-new").await;
    if retiring.phase != "retire-old" {
        fail(format!("advance from sign-new entered {}", retiring.phase));
    }
    agents
        .wait_applied(retiring.phase_bundle_version, None, "retire-old's bundle")
        .await;
    let retire_old_applied = rotation_started.elapsed();
    let (_, more) = wait_status(&mut admin, &clock, "retire-old's gate", |status| {
        status.gate_holds
    })
    .await;
    polls += more;
    let retire_old = rotation_started.elapsed();
    eprintln!("retire-old: {:.2} s", (retire_old - sign_new).as_secs_f64());

    let done = advance(&mut admin, "retire-old").await;
    if (done.phase.as_str(), done.outcome.as_str()) != ("stable", "completed") {
        fail(format!(
            "the last advance left phase {} outcome {}",
            done.phase, done.outcome
        ));
    }
    let total = rotation_started.elapsed();
    eprintln!("rotation complete in {:.2} s", total.as_secs_f64());

    // Every sink holds the final bundle.
    let final_pem = retiring
        .bundle
        .as_ref()
        .map(|bundle| bundle.root_cert_pem.clone());
    let stale = sinks
        .iter()
        .filter(|sink| sink.last_write().map(|material| material.root_cert_pem) != final_pem)
        .count();
    if stale != 0 {
        fail(format!(
            "{stale} clusters do not hold retire-old's root-cert.pem"
        ));
    }
    for handle in &agents.handles {
        handle.stop();
    }

    let result = serde_json::json!({
        "bench": "rotation",
        "clusters": clusters,
        "enrollment_s": seconds(enrollment),
        "rotation_s": seconds(total),
        "target_s": TARGET_SECONDS,
        "met": total.as_secs_f64() < TARGET_SECONDS,
        "phases": {
            "trust_new_s": seconds(trust_new),
            "trust_new_start_call_s": seconds(start_call),
            "trust_new_all_applied_s": seconds(trust_new_applied),
            "sign_new_s": seconds(sign_new - trust_new),
            "sign_new_all_reissued_s": seconds(sign_new_applied - trust_new),
            "retire_old_s": seconds(retire_old - sign_new),
            "retire_old_all_applied_s": seconds(retire_old_applied - sign_new),
            "stable_s": seconds(total - retire_old),
        },
        "status_polls": polls,
    });
    println!("{result}");
}
