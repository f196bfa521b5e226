//! Shared harness for in-process tests: a real trustplane server on
//! 127.0.0.1:0 over TLS, on the embedded store in a temporary directory.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod binary;
pub mod fixtures;
pub mod fleet;
pub mod istio;
pub mod mesh;
pub mod openbao;

use std::sync::Arc;
use std::time::Duration;

use tempfile::TempDir;
use tonic::transport::Channel;
use trustplane::ca::{self, KeyAlgorithm, PrivateKey};
use trustplane::cli::connect;
use trustplane::clock::{Clock, SystemClock};
use trustplane::proto;
use trustplane::proto::admin_service_client::AdminServiceClient;
use trustplane::proto::intermediate_service_client::IntermediateServiceClient;
use trustplane::server::{self, Authority, DataDir, InitOptions, RunningServer};
use trustplane::signer::sealed::Kek;
use trustplane::store::RedbStore;

/// A stopped server: its data, address and clock, to resume it.
pub struct Stopped {
    pub dir: TempDir,
    pub data_dir: DataDir,
    pub policy: trustplane::Policy,
    pub address: std::net::SocketAddr,
    pub clock: Arc<dyn Clock>,
    /// The lifetime of the agent client certificates it issued.
    pub client_cert_lifetime: Duration,
}

pub struct TestServer {
    pub dir: TempDir,
    pub data_dir: DataDir,
    pub running: RunningServer,
    pub control_plane_ca_pem: String,
    pub policy: trustplane::Policy,
    /// The server's clock (a test clock when the test moves time).
    pub clock: Arc<dyn Clock>,
}

pub fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    // RUST_LOG=trustplane=debug shows the server's and agents' logs.
    if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_default_env() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
    }
}

pub async fn start_server() -> TestServer {
    start_server_with_policy(trustplane::Policy::builtin_default().unwrap()).await
}

/// A policy for cluster.local with the given default intermediate lifetime.
pub fn policy_with_lifetime(lifetime: &str) -> trustplane::Policy {
    let yaml = format!(
        "trust_domains:\n  cluster.local:\n    organisation: test\n    allowed_key_algorithms: [ecdsa-p256, ecdsa-p384]\n    default_intermediate_lifetime: {lifetime}\n    max_intermediate_lifetime: 365d\n"
    );
    trustplane::Policy::from_yaml("test-policy.yaml", &yaml).unwrap()
}

pub async fn start_server_with_policy(policy: trustplane::Policy) -> TestServer {
    start_server_with_clock(policy, SystemClock::shared()).await
}

/// A server whose time is `clock` (tests move a `TestClock` instead of
/// sleeping).
pub async fn start_server_with_clock(
    policy: trustplane::Policy,
    clock: Arc<dyn Clock>,
) -> TestServer {
    start_server_configured(policy, clock, None, server::Limits::default()).await
}

/// The same, issuing agent client certificates for `client_cert_lifetime`
/// (`None`: the default), as `trustplane server --client-cert-lifetime`.
pub async fn start_server_with_client_lifetime(
    policy: trustplane::Policy,
    clock: Arc<dyn Clock>,
    client_cert_lifetime: Option<Duration>,
) -> TestServer {
    start_server_configured(
        policy,
        clock,
        client_cert_lifetime,
        server::Limits::default(),
    )
    .await
}

/// A server with its own `limits`.
pub async fn start_server_with_limits(
    policy: trustplane::Policy,
    clock: Arc<dyn Clock>,
    limits: server::Limits,
) -> TestServer {
    start_server_configured(policy, clock, None, limits).await
}

