//! The attack suite: plays the attacker against the real `trustplane server`
//! binary. Each case asserts the exact refusal (the gRPC code and the key
//! part of the message, or the TLS alert for a handshake refused) and that
//! the store is unchanged, by comparing a dump of every table before and
//! after the case.
//!
//! The store is a redb file that one process holds, so each case runs
//! between two stops of the server: dump, start, attack, stop (SIGTERM),
//! dump again. The dump uses the library's own store API (`RedbStore::list`
//! on `Table::ALL`) rather than a `trustplane store dump` command: the test
//! links the crate anyway, and a command that prints every record (sealed
//! keys included) is surface the product does not need. The only
//! differences allowed are listed in [`legitimate`]: the server's own TLS
//! certificate, issued at every start (with its audit entry), the audit
//! chain's head, and an audit entry for a refused call.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::binary::{BINARY, Guard, start_server};
use common::fixtures::run_openssl;
use tonic::Code;
use tonic::transport::Channel;
use trustplane::ca::{self, ControlPlaneRole, KeyAlgorithm, PrivateKey};
use trustplane::clock::{SystemClock, TestClock};
use trustplane::proto;
use trustplane::proto::admin_service_client::AdminServiceClient;
use trustplane::proto::intermediate_service_client::IntermediateServiceClient;
use trustplane::proto::trust_bundle_service_client::TrustBundleServiceClient;
use trustplane::server::{
    ADMIN_IDENTITY_PREFIX, Authority, CLUSTER_IDENTITY_PREFIX, DataDir, token_hash,
};
use trustplane::signer::sealed::Kek;
use trustplane::store::{RedbStore, Store, Table};
use x509_parser::prelude::FromDer;

const DAY: Duration = Duration::from_secs(24 * 3600);

// ---------------------------------------------------------------------------
// The arena: a data directory prepared by the operator, and the attacker's
// material.

/// A client certificate and its key (PEM).
#[derive(Clone)]
struct Credential {
    certificate: String,
    key: String,
}

/// Everything the cases use, prepared before the first baseline.
struct Arena {
    work: tempfile::TempDir,
    data: PathBuf,
    control_plane_ca: String,
    admin: Credential,
    /// Enrolled clusters.
    east: Credential,
    west: Credential,
    /// Enrolled, then removed with `cluster remove`.
    removed: Credential,
    /// Enrolled at a time 400 days ago: its year-long certificate from the
    /// real control-plane CA has expired.
    expired: Credential,
    /// Certificates naming `east` and the `admin` credential, issued by a
    /// CA that carries the real one's name but another key.
    forged_east: Credential,
    forged_admin: Credential,
    /// A certificate naming `east` from an unrelated CA (another name).
    stranger_east: Credential,
    /// The token `replayed` enrolled with.
    used_token: String,
    /// A token for pending cluster `late` that expired an hour ago.
    expired_token: String,
    /// A live token of pending cluster `racer`, for the concurrent case.
    racer_token: String,
    /// A live token of pending cluster `pending`, never used: attacks on
    /// `Enroll` that must fail after the token check.
    pending_token: String,
    /// A live token of pending cluster `steady`, for a real agent.
    steady_token: String,
}

impl Arena {
    fn data_dir(&self) -> DataDir {
        DataDir::new(&self.data)
    }
}

/// A case's view: the arena and the URL of the server it runs against.
struct Target {
    arena: Arc<Arena>,
    url: String,
}

impl Target {
    async fn channel(&self, credential: Option<&Credential>) -> Result<Channel, String> {
        trustplane::cli::connect(
            &self.url,
            &self.arena.control_plane_ca,
            credential.map(|credential| (credential.certificate.as_str(), credential.key.as_str())),
        )
        .await
        .map_err(|error| format!("{error:#}"))
    }

    async fn connect(&self, credential: Option<&Credential>) -> Channel {
        self.channel(credential).await.unwrap()
    }
}

fn trustplane(args: &[&str]) -> Output {
    Command::new(BINARY)
        .args(args)
        .env_remove("TRUSTPLANE_KEK")
        .output()
        .unwrap()
}

