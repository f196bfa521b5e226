//! `trustplane demo`: the whole flow in one process on the embedded store.
//! A server on 127.0.0.1, two clusters, two agents with directory sinks,
//! then the proof: a workload certificate signed by each cluster's
//! intermediate verifies under the *other* cluster's `root-cert.pem`, and
//! one from an unrelated root does not.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, bail};

use super::cacerts::read_cacerts_dir;
use super::client::{AdminConnection, status_error};
use super::options::{KekOption, MissingKek, PolicyOption};
use super::output;
use super::signal::shutdown_signal;
use crate::agent::{self, AgentConfig};
use crate::ca::{self, Certificate, KeyAlgorithm, PrivateKey, system_time_to_unix};
use crate::clock::SystemClock;
use crate::proto;
use crate::proto::admin_service_client::AdminServiceClient;
use crate::server::{self, Authority, DataDir, InitOptions};
use crate::sink::{ClusterSink, DirectorySink};
use crate::store::{RedbStore, Store as _};

/// `demo` flags.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Working directory [default: a new temporary directory, removed at exit].
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Trust domain of the demo mesh.
    #[arg(long, default_value = "cluster.local")]
    pub trust_domain: String,
    /// Keep the server and agents running until Ctrl-C.
    #[arg(long)]
    pub keep_running: bool,
    /// How long to wait for the agents.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// `--policy`.
    #[command(flatten)]
    pub policy: PolicyOption,
    /// `--kek-file` and the KEK lookup order (<data-dir> is <dir>/server).
    #[command(flatten)]
    pub kek: KekOption,
}

const CLUSTERS: [&str; 2] = ["east", "west"];

struct Step {
    number: usize,
    total: usize,
    started: Instant,
}

impl Step {
    fn new(total: usize) -> Self {
        Step {
            number: 0,
            total,
            started: Instant::now(),
        }
    }
    fn next(&mut self, what: &str) {
        self.number += 1;
        println!(
            "[{}/{}] {what} ({:.1}s)",
            self.number,
            self.total,
            self.started.elapsed().as_secs_f64()
        );
    }
}

/// One cross-cluster check result.
struct CrossCheck {
    signer: String,
    verifier: String,
    spiffe_id: String,
    outcome: Result<(), String>,
    expected_ok: bool,
}

/// Signs a workload certificate with the intermediate in `signer_dir` and
/// verifies it under the roots in `verifier_dir`'s root-cert.pem.
pub fn cross_verify(
    signer_dir: &Path,
    verifier_dir: &Path,
    spiffe_id: &str,
    now: SystemTime,
) -> anyhow::Result<Result<(), String>> {
    let signer = read_cacerts_dir(signer_dir)?;
    let verifier = read_cacerts_dir(verifier_dir)?;
    let key_pem = signer.ca_key.context("ca-key.pem missing")?;
    let key = PrivateKey::from_pem(&key_pem)?;
    let chain =
        Certificate::parse_pem_chain(&signer.cert_chain.context("cert-chain.pem missing")?)?;
    let roots =
        Certificate::parse_pem_chain(&verifier.root_cert.context("root-cert.pem missing")?)?;
    verify_workload(&chain, &key, &roots, spiffe_id, now)
}

fn verify_workload(
    chain: &[Certificate],
    key: &PrivateKey,
    roots: &[Certificate],
    spiffe_id: &str,
    now: SystemTime,
) -> anyhow::Result<Result<(), String>> {
    Ok(ca::probe_workload(chain, key, roots, spiffe_id, now).map_err(|error| error.to_string()))
}

