//! Root rotation end to end: two real kube-apiservers (agents writing
//! `istio-system/cacerts`), a push-mode cluster in one of them, and 50
//! simulated clusters in process. At every phase boundary and whenever a
//! real cluster's applied state changes, every real cluster signs a workload
//! certificate with Istio's own CA code (`tests/interop/istio`) from the
//! Secret read back from its apiserver, and each is verified under every
//! other cluster's `root-cert.pem` (Go's x509 for real pairs, rustls-webpki
//! against the simulated ones); simulated clusters are checked pairwise
//! after every write of theirs (`common::mesh`).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use trustplane::agent::{self, AgentHandle};
use trustplane::ca::Certificate;
use trustplane::clock::SystemClock;
use trustplane::proto;
use trustplane::proto::admin_service_client::AdminServiceClient;
use trustplane::sink::ClusterSink;

use crate::cluster_sync::{
    Target, agent_config, data, istio_interop, istio_sign, istio_verify, kubernetes_parts,
    read_cacerts, run,
};
use crate::common::{self, mesh::Mesh};
use crate::kube_cluster::{KubeCluster, skip_e2e};

const SIMULATED: usize = 50;
const GRACE: u64 = 4;
const WAIT: Duration = Duration::from_secs(180);

type Admin = AdminServiceClient<tonic::transport::Channel>;

struct Checker<'a> {
    targets: Vec<Target<'a>>,
    work: &'a Path,
    mesh: Arc<Mesh>,
    rounds: usize,
    istio_checks: u64,
    /// Last root-cert.pem seen per real cluster (Istio's byte rule).
    last_roots: BTreeMap<&'static str, String>,
    transitions: u64,
}

impl Checker<'_> {
    /// Reads every real cluster's Secret, signs a workload with Istio's CA
    /// code, and verifies every ordered pair among real and simulated
    /// clusters.
    async fn check(&mut self, label: &str) {
        self.rounds += 1;
        let round = format!("round-{:03}", self.rounds);
        let spiffe = "spiffe://cluster.local/ns/default/sa/x";
        for target in &self.targets {
            let dir = self.work.join(&round).join(target.name);
            let secret = read_cacerts(target.cluster, target.namespace, &dir).await;
            let roots = data(&secret, "root-cert.pem").unwrap();
            if let Some(previous) = self.last_roots.get(target.name)
                && previous != &roots
            {
                assert!(
                    roots.contains(previous.as_str()) || previous.contains(roots.as_str()),
                    "[{label}] {}: root-cert.pem changed in a way istiod (≤ 1.29) refuses",
                    target.name
                );
                self.transitions += 1;
            }
            self.last_roots.insert(target.name, roots);
            let leaf = dir.join("leaf-chain.pem");
            let signed = istio_sign(&dir, spiffe, &leaf);
            assert!(
                signed.is_ok(),
                "[{label}] istiod's CA code refused {}'s cacerts: {signed:?}",
                target.name
            );
        }
        for signer in &self.targets {
            let chain_path = self
                .work
                .join(&round)
                .join(signer.name)
                .join("leaf-chain.pem");
            for verifier in &self.targets {
                if signer.name == verifier.name {
                    continue;
                }
                let roots = self
                    .work
                    .join(&round)
                    .join(verifier.name)
                    .join("root-cert.pem");
                let verified = istio_verify(&chain_path, &roots, Some(spiffe));
                assert!(
                    verified.is_ok(),
                    "[{label}] a workload of {} (Istio CA code) does not verify under {}'s root-cert.pem: {verified:?}",
                    signer.name,
                    verifier.name
                );
                self.istio_checks += 1;
            }
            // Real → simulated, and simulated → real.
            let chain =
                Certificate::parse_pem_chain(&std::fs::read_to_string(&chain_path).unwrap())
                    .unwrap();
            let (leaf, intermediates) = chain.split_first().unwrap();
            self.mesh
                .verify_under_all(label, signer.name, leaf, intermediates)
                .await;
            let roots = Certificate::parse_pem_chain(
                &std::fs::read_to_string(
                    self.work
                        .join(&round)
                        .join(signer.name)
                        .join("root-cert.pem"),
                )
                .unwrap(),
            )
            .unwrap();
            self.mesh.verify_all_under(label, signer.name, &roots).await;
        }
        self.mesh.check_all(label).await;
    }
}

