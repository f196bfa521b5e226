//! Cold start: `trustplane server` (the release binary) from process start
//! to ready on a data directory holding 1 000 enrolled clusters, with 0
//! (the baseline) and 100 000 issued-certificate records (each with its
//! `certificate-issue` audit entry, as the server writes them). The two
//! directories are started alternately, `TRUSTPLANE_BENCH_RUNS` times each;
//! each run also times the first `GetBundle` and the first
//! `SignIntermediate` of an enrolled cluster, and an `AuditLog` query (the
//! request paths that must not do O(records) work).
//!
//! `cargo bench --bench cold_start` (env: `TRUSTPLANE_BIN`, default the
//! binary cargo built with the bench; `TRUSTPLANE_BENCH_CLUSTERS`, default
//! 1000; `TRUSTPLANE_BENCH_RECORDS`, default 100000;
//! `TRUSTPLANE_BENCH_RUNS`, default 5). Progress on stderr, one JSON object
//! on stdout; exits non-zero with the reason when something is missing or
//! a start fails.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ring::rand::{SecureRandom, SystemRandom};
use trustplane::ca::{self, KeyAlgorithm, PrivateKey};
use trustplane::cli::connect;
use trustplane::clock::SystemClock;
use trustplane::proto;
use trustplane::proto::admin_service_client::AdminServiceClient;
use trustplane::proto::intermediate_service_client::IntermediateServiceClient;
use trustplane::proto::trust_bundle_service_client::TrustBundleServiceClient;
use trustplane::reconcile::StatusReport;
use trustplane::server::{self, Authority, DataDir, InitOptions};
use trustplane::signer::sealed::Kek;
use trustplane::store::records::{IssuedKind, IssuedRecord};
use trustplane::store::{Batch, Expect, RedbStore, Store, Table};

/// A start that is not ready within this fails the bench.
const READY_TIMEOUT: Duration = Duration::from_secs(300);
/// Issued records per store transaction while the directory is written.
const RECORDS_PER_BATCH: usize = 5000;

fn fail(message: impl std::fmt::Display) -> ! {
    eprintln!("cold_start bench FAILED: {message}");
    std::process::exit(1)
}

#[allow(clippy::disallowed_methods)] // the bench's own knob, not product configuration
fn number_from_env(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Err(_) => default,
        Ok(text) => text
            .parse()
            .unwrap_or_else(|_| fail(format!("{name}={text:?} is not a number"))),
    }
}

#[allow(clippy::disallowed_methods)] // the bench's own knob, not product configuration
fn binary() -> PathBuf {
    let path = std::env::var_os("TRUSTPLANE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_trustplane")));
    if !path.is_file() {
        fail(format!(
            "the trustplane binary {} does not exist: build it (`cargo build --release`) or set TRUSTPLANE_BIN",
            path.display()
        ));
    }
    path
}

/// What a run needs to call the server as an enrolled cluster and an admin.
struct Credentials {
    cluster: String,
    client_cert_pem: String,
    client_key_pem: String,
    control_plane_ca_pem: String,
    admin_cert_pem: String,
    admin_key_pem: String,
}

