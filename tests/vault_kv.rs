//! Several `trustplane server` processes (the real binary) on one real
//! OpenBao with `--store vault-kv`: they serve as one service (no serial
//! twice, no lost record, watchers on any server see every version, admin
//! steps run on any server), exactly one of them advances rotations (when
//! that one is SIGKILLed, another takes over within the lease and the
//! rotation completes, with the mesh's cross-cluster pair checks), servers
//! SIGKILLed while clients sign lose nothing, a sealed OpenBao fails a sign
//! request cleanly, and the store needs only the documented policy.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::binary::{BINARY, LoggedServer, spawn_logged_server};
use common::openbao::OpenBao;
use tonic::transport::Channel;
use trustplane::ca::{self, Certificate, KeyAlgorithm, PrivateKey};
use trustplane::cli::connect;
use trustplane::proto;
use trustplane::proto::admin_service_client::AdminServiceClient;
use trustplane::proto::intermediate_service_client::IntermediateServiceClient;
use trustplane::proto::trust_bundle_service_client::TrustBundleServiceClient;
use trustplane::server::DataDir;
use trustplane::store::records::{IssuedKind, IssuedRecord, list_json};
use trustplane::store::{LeaseRecord, Store, Table, VaultKvStore};
use trustplane::vault::{Secret, VaultConfig};

/// The lease the servers run with: a killed holder is replaced within it.
const LEASE: &str = "3s";

/// One OpenBao, an initialised trustplane in it, and the directory `init`
/// wrote (the KEK, the admin credential and the control-plane CA file).
struct Deployment {
    bao: OpenBao,
    dir: tempfile::TempDir,
}

/// A running server process.
type Server = LoggedServer;

impl Deployment {
    fn new() -> Deployment {
        Deployment::on(OpenBao::dev(), tempfile::tempdir().unwrap())
    }

    /// On `bao` (which has a KV v2 mount `secret/`), with files in `dir`.
    fn on(bao: OpenBao, dir: tempfile::TempDir) -> Deployment {
        Deployment::init(bao, dir, &[])
    }

    /// Both halves in OpenBao: the mesh root generated inside its PKI
    /// mount `pki/` (`--signer vault`) and the state in KV.
    fn with_vault_root() -> Deployment {
        let bao = OpenBao::dev();
        bao.bao(&["secrets", "enable", "-max-lease-ttl=87600h", "pki"]);
        Deployment::init(bao, tempfile::tempdir().unwrap(), &["--signer", "vault"])
    }

