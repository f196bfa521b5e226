//! A fleet of real agents whose sinks are a simulated mesh (see `mesh`),
//! and the admin calls rotation tests make: status, waits on the gate and
//! on acknowledgements, start, advance, abort, and a server binary's
//! SIGKILL. Shared by the rotation tests of the local and the Vault signer.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tonic::transport::Channel;
use trustplane::agent::{self, AgentConfig, AgentHandle};
use trustplane::ca::{Certificate, KeyAlgorithm};
use trustplane::cli::connect;
use trustplane::clock::TestClock;
use trustplane::proto;
use trustplane::proto::admin_service_client::AdminServiceClient;
use trustplane::sink::ClusterSink;

use super::binary::Guard;
use super::mesh::{CheckingSink, Mesh};

/// Workload certificate lifetime in the simulated clusters, and the grace.
pub const GRACE: u64 = 3;

pub struct Cluster {
    pub sink: Arc<CheckingSink>,
    pub identity: PathBuf,
    pub agent: Option<AgentHandle>,
}

pub struct Fleet {
    pub url: String,
    pub control_plane_ca_pem: String,
    pub work: tempfile::TempDir,
    pub clusters: BTreeMap<String, Cluster>,
}

impl Fleet {
    pub fn new(url: String, control_plane_ca_pem: String) -> Self {
        Fleet {
            url,
            control_plane_ca_pem,
            work: tempfile::tempdir().unwrap(),
            clusters: BTreeMap::new(),
        }
    }

    pub fn spawn(&self, cluster: &Cluster, token: Option<String>) -> AgentHandle {
        let sink: Arc<dyn ClusterSink> = cluster.sink.clone();
        agent::spawn(
            AgentConfig {
                server_ca_pem: Some(self.control_plane_ca_pem.clone()),
                join_token: token.map(zeroize::Zeroizing::new),
                key_algorithm: KeyAlgorithm::EcdsaP256,
                max_backoff: Duration::from_millis(500),
                ..AgentConfig::new(self.url.clone(), cluster.identity.clone())
            },
            sink,
        )
    }