/// A server with a client certificate lifetime and limits of its own.
pub async fn start_server_configured(
    policy: trustplane::Policy,
    clock: Arc<dyn Clock>,
    client_cert_lifetime: Option<Duration>,
    limits: server::Limits,
) -> TestServer {
    install_crypto();
    let dir = tempfile::tempdir().unwrap();
    let data_dir = DataDir::new(dir.path().join("server"));
    std::fs::create_dir_all(&data_dir.path).unwrap();
    let store = Arc::new(RedbStore::open(&data_dir.store_path()).unwrap());
    let kek = Kek::generate().unwrap();
    kek.write_new_file(&data_dir.kek_path()).unwrap();
    server::initialize(
        store.as_ref(),
        &kek,
        &data_dir,
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
    let running = open_and_start(
        &data_dir,
        store,
        policy.clone(),
        "127.0.0.1:0",
        &clock,
        client_cert_lifetime,
        limits,
    )
    .await;
    let control_plane_ca_pem = std::fs::read_to_string(data_dir.control_plane_ca_path()).unwrap();
    TestServer {
        dir,
        data_dir,
        running,
        control_plane_ca_pem,
        policy,
        clock,
    }
}

async fn open_and_start(
    data_dir: &DataDir,
    store: Arc<RedbStore>,
    policy: trustplane::Policy,
    listen: &str,
    clock: &Arc<dyn Clock>,
    client_cert_lifetime: Option<Duration>,
    limits: server::Limits,
) -> RunningServer {
    let kek = Kek::load(Some(&data_dir.kek_path()), None).unwrap();
    let mut authority = Authority::open(store, &kek, policy, clock.clone()).unwrap();
    if let Some(lifetime) = client_cert_lifetime {
        authority = authority.with_client_cert_lifetime(lifetime).unwrap();
    }
    let authority = Arc::new(authority);
    server::start(
        authority,
        &server::ServerConfig {
            listen: listen.parse().unwrap(),
            dns_names: vec![],
            ip_addresses: vec![],
            limits,
            leader_lease: trustplane::server::leader::DEFAULT_LEASE,
        },
    )
    .await
    .unwrap()
}

impl TestServer {
    /// Stops the server (the port is then closed) and returns its address.
    pub async fn stop(self) -> Stopped {
        let address = self.running.address;
        let client_cert_lifetime = self.running.authority.enrollment.client_cert_lifetime();
        self.running.shutdown().await.unwrap();
        Stopped {
            dir: self.dir,
            data_dir: self.data_dir,
            policy: self.policy,
            address,
            clock: self.clock,
            client_cert_lifetime,
        }
    }

    /// Starts the server again on the same data, address and clock.
    pub async fn resume(stopped: Stopped) -> TestServer {
        let Stopped {
            dir,
            data_dir,
            policy,
            address,
            clock,
            client_cert_lifetime,
        } = stopped;
        let store = Arc::new(RedbStore::open(&data_dir.store_path()).unwrap());
        let running = open_and_start(
            &data_dir,
            store,
            policy.clone(),
            &address.to_string(),
            &clock,
            Some(client_cert_lifetime),
            server::Limits::default(),
        )
        .await;
        let control_plane_ca_pem =
            std::fs::read_to_string(data_dir.control_plane_ca_path()).unwrap();
        TestServer {
            dir,
            data_dir,
            running,
            control_plane_ca_pem,
            policy,
            clock,
        }
    }

    pub fn url(&self) -> String {
        self.running.url()
    }

    pub fn authority(&self) -> &Arc<Authority> {
        &self.running.authority
    }

    pub async fn admin(&self) -> AdminServiceClient<Channel> {
        AdminServiceClient::new(self.admin_channel().await)
    }

    /// A channel presenting `init`'s admin credential.
    pub async fn admin_channel(&self) -> Channel {
        let certificate = std::fs::read_to_string(self.data_dir.admin_cert_path()).unwrap();
        let key = std::fs::read_to_string(self.data_dir.admin_key_path()).unwrap();
        connect(
            &self.url(),
            &self.control_plane_ca_pem,
            Some((&certificate, &key)),
        )
        .await
        .unwrap()
    }

    /// A channel without a client certificate.
    pub async fn anonymous(&self) -> Channel {
        connect(&self.url(), &self.control_plane_ca_pem, None)
            .await
            .unwrap()
    }

    pub async fn add_cluster(&self, name: &str) -> String {
        self.admin()
            .await
            .add_cluster(proto::AddClusterRequest {
                name: name.into(),
                token_ttl_seconds: 0,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .join_token
    }

    /// Enrolls `name` with `token` and returns an mTLS channel as that cluster.
    pub async fn enroll_with(&self, name: &str, token: &str) -> Result<Channel, tonic::Status> {
        enroll_at(&self.url(), &self.control_plane_ca_pem, name, token).await
    }

    /// Registers and enrolls `name`; returns its mTLS channel.
    pub async fn enroll(&self, name: &str) -> Channel {
        let token = self.add_cluster(name).await;
        self.enroll_with(name, &token).await.unwrap()
    }
}

/// Enrolls `name` with `token` at the server `url` (verified with
/// `control_plane_ca_pem`) and returns an mTLS channel as that cluster.
pub async fn enroll_at(
    url: &str,
    control_plane_ca_pem: &str,
    name: &str,
    token: &str,
) -> Result<Channel, tonic::Status> {
    let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let csr = ca::create_csr(&key, "test agent").unwrap();
    let anonymous = connect(url, control_plane_ca_pem, None).await.unwrap();
    let response = IntermediateServiceClient::new(anonymous)
        .enroll(proto::EnrollRequest {
            cluster: name.into(),
            join_token: token.into(),
            client_csr_pem: csr,
        })
        .await?
        .into_inner();
    let channel = connect(
        url,
        &response.control_plane_ca_pem,
        Some((&response.client_cert_pem, &key.to_pkcs8_pem())),
    )
    .await
    .unwrap();
    Ok(channel)
}