async fn rotation_status(admin: &mut Admin) -> proto::RotationStatus {
    admin
        .rotate_status(proto::RotateStatusRequest {})
        .await
        .unwrap()
        .into_inner()
}

/// The real clusters' (applied version, chain root) as the server sees them.
fn real_state(status: &proto::RotationStatus) -> Vec<(String, u64, String)> {
    status
        .clusters
        .iter()
        .filter(|ack| ["alpha", "beta", "gamma"].contains(&ack.name.as_str()))
        .map(|ack| {
            (
                ack.name.clone(),
                ack.applied_bundle_version,
                ack.chain_root_serial.clone(),
            )
        })
        .collect()
}

/// Polls until `done` holds; runs the checks whenever a real cluster's
/// applied state changes (after every real ack).
async fn drive(
    admin: &mut Admin,
    checker: &mut Checker<'_>,
    label: &str,
    done: impl Fn(&proto::RotationStatus) -> bool,
) -> proto::RotationStatus {
    let deadline = Instant::now() + WAIT;
    let mut seen = real_state(&rotation_status(admin).await);
    loop {
        let status = rotation_status(admin).await;
        let state = real_state(&status);
        if state != seen {
            checker
                .check(&format!("{label}: after a real cluster's ack"))
                .await;
            seen = state;
        }
        if done(&status) {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "[{label}] never done; phase {} blocked by: {}",
            status.phase,
            status.blocking
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn advance(admin: &mut Admin) -> proto::RotationStatus {
    admin
        .rotate_advance(proto::RotateAdvanceRequest::default())
        .await
        .unwrap()
        .into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rotation_over_real_apiservers_and_50_simulated_clusters_never_breaks_trust() {
    if skip_e2e() {
        return;
    }
    common::install_crypto();
    let started = Instant::now();
    let (alpha, beta) = tokio::join!(KubeCluster::start("alpha"), KubeCluster::start("beta"));
    let (alpha, beta) = (alpha.unwrap(), beta.unwrap());
    println!(
        "real components: {} ×2; Istio CA code: {}",
        KubeCluster::versions(),
        run(istio_interop(), &["version"]).unwrap().trim()
    );
    let server = common::start_server().await;
    let mut admin = server.admin().await;
    let work = tempfile::tempdir().unwrap();
    let mesh = Mesh::new(Duration::from_secs(GRACE), SystemClock::shared());

    // Real clusters: alpha and beta run agents writing istio-system/cacerts
    // through their own ServiceAccount; gamma is push mode into alpha's
    // d8-istio namespace.
    let mut agents: BTreeMap<&str, AgentHandle> = BTreeMap::new();
    let mut real_parts = BTreeMap::new();
    for (name, cluster) in [("alpha", &alpha), ("beta", &beta)] {
        let token = server.add_cluster(name).await;
        let (_, identity, sink) = kubernetes_parts(cluster, "istio-system").await;
        agents.insert(
            name,
            agent::spawn_with_identity(
                agent_config(&server, Some(token)),
                identity.clone(),
                sink.clone(),
            ),
        );
        real_parts.insert(name, (identity, sink));
    }
    let gamma_kubeconfig =
        std::fs::read_to_string(alpha.agent_kubeconfig_path("d8-istio").await.unwrap()).unwrap();
    admin
        .add_cluster(proto::AddClusterRequest {
            name: "gamma".into(),
            kubeconfig: gamma_kubeconfig,
            namespace: "d8-istio".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    // Simulated clusters, agents in process with checking sinks.
    let mut simulated = Vec::new();
    for index in 0..SIMULATED {
        let name = format!("sim{index:02}");
        let token = server.add_cluster(&name).await;
        let sink: Arc<dyn ClusterSink> = mesh.sink(&name);
        let mut config = agent_config(&server, Some(token));
        config.identity_dir = work.path().join("identities").join(&name);
        simulated.push(agent::spawn(config, sink));
    }
    let total = SIMULATED + 3;
    let mut checker = Checker {
        targets: vec![
            Target {
                name: "alpha",
                cluster: &alpha,
                namespace: "istio-system",
            },
            Target {
                name: "beta",
                cluster: &beta,
                namespace: "istio-system",
            },
            Target {
                name: "gamma",
                cluster: &alpha,
                namespace: "d8-istio",
            },
        ],
        work: work.path(),
        mesh: mesh.clone(),
        rounds: 0,
        istio_checks: 0,
        last_roots: BTreeMap::new(),
        transitions: 0,
    };
    drive(&mut admin, &mut checker, "enrolment", |status| {
        status.clusters.len() == total
            && status
                .clusters
                .iter()
                .all(|ack| ack.applied_bundle_version >= 1)
    })
    .await;
    checker.check("stable").await;
    println!(
        "[{:.1}s] {total} clusters on bundle v1 (3 real: alpha, beta agents; gamma push)",
        started.elapsed().as_secs_f64()
    );

    // beta's agent is down when the rotation starts: it blocks trust-new.
    agents.remove("beta").unwrap().stop();
    let trust_new = admin
        .rotate_start(proto::RotateStartRequest {
            options: Some(proto::RotationOptions {
                grace_seconds: GRACE,
                ack_timeout_seconds: 5,
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(trust_new.phase, "trust-new");
    checker.check("trust-new published").await;
    let blocked = drive(&mut admin, &mut checker, "trust-new, beta down", |status| {
        status
            .clusters
            .iter()
            .filter(|ack| !ack.acknowledged)
            .count()
            == 1
    })
    .await;
    let beta_row = blocked
        .clusters
        .iter()
        .find(|ack| ack.name == "beta")
        .unwrap();
    assert!(!beta_row.acknowledged, "{beta_row:?}");
    assert!(blocked.blocking.contains("beta"), "{}", blocked.blocking);
    let refused = admin
        .rotate_advance(proto::RotateAdvanceRequest::default())
        .await
        .unwrap_err();
    assert!(refused.message().contains("beta"), "{}", refused.message());
    println!(
        "[{:.1}s] trust-new: beta's agent is down and blocks the gate: {}",
        started.elapsed().as_secs_f64(),
        blocked.blocking
    );
    let (identity, sink) = real_parts["beta"].clone();
    agents.insert(
        "beta",
        agent::spawn_with_identity(agent_config(&server, None), identity, sink),
    );
    drive(&mut admin, &mut checker, "trust-new", |status| {
        status.gate_holds
    })
    .await;
    checker.check("trust-new acknowledged").await;

    let sign_new = advance(&mut admin).await;
    assert_eq!(sign_new.phase, "sign-new");
    checker.check("sign-new published").await;
    let acked = drive(&mut admin, &mut checker, "sign-new", |status| {
        status.clusters.iter().all(|ack| ack.acknowledged)
    })
    .await;
    for ack in &acked.clusters {
        assert_eq!(ack.chain_root_serial, sign_new.new_root_serial, "{ack:?}");
    }
    checker.check("sign-new acknowledged (grace)").await;
    drive(&mut admin, &mut checker, "sign-new grace", |status| {
        status.gate_holds
    })
    .await;
    checker.check("sign-new grace over").await;

    let retire = advance(&mut admin).await;
    assert_eq!(retire.phase, "retire-old");
    checker.check("retire-old published").await;
    drive(&mut admin, &mut checker, "retire-old", |status| {
        status.gate_holds
    })
    .await;
    checker.check("retire-old acknowledged").await;
    let stable = advance(&mut admin).await;
    assert_eq!(
        (stable.phase.as_str(), stable.outcome.as_str()),
        ("stable", "completed")
    );
    for target in &checker.targets {
        let secret = read_cacerts(
            target.cluster,
            target.namespace,
            &work.path().join("final").join(target.name),
        )
        .await;
        let roots = Certificate::parse_pem_chain(&data(&secret, "root-cert.pem").unwrap()).unwrap();
        assert_eq!(
            roots.len(),
            1,
            "{} still trusts more than the new root",
            target.name
        );
        assert_eq!(roots[0].serial_hex().unwrap(), sign_new.new_root_serial);
    }
    checker.check("stable").await;

    let summary = mesh.summary().await;
    assert!(
        summary.failures.is_empty(),
        "{} failed checks:\n{}",
        summary.failures.len(),
        summary.failures.join("\n")
    );
    println!(
        "[{:.1}s] rotation complete over {total} clusters: {} check rounds on the real clusters ({} Go x509 verifications of Istio-signed workloads, {} real root-cert.pem transitions within Istio's rule), {} pairwise workload checks in all, 0 failures",
        started.elapsed().as_secs_f64(),
        checker.rounds,
        checker.istio_checks,
        checker.transitions,
        summary.checks + checker.istio_checks
    );
    for agent in simulated {
        agent.stop();
    }
    for (_, agent) in agents {
        agent.stop();
    }
}