    /// Registers `name` through `admin` and starts its agent.
    pub async fn add(
        &mut self,
        admin: &mut AdminServiceClient<Channel>,
        mesh: &Arc<Mesh>,
        name: &str,
    ) {
        let token = admin
            .add_cluster(proto::AddClusterRequest {
                name: name.into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .join_token;
        let mut cluster = Cluster {
            sink: mesh.sink(name),
            identity: self.work.path().join(name),
            agent: None,
        };
        cluster.agent = Some(self.spawn(&cluster, Some(token)));
        self.clusters.insert(name.to_string(), cluster);
    }

    pub fn stop(&mut self, name: &str) {
        if let Some(agent) = self
            .clusters
            .get_mut(name)
            .and_then(|cluster| cluster.agent.take())
        {
            agent.stop();
        }
    }

    /// Restarts `name`'s agent with its saved identity and its cacerts.
    pub fn restart(&mut self, name: &str) {
        let handle = self.spawn(&self.clusters[name], None);
        self.clusters.get_mut(name).unwrap().agent = Some(handle);
    }
}

pub async fn status(admin: &mut AdminServiceClient<Channel>) -> proto::RotationStatus {
    admin
        .rotate_status(proto::RotateStatusRequest {})
        .await
        .unwrap()
        .into_inner()
}

/// Waits until every cluster has applied bundle `version` (outside a rotation).
pub async fn wait_applied(admin: &mut AdminServiceClient<Channel>, version: u64, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let listed = admin
            .list_clusters(proto::ListClustersRequest {})
            .await
            .unwrap()
            .into_inner();
        let applied = listed
            .clusters
            .iter()
            .filter(|cluster| cluster.applied_bundle_version >= version)
            .count();
        if applied == count {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "only {applied}/{count} clusters applied bundle v{version}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// An in-process server on a test clock: the grace passes when the test
/// moves the clock, not by waiting.
pub async fn in_process_server() -> (super::TestServer, Arc<TestClock>) {
    let clock = TestClock::starting_now();
    let server = super::start_server_with_clock(
        trustplane::Policy::builtin_default().unwrap(),
        clock.clone(),
    )
    .await;
    (server, clock)
}

/// Waits until the current phase's gate holds (every ack, and the grace).
pub async fn wait_gate(
    admin: &mut AdminServiceClient<Channel>,
    clock: Option<&TestClock>,
) -> proto::RotationStatus {
    wait_until(admin, clock, "the gate holds", |status| status.gate_holds).await
}

/// Waits until `condition` holds. With a test clock, a grace that runs
/// (every cluster acknowledged, time left) is passed by moving the clock
/// beyond it; without one (the server binary), by waiting.
pub async fn wait_until(
    admin: &mut AdminServiceClient<Channel>,
    clock: Option<&TestClock>,
    what: &str,
    condition: impl Fn(&proto::RotationStatus) -> bool,
) -> proto::RotationStatus {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let current = status(admin).await;
        if condition(&current) {
            return current;
        }
        if let Some(clock) = clock
            && current.acknowledged_unix != 0
            && current.grace_left_seconds > 0
        {
            clock.advance(Duration::from_secs(current.grace_left_seconds + 1));
            continue;
        }
        assert!(
            Instant::now() < deadline,
            "never reached: {what}; phase {} blocked by: {}",
            current.phase,
            current.blocking
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub fn rotation_options() -> proto::RotationOptions {
    proto::RotationOptions {
        grace_seconds: GRACE,
        ack_timeout_seconds: 60,
        ..Default::default()
    }
}

pub async fn start(admin: &mut AdminServiceClient<Channel>) -> proto::RotationStatus {
    admin
        .rotate_start(proto::RotateStartRequest {
            options: Some(rotation_options()),
        })
        .await
        .unwrap()
        .into_inner()
}

pub async fn advance(
    admin: &mut AdminServiceClient<Channel>,
) -> Result<proto::RotationStatus, tonic::Status> {
    admin
        .rotate_advance(proto::RotateAdvanceRequest::default())
        .await
        .map(tonic::Response::into_inner)
}

pub async fn abort(
    admin: &mut AdminServiceClient<Channel>,
) -> Result<proto::RotationStatus, tonic::Status> {
    admin
        .rotate_abort(proto::RotateAbortRequest::default())
        .await
        .map(tonic::Response::into_inner)
}

pub fn bundle_roots(status: &proto::RotationStatus) -> Vec<Certificate> {
    Certificate::parse_pem_chain(&status.bundle.as_ref().unwrap().root_cert_pem).unwrap()
}

/// Asserts that every cluster holds exactly `root_cert_pem`.
pub async fn assert_every_cluster_has(mesh: &Mesh, fleet: &Fleet, root_cert_pem: &str) {
    for name in fleet.clusters.keys() {
        assert_eq!(
            mesh.root_cert_pem(name).await.as_deref(),
            Some(root_cert_pem),
            "{name} does not hold the published root-cert.pem"
        );
    }
}

pub async fn assert_no_failures(mesh: &Mesh) -> u64 {
    mesh.assert_no_failures().await.checks
}

pub fn sigkill(server: Guard) {
    let pid = server.0.id().to_string();
    let killed = Command::new("kill").args(["-9", &pid]).status().unwrap();
    assert!(killed.success());
    drop(server);
}

pub async fn admin_for(data_dir: &Path, url: &str) -> AdminServiceClient<Channel> {
    let read = |name: &str| std::fs::read_to_string(data_dir.join(name)).unwrap();
    let channel = connect(
        url,
        &read("control-plane-ca.pem"),
        Some((&read("admin/admin.pem"), &read("admin/admin-key.pem"))),
    )
    .await
    .unwrap();
    AdminServiceClient::new(channel)
}
