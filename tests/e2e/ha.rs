//! High availability on the hub cluster's etcd: three `trustplane server`
//! processes (the built binary) with `--store kubernetes` against one real
//! kube-apiserver. The leader (the holder of the Lease `trustplane-leader`)
//! is SIGKILLed during a burst of concurrent issuances: another server
//! takes the lease over within its duration, no serial is issued twice
//! (every received certificate has exactly one TrustplaneCertificate
//! object), and watchers, reconnecting to another server when theirs dies,
//! see every bundle version published afterwards, with no gap; an agent
//! given every server's address fails over from the killed one.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use kube::api::DynamicObject;
use kube::discovery::ApiResource;
use tonic::transport::Channel;
use trustplane::agent::{self, AgentConfig};
use trustplane::ca::{self, Certificate, KeyAlgorithm, PrivateKey};
use trustplane::cli::connect;
use trustplane::proto;
use trustplane::proto::admin_service_client::AdminServiceClient;
use trustplane::proto::intermediate_service_client::IntermediateServiceClient;
use trustplane::proto::trust_bundle_service_client::TrustBundleServiceClient;
use trustplane::server::DataDir;
use trustplane::sink::{ClusterSink, DirectorySink};
use trustplane::store::kube_resources::TrustplaneCertificate;

use crate::common::binary::{BINARY, LoggedServer, spawn_logged_server};
use crate::kube_cluster::{KubeCluster, skip_e2e};

/// The lease the servers run with: a killed holder is replaced within it.
const LEASE: Duration = Duration::from_secs(3);
/// The store's namespace.
const NAMESPACE: &str = "trustplane";

/// A hub cluster with the CRDs, an initialised trustplane in it, and the
/// directory `init` wrote (KEK, admin credential, control-plane CA).
struct Hub {
    cluster: KubeCluster,
    dir: tempfile::TempDir,
}

type Server = LoggedServer;

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

impl Hub {
    async fn start(name: &str) -> Hub {
        let cluster = KubeCluster::start(name).await.unwrap();
        cluster.apply_crds().await.unwrap();
        cluster.create_namespace(NAMESPACE).await.unwrap();
        let hub = Hub {
            cluster,
            dir: tempfile::tempdir().unwrap(),
        };
        let data = hub.data();
        let mut args = vec![
            "init".to_string(),
            "--trust-domain".into(),
            "cluster.local".into(),
            "--data-dir".into(),
            data.display().to_string(),
        ];
        args.extend(hub.store_args());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let init = hub.trustplane(&args);
        assert!(init.status.success(), "init: {}", text(&init));
        assert!(
            text(&init).contains("Kubernetes namespace trustplane"),
            "{}",
            text(&init)
        );
        assert!(!DataDir::new(hub.data()).store_path().exists());
        hub
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("init")
    }

    /// The store flags every command here runs with.
    fn store_args(&self) -> Vec<String> {
        vec![
            "--store".into(),
            "kubernetes".into(),
            "--kubeconfig".into(),
            self.cluster.admin_kubeconfig_path().display().to_string(),
            "--store-namespace".into(),
            NAMESPACE.into(),
        ]
    }

    fn trustplane(&self, args: &[&str]) -> Output {
        Command::new(BINARY)
            .env_remove("TRUSTPLANE_KEK")
            .args(args)
            .output()
            .unwrap()
    }