fn ok(args: &[&str]) -> String {
    let output = trustplane(args);
    assert!(
        output.status.success(),
        "trustplane {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Asks for a client certificate over `Enroll`; returns it with its key.
async fn enroll(channel: Channel, cluster: &str, token: &str) -> Credential {
    let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let csr = ca::create_csr(&key, "agent").unwrap();
    let response = IntermediateServiceClient::new(channel)
        .enroll(proto::EnrollRequest {
            cluster: cluster.into(),
            join_token: token.into(),
            client_csr_pem: csr,
        })
        .await
        .unwrap()
        .into_inner();
    Credential {
        certificate: response.client_cert_pem,
        key: key.to_pkcs8_pem().to_string(),
    }
}

/// A client certificate for `uri` from a CA that has the real
/// control-plane CA's subject (same organisation and common name) but its
/// own key.
fn forged(control_plane_ca: &str, uri: &str) -> Credential {
    let real = ca::Certificate::from_pem(control_plane_ca).unwrap();
    let organisation = {
        let (_, parsed) = x509_parser::certificate::X509Certificate::from_der(real.der()).unwrap();
        parsed
            .subject()
            .iter_organization()
            .next()
            .and_then(|attribute| attribute.as_str().ok())
            .unwrap()
            .to_string()
    };
    let now = SystemClock.now();
    let (forged_ca, forged_key) = ca::create_control_plane_ca(&organisation, DAY, now).unwrap();
    assert_eq!(forged_ca.subject().unwrap(), real.subject().unwrap());
    let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let certificate = ca::issue_control_plane_cert(
        &key.public_key_der().unwrap(),
        &ControlPlaneRole::Client { uri: uri.into() },
        &forged_ca,
        &forged_key,
        DAY,
        now,
    )
    .unwrap();
    Credential {
        certificate: certificate.to_pem(),
        key: key.to_pkcs8_pem().to_string(),
    }
}

/// A client certificate for `uri` from an unrelated CA (its own name).
fn stranger(uri: &str) -> Credential {
    let (stranger_ca, stranger_key) = ca::create_root(
        &ca::RootRequest {
            trust_domain: "attacker.example".into(),
            organisation: "Attacker".into(),
            key_algorithm: KeyAlgorithm::EcdsaP256,
            validity: DAY,
        },
        SystemClock.now(),
    )
    .unwrap();
    let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let certificate = ca::issue_control_plane_cert(
        &key.public_key_der().unwrap(),
        &ControlPlaneRole::Client { uri: uri.into() },
        &stranger_ca,
        &stranger_key,
        DAY,
        SystemClock.now(),
    )
    .unwrap();
    Credential {
        certificate: certificate.to_pem(),
        key: key.to_pkcs8_pem().to_string(),
    }
}

/// The operator's part, with the data directory and the KEK (the server
/// stopped): a cluster enrolled 400 days ago, whose client certificate has
/// expired, and a join token that expired an hour ago. Both come from the
/// real control-plane CA through the library at an earlier time.
async fn prepare_in_the_past(data_dir: &DataDir) -> (Credential, String) {
    let store = Arc::new(RedbStore::open(&data_dir.store_path()).unwrap());
    let kek = Kek::load(Some(&data_dir.kek_path()), None).unwrap();
    let policy = trustplane::Policy::builtin_default().unwrap();
    let now = SystemClock.now();

    let clock = TestClock::new(now - 400 * DAY);
    let authority = Authority::open(store.clone(), &kek, policy.clone(), clock).unwrap();
    let (token, _) = authority
        .enrollment
        .add_cluster(trustplane::server::OFFLINE_ACTOR, "expired", None)
        .unwrap();
    let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let enrolled = authority
        .enrollment
        .enroll("expired", &token, &ca::create_csr(&key, "agent").unwrap())
        .await
        .unwrap();
    let expired = Credential {
        certificate: enrolled.client_certificate.to_pem(),
        key: key.to_pkcs8_pem().to_string(),
    };
    assert!(enrolled.client_certificate.not_after().unwrap() < now);
    drop(authority);

    let clock = TestClock::new(now - Duration::from_secs(2 * 3600));
    let authority = Authority::open(store, &kek, policy, clock).unwrap();
    let (late, _) = authority
        .enrollment
        .add_cluster(
            trustplane::server::OFFLINE_ACTOR,
            "late",
            Some(Duration::from_secs(3600)),
        )
        .unwrap();
    (expired, late.to_string())
}

async fn prepare() -> Arena {
    common::install_crypto();
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    let data_arg = data.to_str().unwrap().to_string();
    ok(&[
        "init",
        "--data-dir",
        &data_arg,
        "--trust-domain",
        "cluster.local",
    ]);
    let data_dir = DataDir::new(&data);
    let (expired, expired_token) = prepare_in_the_past(&data_dir).await;

    let control_plane_ca = std::fs::read_to_string(data_dir.control_plane_ca_path()).unwrap();
    let admin = Credential {
        certificate: std::fs::read_to_string(data_dir.admin_cert_path()).unwrap(),
        key: std::fs::read_to_string(data_dir.admin_key_path()).unwrap(),
    };
    let server = Server::start(&data);
    let connect = |credential: Option<&Credential>| {
        let credential = credential.cloned();
        let url = server.url.clone();
        let ca = control_plane_ca.clone();
        async move {
            trustplane::cli::connect(
                &url,
                &ca,
                credential
                    .as_ref()
                    .map(|credential| (credential.certificate.as_str(), credential.key.as_str())),
            )
            .await
            .unwrap()
        }
    };
    let mut admin_client = AdminServiceClient::new(connect(Some(&admin)).await);
    let mut add = async |name: &str| {
        admin_client
            .add_cluster(proto::AddClusterRequest {
                name: name.into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .join_token
    };
    let east_token = add("east").await;
    let west_token = add("west").await;
    let removed_token = add("removed").await;
    let used_token = add("replayed").await;
    let racer_token = add("racer").await;
    let pending_token = add("pending").await;
    let steady_token = add("steady").await;
    let anonymous = connect(None).await;
    let east = enroll(anonymous.clone(), "east", &east_token).await;
    let west = enroll(anonymous.clone(), "west", &west_token).await;
    let removed = enroll(anonymous.clone(), "removed", &removed_token).await;
    enroll(anonymous.clone(), "replayed", &used_token).await;
    admin_client
        .remove_cluster(proto::RemoveClusterRequest {
            name: "removed".into(),
        })
        .await
        .unwrap();
    drop((admin_client, anonymous));
    server.stop();

    let forged_east = forged(&control_plane_ca, &format!("{CLUSTER_IDENTITY_PREFIX}east"));
    let forged_admin = forged(&control_plane_ca, &format!("{ADMIN_IDENTITY_PREFIX}admin"));
    let stranger_east = stranger(&format!("{CLUSTER_IDENTITY_PREFIX}east"));
    Arena {
        work,
        data,
        control_plane_ca,
        admin,
        east,
        west,
        removed,
        expired,
        forged_east,
        forged_admin,
        stranger_east,
        used_token,
        expired_token,
        racer_token,
        pending_token,
        steady_token,
    }
}

// ---------------------------------------------------------------------------
// The server process and the store dump.

struct Server {
    guard: Guard,
    url: String,
}

impl Server {
    fn start(data: &Path) -> Server {
        let (guard, url) = start_server(data, "127.0.0.1:0");
        Server { guard, url }
    }

    /// SIGTERM, then waits for the process to exit (SIGKILL after 10 s), so
    /// that the store is released.
    fn stop(mut self) {
        let pid = self.guard.0.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.guard.0.try_wait().unwrap().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("server {pid} ignored SIGTERM for 10 s; killing it");
    }
}

/// Every record of every table: (table, key) → (version, value).
type Dump = BTreeMap<(&'static str, String), (u64, Vec<u8>)>;

fn dump(data_dir: &DataDir) -> Dump {
    let store = RedbStore::open(&data_dir.store_path()).unwrap();
    let mut dump = Dump::new();
    for table in Table::ALL {
        for (key, value) in store.list(table).unwrap() {
            dump.insert((table.name(), key), (value.version, value.value));
        }
    }
    dump
}

/// One difference between two dumps.
#[derive(Debug)]
struct Change {
    table: &'static str,
    key: String,
    before: Option<String>,
    after: Option<String>,
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shorten = |text: &Option<String>| match text {
            None => "(absent)".to_string(),
            Some(text) if text.chars().count() > 300 => {
                format!("{}…", text.chars().take(300).collect::<String>())
            }
            Some(text) => text.clone(),
        };
        write!(
            f,
            "{}/{}: {} → {}",
            self.table,
            self.key,
            shorten(&self.before),
            shorten(&self.after)
        )
    }
}

fn differences(before: &Dump, after: &Dump) -> Vec<Change> {
    let text = |entry: Option<&(u64, Vec<u8>)>| {
        entry.map(|(version, value)| match std::str::from_utf8(value) {
            Ok(text) => format!("v{version} {text}"),
            Err(_) => format!("v{version} ({} bytes, not text)", value.len()),
        })
    };
    let mut keys: Vec<&(&'static str, String)> = before.keys().chain(after.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|key| before.get(*key) != after.get(*key))
        .map(|key| Change {
            table: key.0,
            key: key.1.clone(),
            before: text(before.get(key)),
            after: text(after.get(key)),
        })
        .collect()
}

/// What a case may change besides nothing.
#[derive(Clone, Copy, Debug)]
enum Permits {
    /// Nothing but what [`legitimate`] always allows.
    Nothing,
    /// The one enrollment of `cluster` that wins a race: its token marked
    /// used, its record enrolled, its client certificate recorded.
    OneEnrollment(&'static str),
    /// Whatever serving these clusters changes (their records, tokens,
    /// certificates and audit entries): a case in which real clients must
    /// still be served.
    Served(&'static [&'static str]),
}

fn json(text: &Option<String>) -> serde_json::Value {
    text.as_deref()
        .and_then(|text| text.split_once(' '))
        .and_then(|(_, value)| serde_json::from_str(value).ok())
        .unwrap_or(serde_json::Value::Null)
}

/// Whether `change` is one the server makes legitimately while refusing:
/// - the server's own TLS certificate, issued at each start (one record and
///   its audit entry), and the audit chain's head;
/// - an audit entry that records a refused call (the audit trail records
///   refused admin calls);
/// - what the case permits ([`Permits`]).
fn legitimate(change: &Change, permits: Permits) -> bool {
    let after = json(&change.after);
    let added = change.before.is_none() && change.after.is_some();
    if change.table == "certificates" && added && after["kind"] == "control-plane-server" {
        return true;
    }
    // Its audit entry, and the audit chain's head moving over the entries
    // this function allows one by one.
    if change.table == "audit"
        && added
        && after["actor"] == "server"
        && after["action"] == "certificate-issue"
        && after["detail"]
            .as_str()
            .is_some_and(|detail| detail.starts_with("control-plane-server "))
    {
        return true;
    }
    if change.table == "meta" && change.key == "audit-head" && change.before.is_some() {
        return true;
    }
    if change.table == "audit" && added {
        let text = after.to_string().to_lowercase();
        if text.contains("refused") || text.contains("denied") {
            return true;
        }
    }
    match permits {
        Permits::Nothing => false,
        Permits::OneEnrollment(cluster) => match change.table {
            "tokens" => {
                change.before.is_some()
                    && after["cluster"] == cluster
                    && after["used_unix"].is_i64()
            }
            "clusters" => change.key == cluster && after["enrolled_unix"].is_i64(),
            "certificates" => {
                added && after["kind"] == "control-plane-client" && after["cluster"] == cluster
            }
            "audit" => added && after.to_string().contains(cluster),
            _ => false,
        },
        Permits::Served(clusters) => clusters.iter().any(|cluster| {
            change.key == *cluster
                || after["cluster"] == *cluster
                || json(&change.before)["cluster"] == *cluster
                || (change.table == "audit" && after.to_string().contains(cluster))
        }),
    }
}

// ---------------------------------------------------------------------------
// Refusals.

/// One attempt inside a case: its label and either what refused it, or why
/// it was not refused as it must be.
type Attempt = (String, Result<String, String>);

/// The attempt must fail with `code` and a message holding every one of
/// `parts`.
fn refused<T: std::fmt::Debug>(
    label: impl Into<String>,
    result: Result<T, tonic::Status>,
    code: Code,
    parts: &[&str],
) -> Attempt {
    let label = label.into();
    let verdict = match result {
        Ok(value) => Err(format!("accepted: {}", short(&format!("{value:?}")))),
        Err(status) => {
            let missing: Vec<&&str> = parts
                .iter()
                .filter(|part| !status.message().contains(**part))
                .collect();
            if status.code() != code || !missing.is_empty() {
                Err(format!(
                    "refused with {:?} {:?}; expected {code:?} with {parts:?}",
                    status.code(),
                    status.message()
                ))
            } else {
                Ok(format!("{:?}: {}", status.code(), status.message()))
            }
        }
    };
    (label, verdict)
}

fn short(text: &str) -> String {
    if text.chars().count() > 200 {
        format!("{}…", text.chars().take(200).collect::<String>())
    } else {
        text.to_string()
    }
}

/// The whole error chain of `error`, one cause after another.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// What the server answers a TLS client presenting `credential`: the
/// fatal alert it sends after reading the client certificate, or why there
/// was none. A plain rustls client over a blocking socket, so that the
/// alert is read for certain (a gRPC client may see only a broken pipe).
fn tls_alert(target: &Target, credential: &Credential) -> Result<String, String> {
    use std::io::{Read, Write};
    let address = target.url.trim_start_matches("https://");
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls_pki_types::CertificateDer::from(
            pem::parse(&target.arena.control_plane_ca)
                .unwrap()
                .into_contents(),
        ))
        .unwrap();
    let certificates = vec![rustls_pki_types::CertificateDer::from(
        pem::parse(&credential.certificate).unwrap().into_contents(),
    )];
    let key = rustls_pki_types::PrivateKeyDer::Pkcs8(
        pem::parse(&credential.key).unwrap().into_contents().into(),
    );
    let mut config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_client_auth_cert(certificates, key)
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut connection = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let mut socket = std::net::TcpStream::connect(address).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let alert = |error: std::io::Error| -> Result<String, String> {
        let text = chain(&error);
        if text.contains("received fatal alert") {
            Ok(text)
        } else {
            Err(format!("the connection failed without an alert: {text}"))
        }
    };
    while connection.is_handshaking() {
        if let Err(error) = connection.complete_io(&mut socket) {
            return alert(error);
        }
    }
    // TLS 1.3: the client's handshake ends before the server has checked
    // its certificate; the server's verdict comes with the next read.
    connection
        .writer()
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .unwrap();
    let mut stream = rustls::Stream::new(&mut connection, &mut socket);
    let mut buffer = [0u8; 1024];
    match stream.read(&mut buffer) {
        Err(error) => alert(error),
        Ok(0) => Err("the server closed the connection without an alert".into()),
        Ok(_) => Err("accepted: the server answered over the connection".into()),
    }
}

/// The attempt must be refused in the TLS handshake with `expected_alert`
/// ([`tls_alert`]), and a gRPC call over the same credential must fail too.
async fn refused_by_tls<T, F>(
    label: &str,
    target: &Target,
    credential: &Credential,
    expected_alert: &str,
    call: F,
) -> Attempt
where
    T: std::fmt::Debug,
    F: AsyncFnOnce(Channel) -> Result<T, tonic::Status>,
{
    let verdict = match tls_alert(target, credential) {
        Err(problem) => Err(problem),
        Ok(alert) if !alert.contains(expected_alert) => Err(format!(
            "refused with another alert than {expected_alert}: {alert}"
        )),
        Ok(alert) => match target.channel(Some(credential)).await {
            Err(_) => Ok(alert),
            Ok(channel) => match call(channel).await {
                Ok(value) => Err(format!(
                    "the handshake sent {alert}, yet the call was accepted: {}",
                    short(&format!("{value:?}"))
                )),
                Err(_) => Ok(alert),
            },
        },
    };
    (label.to_string(), verdict)
}

// ---------------------------------------------------------------------------
// Cases.

type CaseFuture = Pin<Box<dyn Future<Output = Vec<Attempt>> + Send>>;

struct Case {
    name: &'static str,
    permits: Permits,
    /// Run with the server stopped, before the baseline dump.
    prepare: Option<fn(&Arena)>,
    attack: fn(Arc<Target>) -> CaseFuture,
}

macro_rules! case {
    ($name:literal, $attack:ident) => {
        case!($name, $attack, Permits::Nothing)
    };
    ($name:literal, $attack:ident, $permits:expr) => {
        Case {
            name: $name,
            permits: $permits,
            prepare: None,
            attack: |target| Box::pin($attack(target)),
        }
    };
}

/// The cases run today.
fn cases() -> Vec<Case> {
    vec![
        case!("no client certificate", no_client_certificate),
        case!(
            "a certificate from another CA (impersonating a cluster)",
            other_ca_cluster
        ),
        case!(
            "a certificate from another CA (impersonating the admin)",
            other_ca_admin
        ),
        case!("an expired client certificate", expired_client_certificate),
        case!("a removed cluster's certificate", removed_cluster),
        case!(
            "cluster A asks for B's intermediate",
            intermediate_for_another
        ),
        case!("cluster A reports for B", report_for_another),
        case!(
            "a cluster certificate on every AdminService method",
            cluster_as_admin
        ),
        case!(
            "the admin credential on the cluster-only methods",
            admin_as_cluster
        ),
        case!("a replayed join token", replayed_token),
        case!("an expired join token", expired_token),
        case!("a guessed join token", guessed_token),
        case!(
            "a join token reused concurrently",
            concurrent_token,
            Permits::OneEnrollment("racer")
        ),
        case!("CSR with an RSA-1024 key", csr_rsa_1024),
        case!("CSR with a P-192 key", csr_p192),
        case!("CSR with an Ed25519 key", csr_ed25519),
        case!("CSR with a bad signature", csr_bad_signature),
        case!("a 10 MiB body", ten_mib_body),
        case!("CSR as truncated DER", csr_truncated_der),
        case!("CSR PEM with trailing garbage", csr_pem_trailing_garbage),
        Case {
            prepare: Some(mint_auditor_and_revoked_admin),
            ..case!(
                "every changing AdminService method as an auditor",
                auditor_changes
            )
        },
        Case {
            prepare: Some(mint_auditor_and_revoked_admin),
            ..case!(
                "a revoked admin credential on every AdminService method",
                revoked_admin
            )
        },
        case!(
            "1 000 watch streams from one cluster",
            thousand_watch_streams
        ),
        case!(
            "5 000 idle TCP connections and a slowloris TLS client while a real agent is served",
            idle_flood_and_slowloris,
            Permits::Served(&["east", "steady"])
        ),
        case!(
            "push kubeconfigs with exec, tokenFile, a key path, insecure-skip-tls-verify",
            unsafe_kubeconfigs
        ),
        case!("CSR asking for CA:true with pathLen 5", csr_path_length_5),
        case!("CSR with 1 000 SANs", csr_thousand_sans),
    ]
}

fn csr() -> String {
    let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    ca::create_csr(&key, "attacker").unwrap()
}

fn sign_request(csr: Vec<u8>) -> proto::SignIntermediateRequest {
    proto::SignIntermediateRequest {
        csr,
        cluster: String::new(),
    }
}

const NEEDS_CERTIFICATE: &str = "this call needs a client certificate";

async fn no_client_certificate(target: Arc<Target>) -> Vec<Attempt> {
    let channel = target.connect(None).await;
    let mut intermediate = IntermediateServiceClient::new(channel.clone());
    let mut bundle = TrustBundleServiceClient::new(channel.clone());
    let mut admin = AdminServiceClient::new(channel);
    let code = Code::Unauthenticated;
    let parts = &[NEEDS_CERTIFICATE];
    vec![
        refused(
            "SignIntermediate",
            intermediate
                .sign_intermediate(sign_request(csr().into_bytes()))
                .await,
            code,
            parts,
        ),
        refused(
            "ReportStatus",
            intermediate
                .report_status(proto::ReportStatusRequest::default())
                .await,
            code,
            parts,
        ),
        refused(
            "GetBundle",
            bundle.get_bundle(proto::GetBundleRequest {}).await,
            code,
            parts,
        ),
        refused(
            "WatchBundle",
            bundle
                .watch_bundle(proto::WatchBundleRequest { known_version: 0 })
                .await
                .map(|_| "a stream"),
            code,
            parts,
        ),
        refused(
            "AddCluster",
            admin
                .add_cluster(proto::AddClusterRequest {
                    name: "intruder".into(),
                    ..Default::default()
                })
                .await,
            code,
            parts,
        ),
        refused(
            "RemoveCluster",
            admin
                .remove_cluster(proto::RemoveClusterRequest {
                    name: "east".into(),
                })
                .await,
            code,
            parts,
        ),
        refused(
            "RotateStart",
            admin
                .rotate_start(proto::RotateStartRequest::default())
                .await,
            code,
            parts,
        ),
    ]
}

/// The alerts rustls sends for a client certificate no trusted CA
/// signed: one whose issuer name is unknown, one whose issuer name is the
/// control-plane CA's but whose signature does not verify with its key,
/// and one that has expired.
const ALERT_UNKNOWN_CA: &str = "received fatal alert: UnknownCA";
const ALERT_BAD_SIGNATURE: &str = "received fatal alert: DecryptError";
const ALERT_EXPIRED: &str = "received fatal alert: CertificateExpired";

async fn other_ca_cluster(target: Arc<Target>) -> Vec<Attempt> {
    let forged = target.arena.forged_east.clone();
    let stranger = target.arena.stranger_east.clone();
    vec![
        refused_by_tls(
            "SignIntermediate, CA with the control-plane CA's name",
            &target,
            &forged,
            ALERT_BAD_SIGNATURE,
            async |channel| {
                IntermediateServiceClient::new(channel)
                    .sign_intermediate(sign_request(csr().into_bytes()))
                    .await
            },
        )
        .await,
        refused_by_tls(
            "GetBundle, unrelated CA",
            &target,
            &stranger,
            ALERT_UNKNOWN_CA,
            async |channel| {
                TrustBundleServiceClient::new(channel)
                    .get_bundle(proto::GetBundleRequest {})
                    .await
            },
        )
        .await,
    ]
}

async fn other_ca_admin(target: Arc<Target>) -> Vec<Attempt> {
    let forged = target.arena.forged_admin.clone();
    vec![
        refused_by_tls(
            "AddCluster, CA with the control-plane CA's name",
            &target,
            &forged,
            ALERT_BAD_SIGNATURE,
            async |channel| {
                AdminServiceClient::new(channel)
                    .add_cluster(proto::AddClusterRequest {
                        name: "intruder".into(),
                        ..Default::default()
                    })
                    .await
            },
        )
        .await,
    ]
}

async fn expired_client_certificate(target: Arc<Target>) -> Vec<Attempt> {
    let expired = target.arena.expired.clone();
    vec![
        refused_by_tls(
            "SignIntermediate",
            &target,
            &expired,
            ALERT_EXPIRED,
            async |channel| {
                IntermediateServiceClient::new(channel)
                    .sign_intermediate(sign_request(csr().into_bytes()))
                    .await
            },
        )
        .await,
        refused_by_tls(
            "WatchBundle",
            &target,
            &expired,
            ALERT_EXPIRED,
            async |channel| {
                TrustBundleServiceClient::new(channel)
                    .watch_bundle(proto::WatchBundleRequest { known_version: 0 })
                    .await
                    .map(|_| "a stream")
            },
        )
        .await,
    ]
}

async fn removed_cluster(target: Arc<Target>) -> Vec<Attempt> {
    let channel = target.connect(Some(&target.arena.removed)).await;
    let mut intermediate = IntermediateServiceClient::new(channel.clone());
    let mut bundle = TrustBundleServiceClient::new(channel);
    let code = Code::PermissionDenied;
    let parts = &["cluster \"removed\" is not registered (it was removed)"];
    vec![
        refused(
            "SignIntermediate",
            intermediate
                .sign_intermediate(sign_request(csr().into_bytes()))
                .await,
            code,
            parts,
        ),
        refused(
            "ReportStatus",
            intermediate
                .report_status(proto::ReportStatusRequest {
                    applied_bundle_version: 1,
                    ..Default::default()
                })
                .await,
            code,
            parts,
        ),
        refused(
            "GetBundle",
            bundle.get_bundle(proto::GetBundleRequest {}).await,
            code,
            parts,
        ),
        refused(
            "WatchBundle",
            bundle
                .watch_bundle(proto::WatchBundleRequest { known_version: 0 })
                .await
                .map(|_| "a stream"),
            code,
            parts,
        ),
    ]
}

const ONLY_ITSELF: &str = "cluster \"east\" may only act for itself, not for cluster \"west\"";

async fn intermediate_for_another(target: Arc<Target>) -> Vec<Attempt> {
    let mut east = IntermediateServiceClient::new(target.connect(Some(&target.arena.east)).await);
    vec![refused(
        "SignIntermediate for west",
        east.sign_intermediate(proto::SignIntermediateRequest {
            csr: csr().into_bytes(),
            cluster: "west".into(),
        })
        .await,
        Code::PermissionDenied,
        &[ONLY_ITSELF],
    )]
}

async fn report_for_another(target: Arc<Target>) -> Vec<Attempt> {
    let mut east = IntermediateServiceClient::new(target.connect(Some(&target.arena.east)).await);
    vec![refused(
        "ReportStatus for west",
        east.report_status(proto::ReportStatusRequest {
            cluster: "west".into(),
            applied_bundle_version: 1,
            error: "west is broken".into(),
            ..Default::default()
        })
        .await,
        Code::PermissionDenied,
        &[ONLY_ITSELF],
    )]
}

/// Every AdminService method, called on `admin`; each result is reduced to
/// its status.
async fn every_admin_method(
    admin: &mut AdminServiceClient<Channel>,
) -> Vec<(&'static str, Result<(), tonic::Status>)> {
    fn done<T>(result: Result<T, tonic::Status>) -> Result<(), tonic::Status> {
        result.map(|_| ())
    }
    vec![
        (
            "AddCluster",
            done(
                admin
                    .add_cluster(proto::AddClusterRequest {
                        name: "intruder".into(),
                        ..Default::default()
                    })
                    .await,
            ),
        ),
        (
            "ListClusters",
            done(admin.list_clusters(proto::ListClustersRequest {}).await),
        ),
        (
            "RemoveCluster",
            done(
                admin
                    .remove_cluster(proto::RemoveClusterRequest {
                        name: "west".into(),
                    })
                    .await,
            ),
        ),
        ("Status", done(admin.status(proto::StatusRequest {}).await)),
        (
            "ReissueCluster",
            done(
                admin
                    .reissue_cluster(proto::ReissueClusterRequest {
                        name: "west".into(),
                    })
                    .await,
            ),
        ),
        (
            "RotatePlan",
            done(admin.rotate_plan(proto::RotatePlanRequest::default()).await),
        ),
        (
            "RotateStart",
            done(
                admin
                    .rotate_start(proto::RotateStartRequest::default())
                    .await,
            ),
        ),
        (
            "RotateStatus",
            done(admin.rotate_status(proto::RotateStatusRequest {}).await),
        ),
        (
            "RotateAdvance",
            done(
                admin
                    .rotate_advance(proto::RotateAdvanceRequest::default())
                    .await,
            ),
        ),
        (
            "RotateAbort",
            done(
                admin
                    .rotate_abort(proto::RotateAbortRequest::default())
                    .await,
            ),
        ),
        (
            "AuditLog",
            done(
                admin
                    .audit_log(proto::AuditLogRequest {
                        limit: 0,
                        ..Default::default()
                    })
                    .await,
            ),
        ),
    ]
}

async fn cluster_as_admin(target: Arc<Target>) -> Vec<Attempt> {
    let mut admin = AdminServiceClient::new(target.connect(Some(&target.arena.east)).await);
    every_admin_method(&mut admin)
        .await
        .into_iter()
        .map(|(method, result)| {
            refused(
                method,
                result,
                Code::PermissionDenied,
                &["cluster \"east\" may not call AdminService"],
            )
        })
        .collect()
}

async fn admin_as_cluster(target: Arc<Target>) -> Vec<Attempt> {
    let mut intermediate =
        IntermediateServiceClient::new(target.connect(Some(&target.arena.admin)).await);
    let parts = &["this call is for cluster agents"];
    vec![
        refused(
            "SignIntermediate",
            intermediate
                .sign_intermediate(sign_request(csr().into_bytes()))
                .await,
            Code::PermissionDenied,
            parts,
        ),
        refused(
            "ReportStatus",
            intermediate
                .report_status(proto::ReportStatusRequest::default())
                .await,
            Code::PermissionDenied,
            parts,
        ),
    ]
}

/// An `Enroll` request with a fresh client CSR.
fn enroll_request(cluster: &str, token: &str) -> proto::EnrollRequest {
    proto::EnrollRequest {
        cluster: cluster.into(),
        join_token: token.into(),
        client_csr_pem: csr(),
    }
}

async fn anonymous_enroll(
    target: &Target,
    request: proto::EnrollRequest,
) -> Result<proto::EnrollResponse, tonic::Status> {
    IntermediateServiceClient::new(target.connect(None).await)
        .enroll(request)
        .await
        .map(tonic::Response::into_inner)
}

async fn replayed_token(target: Arc<Target>) -> Vec<Attempt> {
    let token = target.arena.used_token.clone();
    vec![refused(
        "Enroll with the used token",
        anonymous_enroll(&target, enroll_request("replayed", &token)).await,
        Code::PermissionDenied,
        &["join token for cluster \"replayed\" was already used at"],
    )]
}

async fn expired_token(target: Arc<Target>) -> Vec<Attempt> {
    let token = target.arena.expired_token.clone();
    vec![refused(
        "Enroll with a token that expired an hour ago",
        anonymous_enroll(&target, enroll_request("late", &token)).await,
        Code::PermissionDenied,
        &["join token for cluster \"late\" expired at"],
    )]
}

async fn guessed_token(target: Arc<Target>) -> Vec<Attempt> {
    // Well-formed guesses for a pending cluster with a live token.
    let mut attempts = Vec::new();
    for guess in [
        "tp1.racer.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".to_string(),
        format!(
            "tp1.racer.{}",
            &target.arena.racer_token[10..].to_ascii_uppercase()
        ),
        "tp1.racer.x".to_string(),
        String::new(),
    ] {
        attempts.push(refused(
            format!("Enroll with {guess:?}"),
            anonymous_enroll(&target, enroll_request("racer", &guess)).await,
            Code::PermissionDenied,
            &["join token for cluster \"racer\" is unknown"],
        ));
    }
    // The hash the store keys tokens by is no token either.
    let hash = token_hash(&target.arena.racer_token);
    attempts.push(refused(
        "Enroll with the stored token hash",
        anonymous_enroll(&target, enroll_request("racer", &hash)).await,
        Code::PermissionDenied,
        &["join token for cluster \"racer\" is unknown"],
    ));
    attempts
}

/// Racers that present one live join token at once.
const RACERS: usize = 16;

async fn concurrent_token(target: Arc<Target>) -> Vec<Attempt> {
    let token = target.arena.racer_token.clone();
    let mut channels = Vec::new();
    for _ in 0..RACERS {
        channels.push(target.connect(None).await);
    }
    let barrier = Arc::new(tokio::sync::Barrier::new(RACERS));
    let racers: Vec<_> = channels
        .into_iter()
        .map(|channel| {
            let barrier = barrier.clone();
            let request = enroll_request("racer", &token);
            tokio::spawn(async move {
                barrier.wait().await;
                IntermediateServiceClient::new(channel)
                    .enroll(request)
                    .await
                    .map(tonic::Response::into_inner)
            })
        })
        .collect();
    let mut winners = 0;
    let mut attempts = Vec::new();
    for (index, racer) in racers.into_iter().enumerate() {
        let result = racer.await.unwrap();
        if result.is_ok() {
            winners += 1;
            continue;
        }
        let (label, verdict) = refused(
            format!("racer {index}"),
            result,
            Code::PermissionDenied,
            &["join token for cluster \"racer\""],
        );
        let verdict = verdict.and_then(|refusal| {
            if refusal.contains("was already used at") || refusal.contains("was used concurrently")
            {
                Ok(refusal)
            } else {
                Err(format!("refused for another reason: {refusal}"))
            }
        });
        attempts.push((label, verdict));
    }
    attempts.push((
        format!("{RACERS} racers, one winner"),
        if winners == 1 {
            Ok(format!("{} refused", RACERS - 1))
        } else {
            Err(format!("{winners} racers enrolled with one token"))
        },
    ));
    attempts
}

/// A PEM CSR made by `openssl req` with a new key from `new_key` and the
/// given `-addext` extensions.
fn openssl_csr(new_key: &[&str], extensions: &[&str]) -> Vec<u8> {
    let work = tempfile::tempdir().unwrap();
    let mut arguments = vec!["req", "-new"];
    arguments.extend_from_slice(new_key);
    arguments.extend_from_slice(&[
        "-nodes", "-keyout", "key.pem", "-subj", "/CN=east", "-out", "csr.pem",
    ]);
    for extension in extensions {
        arguments.extend_from_slice(&["-addext", extension]);
    }
    run_openssl(work.path(), &arguments);
    std::fs::read(work.path().join("csr.pem")).unwrap()
}

/// Sends `csr` as east's SignIntermediate and requires InvalidArgument with
/// every one of `parts`.
async fn refuse_csr(target: &Target, label: &str, csr: Vec<u8>, parts: &[&str]) -> Attempt {
    let mut east = IntermediateServiceClient::new(target.connect(Some(&target.arena.east)).await);
    refused(
        label,
        east.sign_intermediate(sign_request(csr)).await,
        Code::InvalidArgument,
        parts,
    )
}

async fn csr_rsa_1024(target: Arc<Target>) -> Vec<Attempt> {
    let csr = openssl_csr(&["-newkey", "rsa:1024"], &[]);
    vec![
        refuse_csr(
            &target,
            "SignIntermediate",
            csr,
            &["unsupported key: RSA key of 1024 bits; use 2048 to 8192 bits"],
        )
        .await,
    ]
}

async fn csr_p192(target: Arc<Target>) -> Vec<Attempt> {
    let csr = openssl_csr(
        &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime192v1"],
        &[],
    );
    vec![
        refuse_csr(
            &target,
            "SignIntermediate",
            csr,
            // prime192v1's OID.
            &["unsupported key: EC curve 1.2.840.10045.3.1.1; use P-256 or P-384"],
        )
        .await,
    ]
}

async fn csr_ed25519(target: Arc<Target>) -> Vec<Attempt> {
    let csr = openssl_csr(&["-newkey", "ed25519"], &[]);
    vec![
        refuse_csr(
            &target,
            "SignIntermediate",
            csr.clone(),
            &["unsupported key: EdDSA (Ed25519/Ed448) keys are not accepted"],
        )
        .await,
    ]
}

async fn csr_bad_signature(target: Arc<Target>) -> Vec<Attempt> {
    let mut der = pem::parse(csr()).unwrap().into_contents();
    // The signature BIT STRING is the CSR's last element.
    let last = der.len() - 1;
    der[last] ^= 0x01;
    let mut attempts = vec![
        refuse_csr(
            &target,
            "SignIntermediate",
            der.clone(),
            &["CSR signature does not verify"],
        )
        .await,
    ];
    // The same on the unauthenticated Enroll, with a live token: the token
    // must stay unused.
    let pem = pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", der));
    attempts.push(refused(
        "Enroll with a live token",
        anonymous_enroll(
            &target,
            proto::EnrollRequest {
                cluster: "pending".into(),
                join_token: target.arena.pending_token.clone(),
                client_csr_pem: pem,
            },
        )
        .await,
        Code::InvalidArgument,
        &["CSR signature does not verify"],
    ));
    attempts
}

const TEN_MIB: usize = 10 * 1024 * 1024;

async fn ten_mib_body(target: Arc<Target>) -> Vec<Attempt> {
    let too_large = "message length too large";
    let mut attempts = vec![
        refuse_csr_code(
            &target,
            "SignIntermediate with a 10 MiB CSR",
            vec![b'A'; TEN_MIB],
            Code::OutOfRange,
            &[too_large],
        )
        .await,
    ];
    // Enroll is open to anyone: the body limit must hold there too.
    let mut request = enroll_request("pending", &target.arena.pending_token);
    request.client_csr_pem = "A".repeat(TEN_MIB);
    attempts.push(refused(
        "Enroll with a 10 MiB CSR",
        anonymous_enroll(&target, request).await,
        Code::OutOfRange,
        &[too_large],
    ));
    let mut request = enroll_request("racer", &"A".repeat(TEN_MIB));
    request.client_csr_pem = csr();
    attempts.push(refused(
        "Enroll with a 10 MiB join token",
        anonymous_enroll(&target, request).await,
        Code::OutOfRange,
        &[too_large],
    ));
    attempts
}

async fn refuse_csr_code(
    target: &Target,
    label: &str,
    csr: Vec<u8>,
    code: Code,
    parts: &[&str],
) -> Attempt {
    let mut east = IntermediateServiceClient::new(target.connect(Some(&target.arena.east)).await);
    refused(
        label,
        east.sign_intermediate(sign_request(csr)).await,
        code,
        parts,
    )
}

async fn csr_truncated_der(target: Arc<Target>) -> Vec<Attempt> {
    let der = pem::parse(csr()).unwrap().into_contents();
    let mut attempts = Vec::new();
    for keep in [der.len() - 1, der.len() / 2, 2] {
        attempts.push(
            refuse_csr(
                &target,
                &format!("SignIntermediate with {keep} of {} bytes", der.len()),
                der[..keep].to_vec(),
                &["malformed input: CSR"],
            )
            .await,
        );
    }
    attempts
}

async fn csr_pem_trailing_garbage(target: Arc<Target>) -> Vec<Attempt> {
    let good = csr();
    let mut attempts = Vec::new();
    // Bytes after the DER, inside the PEM block.
    let mut der = pem::parse(&good).unwrap().into_contents();
    der.extend_from_slice(b"\x00garbage");
    let inside = pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", der));
    attempts.push(
        refuse_csr(
            &target,
            "garbage after the DER inside the block",
            inside.into_bytes(),
            &["malformed input: CSR: expected one DER CSR, found 8 trailing bytes after it"],
        )
        .await,
    );
    // Text after the END line.
    let after = format!("{good}garbage\x00\x01 that is not PEM\n");
    attempts.push(
        refuse_csr(
            &target,
            "garbage after the END line",
            after.into_bytes(),
            &["malformed input: CSR PEM: expected nothing but whitespace after the END line"],
        )
        .await,
    );
    // A second block after the first.
    let twice = format!("{good}{good}");
    attempts.push(
        refuse_csr(
            &target,
            "a second CSR block",
            twice.into_bytes(),
            &["malformed input: CSR PEM: expected exactly one CERTIFICATE REQUEST block, found 2 blocks"],
        )
        .await,
    );
    attempts
}

async fn csr_path_length_5(target: Arc<Target>) -> Vec<Attempt> {
    let csr = openssl_csr(
        &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"],
        &["basicConstraints=critical,CA:TRUE,pathlen:5"],
    );
    vec![refuse_csr(&target, "SignIntermediate", csr, &["pathLen"]).await]
}

async fn csr_thousand_sans(target: Arc<Target>) -> Vec<Attempt> {
    let names: Vec<String> = (0..1000)
        .map(|index| format!("DNS:n{index}.attacker.example"))
        .collect();
    let extension = format!("subjectAltName={}", names.join(","));
    let csr = openssl_csr(
        &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"],
        &[&extension],
    );
    vec![refuse_csr(&target, "SignIntermediate", csr, &["subjectAltName"]).await]
}

// ---------------------------------------------------------------------------
// Requests beyond what the profiles grant, push kubeconfigs, floods.

/// The directory `trustplane admin add` writes a credential to.
fn credential_dir(arena: &Arena, name: &str) -> PathBuf {
    arena.work.path().join(format!("credential-{name}"))
}

fn read_credential(arena: &Arena, name: &str) -> Credential {
    let directory = credential_dir(arena, name);
    Credential {
        certificate: std::fs::read_to_string(directory.join(format!("{name}.pem"))).unwrap(),
        key: std::fs::read_to_string(directory.join(format!("{name}-key.pem"))).unwrap(),
    }
}

// needs: `trustplane admin add <name> --role <role> --out <dir>` and
// `trustplane admin revoke <name>` (offline, with the data directory's KEK).
fn mint_auditor_and_revoked_admin(arena: &Arena) {
    // Both role cases call this; the credentials are made once.
    if credential_dir(arena, "former").exists() {
        return;
    }
    let data = arena.data.to_str().unwrap();
    for (name, role) in [("auditor-ann", "auditor"), ("former", "admin")] {
        let out = credential_dir(arena, name);
        ok(&[
            "admin",
            "add",
            name,
            "--role",
            role,
            "--out",
            out.to_str().unwrap(),
            "--data-dir",
            data,
        ]);
    }
    ok(&["admin", "revoke", "former", "--data-dir", data]);
}

/// The AdminService methods that change state (role `operator` or `admin`).
const CHANGING_METHODS: [&str; 6] = [
    "AddCluster",
    "RemoveCluster",
    "ReissueCluster",
    "RotateStart",
    "RotateAdvance",
    "RotateAbort",
];

async fn auditor_changes(target: Arc<Target>) -> Vec<Attempt> {
    let auditor = read_credential(&target.arena, "auditor-ann");
    let mut admin = AdminServiceClient::new(target.connect(Some(&auditor)).await);
    every_admin_method(&mut admin)
        .await
        .into_iter()
        .filter(|(method, _)| CHANGING_METHODS.contains(method))
        .map(|(method, result)| {
            refused(
                method,
                result,
                Code::PermissionDenied,
                &["admin \"auditor-ann\" has role auditor, which may not change clusters or the root rotation"],
            )
        })
        .collect()
}

async fn revoked_admin(target: Arc<Target>) -> Vec<Attempt> {
    let former = read_credential(&target.arena, "former");
    let mut admin = AdminServiceClient::new(target.connect(Some(&former)).await);
    every_admin_method(&mut admin)
        .await
        .into_iter()
        .map(|(method, result)| {
            refused(
                method,
                result,
                Code::PermissionDenied,
                &["admin credential \"former\""],
            )
        })
        .collect()
}

/// Watch streams one cluster tries to open, over this many connections
/// (so that a per-connection stream limit does not decide the outcome).
const WATCH_STREAMS: usize = 1000;
const WATCH_CONNECTIONS: usize = 50;

async fn thousand_watch_streams(target: Arc<Target>) -> Vec<Attempt> {
    let mut channels = Vec::new();
    for _ in 0..WATCH_CONNECTIONS {
        channels.push(target.connect(Some(&target.arena.east)).await);
    }
    let mut open = Vec::new();
    let mut refusals = Vec::new();
    for index in 0..WATCH_STREAMS {
        let mut client = TrustBundleServiceClient::new(channels[index % WATCH_CONNECTIONS].clone());
        let call = client.watch_bundle(proto::WatchBundleRequest { known_version: 0 });
        match tokio::time::timeout(Duration::from_secs(5), call).await {
            Ok(Ok(stream)) => open.push(stream.into_inner()),
            Ok(Err(status)) => refusals.push(status),
            Err(_) => refusals.push(tonic::Status::deadline_exceeded("no answer in 5 s")),
        }
    }
    let mut attempts: Vec<Attempt> = refusals
        .into_iter()
        .enumerate()
        .map(|(index, status)| {
            refused(
                format!("watch beyond the cap #{index}"),
                Err::<(), _>(status),
                Code::ResourceExhausted,
                &["watch"],
            )
        })
        .collect();
    attempts.push((
        format!("{WATCH_STREAMS} watch streams from east"),
        if open.len() < WATCH_STREAMS {
            Ok(format!(
                "{} opened, {} refused",
                open.len(),
                WATCH_STREAMS - open.len()
            ))
        } else {
            Err(format!("all {WATCH_STREAMS} opened"))
        },
    ));
    // The cap is per cluster: west still gets its bundle stream.
    let mut west = TrustBundleServiceClient::new(target.connect(Some(&target.arena.west)).await);
    let west_watch = west
        .watch_bundle(proto::WatchBundleRequest { known_version: 0 })
        .await;
    attempts.push((
        "west's watch while east is at its cap".into(),
        match west_watch {
            Ok(_) => Ok("served".into()),
            Err(status) => Err(format!("west was refused too: {status:?}")),
        },
    ));
    attempts
}

/// Idle TCP connections held open during the flood case (the test process
/// holds their client side: 5 000 of its 20 000 file descriptors).
const IDLE_CONNECTIONS: usize = 5000;
/// A real agent, enrolling from scratch during the flood, must have
/// written its cacerts within this time.
const AGENT_SERVED_WITHIN: Duration = Duration::from_secs(20);
/// Each renewal (SignIntermediate) by an enrolled cluster during the flood
/// must be answered within this time.
const RENEWAL_WITHIN: Duration = Duration::from_secs(2);
/// The server must drop a TLS client that sends its ClientHello one byte a
/// second within this time (its handshake timeout plus a margin).
// needs: the handshake timeout's default; adjust to it at merge time.
const SLOWLORIS_DROPPED_WITHIN: Duration = Duration::from_secs(20);

async fn idle_flood_and_slowloris(target: Arc<Target>) -> Vec<Attempt> {
    let address: std::net::SocketAddr = target.url.trim_start_matches("https://").parse().unwrap();
    let mut attempts = Vec::new();

    // The slowloris client: a TLS record header and then one byte a second.
    let slowloris = tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let started = Instant::now();
        let mut socket = tokio::net::TcpStream::connect(address).await.unwrap();
        let hello: &[u8] = &[
            0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
        ];
        for byte in hello.iter().cycle() {
            if socket.write_all(&[*byte]).await.is_err() {
                return started.elapsed();
            }
            let mut buffer = [0u8; 64];
            match tokio::time::timeout(Duration::from_secs(1), socket.read(&mut buffer)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return started.elapsed(),
                Ok(Ok(_)) | Err(_) => {}
            }
            if started.elapsed() > SLOWLORIS_DROPPED_WITHIN + Duration::from_secs(10) {
                return started.elapsed();
            }
        }
        started.elapsed()
    });

    let mut idle = Vec::with_capacity(IDLE_CONNECTIONS);
    let mut refused_connections = 0;
    for _ in 0..IDLE_CONNECTIONS {
        match tokio::net::TcpStream::connect(address).await {
            Ok(socket) => idle.push(socket),
            Err(_) => refused_connections += 1,
        }
    }

    // A real agent enrolls and writes its cacerts meanwhile.
    let work = target.arena.work.path();
    let cacerts = work.join("steady-cacerts");
    let started = Instant::now();
    let _agent = Guard(
        Command::new(BINARY)
            .args(["agent", "--server", &target.url, "--server-ca"])
            .arg(target.arena.data.join("control-plane-ca.pem"))
            .arg("--join-token")
            .arg(&target.arena.steady_token)
            .arg("--identity-dir")
            .arg(work.join("steady-identity"))
            .arg("--cacerts-dir")
            .arg(&cacerts)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let served = loop {
        if cacerts.join("ca-cert.pem").exists() {
            break Some(started.elapsed());
        }
        if started.elapsed() > AGENT_SERVED_WITHIN {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    attempts.push((
        format!(
            "a real agent during {} idle connections ({refused_connections} refused at connect)",
            idle.len()
        ),
        match served {
            Some(elapsed) => Ok(format!("cacerts written in {:.1} s", elapsed.as_secs_f64())),
            None => Err(format!("no cacerts within {AGENT_SERVED_WITHIN:?}")),
        },
    ));

    // An enrolled cluster keeps renewing its intermediate.
    let mut east = IntermediateServiceClient::new(target.connect(Some(&target.arena.east)).await);
    for round in 0..5 {
        let started = Instant::now();
        let result = tokio::time::timeout(
            RENEWAL_WITHIN,
            east.sign_intermediate(sign_request(csr().into_bytes())),
        )
        .await;
        attempts.push((
            format!("renewal {round} during the flood"),
            match result {
                Ok(Ok(_)) => Ok(format!("served in {} ms", started.elapsed().as_millis())),
                Ok(Err(status)) => Err(format!("refused: {status:?}")),
                Err(_) => Err(format!("not served within {RENEWAL_WITHIN:?}")),
            },
        ));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    let dropped_after = slowloris.await.unwrap();
    attempts.push((
        "slowloris TLS client".into(),
        if dropped_after <= SLOWLORIS_DROPPED_WITHIN {
            Ok(format!(
                "dropped after {:.1} s",
                dropped_after.as_secs_f64()
            ))
        } else {
            Err(format!(
                "still connected after {:.1} s",
                dropped_after.as_secs_f64()
            ))
        },
    ));
    drop(idle);
    attempts
}

/// A push-mode kubeconfig for a server that does not exist, with `cluster`
/// and `user` as the YAML bodies of its one cluster and user.
fn kubeconfig(cluster: &str, user: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n{cluster}users:\n- name: u\n  user:\n{user}contexts:\n- name: x\n  context:\n    cluster: c\n    user: u\ncurrent-context: x\n"
    )
}

async fn unsafe_kubeconfigs(target: Arc<Target>) -> Vec<Attempt> {
    use base64::Engine as _;
    let arena = &target.arena;
    let marker = arena.work.path().join("exec-ran");
    let kek = arena.data.join("kek");
    let ca_data =
        base64::engine::general_purpose::STANDARD.encode(arena.control_plane_ca.as_bytes());
    let server =
        format!("    server: https://127.0.0.1:1\n    certificate-authority-data: {ca_data}\n");
    let cases = [
        (
            "exec",
            kubeconfig(
                &server,
                &format!(
                    "    exec:\n      apiVersion: client.authentication.k8s.io/v1\n      command: /bin/sh\n      args: [\"-c\", \"touch {}\"]\n",
                    marker.display()
                ),
            ),
        ),
        (
            "tokenFile",
            kubeconfig(&server, &format!("    tokenFile: {}\n", kek.display())),
        ),
        (
            "client-key",
            kubeconfig(
                &server,
                &format!(
                    "    client-certificate-data: {ca_data}\n    client-key: {}\n",
                    kek.display()
                ),
            ),
        ),
        (
            "insecure-skip-tls-verify",
            kubeconfig(
                "    server: https://127.0.0.1:1\n    insecure-skip-tls-verify: true\n",
                "    token: abc\n",
            ),
        ),
    ];
    let mut admin = AdminServiceClient::new(target.connect(Some(&arena.admin)).await);
    let mut attempts = Vec::new();
    for (field, kubeconfig) in cases {
        let name = format!("pushed-{}", field.to_lowercase());
        attempts.push(refused(
            format!("AddCluster with {field}"),
            admin
                .add_cluster(proto::AddClusterRequest {
                    name,
                    kubeconfig,
                    ..Default::default()
                })
                .await,
            Code::InvalidArgument,
            &[field],
        ));
    }
    // Give a push loop, had one started, the time to run the exec plugin.
    tokio::time::sleep(Duration::from_secs(2)).await;
    attempts.push((
        "the exec plugin never ran".into(),
        if marker.exists() {
            Err(format!(
                "{} exists: the server ran the kubeconfig's command",
                marker.display()
            ))
        } else {
            Ok("no marker file".into())
        },
    ));
    attempts
}

// ---------------------------------------------------------------------------
// The run.

struct Verdict {
    name: &'static str,
    refused: bool,
    store_unchanged: bool,
    report: String,
}

async fn run_case(arena: &Arc<Arena>, case: &Case) -> Verdict {
    let data_dir = arena.data_dir();
    if let Some(prepare) = case.prepare {
        prepare(arena);
    }
    let before = dump(&data_dir);
    let server = Server::start(&arena.data);
    let target = Arc::new(Target {
        arena: arena.clone(),
        url: server.url.clone(),
    });
    let started = Instant::now();
    let attempts = (case.attack)(target).await;
    let elapsed = started.elapsed();
    server.stop();
    let after = dump(&data_dir);
    let changes = differences(&before, &after);
    let mut unexpected: Vec<&Change> = changes
        .iter()
        .filter(|change| !legitimate(change, case.permits))
        .collect();
    // One start issues one server certificate; more is a change.
    let server_certificates: Vec<&Change> = changes
        .iter()
        .filter(|change| change.table == "certificates" && change.before.is_none())
        .filter(|change| json(&change.after)["kind"] == "control-plane-server")
        .collect();
    if server_certificates.len() > 1 {
        unexpected.extend(&server_certificates[1..]);
    }
    let refused = !attempts.is_empty() && attempts.iter().all(|(_, verdict)| verdict.is_ok());
    let mut report = format!(
        "{} {} ({} attempt(s), {:.1} s)\n",
        if refused && unexpected.is_empty() {
            "ok  "
        } else {
            "FAIL"
        },
        case.name,
        attempts.len(),
        elapsed.as_secs_f64()
    );
    for (label, verdict) in &attempts {
        match verdict {
            Ok(refusal) => report.push_str(&format!("       held  {label}: {}\n", short(refusal))),
            Err(problem) => report.push_str(&format!("   NOT HELD  {label}: {problem}\n")),
        }
    }
    for change in &unexpected {
        report.push_str(&format!("   STORE CHANGED  {change}\n"));
    }
    Verdict {
        name: case.name,
        refused,
        store_unchanged: unexpected.is_empty(),
        report,
    }
}

/// Prepares an arena, runs `cases` one after another, prints each verdict
/// and the summary line, and fails unless every case was refused with the
/// store unchanged.
async fn run_suite(cases: &[Case]) {
    let started = Instant::now();
    let arena = Arc::new(prepare().await);
    let mut verdicts = Vec::new();
    for case in cases {
        let verdict = run_case(&arena, case).await;
        print!("{}", verdict.report);
        verdicts.push(verdict);
    }
    let refused = verdicts.iter().filter(|verdict| verdict.refused).count();
    let changed: Vec<&str> = verdicts
        .iter()
        .filter(|verdict| !verdict.store_unchanged)
        .map(|verdict| verdict.name)
        .collect();
    println!(
        "{} cases, {refused} refused, {} ({:.1} s)",
        verdicts.len(),
        if changed.is_empty() {
            "store unchanged".to_string()
        } else {
            format!("store changed in {}", changed.join(", "))
        },
        started.elapsed().as_secs_f64()
    );
    let failed: Vec<&str> = verdicts
        .iter()
        .filter(|verdict| !verdict.refused || !verdict.store_unchanged)
        .map(|verdict| verdict.name)
        .collect();
    assert!(
        failed.is_empty(),
        "not refused or store changed: {failed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_attacker_is_refused_and_the_store_stays_unchanged() {
    run_suite(&cases()).await;
}