/// Initialises `data_dir` and enrolls `clusters` clusters through the
/// server's own calls (add, enroll, first intermediate, first report), so
/// the store holds what a real fleet leaves there. Returns the first
/// cluster's credentials.
async fn populate_clusters(data_dir: &DataDir, clusters: usize) -> Credentials {
    std::fs::create_dir_all(&data_dir.path).unwrap();
    let store = Arc::new(RedbStore::open(&data_dir.store_path()).unwrap());
    let kek = Kek::generate().unwrap();
    kek.write_new_file(&data_dir.kek_path()).unwrap();
    let policy = trustplane::Policy::builtin_default().unwrap();
    let clock = SystemClock::shared();
    server::initialize(
        store.as_ref(),
        &kek,
        data_dir,
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
    .unwrap_or_else(|error| fail(format!("init: {error}")));
    let authority = Authority::open(store.clone(), &kek, policy, clock).unwrap();
    let version = authority.publication.current().bundle.version();
    let mut first = None;
    for index in 0..clusters {
        let name = format!("bench-{index:05}");
        let (token, _) = authority
            .enrollment
            .add_cluster("admin", &name, None)
            .unwrap_or_else(|error| fail(format!("adding {name}: {error}")));
        let client_key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
        let client_csr = ca::create_csr(&client_key, "bench agent").unwrap();
        let enrolled = authority
            .enrollment
            .enroll(&name, &token, &client_csr)
            .await
            .unwrap_or_else(|error| fail(format!("enrolling {name}: {error}")));
        let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
        let csr = ca::create_csr(&key, &format!("{name} intermediate CA")).unwrap();
        let signed = authority
            .issuance
            .sign_intermediate(&name, csr.as_bytes())
            .await
            .unwrap_or_else(|error| fail(format!("first intermediate of {name}: {error}")));
        authority
            .registry
            .report_status(
                &name,
                StatusReport {
                    applied_bundle_version: version,
                    intermediate_serial: signed.certificate.serial_hex().unwrap(),
                    intermediate_not_after_unix: ca::system_time_to_unix(
                        signed.certificate.not_after().unwrap(),
                    ),
                    cert_chain_pem: signed.cert_chain_pem.clone(),
                    error: String::new(),
                },
            )
            .unwrap_or_else(|error| fail(format!("first report of {name}: {error}")));
        if first.is_none() {
            first = Some(Credentials {
                cluster: name,
                client_cert_pem: enrolled.client_certificate.to_pem(),
                client_key_pem: client_key.to_pkcs8_pem().to_string(),
                control_plane_ca_pem: enrolled.control_plane_ca.to_pem(),
                admin_cert_pem: std::fs::read_to_string(data_dir.admin_cert_path()).unwrap(),
                admin_key_pem: std::fs::read_to_string(data_dir.admin_key_path()).unwrap(),
            });
        }
        if (index + 1) % 200 == 0 {
            eprintln!("  {} of {clusters} clusters enrolled", index + 1);
        }
    }
    first.unwrap_or_else(|| fail("no cluster to call the server as (TRUSTPLANE_BENCH_CLUSTERS=0)"))
}

/// Adds `count` issued-intermediate records spread over `clusters`
/// clusters, each with its `certificate-issue` audit entry, as the server
/// records an issuance (random 20-byte serials, a year's lifetime).
fn add_issued_records(data_dir: &DataDir, clusters: usize, count: usize) {
    let store = RedbStore::open(&data_dir.store_path()).unwrap();
    let store: Arc<dyn Store> = Arc::new(store);
    let kek = Kek::load(Some(&data_dir.kek_path()), None).unwrap();
    let authority = Authority::open(
        store.clone(),
        &kek,
        trustplane::Policy::builtin_default().unwrap(),
        SystemClock::shared(),
    )
    .unwrap();
    let random = SystemRandom::new();
    let now = ca::system_time_to_unix(SystemClock.now());
    let year = 365 * 24 * 3600;
    let mut written = 0;
    while written < count {
        let mut batch = Batch::new();
        for _ in 0..RECORDS_PER_BATCH.min(count - written) {
            let mut serial = [0u8; 20];
            random.fill(&mut serial).unwrap();
            serial[0] &= 0x7f;
            let serial = hex::encode(serial);
            let mut public_key = [0u8; 32];
            random.fill(&mut public_key).unwrap();
            let cluster = format!("bench-{:05}", written % clusters.max(1));
            let record = IssuedRecord {
                serial: serial.clone(),
                kind: IssuedKind::Intermediate,
                cluster: Some(cluster.clone()),
                issued_unix: now,
                not_after_unix: now + year,
            };
            batch = batch
                .put_json(Table::Certificates, &serial, &record, Some(Expect::Absent))
                .unwrap();
            batch = authority
                .audit
                .record(
                    batch,
                    &server::cluster_actor(&cluster),
                    "certificate-issue",
                    format!(
                        "intermediate serial {serial}, cluster {cluster}, public key sha256 {}, lifetime 1year (not after {})",
                        hex::encode(public_key),
                        humantime::format_rfc3339_seconds(ca::unix_to_system_time(now + year))
                    ),
                )
                .unwrap();
            written += 1;
        }
        store
            .commit(batch)
            .unwrap_or_else(|error| fail(format!("writing issued records: {error}")));
        if written % 20_000 == 0 || written == count {
            eprintln!("  {written} of {count} issued records written");
        }
    }
}

/// A port free now on 127.0.0.1 (for `--health-listen`, which must be
/// known before the server starts).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .unwrap_or_else(|error| fail(format!("no free port on 127.0.0.1: {error}")))
}