    fn init(bao: OpenBao, dir: tempfile::TempDir, extra: &[&str]) -> Deployment {
        let deployment = Deployment { bao, dir };
        let data = deployment.data();
        let mut args = vec![
            "init",
            "--trust-domain",
            "cluster.local",
            "--store",
            "vault-kv",
            "--data-dir",
            data.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let init = deployment.trustplane(&args);
        assert!(init.status.success(), "init: {}", text(&init));
        assert!(
            text(&init).contains("Vault KV v2 secret/data/trustplane/"),
            "{}",
            text(&init)
        );
        // The state is in Vault, not in the data directory.
        assert!(!DataDir::new(deployment.data()).store_path().exists());
        deployment
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("init")
    }

    fn kek(&self) -> PathBuf {
        self.data().join("kek")
    }

    fn command(&self) -> Command {
        let mut command = Command::new(BINARY);
        command
            .env_remove("TRUSTPLANE_KEK")
            .env("VAULT_ADDR", &self.bao.addr)
            .env("VAULT_TOKEN", &self.bao.token);
        command
    }

    fn trustplane(&self, args: &[&str]) -> Output {
        self.command().args(args).output().unwrap()
    }

    /// Starts server `index` with its own (nearly empty) data directory
    /// and the shared KEK.
    fn start(&self, index: usize) -> Server {
        self.start_on(index, "127.0.0.1:0")
    }

    /// Starts server `index` listening on `listen`.
    fn start_on(&self, index: usize, listen: &str) -> Server {
        let own = self.dir.path().join(format!("server-{index}"));
        std::fs::create_dir_all(&own).unwrap();
        let log = self.dir.path().join(format!("server-{index}.log"));
        let mut server = self.command();
        server
            .args([
                "server",
                "--listen",
                listen,
                "--store",
                "vault-kv",
                "--leader-lease",
                LEASE,
                "--data-dir",
            ])
            .arg(&own)
            .arg("--kek-file")
            .arg(self.kek())
            .env("RUST_LOG", "info");
        spawn_logged_server(server, &log)
    }

    /// The store as a server sees it.
    fn store(&self) -> VaultKvStore {
        VaultKvStore::open(VaultConfig {
            addr: Some(self.bao.addr.clone()),
            token: Some(self.bao.token.parse::<Secret>().unwrap()),
            pki_mount: "pki".into(),
            kv_mount: "secret".into(),
            kv_prefix: "trustplane".into(),
            ..VaultConfig::default()
        })
        .unwrap()
    }

    fn control_plane_ca(&self) -> String {
        std::fs::read_to_string(DataDir::new(self.data()).control_plane_ca_path()).unwrap()
    }

    async fn admin(&self, server: &Server) -> AdminServiceClient<Channel> {
        let data = DataDir::new(self.data());
        let certificate = std::fs::read_to_string(data.admin_cert_path()).unwrap();
        let key = std::fs::read_to_string(data.admin_key_path()).unwrap();
        AdminServiceClient::new(
            connect(
                &server.url,
                &self.control_plane_ca(),
                Some((&certificate, &key)),
            )
            .await
            .unwrap(),
        )
    }

    /// The bundle `server` serves now (as the admin).
    async fn bundle(&self, server: &Server) -> proto::Bundle {
        let data = DataDir::new(self.data());
        let certificate = std::fs::read_to_string(data.admin_cert_path()).unwrap();
        let key = std::fs::read_to_string(data.admin_key_path()).unwrap();
        let channel = connect(
            &server.url,
            &self.control_plane_ca(),
            Some((&certificate, &key)),
        )
        .await
        .unwrap();
        TrustBundleServiceClient::new(channel)
            .get_bundle(proto::GetBundleRequest::default())
            .await
            .unwrap()
            .into_inner()
    }

    /// The pid in the lease's holder id (`<pid>-<random>`), if a lease
    /// is held now.
    fn leader_pid(&self) -> Option<u32> {
        let (status, answer) = self
            .bao
            .http("GET", "secret/data/trustplane/leases/kleader", None);
        if status == 404 {
            return None;
        }
        assert_eq!(status, 200, "{answer}");
        let record: LeaseRecord = serde_json::from_value(answer["data"]["data"].clone()).unwrap();
        record.holder.split('-').next()?.parse().ok()
    }
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// What clients received: serial → (cluster, kind).
type Received = BTreeMap<String, (String, IssuedKind)>;

fn receive(received: &mut Received, certificate_pem: &str, cluster: &str, kind: IssuedKind) {
    let serial = Certificate::from_pem(certificate_pem)
        .unwrap()
        .serial_hex()
        .unwrap();
    let previous = received.insert(serial.clone(), (cluster.to_string(), kind));
    assert!(previous.is_none(), "serial {serial} handed out twice");
}

/// Registers `name` through `admin_server`, enrolls it through
/// `enroll_server` and signs `rounds` intermediates through the servers in
/// turn; returns what it received.
async fn cluster_client(
    deployment: &Deployment,
    servers: &[&Server],
    name: String,
    rounds: usize,
) -> (Received, Option<proto::SignIntermediateResponse>) {
    let mut received = Received::new();
    let mut last = None;
    let token = deployment
        .admin(servers[0])
        .await
        .add_cluster(proto::AddClusterRequest {
            name: name.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .join_token;
    let enroll_at = servers[1 % servers.len()];
    let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let csr = ca::create_csr(&key, "agent").unwrap();
    let anonymous = connect(&enroll_at.url, &deployment.control_plane_ca(), None)
        .await
        .unwrap();
    let enrolled = IntermediateServiceClient::new(anonymous)
        .enroll(proto::EnrollRequest {
            cluster: name.clone(),
            join_token: token,
            client_csr_pem: csr,
        })
        .await
        .unwrap()
        .into_inner();
    receive(
        &mut received,
        &enrolled.client_cert_pem,
        &name,
        IssuedKind::ControlPlaneClient,
    );
    let key_pem = key.to_pkcs8_pem().to_string();
    for round in 0..rounds {
        let server = servers[round % servers.len()];
        let channel = connect(
            &server.url,
            &deployment.control_plane_ca(),
            Some((&enrolled.client_cert_pem, &key_pem)),
        )
        .await
        .unwrap();
        let intermediate = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
        let csr = ca::create_csr(&intermediate, &format!("{name} intermediate")).unwrap();
        let signed = IntermediateServiceClient::new(channel)
            .sign_intermediate(proto::SignIntermediateRequest {
                csr: csr.into_bytes(),
                cluster: name.clone(),
            })
            .await
            .unwrap_or_else(|status| panic!("{name} round {round} at {}: {status}", server.url))
            .into_inner();
        receive(
            &mut received,
            &signed.certificate_pem,
            &name,
            IssuedKind::Intermediate,
        );
        last = Some(signed);
    }
    (received, last)
}

/// Runs `clients` cluster clients at once against `servers`, then checks
/// every certificate any client received against the store's records.
async fn race(deployment: &Deployment, servers: &[&Server], prefix: &str, clients: usize) {
    let runs = (0..clients).map(|index| {
        // Each client starts on another server.
        let mut order: Vec<&Server> = servers.to_vec();
        order.rotate_left(index % servers.len());
        let name = format!("{prefix}-{index}");
        async move { cluster_client(deployment, &order, name, 4).await.0 }
    });
    let results = futures_join_all(runs).await;
    let mut received = Received::new();
    for result in results {
        for (serial, issued) in result {
            assert!(
                received.insert(serial.clone(), issued).is_none(),
                "serial {serial} handed out to two clients"
            );
        }
    }
    let store = deployment.store();
    let records: BTreeMap<String, IssuedRecord> =
        list_json::<IssuedRecord>(&store, Table::Certificates)
            .unwrap()
            .into_iter()
            .map(|(key, record, _)| (key, record))
            .collect();
    for (serial, (cluster, kind)) in &received {
        let record = records
            .get(serial)
            .unwrap_or_else(|| panic!("serial {serial} of {cluster} ({kind:?}) has no record"));
        assert_eq!(
            record.cluster.as_deref(),
            Some(cluster.as_str()),
            "{serial}"
        );
        assert_eq!(&record.kind, kind, "{serial}");
    }
    assert_eq!(received.len(), clients * 5);
}

/// `join_all` without another dependency: every future on its own task.
async fn futures_join_all<F>(futures: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future,
{
    // The futures borrow the deployment, so they run on this task,
    // interleaved by a local set of polls.
    let mut pinned: Vec<std::pin::Pin<Box<F>>> = futures.map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = pinned.iter().map(|_| None).collect();
    std::future::poll_fn(|context| {
        let mut pending = false;
        for (index, future) in pinned.iter_mut().enumerate() {
            if outputs[index].is_none() {
                match future.as_mut().poll(context) {
                    std::task::Poll::Ready(output) => outputs[index] = Some(output),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    outputs.into_iter().map(Option::unwrap).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_then_three_servers_on_one_openbao_race_enrollments_and_issuances_as_one() {
    common::install_crypto();
    let deployment = Deployment::new();
    let first = deployment.start(1);
    let second = deployment.start(2);
    race(&deployment, &[&first, &second], "two", 6).await;
    let third = deployment.start(3);
    race(&deployment, &[&first, &second, &third], "three", 9).await;
    // One lease holder among the three.
    let leader = deployment.leader_pid().expect("a server holds the lease");
    let pids: HashSet<u32> = [&first, &second, &third]
        .iter()
        .map(|server| server.process.0.id())
        .collect();
    assert!(
        pids.contains(&leader),
        "lease holder {leader} is none of {pids:?}"
    );
    // The audit chain the three wrote together is one linear, authentic chain.
    let verified = deployment.trustplane(&[
        "audit",
        "verify",
        "--store",
        "vault-kv",
        "--data-dir",
        deployment.data().to_str().unwrap(),
    ]);
    assert!(
        verified.status.success(),
        "audit verify: {}",
        text(&verified)
    );
}

/// The PEM of OpenBao's issuer `name` in `pki/`.
fn openbao_issuer(bao: &OpenBao, name: &str) -> Certificate {
    let (status, answer) = bao.http("GET", &format!("pki/issuer/{name}/json"), None);
    assert_eq!(status, 200, "{answer}");
    Certificate::from_pem(answer["data"]["certificate"].as_str().unwrap()).unwrap()
}

/// The roots of a bundle answer.
fn roots_of(bundle: &proto::Bundle) -> Vec<Certificate> {
    pem::parse_many(&bundle.root_cert_pem)
        .unwrap()
        .into_iter()
        .map(|block| Certificate::from_der(block.contents().to_vec()).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_root_in_vault_pki_and_the_state_in_vault_kv_serve_as_one_from_two_servers_and_adopt_root_b()
 {
    common::install_crypto();
    let deployment = Deployment::with_vault_root();
    let first = deployment.start(1);
    let second = deployment.start(2);
    // Enrollments and issuances through both, every one recorded once.
    race(&deployment, &[&first, &second], "pki", 4).await;
    // Each intermediate is signed by OpenBao's issuer: its chain ends at
    // that issuer, which both servers publish.
    let root_a = openbao_issuer(&deployment.bao, "trustplane-root");
    let (_, signed) = cluster_client(&deployment, &[&second, &first], "pki-x".into(), 2).await;
    let signed = signed.unwrap();
    let intermediate = Certificate::from_pem(&signed.certificate_pem).unwrap();
    use trustplane::clock::SystemClock;
    ca::verify_issued(&intermediate, &root_a, SystemClock.now()).unwrap();
    for server in [&first, &second] {
        assert_eq!(
            roots_of(&deployment.bundle(server).await),
            vec![root_a.clone()]
        );
    }
    // No root key anywhere trustplane keeps things: the root records name
    // their issuer and no sealed key.
    let store = deployment.store();
    let root_records = || -> Vec<serde_json::Value> {
        store
            .list(Table::Roots)
            .unwrap()
            .into_iter()
            .map(|(_, stored)| serde_json::from_slice(&stored.value).unwrap())
            .collect()
    };
    let roots = root_records();
    assert_eq!(roots.len(), 1);
    for record in &roots {
        assert!(record["key_secret"].is_null(), "{record}");
        assert!(record["vault_issuer"]["issuer_id"].is_string(), "{record}");
    }
    // A rotation started through the first server adopting root B, an
    // issuer the operator made in OpenBao beforehand (nothing new is made
    // there): the second server publishes both of OpenBao's roots.
    deployment.bao.bao(&[
        "write",
        "pki/root/generate/internal",
        "common_name=cluster.local root B",
        "issuer_name=root-b",
        "key_type=ec",
        "key_bits=256",
        "ttl=87000h",
    ]);
    let issuers = || {
        let (status, answer) = deployment.bao.http("LIST", "pki/issuers", None);
        assert_eq!(status, 200, "{answer}");
        answer["data"]["keys"].as_array().unwrap().len()
    };
    assert_eq!(issuers(), 2);
    let started = deployment
        .admin(&first)
        .await
        .rotate_start(proto::RotateStartRequest {
            options: Some(proto::RotationOptions {
                vault_issuer: "root-b".into(),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(started.phase, "trust-new");
    let root_b = openbao_issuer(&deployment.bao, "root-b");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let roots = roots_of(&deployment.bundle(&second).await);
        if roots.len() == 2 {
            assert_eq!(roots, vec![root_a.clone(), root_b.clone()]);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the second server still serves {roots:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(issuers(), 2, "root B was adopted, not made again");
    let roots = root_records();
    assert_eq!(roots.len(), 2);
    assert!(roots.iter().all(|record| record["key_secret"].is_null()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_watcher_on_one_server_sees_the_version_another_server_published_and_admin_steps_run_on_any()
 {
    common::install_crypto();
    let deployment = Deployment::new();
    // A second `init` on the same prefix is refused, changing nothing.
    let again = deployment.trustplane(&[
        "init",
        "--store",
        "vault-kv",
        "--data-dir",
        deployment.dir.path().join("again").to_str().unwrap(),
    ]);
    assert!(!again.status.success());
    assert!(
        text(&again)
            .contains("already holds an initialised trustplane; use another --vault-kv-prefix"),
        "{}",
        text(&again)
    );
    let first = deployment.start(1);
    let second = deployment.start(2);
    let data = DataDir::new(deployment.data());
    let certificate = std::fs::read_to_string(data.admin_cert_path()).unwrap();
    let key = std::fs::read_to_string(data.admin_key_path()).unwrap();
    let channel = connect(
        &second.url,
        &deployment.control_plane_ca(),
        Some((&certificate, &key)),
    )
    .await
    .unwrap();
    let mut watch = TrustBundleServiceClient::new(channel)
        .watch_bundle(proto::WatchBundleRequest::default())
        .await
        .unwrap()
        .into_inner();
    let initial = watch.message().await.unwrap().unwrap();
    assert_eq!(initial.version, 1);
    // A rotation started through the first server publishes version 2.
    deployment
        .admin(&first)
        .await
        .rotate_start(proto::RotateStartRequest::default())
        .await
        .unwrap();
    let next = tokio::time::timeout(Duration::from_secs(10), watch.message())
        .await
        .expect("the second server's watcher saw no new version within 10 s")
        .unwrap()
        .unwrap();
    assert_eq!(next.version, 2);
    assert_eq!(next.root_cert_pem.matches("BEGIN CERTIFICATE").count(), 2);
    // An admin step through the other server, at once: it catches up with
    // the store first, so it acts on version 2 and publishes version 3.
    let aborted = deployment
        .admin(&second)
        .await
        .rotate_abort(proto::RotateAbortRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(aborted.phase, "stable");
    let back = tokio::time::timeout(Duration::from_secs(10), watch.message())
        .await
        .expect("no version 3 within 10 s")
        .unwrap()
        .unwrap();
    assert_eq!(back.version, 3);
    assert_eq!(back.root_cert_pem, initial.root_cert_pem);
    // Started through the first server and at once aborted through the
    // second, before its once-a-second refresh: the step catches up first.
    deployment
        .admin(&first)
        .await
        .rotate_start(proto::RotateStartRequest::default())
        .await
        .unwrap();
    let aborted = deployment
        .admin(&second)
        .await
        .rotate_abort(proto::RotateAbortRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(aborted.phase, "stable");
    assert_eq!(aborted.bundle.unwrap().version, 5);
    // The first server serves it after its next refresh (once a second).
    let deadline = Instant::now() + Duration::from_secs(5);
    while deployment.bundle(&first).await.version != 5 {
        assert!(
            Instant::now() < deadline,
            "the first server still serves an older version"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The rotation's grace, and the simulated workload certificate lifetime.
const GRACE_SECONDS: u64 = 6;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_lease_holder_killed_during_a_rotation_is_replaced_and_the_rotation_completes() {
    use common::mesh::Mesh;
    use trustplane::agent::{self, AgentConfig};
    use trustplane::clock::SystemClock;
    use trustplane::sink::ClusterSink;

    common::install_crypto();
    let deployment = Deployment::new();
    let servers = [deployment.start(1), deployment.start(2)];
    let old_root = deployment.bundle(&servers[0]).await.root_cert_pem;
    let leader = wait_for(Duration::from_secs(20), || deployment.leader_pid())
        .expect("no server took the lease");
    let (killed, survivor): (Vec<Server>, Vec<Server>) = servers
        .into_iter()
        .partition(|server| server.process.0.id() == leader);
    let (mut leader, survivor) = (
        killed.into_iter().next().unwrap(),
        survivor.into_iter().next().unwrap(),
    );

    // Clusters with agents on the follower; every ordered pair's workloads
    // are checked on every cacerts write (tests/common/mesh.rs).
    let mesh = Mesh::new(Duration::from_secs(GRACE_SECONDS), SystemClock::shared());
    let mut agents = Vec::new();
    let mut admin = deployment.admin(&survivor).await;
    for index in 0..3 {
        let name = format!("k{index}");
        let token = admin
            .add_cluster(proto::AddClusterRequest {
                name: name.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .join_token;
        let sink: Arc<dyn ClusterSink> = mesh.sink(&name);
        agents.push(agent::spawn(
            AgentConfig {
                server_ca_pem: Some(deployment.control_plane_ca()),
                join_token: Some(zeroize::Zeroizing::new(token)),
                key_algorithm: KeyAlgorithm::EcdsaP256,
                max_backoff: Duration::from_millis(500),
                ..AgentConfig::new(survivor.url.clone(), deployment.dir.path().join(&name))
            },
            sink,
        ));
    }
    mesh.check_all("stable").await;

    // Started through the follower; the leader advances it (--auto).
    let status = |server: &Server| -> serde_json::Value {
        let output = deployment.trustplane(&[
            "rotate",
            "status",
            "-o",
            "json",
            "--server",
            &server.url,
            "--data-dir",
            deployment.data().to_str().unwrap(),
        ]);
        assert!(output.status.success(), "rotate status: {}", text(&output));
        serde_json::from_slice(&output.stdout).unwrap()
    };
    let started = deployment.trustplane(&[
        "rotate",
        "start",
        "--auto",
        "--grace",
        &format!("{GRACE_SECONDS}s"),
        "--server",
        &survivor.url,
        "--data-dir",
        deployment.data().to_str().unwrap(),
    ]);
    assert!(started.status.success(), "rotate start: {}", text(&started));
    // SIGKILL the lease holder once it has moved the rotation to sign-new
    // (every agent acknowledged trust-new), while sign-new's grace runs.
    wait_for(Duration::from_secs(60), || {
        (status(&survivor)["phase"] == "sign-new").then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "the rotation never reached sign-new: {}; leader log:\n{}",
            status(&survivor),
            std::fs::read_to_string(&leader.log).unwrap_or_default()
        )
    });
    let killed_at = Instant::now();
    leader.process.0.kill().unwrap();
    leader.process.0.wait().unwrap();
    mesh.check_all("sign-new, leader killed").await;
    // The survivor takes the lease within it (plus a tick) ...
    let new_leader = wait_for(Duration::from_secs(10), || {
        deployment
            .leader_pid()
            .filter(|pid| *pid == survivor.process.0.id())
    });
    assert!(
        new_leader.is_some(),
        "the survivor did not take the lease; its log:\n{}",
        std::fs::read_to_string(&survivor.log).unwrap_or_default()
    );
    let lease = humantime::parse_duration(LEASE).unwrap();
    assert!(
        killed_at.elapsed() < lease + Duration::from_secs(3),
        "the lease was taken over after {:?}",
        killed_at.elapsed()
    );
    // ... and finishes the rotation by itself (--auto).
    let done = wait_for(Duration::from_secs(90), || {
        let json = status(&survivor);
        (json["phase"] == "stable").then_some(json)
    })
    .unwrap_or_else(|| {
        panic!(
            "the rotation did not complete after the takeover: {}; survivor log:\n{}",
            status(&survivor),
            std::fs::read_to_string(&survivor.log).unwrap_or_default()
        )
    });
    assert_eq!(done["outcome"], "completed", "{done}");
    mesh.check_all("completed").await;
    let summary = mesh.assert_no_failures().await;
    assert!(summary.checks > 0);
    // Every cluster was re-issued from the new root at least once.
    assert!(summary.intermediates >= 6, "{summary:?}");
    for agent in agents {
        agent.stop();
    }
    // The survivor signs with the new root, now the bundle's only root.
    let (received, signed) = cluster_client(&deployment, &[&survivor], "after".into(), 1).await;
    assert_eq!(received.len(), 2);
    let signed = signed.unwrap();
    let bundle = signed.bundle.unwrap();
    assert_eq!(bundle.root_cert_pem.matches("BEGIN CERTIFICATE").count(), 1);
    assert_ne!(bundle.root_cert_pem, old_root);
    let chain = pem::parse_many(&signed.cert_chain_pem).unwrap();
    let root = pem::parse_many(&bundle.root_cert_pem).unwrap();
    assert_eq!(chain.last().unwrap().contents(), root[0].contents());
    assert_eq!(
        deployment.bundle(&survivor).await.root_cert_pem,
        bundle.root_cert_pem
    );
}

/// Polls `check` every 200 ms until it gives a value or `timeout` passes.
fn wait_for<T>(timeout: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return Some(value);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// An agent's sign request while OpenBao is sealed fails cleanly (gRPC
/// `Unavailable`, nothing recorded; the server's log names the Vault path
/// and what to do) and succeeds once OpenBao is unsealed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sign_request_while_openbao_is_sealed_fails_cleanly_and_works_once_unsealed() {
    common::install_crypto();
    let dir = tempfile::tempdir().unwrap();
    let bao = OpenBao::raft(&dir.path().join("bao"));
    bao.kv2("secret");
    let mut deployment = Deployment::on(bao, dir);
    let server = deployment.start(1);
    let token = deployment
        .admin(&server)
        .await
        .add_cluster(proto::AddClusterRequest {
            name: "west".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .join_token;
    let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let enrolled = IntermediateServiceClient::new(
        connect(&server.url, &deployment.control_plane_ca(), None)
            .await
            .unwrap(),
    )
    .enroll(proto::EnrollRequest {
        cluster: "west".into(),
        join_token: token,
        client_csr_pem: ca::create_csr(&key, "agent").unwrap(),
    })
    .await
    .unwrap()
    .into_inner();
    let identity = (enrolled.client_cert_pem, key.to_pkcs8_pem().to_string());
    let records_before = list_json::<IssuedRecord>(&deployment.store(), Table::Certificates)
        .unwrap()
        .len();
    let control_plane_ca = deployment.control_plane_ca();
    let sign = || async {
        let channel = connect(
            &server.url,
            &control_plane_ca,
            Some((&identity.0, &identity.1)),
        )
        .await
        .unwrap();
        let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
        IntermediateServiceClient::new(channel)
            .sign_intermediate(proto::SignIntermediateRequest {
                csr: ca::create_csr(&key, "west intermediate")
                    .unwrap()
                    .into_bytes(),
                cluster: "west".into(),
            })
            .await
    };
    deployment.bao.seal();
    let refused = sign().await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused}");
    assert!(refused.message().contains("retry"), "{refused}");
    let log = std::fs::read_to_string(&server.log).unwrap();
    assert!(log.contains("secret/data/trustplane/"), "{log}");
    assert!(log.contains("operator unseal"), "{log}");
    deployment.bao.unseal();
    let signed = sign().await.unwrap().into_inner();
    let records = list_json::<IssuedRecord>(&deployment.store(), Table::Certificates).unwrap();
    // Exactly one more record: the certificate issued after the unseal.
    assert_eq!(records.len(), records_before + 1);
    assert!(
        records
            .iter()
            .any(|(serial, _, _)| *serial == signed.serial)
    );
}

/// The lease itself, in process with a test clock: the first server takes
/// it, the second cannot while it runs, the holder renews it once a third
/// has passed, and the second takes it over only once it has expired;
/// the old holder then knows it no longer leads. A refresh on one server
/// picks up what the other published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lease_passes_only_after_it_expires_and_a_server_catches_up_with_the_others_bundle_and_root()
 {
    use trustplane::clock::{Clock as _, TestClock};
    use trustplane::server::leader::Leadership;
    use trustplane::server::{Authority, InitOptions};
    use trustplane::signer::sealed::Kek;

    common::install_crypto();
    let deployment_bao = OpenBao::dev();
    let dir = tempfile::tempdir().unwrap();
    let config = VaultConfig {
        addr: Some(deployment_bao.addr.clone()),
        token: Some(deployment_bao.token.parse::<Secret>().unwrap()),
        pki_mount: "pki".into(),
        kv_mount: "secret".into(),
        kv_prefix: "lease-test".into(),
        ..VaultConfig::default()
    };
    let clock = TestClock::starting_now();
    let kek = Kek::generate().unwrap();
    let policy = trustplane::Policy::builtin_default().unwrap();
    let first_store: Arc<dyn Store> = Arc::new(VaultKvStore::open(config.clone()).unwrap());
    trustplane::server::initialize(
        first_store.as_ref(),
        &kek,
        &DataDir::new(dir.path()),
        &InitOptions {
            trust_domain: "cluster.local".into(),
            organisation: None,
            key_algorithm: KeyAlgorithm::EcdsaP256,
            root_validity: Duration::from_secs(10 * 365 * 24 * 3600),
            import: None,
            vault_root: None,
            policy: policy.clone(),
        },
        clock.now(),
    )
    .unwrap();
    let open = |store: Arc<dyn Store>| {
        let kek = kek.clone();
        let policy = policy.clone();
        let clock = clock.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                Arc::new(Authority::open(store, &kek, policy, clock).unwrap())
            })
            .await
            .unwrap()
        }
    };
    let observer = first_store.clone();
    let first = open(first_store).await;
    let second = open(Arc::new(VaultKvStore::open(config).unwrap())).await;
    let lease = Duration::from_secs(15);
    let first_lease = Arc::new(Leadership::new(first.core().clone(), lease).unwrap());
    let second_lease = Arc::new(Leadership::new(second.core().clone(), lease).unwrap());
    let refresh = |leadership: &Arc<Leadership>| {
        let leadership = leadership.clone();
        async move {
            tokio::task::spawn_blocking(move || leadership.refresh().unwrap())
                .await
                .unwrap()
        }
    };
    let generation = observer.generation().unwrap();
    assert!(refresh(&first_lease).await);
    assert!(!refresh(&second_lease).await);
    // A third of the lease passed: the holder renews (to +6 s + 15 s).
    clock.advance(Duration::from_secs(6));
    assert!(refresh(&first_lease).await);
    clock.advance(Duration::from_secs(10));
    // 16 s after the first take, but only 10 s after the renewal.
    assert!(!refresh(&second_lease).await);
    // The holder stops renewing (killed): 15 s after its renewal the
    // lease passes.
    clock.advance(Duration::from_secs(6));
    assert!(refresh(&second_lease).await);
    assert!(second_lease.is_leading());
    assert!(!refresh(&first_lease).await);
    assert!(!first_lease.is_leading());
    // Taking and renewing the lease is not a change other servers reload for.
    assert_eq!(observer.generation().unwrap(), generation);

    // A bundle version the second server publishes reaches the first's
    // watchers on its next refresh.
    let mut watcher = first.publication.subscribe();
    watcher.borrow_and_update();
    let next = {
        let current = second.publication.current().bundle.clone();
        trustplane::bundle::TrustBundle::new(
            current.trust_domain(),
            current.version() + 1,
            current.roots().to_vec(),
        )
        .unwrap()
    };
    {
        let second = second.clone();
        tokio::task::spawn_blocking(move || second.publication.publish(next).unwrap())
            .await
            .unwrap();
    }
    assert_eq!(first.publication.current().bundle.version(), 1);
    {
        let first = first.clone();
        assert!(
            tokio::task::spawn_blocking(move || first.core().refresh().unwrap())
                .await
                .unwrap()
        );
    }
    assert!(watcher.has_changed().unwrap());
    assert_eq!(first.publication.current().bundle.version(), 2);

    // The second server switches the signing root (rotation to sign-new,
    // no cluster to wait for); the first signs with the new root at once,
    // before any periodic refresh.
    {
        let second = second.clone();
        tokio::task::spawn_blocking(move || {
            second
                .rotation
                .start(&trustplane::server::RotationOptions::default(), "test")
                .unwrap();
            second.rotation.advance("test", None).unwrap();
        })
        .await
        .unwrap();
    }
    let new_root = second.core().signing_root();
    assert_ne!(new_root, first.core().signing_root());
    let issued = first
        .issuance
        .issue_with_local_key("test", "east", KeyAlgorithm::EcdsaP256, None)
        .await
        .unwrap();
    let chain = pem::parse_many(&issued.cert_chain_pem).unwrap();
    assert_eq!(chain.last().unwrap().contents(), new_root.der());
    assert_eq!(first.core().signing_root(), new_root);
}

/// The store works with a token holding only the README's policy, and a
/// prefix outside it is refused with the path and what to do.
#[test]
fn the_store_needs_only_the_documented_policy() {
    let bao = OpenBao::dev();
    let policy = "path \"secret/data/trustplane/*\" { capabilities = [\"create\", \"read\", \"update\"] }\npath \"secret/metadata/trustplane/*\" { capabilities = [\"list\"] }\n";
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("policy.hcl");
    std::fs::write(&file, policy).unwrap();
    bao.bao(&[
        "policy",
        "write",
        "trustplane-store",
        file.to_str().unwrap(),
    ]);
    let created = bao.bao(&[
        "token",
        "create",
        "-policy=trustplane-store",
        "-field=token",
    ]);
    let token = String::from_utf8(created.stdout)
        .unwrap()
        .trim()
        .to_string();
    let config = |prefix: &str| VaultConfig {
        addr: Some(bao.addr.clone()),
        token: Some(token.parse::<Secret>().unwrap()),
        pki_mount: "pki".into(),
        kv_mount: "secret".into(),
        kv_prefix: prefix.into(),
        ..VaultConfig::default()
    };
    let store = VaultKvStore::open(config("trustplane")).unwrap();
    store
        .commit(
            trustplane::store::Batch::new()
                .put(
                    Table::Bundles,
                    "td/00000000000000000001",
                    b"v1".to_vec(),
                    None,
                )
                .put(Table::Bundles, "td", b"v1".to_vec(), None),
        )
        .unwrap();
    store
        .commit(trustplane::store::Batch::new().delete(Table::Bundles, "td", None))
        .unwrap();
    assert_eq!(store.list(Table::Bundles).unwrap().len(), 1);
    assert_eq!(store.generation().unwrap(), Some(2));
    assert_eq!(store.lease("leader", "a", 1_000, 16_000).unwrap(), "a");
    assert_eq!(store.lease("leader", "b", 2_000, 17_000).unwrap(), "a");
    assert_eq!(store.lease("leader", "b", 16_000, 31_000).unwrap(), "b");
    let refused = VaultKvStore::open(config("elsewhere"))
        .unwrap_err()
        .to_string();
    assert!(
        refused.contains("Vault secret/data/elsewhere/head"),
        "{refused}"
    );
    assert!(refused.contains("permission denied"), "{refused}");
    assert!(refused.contains("policy"), "{refused}");
}

/// Servers SIGKILLed and restarted over and over while clients sign
/// intermediates through both (retrying on the other server when a call
/// fails): every certificate a client received is recorded for its
/// cluster, no serial twice, and the audit chain the servers wrote
/// together verifies. A batch a killed server committed but did not apply
/// is finished by the next writer.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn servers_sigkilled_while_clients_sign_lose_no_record_and_keep_one_chain() {
    common::install_crypto();
    const CLUSTERS: usize = 6;
    const ROUNDS: usize = 6;
    const KILLS: usize = 6;
    let deployment = Deployment::new();
    let mut servers = [deployment.start(1), deployment.start(2)];
    let urls: Vec<String> = servers.iter().map(|server| server.url.clone()).collect();
    // Enrolled before the kills (a join token is used once).
    let mut identities = Vec::new();
    let mut received = Received::new();
    for index in 0..CLUSTERS {
        let name = format!("k{index}");
        let token = deployment
            .admin(&servers[0])
            .await
            .add_cluster(proto::AddClusterRequest {
                name: name.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .join_token;
        let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
        let enrolled = IntermediateServiceClient::new(
            connect(&urls[index % 2], &deployment.control_plane_ca(), None)
                .await
                .unwrap(),
        )
        .enroll(proto::EnrollRequest {
            cluster: name.clone(),
            join_token: token,
            client_csr_pem: ca::create_csr(&key, "agent").unwrap(),
        })
        .await
        .unwrap()
        .into_inner();
        receive(
            &mut received,
            &enrolled.client_cert_pem,
            &name,
            IssuedKind::ControlPlaneClient,
        );
        identities.push((
            name,
            enrolled.client_cert_pem,
            key.to_pkcs8_pem().to_string(),
        ));
    }
    let control_plane_ca = deployment.control_plane_ca();
    let kills_done = std::sync::atomic::AtomicBool::new(false);
    let failed_calls = std::sync::atomic::AtomicUsize::new(0);
    let signing = identities
        .iter()
        .enumerate()
        .map(|(index, (name, certificate, key))| {
            let urls = urls.clone();
            let control_plane_ca = control_plane_ca.clone();
            let kills_done = &kills_done;
            let failed_calls = &failed_calls;
            async move {
                let mut got = Vec::new();
                let mut attempt = index;
                // Signs until the kills are over, and at least ROUNDS times.
                while got.len() < ROUNDS || !kills_done.load(std::sync::atomic::Ordering::SeqCst) {
                    let deadline = Instant::now() + Duration::from_secs(90);
                    loop {
                        assert!(
                            Instant::now() < deadline,
                            "{name}: no server signed for 90 s"
                        );
                        attempt += 1;
                        let url = &urls[attempt % urls.len()];
                        let Ok(channel) =
                            connect(url, &control_plane_ca, Some((certificate, key))).await
                        else {
                            failed_calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        };
                        let intermediate = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
                        let csr =
                            ca::create_csr(&intermediate, &format!("{name} intermediate")).unwrap();
                        match IntermediateServiceClient::new(channel)
                            .sign_intermediate(proto::SignIntermediateRequest {
                                csr: csr.into_bytes(),
                                cluster: name.clone(),
                            })
                            .await
                        {
                            Ok(signed) => {
                                got.push(signed.into_inner().certificate_pem);
                                break;
                            }
                            Err(_) => {
                                failed_calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                                tokio::time::sleep(Duration::from_millis(100)).await;
                            }
                        }
                    }
                }
                (name.clone(), got)
            }
        });
    let killing = || {
        for kill in 0..KILLS {
            std::thread::sleep(Duration::from_millis(300 + 150 * (kill as u64 % 3)));
            let index = kill % 2;
            let listen = servers[index]
                .url
                .trim_start_matches("https://")
                .to_string();
            servers[index].process.0.kill().unwrap();
            servers[index].process.0.wait().unwrap();
            // Restarts on the same address; the port may linger a moment.
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let restarted = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    deployment.start_on(index + 1, &listen)
                }));
                match restarted {
                    Ok(server) => {
                        servers[index] = server;
                        break;
                    }
                    Err(_) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(200));
                    }
                    Err(_) => panic!("server {} did not restart on {listen}", index + 1),
                }
            }
        }
        kills_done.store(true, std::sync::atomic::Ordering::SeqCst);
    };
    // The kills run on their own thread while the clients sign.
    let results = tokio::task::block_in_place(|| {
        std::thread::scope(|scope| {
            scope.spawn(killing);
            tokio::runtime::Handle::current().block_on(futures_join_all(signing))
        })
    });
    // The kills were felt: calls failed and were retried elsewhere.
    assert!(failed_calls.load(std::sync::atomic::Ordering::SeqCst) > 0);
    for (name, certificates) in results {
        assert!(certificates.len() >= ROUNDS, "{name}");
        for certificate in certificates {
            receive(&mut received, &certificate, &name, IssuedKind::Intermediate);
        }
    }
    let store = deployment.store();
    let records: BTreeMap<String, IssuedRecord> =
        list_json::<IssuedRecord>(&store, Table::Certificates)
            .unwrap()
            .into_iter()
            .map(|(key, record, _)| (key, record))
            .collect();
    for (serial, (cluster, kind)) in &received {
        let record = records
            .get(serial)
            .unwrap_or_else(|| panic!("serial {serial} of {cluster} ({kind:?}) has no record"));
        assert_eq!(
            record.cluster.as_deref(),
            Some(cluster.as_str()),
            "{serial}"
        );
        assert_eq!(&record.kind, kind, "{serial}");
    }
    let verified = deployment.trustplane(&[
        "audit",
        "verify",
        "--store",
        "vault-kv",
        "--data-dir",
        deployment.data().to_str().unwrap(),
    ]);
    assert!(
        verified.status.success(),
        "audit verify: {}",
        text(&verified)
    );
    println!(
        "{KILLS} SIGKILLs: {} certificates received and recorded, {} failed calls retried, {} records",
        received.len(),
        failed_calls.load(std::sync::atomic::Ordering::SeqCst),
        records.len()
    );
}