    /// `trustplane rotate <args> --server <url>` as the admin; its output.
    fn rotate(&self, url: &str, args: &[&str]) -> Output {
        let data = self.data();
        let mut all = vec!["rotate"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--server", url, "--data-dir", data.to_str().unwrap()]);
        self.trustplane(&all)
    }

    /// `rotate status -o json` through `url`.
    fn rotation_status(&self, url: &str) -> serde_json::Value {
        let output = self.rotate(url, &["status", "-o", "json"]);
        assert!(output.status.success(), "rotate status: {}", text(&output));
        serde_json::from_slice(&output.stdout).unwrap()
    }

    fn start_server(&self, index: usize) -> Server {
        let own = self.dir.path().join(format!("server-{index}"));
        std::fs::create_dir_all(&own).unwrap();
        let log = self.dir.path().join(format!("server-{index}.log"));
        let mut server = Command::new(BINARY);
        server
            .env_remove("TRUSTPLANE_KEK")
            .args(["server", "--listen", "127.0.0.1:0", "--leader-lease"])
            .arg(format!("{}s", LEASE.as_secs()))
            .args(self.store_args())
            .arg("--data-dir")
            .arg(&own)
            .arg("--kek-file")
            .arg(self.data().join("kek"))
            .env("RUST_LOG", "info");
        spawn_logged_server(server, &log)
    }

    fn control_plane_ca(&self) -> String {
        std::fs::read_to_string(DataDir::new(self.data()).control_plane_ca_path()).unwrap()
    }

    fn admin_identity(&self) -> (String, String) {
        let data = DataDir::new(self.data());
        (
            std::fs::read_to_string(data.admin_cert_path()).unwrap(),
            std::fs::read_to_string(data.admin_key_path()).unwrap(),
        )
    }

    async fn channel(&self, url: &str) -> Result<Channel, String> {
        let (certificate, key) = self.admin_identity();
        connect(url, &self.control_plane_ca(), Some((&certificate, &key)))
            .await
            .map_err(|error| error.to_string())
    }

    async fn admin(&self, url: &str) -> AdminServiceClient<Channel> {
        AdminServiceClient::new(self.channel(url).await.unwrap())
    }

    /// The pid of the lease holder (`<pid>-<random>`) while the lease is
    /// unexpired.
    async fn leader_pid(&self) -> Option<u32> {
        let leases: Api<Lease> =
            Api::namespaced(self.cluster.admin_client().await.unwrap(), NAMESPACE);
        let lease = leases.get_opt("trustplane-leader").await.unwrap()?;
        let expires: u128 = lease
            .metadata
            .annotations
            .as_ref()?
            .get("trustplane.io/expires-unix-ms")?
            .parse()
            .ok()?;
        let now = trustplane::clock::SystemClock
            .now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis();
        if expires <= now {
            return None;
        }
        lease.spec?.holder_identity?.split('-').next()?.parse().ok()
    }

    /// Every serial with a TrustplaneCertificate object.
    async fn certificate_objects(&self) -> Vec<String> {
        let api: Api<DynamicObject> = Api::namespaced_with(
            self.cluster.admin_client().await.unwrap(),
            NAMESPACE,
            &ApiResource::erase::<TrustplaneCertificate>(&()),
        );
        api.list(&Default::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .map(|object| object.data["spec"]["key"].as_str().unwrap().to_string())
            .collect()
    }
}

/// Polls `check` every 100 ms until it gives a value or `timeout` passes.
async fn wait_for<T, F: std::future::Future<Output = Option<T>>>(
    timeout: Duration,
    mut check: impl FnMut() -> F,
) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A watcher that starts on server `first` of `urls` and moves to the next
/// when its stream ends or breaks; records every version it receives.
fn spawn_watcher(
    hub: Arc<Hub>,
    urls: Vec<String>,
    first: usize,
    seen: Arc<Mutex<Vec<u64>>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut index = first;
        loop {
            let url = &urls[index % urls.len()];
            if let Ok(channel) = hub.channel(url).await
                && let Ok(stream) = TrustBundleServiceClient::new(channel)
                    .watch_bundle(proto::WatchBundleRequest::default())
                    .await
            {
                let mut stream = stream.into_inner();
                while let Ok(Some(bundle)) = stream.message().await {
                    seen.lock().unwrap().push(bundle.version);
                }
            }
            index += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}

/// One cluster registered and enrolled through `url` (before any server
/// is killed: a join token is spent once, so an enrollment whose answer
/// was lost cannot be retried). Returns its client certificate and key.
async fn enroll(hub: &Hub, url: &str, name: &str) -> (String, String) {
    let token = hub
        .admin(url)
        .await
        .add_cluster(proto::AddClusterRequest {
            name: name.to_string(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .join_token;
    let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let channel = connect(url, &hub.control_plane_ca(), None).await.unwrap();
    let enrolled = IntermediateServiceClient::new(channel)
        .enroll(proto::EnrollRequest {
            cluster: name.to_string(),
            join_token: token,
            client_csr_pem: ca::create_csr(&key, "agent").unwrap(),
        })
        .await
        .unwrap()
        .into_inner();
    (enrolled.client_cert_pem, key.to_pkcs8_pem().to_string())
}

/// `rounds` intermediates for cluster `name`, each SignIntermediate sent
/// to the next server, and to the one after when a server does not
/// answer (a call whose answer was lost is simply sent again: it signs a
/// new serial). Returns the serials received.
async fn sign_rounds(
    hub: &Hub,
    urls: &[String],
    name: &str,
    identity: &(String, String),
    rounds: usize,
) -> Vec<String> {
    let mut received = Vec::new();
    let mut next = 0;
    let mut failures = 0;
    for _ in 0..rounds {
        let signed = loop {
            let url = &urls[next % urls.len()];
            next += 1;
            let answer = match connect(
                url,
                &hub.control_plane_ca(),
                Some((&identity.0, &identity.1)),
            )
            .await
            {
                Err(error) => Err(error.to_string()),
                Ok(channel) => {
                    let intermediate = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
                    let csr =
                        ca::create_csr(&intermediate, &format!("{name} intermediate")).unwrap();
                    IntermediateServiceClient::new(channel)
                        .sign_intermediate(proto::SignIntermediateRequest {
                            csr: csr.into_bytes(),
                            cluster: name.to_string(),
                        })
                        .await
                        .map(tonic::Response::into_inner)
                        .map_err(|status| status.to_string())
                }
            };
            match answer {
                Ok(signed) => break signed,
                Err(error) => {
                    failures += 1;
                    assert!(
                        failures < 100,
                        "{name}: SignIntermediate kept failing: {error}"
                    );
                }
            }
        };
        received.push(serial_of(&signed.certificate_pem));
    }
    received
}

/// Three servers on `hub`'s store, their URLs, and the pid and index of the
/// one that took the lease.
async fn three_servers(hub: &Hub) -> (Vec<Server>, Vec<String>, u32, usize) {
    let servers: Vec<Server> = (1..=3).map(|index| hub.start_server(index)).collect();
    let urls: Vec<String> = servers.iter().map(|server| server.url.clone()).collect();
    let leader = wait_for(Duration::from_secs(20), || hub.leader_pid())
        .await
        .expect("no server took the lease");
    let leader_index = servers
        .iter()
        .position(|server| server.process.0.id() == leader)
        .expect("the lease holder is none of the servers");
    (servers, urls, leader, leader_index)
}

/// Every server's log, for a failure message.
fn logs(servers: &[Server]) -> String {
    servers
        .iter()
        .map(|server| std::fs::read_to_string(&server.log).unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n---\n")
}

fn serial_of(pem: &str) -> String {
    Certificate::from_pem(pem).unwrap().serial_hex().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_leader_sigkilled_during_issuances_is_replaced_no_serial_twice_and_watchers_miss_no_version()
 {
    if skip_e2e() {
        return;
    }
    crate::common::install_crypto();
    let hub = Arc::new(Hub::start("ha").await);
    let (mut servers, urls, leader, leader_index) = three_servers(&hub).await;

    // An agent given every server, the leader first: it enrolls and
    // watches there, and fails over when the leader dies.
    let token = hub
        .admin(&urls[leader_index])
        .await
        .add_cluster(proto::AddClusterRequest {
            name: "east".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .join_token;
    let mut agent_servers = urls.clone();
    agent_servers.rotate_left(leader_index);
    let sink: Arc<dyn ClusterSink> =
        Arc::new(DirectorySink::new(hub.dir.path().join("east-cacerts")));
    let agent = agent::spawn(
        AgentConfig {
            server_ca_pem: Some(hub.control_plane_ca()),
            join_token: Some(zeroize::Zeroizing::new(token)),
            max_backoff: Duration::from_secs(1),
            ..AgentConfig::new(agent_servers.join(","), hub.dir.path().join("east"))
        },
        sink,
    );
    wait_for(Duration::from_secs(30), || async {
        (agent.status.borrow().applied_bundle_version == 1).then_some(())
    })
    .await
    .expect("the agent never applied version 1");

    // A watcher starting on each server.
    let watched: Vec<Arc<Mutex<Vec<u64>>>> = (0..3).map(|_| Arc::default()).collect();
    let watchers: Vec<_> = watched
        .iter()
        .enumerate()
        .map(|(index, seen)| spawn_watcher(hub.clone(), urls.clone(), index, seen.clone()))
        .collect();

    // Clusters enrolled through every server, then a burst of them signing
    // intermediates through every server; the leader is SIGKILLed once
    // some have been issued.
    const CLUSTERS: usize = 6;
    const ROUNDS: usize = 5;
    let mut received: BTreeMap<String, usize> = BTreeMap::new();
    let mut identities = Vec::new();
    for index in 0..CLUSTERS {
        let identity = enroll(&hub, &urls[index % urls.len()], &format!("c{index}")).await;
        received.insert(serial_of(&identity.0), index);
        identities.push(identity);
    }
    let before_burst = hub.certificate_objects().await.len();
    let burst: Vec<_> = identities
        .into_iter()
        .enumerate()
        .map(|(index, identity)| {
            let hub = hub.clone();
            let mut order = urls.clone();
            order.rotate_left(index % urls.len());
            tokio::spawn(async move {
                sign_rounds(&hub, &order, &format!("c{index}"), &identity, ROUNDS).await
            })
        })
        .collect();
    wait_for(Duration::from_secs(60), || async {
        (hub.certificate_objects().await.len() >= before_burst + CLUSTERS).then_some(())
    })
    .await
    .expect("the burst issued nothing");
    let mut killed = servers.remove(leader_index);
    let issued_before_kill = hub.certificate_objects().await.len() - before_burst;
    let killed_at = Instant::now();
    killed.process.0.kill().unwrap();
    killed.process.0.wait().unwrap();
    println!(
        "SIGKILLed the leader (pid {leader}) after {issued_before_kill} of the burst's {} intermediates",
        CLUSTERS * ROUNDS
    );
    // Otherwise the kill came after the burst, not during it.
    assert!(
        issued_before_kill < CLUSTERS * ROUNDS,
        "the burst had finished ({issued_before_kill} issued) before the leader was killed"
    );
    let survivors: BTreeSet<u32> = servers.iter().map(|server| server.process.0.id()).collect();
    let new_leader = wait_for(LEASE + Duration::from_secs(5), || async {
        hub.leader_pid().await.filter(|pid| survivors.contains(pid))
    })
    .await;
    assert!(
        new_leader.is_some(),
        "no survivor took the lease; logs:\n{}",
        logs(&servers)
    );
    assert!(
        killed_at.elapsed() < LEASE + Duration::from_secs(3),
        "the lease was taken over after {:?}",
        killed_at.elapsed()
    );

    for (index, run) in burst.into_iter().enumerate() {
        for serial in run.await.unwrap() {
            assert!(
                received.insert(serial.clone(), index).is_none(),
                "serial {serial} handed out twice"
            );
        }
    }
    assert_eq!(received.len(), CLUSTERS * (ROUNDS + 1));
    let objects = hub.certificate_objects().await;
    let unique: BTreeSet<&String> = objects.iter().collect();
    assert_eq!(unique.len(), objects.len(), "a serial has two objects");
    for serial in received.keys() {
        assert!(
            unique.contains(serial),
            "serial {serial} has no TrustplaneCertificate"
        );
    }

    // Bundle versions published through the survivors, one after another:
    // every watcher (the killed server's too, reconnected) sees each.
    let survivor_urls: Vec<String> = servers.iter().map(|server| server.url.clone()).collect();
    for step in 0..4 {
        let mut admin = hub.admin(&survivor_urls[step % survivor_urls.len()]).await;
        if step % 2 == 0 {
            admin
                .rotate_start(proto::RotateStartRequest::default())
                .await
                .unwrap();
        } else {
            admin
                .rotate_abort(proto::RotateAbortRequest::default())
                .await
                .unwrap();
        }
        let version = 2 + step as u64;
        for (index, seen) in watched.iter().enumerate() {
            wait_for(Duration::from_secs(15), || async {
                seen.lock().unwrap().contains(&version).then_some(())
            })
            .await
            .unwrap_or_else(|| {
                panic!(
                    "watcher {index} never saw version {version}: {:?}",
                    seen.lock().unwrap()
                )
            });
        }
    }
    for watcher in watchers {
        watcher.abort();
    }
    // The agent followed through another server.
    wait_for(Duration::from_secs(30), || async {
        let status = agent.status.borrow().clone();
        (status.applied_bundle_version == 5).then_some(())
    })
    .await
    .unwrap_or_else(|| panic!("the agent did not fail over: {:?}", agent.status.borrow()));
    agent.stop();
    for (index, seen) in watched.iter().enumerate() {
        let seen = seen.lock().unwrap().clone();
        let distinct: BTreeSet<u64> = seen.iter().copied().collect();
        assert_eq!(
            distinct,
            (1..=5).collect::<BTreeSet<u64>>(),
            "watcher {index} saw {seen:?}"
        );
        assert!(
            seen.windows(2).all(|pair| pair[1] >= pair[0]),
            "watcher {index} went back: {seen:?}"
        );
    }
}

/// The rotation's grace, and the simulated workload certificate lifetime.
const GRACE: Duration = Duration::from_secs(6);

/// The leader SIGKILLed during a rotation (in sign-new's grace, advanced
/// by it with `--auto`): a survivor takes the lease within its duration
/// and completes the rotation; every ordered pair of the mesh's clusters
/// keeps verifying each other's workloads throughout (tests/common/mesh.rs),
/// and the agents, given every server, follow through the survivors.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_leader_sigkilled_during_a_rotation_is_replaced_and_the_rotation_completes() {
    use crate::common::mesh::Mesh;
    use trustplane::clock::SystemClock;

    if skip_e2e() {
        return;
    }
    crate::common::install_crypto();
    let hub = Arc::new(Hub::start("ha-rotation").await);
    let (mut servers, urls, _, leader_index) = three_servers(&hub).await;
    let survivor_url = urls[(leader_index + 1) % urls.len()].clone();

    let mesh = Mesh::new(GRACE, SystemClock::shared());
    let mut agents = Vec::new();
    let mut admin = hub.admin(&survivor_url).await;
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
        // Each agent starts on another server (one on the leader).
        let mut order = urls.clone();
        order.rotate_left(index);
        agents.push(agent::spawn(
            AgentConfig {
                server_ca_pem: Some(hub.control_plane_ca()),
                join_token: Some(zeroize::Zeroizing::new(token)),
                key_algorithm: KeyAlgorithm::EcdsaP256,
                max_backoff: Duration::from_millis(500),
                ..AgentConfig::new(order.join(","), hub.dir.path().join(&name))
            },
            sink,
        ));
    }
    mesh.check_all("stable").await;

    let started = hub.rotate(
        &survivor_url,
        &[
            "start",
            "--auto",
            "--grace",
            &format!("{}s", GRACE.as_secs()),
        ],
    );
    assert!(started.status.success(), "rotate start: {}", text(&started));
    wait_for(Duration::from_secs(60), || async {
        (hub.rotation_status(&survivor_url)["phase"] == "sign-new").then_some(())
    })
    .await
    .unwrap_or_else(|| {
        panic!(
            "the rotation never reached sign-new: {}; leader log:\n{}",
            hub.rotation_status(&survivor_url),
            std::fs::read_to_string(&servers[leader_index].log).unwrap_or_default()
        )
    });
    let mut killed = servers.remove(leader_index);
    let killed_at = Instant::now();
    killed.process.0.kill().unwrap();
    killed.process.0.wait().unwrap();
    mesh.check_all("sign-new, leader killed").await;
    let survivors: BTreeSet<u32> = servers.iter().map(|server| server.process.0.id()).collect();
    let new_leader = wait_for(LEASE + Duration::from_secs(5), || async {
        hub.leader_pid().await.filter(|pid| survivors.contains(pid))
    })
    .await;
    assert!(new_leader.is_some(), "no survivor took the lease");
    assert!(
        killed_at.elapsed() < LEASE + Duration::from_secs(3),
        "the lease was taken over after {:?}",
        killed_at.elapsed()
    );
    let done = wait_for(Duration::from_secs(90), || async {
        let json = hub.rotation_status(&survivor_url);
        (json["phase"] == "stable").then_some(json)
    })
    .await
    .unwrap_or_else(|| {
        panic!(
            "the rotation did not complete after the takeover: {}; logs:\n{}",
            hub.rotation_status(&survivor_url),
            logs(&servers)
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
}