/// Whether `GET /readyz` answers 200.
fn ready(health: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&health, Duration::from_millis(100)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if stream
        .write_all(b"GET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut answer = [0u8; 12];
    stream.read_exact(&mut answer).is_ok() && answer.starts_with(b"HTTP/1.1 200")
}

/// Stops the server with SIGTERM (a clean shutdown: the next start opens
/// the store without recovery) and waits for it.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(pid) = rustix::process::Pid::from_raw(self.0.id() as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One start's figures, in milliseconds from the process start.
#[derive(Clone, Copy, Debug, Default)]
struct Start {
    listening_ms: f64,
    ready_ms: f64,
    first_get_bundle_ms: f64,
    first_sign_intermediate_ms: f64,
    audit_log_ms: f64,
}

fn millis(duration: Duration) -> f64 {
    (duration.as_secs_f64() * 1e6).round() / 1e3
}

async fn start_once(binary: &Path, data_dir: &Path, credentials: &Credentials) -> Start {
    let health = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let started = Instant::now();
    let mut child = Command::new(binary)
        .args(["server", "--listen", "127.0.0.1:0", "--health-listen"])
        .arg(health.to_string())
        .arg("--data-dir")
        .arg(data_dir)
        .env_remove("TRUSTPLANE_KEK")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|error| fail(format!("starting {}: {error}", binary.display())));
    let stdout = child.stdout.take().unwrap();
    let server = Server(child);
    // The URL line arrives on stdout when the gRPC listener is bound.
    let (url_sender, url_receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        let mut sent = false;
        while reader.read_line(&mut line).unwrap_or(0) > 0 {
            if !sent
                && let Some(url) = line
                    .split_whitespace()
                    .find(|word| word.starts_with("https://"))
            {
                let _ = url_sender.send((url.to_string(), Instant::now()));
                sent = true;
            }
            line.clear();
        }
    });
    let deadline = started + READY_TIMEOUT;
    let mut ready_at = None;
    while ready_at.is_none() {
        if ready(health) {
            ready_at = Some(started.elapsed());
            break;
        }
        if Instant::now() > deadline {
            fail(format!(
                "the server on {} was not ready within {READY_TIMEOUT:?}",
                data_dir.display()
            ));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let (url, listening_at) = url_receiver
        .recv_timeout(READY_TIMEOUT)
        .unwrap_or_else(|_| fail("the server never printed its https:// URL"));
    let ready_ms = millis(ready_at.unwrap_or_default());

    let channel = connect(
        &url,
        &credentials.control_plane_ca_pem,
        Some((&credentials.client_cert_pem, &credentials.client_key_pem)),
    )
    .await
    .unwrap_or_else(|error| fail(format!("connecting to {url} as a cluster: {error:#}")));
    TrustBundleServiceClient::new(channel.clone())
        .get_bundle(proto::GetBundleRequest {})
        .await
        .unwrap_or_else(|status| fail(format!("the first GetBundle failed: {status}")));
    let first_get_bundle_ms = millis(started.elapsed());
    let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let csr = ca::create_csr(&key, "bench intermediate CA").unwrap();
    IntermediateServiceClient::new(channel)
        .sign_intermediate(proto::SignIntermediateRequest {
            csr: csr.into_bytes(),
            cluster: credentials.cluster.clone(),
        })
        .await
        .unwrap_or_else(|status| fail(format!("the first SignIntermediate failed: {status}")));
    let first_sign_intermediate_ms = millis(started.elapsed());
    let admin = connect(
        &url,
        &credentials.control_plane_ca_pem,
        Some((&credentials.admin_cert_pem, &credentials.admin_key_pem)),
    )
    .await
    .unwrap_or_else(|error| fail(format!("connecting to {url} as the admin: {error:#}")));
    let mut admin = AdminServiceClient::new(admin);
    // Warm (one call to connect), then timed.
    let query = proto::AuditLogRequest {
        limit: 20,
        ..Default::default()
    };
    admin
        .audit_log(query.clone())
        .await
        .unwrap_or_else(|status| fail(format!("AuditLog failed: {status}")));
    let before = Instant::now();
    admin
        .audit_log(query)
        .await
        .unwrap_or_else(|status| fail(format!("AuditLog failed: {status}")));
    let audit_log_ms = millis(before.elapsed());
    drop(server);
    Start {
        listening_ms: millis(listening_at.duration_since(started)),
        ready_ms,
        first_get_bundle_ms,
        first_sign_intermediate_ms,
        audit_log_ms,
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

fn summary(starts: &[Start]) -> serde_json::Value {
    let of = |field: fn(&Start) -> f64| median(starts.iter().map(field).collect());
    serde_json::json!({
        "listening_ms": of(|start| start.listening_ms),
        "ready_ms": of(|start| start.ready_ms),
        "first_get_bundle_ms": of(|start| start.first_get_bundle_ms),
        "first_sign_intermediate_ms": of(|start| start.first_sign_intermediate_ms),
        "audit_log_20_ms": of(|start| start.audit_log_ms),
        "ready_ms_each": starts.iter().map(|start| start.ready_ms).collect::<Vec<_>>(),
    })
}

fn directory_bytes(path: &Path) -> u64 {
    std::fs::read_dir(path)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|entry| match entry.metadata() {
                    Ok(meta) if meta.is_dir() => directory_bytes(&entry.path()),
                    Ok(meta) => meta.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

fn ratio(value: f64, baseline: f64) -> f64 {
    if baseline > 0.0 {
        (value / baseline * 100.0).round() / 100.0
    } else {
        0.0
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if std::env::args().any(|argument| argument == "--list") {
        println!("cold_start: bench");
        return;
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let binary = binary();
    let clusters = number_from_env("TRUSTPLANE_BENCH_CLUSTERS", 1000);
    let records = number_from_env("TRUSTPLANE_BENCH_RECORDS", 100_000);
    let runs = number_from_env("TRUSTPLANE_BENCH_RUNS", 5).max(1);
    let work = tempfile::tempdir().unwrap();
    let baseline_dir = DataDir::new(work.path().join("baseline"));
    let loaded_dir = DataDir::new(work.path().join("loaded"));

    let setup = Instant::now();
    eprintln!("cold_start bench: enrolling {clusters} clusters");
    let credentials = populate_clusters(&baseline_dir, clusters).await;
    let clusters_setup = setup.elapsed();
    // The same directory (same KEK, clusters, credentials) plus the records.
    let copied = Command::new("cp")
        .arg("-a")
        .arg(&baseline_dir.path)
        .arg(&loaded_dir.path)
        .status()
        .unwrap_or_else(|error| fail(format!("cp: {error}")));
    if !copied.success() {
        fail("copying the data directory failed");
    }
    let records_started = Instant::now();
    eprintln!("cold_start bench: writing {records} issued records");
    add_issued_records(&loaded_dir, clusters, records);
    let records_setup = records_started.elapsed();

    let mut baseline = Vec::new();
    let mut loaded = Vec::new();
    for run in 0..runs {
        baseline.push(start_once(&binary, &baseline_dir.path, &credentials).await);
        loaded.push(start_once(&binary, &loaded_dir.path, &credentials).await);
        eprintln!(
            "run {}: ready {:.1} ms (0 records) vs {:.1} ms ({records} records)",
            run + 1,
            baseline[run].ready_ms,
            loaded[run].ready_ms
        );
    }
    let baseline_summary = summary(&baseline);
    let loaded_summary = summary(&loaded);
    let ready_ratio = ratio(
        loaded_summary["ready_ms"].as_f64().unwrap_or(0.0),
        baseline_summary["ready_ms"].as_f64().unwrap_or(0.0),
    );
    let result = serde_json::json!({
        "bench": "cold_start",
        "clusters": clusters,
        "records": records,
        "runs": runs,
        "setup_clusters_s": (clusters_setup.as_secs_f64() * 1000.0).round() / 1000.0,
        "setup_records_s": (records_setup.as_secs_f64() * 1000.0).round() / 1000.0,
        "store_bytes_baseline": directory_bytes(&baseline_dir.path),
        "store_bytes_loaded": directory_bytes(&loaded_dir.path),
        "baseline": baseline_summary,
        "loaded": loaded_summary,
        "ready_ratio": ready_ratio,
        "first_sign_intermediate_ratio": ratio(
            loaded_summary["first_sign_intermediate_ms"].as_f64().unwrap_or(0.0),
            baseline_summary["first_sign_intermediate_ms"].as_f64().unwrap_or(0.0),
        ),
        "audit_log_ratio": ratio(
            loaded_summary["audit_log_20_ms"].as_f64().unwrap_or(0.0),
            baseline_summary["audit_log_20_ms"].as_f64().unwrap_or(0.0),
        ),
    });
    println!("{result}");
}