/// Runs the demo.
pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let mut step = Step::new(6);
    let temporary;
    let work_dir = match &args.dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            dir.clone()
        }
        None => {
            temporary = tempdir()?;
            temporary.path().to_path_buf()
        }
    };
    let data_dir = DataDir::new(work_dir.join("server"));
    crate::files::create_private_dir(&data_dir.path)?;

    step.next(&format!(
        "creating the mesh root for {} in {}",
        args.trust_domain,
        data_dir.path.display()
    ));
    let store = Arc::new(RedbStore::open(&data_dir.store_path())?);
    let (kek, _) = args.kek.load(&data_dir, MissingKek::Create)?;
    let policy = args.policy.load()?;
    if store
        .get(
            crate::store::Table::Meta,
            crate::store::records::CA_SETTINGS_KEY,
        )?
        .is_some()
    {
        println!(
            "      reusing the existing root in {}",
            data_dir.path.display()
        );
    } else {
        server::initialize(
            store.as_ref(),
            &kek,
            &data_dir,
            &InitOptions {
                trust_domain: args.trust_domain.clone(),
                organisation: None,
                key_algorithm: KeyAlgorithm::EcdsaP256,
                root_validity: Duration::from_secs(10 * 365 * 24 * 3600),
                import: None,
                policy: policy.clone(),
                vault_root: None,
            },
            SystemClock.now(),
        )?;
    }
    let authority = Arc::new(Authority::open(store, &kek, policy, Arc::new(SystemClock))?);

    step.next("starting the server on 127.0.0.1 (TLS, mTLS for agents)");
    let running = server::start(
        authority.clone(),
        &server::ServerConfig {
            listen: "127.0.0.1:0".parse()?,
            dns_names: Vec::new(),
            ip_addresses: Vec::new(),
            limits: server::Limits::default(),
            leader_lease: crate::server::leader::DEFAULT_LEASE,
        },
    )
    .await?;
    println!("      server {}", running.url());
    let connection = AdminConnection::new(running.url(), data_dir.path.clone());
    let mut admin = AdminServiceClient::new(connection.connect().await?);

    step.next("enrolling clusters east and west (one-time join tokens)");
    let control_plane_ca = std::fs::read_to_string(data_dir.control_plane_ca_path())?;
    let mut agents = Vec::new();
    for cluster in CLUSTERS {
        let cluster_dir = work_dir.join(cluster);
        let identity_dir = cluster_dir.join("identity");
        let has_identity = identity_dir.join("client.pem").exists();
        let join_token = if has_identity {
            None
        } else {
            let response = admin
                .add_cluster(proto::AddClusterRequest {
                    name: cluster.to_string(),
                    token_ttl_seconds: 600,
                    ..Default::default()
                })
                .await
                .map_err(status_error)?
                .into_inner();
            Some(zeroize::Zeroizing::new(response.join_token))
        };
        let sink: Arc<dyn ClusterSink> = Arc::new(DirectorySink::new(cluster_dir.join("cacerts")));
        println!("      agent {cluster}: {}", sink.describe());
        let handle = agent::spawn(
            AgentConfig {
                server: running.url(),
                server_ca_pem: Some(control_plane_ca.clone()),
                join_token,
                identity_dir,
                key_algorithm: KeyAlgorithm::EcdsaP256,
                max_backoff: Duration::from_secs(5),
                ..AgentConfig::new(running.url(), PathBuf::new())
            },
            sink,
        );
        agents.push((cluster, handle));
    }

    step.next("waiting for both agents to write cacerts and report to the server");
    let bundle_version = authority.publication.current().bundle.version();
    let deadline = Instant::now() + args.timeout;
    let clusters = loop {
        let listed = admin
            .list_clusters(proto::ListClustersRequest {})
            .await
            .map_err(status_error)?
            .into_inner();
        let ready = CLUSTERS.iter().all(|name| {
            listed.clusters.iter().any(|cluster| {
                cluster.name == *name
                    && cluster.applied_bundle_version == bundle_version
                    && !cluster.intermediate_serial.is_empty()
                    && cluster.last_error.is_empty()
            })
        });
        if ready {
            break listed.clusters;
        }
        if Instant::now() > deadline {
            for (name, handle) in &agents {
                let status = handle.status.borrow().clone();
                println!("      agent {name}: {status:?}");
            }
            bail!(
                "the agents did not report within {}",
                humantime::format_duration(args.timeout)
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let now = system_time_to_unix(SystemClock.now());
    let mut table = output::table(&[
        "CLUSTER",
        "BUNDLE",
        "INTERMEDIATE SERIAL",
        "EXPIRES",
        "REPORTED",
    ]);
    for cluster in &clusters {
        table.add_row(vec![
            cluster.name.clone(),
            format!("v{}", cluster.applied_bundle_version),
            cluster.intermediate_serial.clone(),
            output::time(cluster.intermediate_not_after_unix),
            output::age(cluster.last_report_unix, now),
        ]);
    }
    println!("{table}");

    step.next("checking each cacerts directory the way istiod loads it");
    let now = SystemClock.now();
    for cluster in CLUSTERS {
        let dir = work_dir.join(cluster).join("cacerts");
        let check = ca::check_cacerts(
            &read_cacerts_dir(&dir)?,
            now,
            Duration::from_secs(30 * 24 * 3600),
        );
        if !check.passed() {
            bail!("{}: {:?}", dir.display(), check.findings);
        }
        println!(
            "      {cluster}: {} checks passed ({})",
            check.findings.len(),
            dir.display()
        );
    }

    step.next("proving cross-cluster trust with workload certificates");
    let spiffe_id = format!("spiffe://{}/ns/default/sa/demo", args.trust_domain);
    let mut checks = Vec::new();
    for (signer, verifier) in [("east", "west"), ("west", "east")] {
        let outcome = cross_verify(
            &work_dir.join(signer).join("cacerts"),
            &work_dir.join(verifier).join("cacerts"),
            &spiffe_id,
            now,
        )?;
        checks.push(CrossCheck {
            signer: signer.to_string(),
            verifier: verifier.to_string(),
            spiffe_id: spiffe_id.clone(),
            outcome,
            expected_ok: true,
        });
    }
    // Control: a certificate from an unrelated root must not verify.
    let (foreign_root, foreign_key) = ca::create_root(
        &ca::RootRequest {
            trust_domain: args.trust_domain.clone(),
            organisation: "unrelated".into(),
            key_algorithm: KeyAlgorithm::EcdsaP256,
            validity: Duration::from_secs(24 * 3600),
        },
        now,
    )?;
    let east_roots = Certificate::parse_pem_chain(
        &read_cacerts_dir(&work_dir.join("east").join("cacerts"))?
            .root_cert
            .context("east root-cert.pem missing")?,
    )?;
    checks.push(CrossCheck {
        signer: "unrelated root".into(),
        verifier: "east".into(),
        spiffe_id: spiffe_id.clone(),
        outcome: verify_workload(&[foreign_root], &foreign_key, &east_roots, &spiffe_id, now)?,
        expected_ok: false,
    });
    let mut table = output::table(&[
        "WORKLOAD SIGNED BY",
        "VERIFIED WITH ROOTS OF",
        "SPIFFE ID",
        "RESULT",
    ]);
    let mut failures = 0;
    for check in &checks {
        let result = match (&check.outcome, check.expected_ok) {
            (Ok(()), true) => "trusted ✓".to_string(),
            (Err(_), false) => "rejected ✓ (as it must be)".to_string(),
            (Ok(()), false) => {
                failures += 1;
                "TRUSTED ✗ (must be rejected)".to_string()
            }
            (Err(error), true) => {
                failures += 1;
                format!("REJECTED ✗ {error}")
            }
        };
        table.add_row(vec![
            check.signer.clone(),
            check.verifier.clone(),
            check.spiffe_id.clone(),
            result,
        ]);
    }
    println!("{table}");

    if failures > 0 {
        bail!("{failures} cross-cluster check(s) failed");
    }
    println!(
        "\nOK: east and west each hold their own intermediate (key generated locally), and trust each other's workloads through the shared bundle v{bundle_version}."
    );
    if args.keep_running {
        println!(
            "\nStill running (Ctrl-C to stop):\n  server      {}\n  admin       trustplane status --server {} --data-dir {}\n  cacerts     {}/{{east,west}}/cacerts",
            running.url(),
            running.url(),
            data_dir.path.display(),
            work_dir.display()
        );
        shutdown_signal().await;
    }
    for (_, handle) in &agents {
        handle.stop();
    }
    for (_, handle) in agents {
        let _ = tokio::time::timeout(Duration::from_secs(5), handle.task).await;
    }
    running.shutdown().await?;
    Ok(())
}

fn tempdir() -> anyhow::Result<TemporaryDirectory> {
    let base = crate::config::temporary_directory();
    let mut random = [0u8; 8];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut random)
        .map_err(|_| anyhow::anyhow!("system random generator failed"))?;
    let path = base.join(format!("trustplane-demo-{}", hex::encode(random)));
    std::fs::create_dir(&path).with_context(|| format!("cannot create {}", path.display()))?;
    Ok(TemporaryDirectory { path })
}

/// A directory removed when dropped.
struct TemporaryDirectory {
    path: PathBuf,
}

impl TemporaryDirectory {
    fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TemporaryDirectory {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}
