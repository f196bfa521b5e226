//! Random kills. The `trustplane server` binary is killed with SIGKILL at
//! random points (seeded; the seed is printed, `TRUSTPLANE_KILL_SEED`
//! replays it) while clients enroll clusters, sign intermediates, report,
//! renew identities (see the merge switches) and a root rotation runs, and
//! restarted each time on the same data directory. After every kill the
//! store must open, every certificate a client received must be recorded
//! under its serial for the right cluster and kind, no serial may have been
//! handed out twice, and the audit chain must verify; in the end the
//! rotation completes. Then the `trustplane agent` binary is killed the same
//! way while it replaces intermediates and rewrites `cacerts`: what it left
//! on disk must always be a complete set istiod would load, and the server's
//! view must converge on it. Two ignored tests reproduce what the kills
//! found, without a kill where possible.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::hash::{BuildHasher, Hasher};
use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::binary::{BINARY, Guard};
use common::mesh::{CheckingSink, Mesh};
use tonic::transport::Channel;
use trustplane::agent::{self, AgentConfig, AgentHandle};
use trustplane::ca::{self, CacertsFiles, Certificate, KeyAlgorithm, PrivateKey};
use trustplane::cli::{connect, read_cacerts_dir};
use trustplane::clock::SystemClock;
use trustplane::proto;
use trustplane::proto::admin_service_client::AdminServiceClient;
use trustplane::proto::intermediate_service_client::IntermediateServiceClient;
use trustplane::server::DataDir;
use trustplane::sink::{CacertsMaterial, ClusterSink, SinkError};
use trustplane::store::RedbStore;
use trustplane::store::Table;
use trustplane::store::records::{IssuedKind, IssuedRecord, list_json};

// ---- merge switches ---------------------------------------------------
//
// MERGE SWITCH (audit verify, issue 8 point 6): set to `true` once
// `trustplane audit verify` exists. It is run on the data directory after
// every SIGKILL of the server (offline: no server holds the store then); if
// the command goes through the server instead, call `check_audit_chain`
// after each restart and add `--server`.
const AUDIT_VERIFY: bool = true;
//
// MERGE SWITCH (identity renewal, issue 8 point 2): the `RenewIdentity`
// call is written in `renew_identity` below under `#[cfg(any())]` (never
// compiled). Once the RPC exists, delete that `#[cfg(any())]` line and the
// stub after it. Tried against the identity branch (h-identity, f296d41):
// every renewal recorded, no duplicate; but a renewal whose answer a kill
// took strands the cluster (its old certificate is then refused, "no longer
// valid ... (the cluster was re-enrolled)"), counted under "answers lost to
// a kill"; once renewal survives a lost answer, make that a failure.

/// SIGKILLs of the server (the issue asks for at least 20).
const SERVER_KILLS: usize = 22;
/// At most this many while the rotation runs.
const MAX_SERVER_KILLS: usize = 30;
/// SIGKILLs of the agent.
const AGENT_KILLS: usize = 20;
/// Concurrent client streams in the server test, by cluster-name prefix.
const STREAMS: [char; 2] = ['s', 't'];
/// Agents in the server test: they carry the rotation's acknowledgements.
const AGENTS: usize = 3;
/// The rotation's grace, and the simulated workload certificate lifetime.
const GRACE_SECONDS: u64 = 2;

// ---- seeded randomness -------------------------------------------------

/// The seed: `TRUSTPLANE_KILL_SEED` (decimal or 0x-hex) to replay a run,
/// else a fresh one.
#[allow(clippy::disallowed_methods)] // the test's own replay switch, not product configuration
fn seed() -> u64 {
    match std::env::var("TRUSTPLANE_KILL_SEED") {
        Ok(text) => {
            let text = text.trim();
            let parsed = match text.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => text.parse(),
            };
            parsed.unwrap_or_else(|error| panic!("TRUSTPLANE_KILL_SEED={text:?}: {error}"))
        }
        Err(_) => std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish(),
    }
}

/// SplitMix64: small, seedable, good enough to pick kill times.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// True with probability 1/`n`.
    fn one_in(&mut self, n: u64) -> bool {
        self.next().is_multiple_of(n)
    }

    /// Uniform in `low..high` milliseconds.
    fn millis(&mut self, low: u64, high: u64) -> Duration {
        Duration::from_millis(low + self.next() % (high - low))
    }
}

// ---- processes -----------------------------------------------------------

fn append_log(path: &Path) -> File {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap()
}

/// The last lines of a process log, for failure messages.
fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// Starts `trustplane server` on `data` and `listen` (stderr appended to
/// `log`); returns the process and the URL it printed, or why it did not
/// start.
fn spawn_server(data: &Path, listen: &str, log: &Path) -> Result<(Guard, String), String> {
    let mut child = Command::new(BINARY)
        .args(["server", "--listen", listen, "--data-dir"])
        .arg(data)
        .env_remove("TRUSTPLANE_KEK")
        .stdout(Stdio::piped())
        .stderr(append_log(log))
        .spawn()
        .map_err(|error| format!("cannot run {BINARY}: {error}"))?;
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    let guard = Guard(child);
    let url = line
        .split_whitespace()
        .find(|word| word.starts_with("https://"))
        .ok_or_else(|| format!("no URL in its output {line:?}; log:\n{}", log_tail(log)))?
        .to_string();
    Ok((guard, url))
}

/// SIGKILLs `process` and checks that it was still running (a process
/// that exited by itself before the kill is a crash, not a kill).
fn sigkill(mut process: Guard, what: &str, point: &str, log: &Path) {
    let child: &mut Child = &mut process.0;
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert_eq!(
        status.signal(),
        Some(9),
        "{point}: the {what} had exited by itself ({status}) before the kill; log:\n{}",
        log_tail(log)
    );
}

fn trustplane(args: &[&str]) -> std::process::Output {
    Command::new(BINARY)
        .args(args)
        .env_remove("TRUSTPLANE_KEK")
        .output()
        .unwrap()
}

fn output_text(output: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn init(data: &Path) {
    let init = trustplane(&[
        "init",
        "--trust-domain",
        "cluster.local",
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    assert!(init.status.success(), "init: {}", output_text(&init));
}

// ---- what clients received -------------------------------------------

/// One certificate a client received from the server.
#[derive(Clone, Debug)]
struct Received {
    serial: String,
    kind: IssuedKind,
    cluster: String,
    /// The call that returned it and the server run it came from.
    how: String,
}

#[derive(Default)]
struct Ledger {
    received: Vec<Received>,
    /// The call each client stream has in flight now, by the stream's
    /// cluster-name prefix (named in kill messages).
    doing: BTreeMap<char, String>,
    /// The rotation phase last seen.
    phase: String,
    /// Server runs so far (1 + kills).
    run: usize,
    enrollments: u64,
    issuances: u64,
    renewals: u64,
    reports: u64,
    removals: u64,
    agent_writes: u64,
    /// Calls that lost their answer to a kill and were then refused as
    /// already done (a token used, a name taken), by call: expected.
    lost_answers: BTreeMap<String, u64>,
    /// Calls refused without any outage before them: each is a bug.
    refusals: Vec<String>,
}

struct Shared {
    ledger: Mutex<Ledger>,
    stop: AtomicBool,
}

impl Shared {
    fn new() -> Arc<Self> {
        Arc::new(Shared {
            ledger: Mutex::new(Ledger {
                run: 1,
                ..Ledger::default()
            }),
            stop: AtomicBool::new(false),
        })
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    fn with<T>(&self, change: impl FnOnce(&mut Ledger) -> T) -> T {
        change(&mut self.ledger.lock().unwrap())
    }

    fn doing(&self, cluster: &str, what: String) {
        let stream = cluster.chars().next().unwrap_or_default();
        self.with(|ledger| ledger.doing.insert(stream, what));
    }

    fn receive(&self, certificate_pem: &str, kind: IssuedKind, cluster: &str, call: &str) {
        let serial = Certificate::from_pem(certificate_pem)
            .and_then(|certificate| certificate.serial_hex())
            .unwrap_or_else(|error| {
                panic!("{call} for {cluster} returned no certificate: {error}")
            });
        self.with(|ledger| {
            let how = format!("{call} (server run {})", ledger.run);
            ledger.received.push(Received {
                serial,
                kind,
                cluster: cluster.to_string(),
                how,
            });
        });
    }
}

/// Counts of one store check.
#[derive(Default)]
struct StoreCheck {
    records: usize,
    received: usize,
}

/// Opens the store of a dead server and checks every certificate a client
/// received against it: recorded under its serial, for that cluster and
/// kind, and no serial received twice.
fn check_store(data: &Path, shared: &Shared, point: &str) -> StoreCheck {
    let path = DataDir::new(data).store_path();
    let store = RedbStore::open(&path)
        .unwrap_or_else(|error| panic!("{point}: the store does not open: {error}"));
    let records: Vec<(String, IssuedRecord, u64)> = list_json(&store, Table::Certificates)
        .unwrap_or_else(|error| panic!("{point}: the certificates table does not read: {error}"));
    let mut recorded = HashMap::new();
    for (key, record, _) in records {
        assert_eq!(key, record.serial, "{point}: a record under another serial");
        recorded.insert(key, record);
    }
    let ledger = shared.ledger.lock().unwrap();
    let mut seen: HashMap<&str, &Received> = HashMap::new();
    let mut duplicates = Vec::new();
    let mut unrecorded = Vec::new();
    for received in &ledger.received {
        if let Some(first) = seen.insert(&received.serial, received) {
            duplicates.push(format!(
                "serial {} handed out twice: {} for {} and {} for {}",
                received.serial, first.how, first.cluster, received.how, received.cluster
            ));
        }
        match recorded.get(&received.serial) {
            None => unrecorded.push(format!(
                "serial {} ({:?} for {}, {}) is not in the store",
                received.serial, received.kind, received.cluster, received.how
            )),
            Some(record)
                if record.kind != received.kind
                    || record.cluster.as_deref() != Some(received.cluster.as_str()) =>
            {
                unrecorded.push(format!(
                    "serial {} ({:?} for {}, {}) is recorded as {:?} for {:?}",
                    received.serial,
                    received.kind,
                    received.cluster,
                    received.how,
                    record.kind,
                    record.cluster
                ));
            }
            Some(_) => {}
        }
    }
    assert!(
        duplicates.is_empty() && unrecorded.is_empty(),
        "{point}: {} duplicates, {} unrecorded:\n{}",
        duplicates.len(),
        unrecorded.len(),
        duplicates
            .iter()
            .chain(unrecorded.iter())
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    StoreCheck {
        records: recorded.len(),
        received: ledger.received.len(),
    }
}

// ---- the client stream ---------------------------------------------------

/// How the server is reached, and the admin credential.
#[derive(Clone)]
struct Endpoint {
    url: String,
    ca_pem: String,
    admin_cert: String,
    admin_key: String,
}

impl Endpoint {
    fn new(data: &Path, url: &str) -> Self {
        let read = |name: &str| std::fs::read_to_string(data.join(name)).unwrap();
        Endpoint {
            url: url.to_string(),
            ca_pem: read("control-plane-ca.pem"),
            admin_cert: read("admin/admin.pem"),
            admin_key: read("admin/admin-key.pem"),
        }
    }

    async fn channel(&self, identity: Option<(&str, &str)>) -> Result<Channel, Failure> {
        connect(&self.url, &self.ca_pem, identity)
            .await
            .map_err(|error| Failure::Down(format!("{error:#}")))
    }

    async fn admin(&self) -> Result<AdminServiceClient<Channel>, Failure> {
        Ok(AdminServiceClient::new(
            self.channel(Some((&self.admin_cert, &self.admin_key)))
                .await?,
        ))
    }
}

/// Why a call did not succeed.
enum Failure {
    /// The server is down or restarting (or asks to retry later).
    Down(String),
    /// The server answered with a refusal.
    Refused(tonic::Status),
}

impl From<tonic::Status> for Failure {
    fn from(status: tonic::Status) -> Self {
        use tonic::Code;
        match status.code() {
            Code::Unavailable
            | Code::Unknown
            | Code::Cancelled
            | Code::DeadlineExceeded
            | Code::ResourceExhausted => Failure::Down(format!("{status:?}")),
            _ => Failure::Refused(status),
        }
    }
}

/// Calls `attempt` until it succeeds, is refused, or the server stays down
/// for 30 s (or the stream stops). A refusal on the first try is recorded
/// as a bug; a refusal after an outage is counted as an answer lost to a
/// kill (the lost attempt may have been carried out: a name taken), except
/// for `RenewIdentity` and `Enroll`, which answer a repeat with the same
/// key again. Either way the caller abandons the cluster.
async fn retry<T>(
    shared: &Shared,
    what: &str,
    mut attempt: impl AsyncFnMut() -> Result<T, Failure>,
) -> Result<T, ()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut outages = 0;
    loop {
        match attempt().await {
            Ok(value) => return Ok(value),
            // A lost `RenewIdentity` or `Enroll` answer is answered again
            // (same key): a refusal of those is a bug.
            Err(Failure::Refused(_))
                if outages > 0
                    && !what.starts_with("RenewIdentity")
                    && !what.starts_with("Enroll ") =>
            {
                let call = what.split_whitespace().next().unwrap_or_default();
                shared
                    .with(|ledger| *ledger.lost_answers.entry(call.to_string()).or_default() += 1);
                return Err(());
            }
            Err(Failure::Refused(status)) => {
                shared.with(|ledger| {
                    let run = ledger.run;
                    ledger.refusals.push(format!(
                        "{what} (server run {run}): {:?} {}",
                        status.code(),
                        status.message()
                    ));
                });
                return Err(());
            }
            Err(Failure::Down(text)) => {
                outages += 1;
                assert!(
                    Instant::now() < deadline,
                    "{what}: the server stayed unreachable for 30 s: {text}"
                );
                if shared.stopped() {
                    return Err(());
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// A new client key and its CSR.
fn key_and_csr(subject: &str) -> (PrivateKey, String) {
    let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let csr = ca::create_csr(&key, subject).unwrap();
    (key, csr)
}

/// A cluster's control-plane identity as the client holds it.
struct Identity {
    certificate_pem: String,
    key_pem: String,
}

/// Clusters `<prefix>001`, `<prefix>002`, … one after the other until stopped: add,
/// enroll, sign three intermediates (each reported), renew the identity,
/// remove. A call whose answer a kill took, and which is then refused as
/// already done, abandons the cluster (it is removed) and the next starts.
async fn client_stream(prefix: char, endpoint: Endpoint, shared: Arc<Shared>) {
    let mut index = 0;
    while !shared.stopped() {
        index += 1;
        let name = format!("{prefix}{index:03}");
        // Done or abandoned, the cluster goes: it would block the rotation.
        let _ = one_cluster(&endpoint, &shared, &name).await;
        remove_cluster(&endpoint, &shared, &name).await;
    }
}

async fn one_cluster(endpoint: &Endpoint, shared: &Shared, name: &str) -> Result<(), ()> {
    shared.doing(name, format!("AddCluster {name}"));
    let token = retry(shared, &format!("AddCluster {name}"), async || {
        let response = endpoint
            .admin()
            .await?
            .add_cluster(proto::AddClusterRequest {
                name: name.to_string(),
                ..Default::default()
            })
            .await?;
        Ok(response.into_inner().join_token)
    })
    .await?;

    shared.doing(name, format!("Enroll {name}"));
    let (key, csr) = key_and_csr(&format!("kill test {name}"));
    let enrolled = retry(shared, &format!("Enroll {name}"), async || {
        let response = IntermediateServiceClient::new(endpoint.channel(None).await?)
            .enroll(proto::EnrollRequest {
                cluster: name.to_string(),
                join_token: token.clone(),
                client_csr_pem: csr.clone(),
            })
            .await?;
        Ok(response.into_inner())
    })
    .await?;
    shared.receive(
        &enrolled.client_cert_pem,
        IssuedKind::ControlPlaneClient,
        name,
        "Enroll",
    );
    shared.with(|ledger| ledger.enrollments += 1);
    let mut identity = Identity {
        certificate_pem: enrolled.client_cert_pem,
        key_pem: key.to_pkcs8_pem().to_string(),
    };

    for round in 0..3 {
        sign_and_report(endpoint, shared, name, &identity, round).await?;
        if round == 1
            && let Some(renewed) = renew(endpoint, shared, name, &identity).await?
        {
            identity = renewed;
        }
    }
    Ok(())
}

async fn sign_and_report(
    endpoint: &Endpoint,
    shared: &Shared,
    name: &str,
    identity: &Identity,
    round: usize,
) -> Result<(), ()> {
    let as_cluster = Some((identity.certificate_pem.as_str(), identity.key_pem.as_str()));
    shared.doing(name, format!("SignIntermediate {name} #{round}"));
    let (_, csr) = key_and_csr(&format!("{name} intermediate CA"));
    let signed = retry(shared, &format!("SignIntermediate {name}"), async || {
        let response = IntermediateServiceClient::new(endpoint.channel(as_cluster).await?)
            .sign_intermediate(proto::SignIntermediateRequest {
                csr: csr.clone().into_bytes(),
                cluster: name.to_string(),
            })
            .await?;
        Ok(response.into_inner())
    })
    .await?;
    shared.receive(
        &signed.certificate_pem,
        IssuedKind::Intermediate,
        name,
        "SignIntermediate",
    );
    shared.with(|ledger| ledger.issuances += 1);

    shared.doing(name, format!("ReportStatus {name} #{round}"));
    let version = signed.bundle.as_ref().map_or(0, |bundle| bundle.version);
    retry(shared, &format!("ReportStatus {name}"), async || {
        IntermediateServiceClient::new(endpoint.channel(as_cluster).await?)
            .report_status(proto::ReportStatusRequest {
                applied_bundle_version: version,
                intermediate_serial: signed.serial.clone(),
                intermediate_not_after_unix: signed.not_after_unix,
                cert_chain_pem: signed.cert_chain_pem.clone(),
                cluster: name.to_string(),
                ..Default::default()
            })
            .await?;
        Ok(())
    })
    .await?;
    shared.with(|ledger| ledger.reports += 1);
    Ok(())
}

/// Renews `name`'s identity; `None` while `RenewIdentity` does not exist.
async fn renew(
    endpoint: &Endpoint,
    shared: &Shared,
    name: &str,
    identity: &Identity,
) -> Result<Option<Identity>, ()> {
    shared.doing(name, format!("RenewIdentity {name}"));
    let (key, csr) = key_and_csr(&format!("kill test {name}"));
    let Some(certificate_pem) = retry(shared, &format!("RenewIdentity {name}"), async || {
        renew_identity(endpoint, identity, &csr).await
    })
    .await?
    else {
        return Ok(None);
    };
    shared.receive(
        &certificate_pem,
        IssuedKind::ControlPlaneClient,
        name,
        "RenewIdentity",
    );
    shared.with(|ledger| ledger.renewals += 1);
    Ok(Some(Identity {
        certificate_pem,
        key_pem: key.to_pkcs8_pem().to_string(),
    }))
}

/// Calls `RenewIdentity` with the current identity and a CSR for the new
/// key; returns the new client certificate.
async fn renew_identity(
    endpoint: &Endpoint,
    identity: &Identity,
    csr: &str,
) -> Result<Option<String>, Failure> {
    let as_cluster = Some((identity.certificate_pem.as_str(), identity.key_pem.as_str()));
    let response = IntermediateServiceClient::new(endpoint.channel(as_cluster).await?)
        .renew_identity(proto::RenewIdentityRequest {
            client_csr_pem: csr.to_string(),
        })
        .await?;
    Ok(Some(response.into_inner().client_certificate_pem))
}

/// Removes `name` (a cluster that is gone already is fine).
async fn remove_cluster(endpoint: &Endpoint, shared: &Shared, name: &str) {
    shared.doing(name, format!("RemoveCluster {name}"));
    let removed = retry(shared, &format!("RemoveCluster {name}"), async || {
        let result = endpoint
            .admin()
            .await?
            .remove_cluster(proto::RemoveClusterRequest {
                name: name.to_string(),
            })
            .await;
        match result {
            Err(status) if status.code() == tonic::Code::NotFound => Ok(()),
            other => other.map(drop).map_err(Failure::from),
        }
    })
    .await;
    if removed.is_ok() {
        shared.with(|ledger| ledger.removals += 1);
    }
}

// ---- agents that carry the rotation --------------------------------------

/// A simulated cluster's cacerts (a [`CheckingSink`]) that also records
/// every new intermediate the agent received.
struct RecordingSink {
    cluster: String,
    inner: Arc<CheckingSink>,
    shared: Arc<Shared>,
    last_serial: Mutex<String>,
}

#[async_trait::async_trait]
impl ClusterSink for RecordingSink {
    fn describe(&self) -> String {
        self.inner.describe()
    }

    async fn read(&self) -> Result<Option<CacertsFiles>, SinkError> {
        self.inner.read().await
    }

    async fn write(&self, material: &CacertsMaterial) -> Result<(), SinkError> {
        self.inner.write(material).await?;
        let serial = Certificate::from_pem(&material.ca_cert_pem)
            .and_then(|certificate| certificate.serial_hex())
            .unwrap();
        let new = {
            let mut last = self.last_serial.lock().unwrap();
            let new = *last != serial;
            *last = serial;
            new
        };
        if new {
            self.shared.receive(
                &material.ca_cert_pem,
                IssuedKind::Intermediate,
                &self.cluster,
                "agent SignIntermediate",
            );
        }
        self.shared.with(|ledger| ledger.agent_writes += 1);
        Ok(())
    }
}

fn spawn_agent(
    endpoint: &Endpoint,
    work: &Path,
    mesh: &Arc<Mesh>,
    shared: &Arc<Shared>,
    name: &str,
    token: String,
) -> AgentHandle {
    let sink: Arc<dyn ClusterSink> = Arc::new(RecordingSink {
        cluster: name.to_string(),
        inner: mesh.sink(name),
        shared: shared.clone(),
        last_serial: Mutex::new(String::new()),
    });
    agent::spawn(
        AgentConfig {
            server_ca_pem: Some(endpoint.ca_pem.clone()),
            join_token: Some(zeroize::Zeroizing::new(token)),
            key_algorithm: KeyAlgorithm::EcdsaP256,
            max_backoff: Duration::from_millis(500),
            ..AgentConfig::new(endpoint.url.clone(), work.join(name))
        },
        sink,
    )
}

async fn list_clusters(endpoint: &Endpoint) -> Option<proto::ListClustersResponse> {
    let mut admin = endpoint.admin().await.ok()?;
    admin
        .list_clusters(proto::ListClustersRequest {})
        .await
        .ok()
        .map(tonic::Response::into_inner)
}

// ---- the rotation, driven with the CLI as an operator would ---------------

/// Runs `trustplane rotate start`, then `rotate advance --wait` until the
/// rotation is `stable`/`completed`, retrying whatever a kill interrupts.
/// Returns the phases seen, or why it never completed.
fn drive_rotation(
    data: PathBuf,
    url: String,
    shared: Arc<Shared>,
    deadline: Instant,
) -> Result<Vec<String>, String> {
    let connection = |args: &[&str]| -> Vec<String> {
        args.iter()
            .map(|arg| (*arg).to_string())
            .chain([
                "--server".to_string(),
                url.clone(),
                "--data-dir".to_string(),
                data.to_str().unwrap().to_string(),
            ])
            .collect()
    };
    let run = |args: &[&str]| {
        let args = connection(args);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        trustplane(&refs)
    };
    let mut phases: Vec<String> = Vec::new();
    let mut last = String::new();
    loop {
        if Instant::now() > deadline {
            return Err(format!(
                "the rotation did not complete in time; phases seen {phases:?}; last status: {last}"
            ));
        }
        let status = run(&["rotate", "status", "-o", "json"]);
        if !status.status.success() {
            std::thread::sleep(Duration::from_millis(200));
            continue;
        }
        let json: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
        last = json.to_string();
        let phase = json["phase"].as_str().unwrap_or_default().to_string();
        shared.with(|ledger| ledger.phase.clone_from(&phase));
        if phases.last() != Some(&phase) {
            phases.push(phase.clone());
        }
        if json["has_rotation"] != true {
            let started = run(&[
                "rotate",
                "start",
                "--grace",
                &format!("{GRACE_SECONDS}s"),
                "--ack-timeout",
                "5m",
            ]);
            if !started.status.success() {
                std::thread::sleep(Duration::from_millis(200));
            }
            continue;
        }
        if phase == "stable" {
            return match json["outcome"].as_str() {
                Some("completed") => Ok(phases),
                other => Err(format!("the rotation ended {other:?}: {last}")),
            };
        }
        // Fails when a kill interrupts it; the status is then read again.
        run(&[
            "rotate",
            "advance",
            "--wait",
            "--timeout",
            "20s",
            "--poll",
            "200ms",
        ]);
    }
}

// ---- the audit trail ------------------------------------------------------

fn check_audit_chain(data: &Path, point: &str) -> &'static str {
    if !AUDIT_VERIFY {
        return "not checked (audit verify not merged yet)";
    }
    let verified = trustplane(&["audit", "verify", "--data-dir", data.to_str().unwrap()]);
    assert!(
        verified.status.success(),
        "{point}: `trustplane audit verify` failed:\n{}",
        output_text(&verified)
    );
    "passes"
}

// ---- the server, killed -------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn server_sigkilled_at_random_points_loses_no_certificate_and_completes_the_rotation() {
    common::install_crypto();
    let seed = seed();
    println!("kill test seed {seed:#x} (replay: TRUSTPLANE_KILL_SEED={seed:#x})");
    let mut rng = Rng(seed);
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    let log = work.path().join("server.log");
    init(&data);
    let (mut server, url) = spawn_server(&data, "127.0.0.1:0", &log)
        .unwrap_or_else(|error| panic!("seed {seed:#x}: the server does not start: {error}"));
    let listen = url.trim_start_matches("https://").to_string();
    let endpoint = Endpoint::new(&data, &url);
    let shared = Shared::new();

    // The agents that acknowledge every rotation phase.
    let mesh = Mesh::new(Duration::from_secs(GRACE_SECONDS), SystemClock::shared());
    let mut agents = Vec::new();
    for index in 0..AGENTS {
        let name = format!("a{index}");
        let token = endpoint
            .admin()
            .await
            .ok()
            .unwrap()
            .add_cluster(proto::AddClusterRequest {
                name: name.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .join_token;
        agents.push(spawn_agent(
            &endpoint,
            work.path(),
            &mesh,
            &shared,
            &name,
            token,
        ));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while list_clusters(&endpoint).await.is_none_or(|listed| {
        listed
            .clusters
            .iter()
            .filter(|cluster| cluster.applied_bundle_version >= 1)
            .count()
            < AGENTS
    }) {
        assert!(
            Instant::now() < deadline,
            "seed {seed:#x}: agents never applied v1"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // On its own thread and runtime: the retried calls are async closures,
    // whose futures tokio::spawn cannot prove Send.
    let streams: Vec<_> = STREAMS
        .iter()
        .map(|&prefix| {
            let (endpoint, shared) = (endpoint.clone(), shared.clone());
            std::thread::spawn(move || {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap()
                    .block_on(client_stream(prefix, endpoint, shared));
            })
        })
        .collect();
    // The kills go on until at least SERVER_KILLS have been made and the
    // rotation, started after the third, has completed (or MAX_SERVER_KILLS
    // were made; it must then complete without more kills).
    let mut rotation = None;
    let started = Instant::now();
    let mut kill_phases: BTreeMap<String, usize> = BTreeMap::new();
    let mut in_flight: BTreeMap<String, usize> = BTreeMap::new();
    let mut kills = 0;
    while kills < SERVER_KILLS
        || (kills < MAX_SERVER_KILLS
            && rotation
                .as_ref()
                .is_none_or(|running: &std::thread::JoinHandle<_>| !running.is_finished()))
    {
        kills += 1;
        if kills == 4 {
            let (data, url, shared) = (data.clone(), url.clone(), shared.clone());
            let deadline = Instant::now() + Duration::from_secs(150);
            rotation = Some(std::thread::spawn(move || {
                drive_rotation(data, url, shared, deadline)
            }));
        }
        let delay = rng.millis(100, 1500);
        let up = Instant::now();
        tokio::time::sleep(delay).await;
        let (doing, phase) = shared.with(|ledger| (ledger.doing.clone(), ledger.phase.clone()));
        for call in doing.values() {
            let call = call.split_whitespace().next().unwrap_or_default();
            *in_flight.entry(call.to_string()).or_default() += 1;
        }
        let doing = doing.into_values().collect::<Vec<_>>().join(", ");
        let phase = match (&rotation, phase.as_str()) {
            (None, _) => "before the rotation".to_string(),
            (Some(_), "") => "rotation starting".to_string(),
            _ => phase,
        };
        let point = format!(
            "server kill #{kills} (seed {seed:#x}, {} ms after the restart, rotation phase {phase:?}, in flight: {doing})",
            up.elapsed().as_millis()
        );
        *kill_phases.entry(phase).or_default() += 1;
        sigkill(server, "server", &point, &log);
        check_store(&data, &shared, &point);
        check_audit_chain(&data, &point);
        shared.with(|ledger| ledger.run += 1);
        server = spawn_server(&data, &listen, &log)
            .unwrap_or_else(|error| panic!("{point}: the server does not start again: {error}"))
            .0;
    }
    let killing = started.elapsed();

    // The rotation completes on the restarted server.
    let rotation = rotation.unwrap();
    let phases = tokio::task::spawn_blocking(move || rotation.join().unwrap())
        .await
        .unwrap()
        .unwrap_or_else(|error| panic!("seed {seed:#x}: after {kills} kills: {error}"));
    shared.stop.store(true, Ordering::SeqCst);
    tokio::task::spawn_blocking(move || {
        for stream in streams {
            stream.join().unwrap();
        }
    })
    .await
    .unwrap();
    for agent in agents {
        agent.stop();
        agent.task.await.unwrap().unwrap();
    }
    mesh.check_all("after the kills").await;
    let summary = mesh.summary().await;
    assert!(
        summary.failures.is_empty(),
        "seed {seed:#x}: cross-cluster trust broke:\n{}",
        summary.failures.join("\n")
    );

    let point = format!("after the last kill (seed {seed:#x})");
    sigkill(server, "server", &point, &log);
    let check = check_store(&data, &shared, &point);
    let audit = check_audit_chain(&data, &point);
    let ledger = shared.ledger.lock().unwrap();
    assert!(
        ledger.refusals.is_empty(),
        "seed {seed:#x}: calls refused although no kill interrupted them:\n{}",
        ledger.refusals.join("\n")
    );
    assert!(
        ledger.enrollments >= 3 && ledger.issuances >= 6,
        "seed {seed:#x}: too little work got through the kills: {} enrollments, {} issuances",
        ledger.enrollments,
        ledger.issuances
    );
    let renewals = match ledger.renewals {
        0 => "0 (RenewIdentity not merged yet: see the merge switch)".to_string(),
        renewals => renewals.to_string(),
    };
    println!(
        "kills: {kills} server in {:.1} s (by rotation phase {kill_phases:?}; calls in flight at the kills {in_flight:?}); enrollments {}, issuances {}, renewals {renewals}, reports {}, agent cacerts writes {}, clusters removed {}, answers lost to a kill {:?}; rotation phases {phases:?} completed; {} certificates received by clients, {} recorded; duplicates 0; unrecorded 0; audit verify {audit}; {} cross-cluster checks, 0 failures",
        killing.as_secs_f64(),
        ledger.enrollments,
        ledger.issuances,
        ledger.reports,
        ledger.agent_writes,
        ledger.removals,
        ledger.lost_answers,
        check.received,
        check.records,
        summary.checks,
    );
}

// ---- the agent, killed ----------------------------------------------------

fn spawn_agent_binary(
    url: &str,
    data: &Path,
    work: &Path,
    token: Option<&str>,
    log: &Path,
) -> Guard {
    let mut command = Command::new(BINARY);
    command
        .args(["agent", "--server", url, "--server-ca"])
        .arg(data.join("control-plane-ca.pem"))
        .arg("--identity-dir")
        .arg(work.join("identity"))
        .arg("--cacerts-dir")
        .arg(work.join("cacerts"));
    if let Some(token) = token {
        command.arg("--join-token").arg(token);
    }
    Guard(
        command
            .env_remove("TRUSTPLANE_JOIN_TOKEN")
            .stdout(Stdio::null())
            .stderr(append_log(log))
            .spawn()
            .unwrap(),
    )
}

/// Makes an admin call until the server does not answer `Aborted` ("a
/// concurrent change won; retry the call": the cluster record changed under
/// it, e.g. by the agent's report); returns how many retries it took.
async fn until_not_aborted<T>(
    mut call: impl AsyncFnMut() -> Result<tonic::Response<T>, tonic::Status>,
) -> u32 {
    let mut retries = 0;
    loop {
        match call().await {
            Ok(_) => return retries,
            Err(status) if status.code() == tonic::Code::Aborted && retries < 10 => retries += 1,
            Err(status) => panic!("admin call refused: {status:?}"),
        }
    }
}

/// Where the cacerts directory's `..data` link points now (it is switched
/// by one rename when the agent writes a new set).
fn data_link(cacerts: &Path) -> Option<PathBuf> {
    std::fs::read_link(cacerts.join("..data")).ok()
}

/// What the agent left on disk: complete and consistent as istiod loads
/// it. Returns the intermediate's serial and `root-cert.pem`, or what is
/// wrong.
fn read_cacerts_set(cacerts: &Path) -> Result<(String, String), String> {
    let files = read_cacerts_dir(cacerts)
        .map_err(|error| format!("{} does not read: {error:#}", cacerts.display()))?;
    let check = ca::check_cacerts(&files, SystemClock.now(), Duration::ZERO);
    if !check.passed() {
        return Err(format!(
            "the cacerts would not load in istiod: {:?}",
            check.findings
        ));
    }
    let serial = Certificate::from_pem(files.ca_cert.as_deref().unwrap_or_default())
        .and_then(|certificate| certificate.serial_hex())
        .map_err(|error| format!("ca-cert.pem: {error}"))?;
    Ok((serial, files.root_cert.unwrap_or_default()))
}

/// [`read_cacerts_set`] on what a killed agent left behind.
fn check_cacerts_dir(cacerts: &Path, point: &str) -> (String, String) {
    read_cacerts_set(cacerts).unwrap_or_else(|error| panic!("{point}: {error}"))
}

/// East as the server sees it, and the bundle it publishes.
async fn east_view(
    admin: &mut AdminServiceClient<Channel>,
) -> (proto::ClusterStatus, proto::Bundle) {
    let listed = admin
        .list_clusters(proto::ListClustersRequest {})
        .await
        .unwrap()
        .into_inner();
    let east = listed
        .clusters
        .into_iter()
        .find(|cluster| cluster.name == "east")
        .unwrap();
    let bundle = admin
        .status(proto::StatusRequest {})
        .await
        .unwrap()
        .into_inner()
        .bundle
        .unwrap();
    (east, bundle)
}

/// Waits until the server's view of east is what is on disk (serial,
/// bundle version) and that is the bundle published now; returns it.
async fn converge(
    admin: &mut AdminServiceClient<Channel>,
    cacerts: &Path,
    point: &str,
    log: &Path,
) -> (String, proto::ClusterStatus) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        // The running agent may switch the set between two file reads:
        // only a set that stays wrong until the deadline fails.
        let on_disk = read_cacerts_set(cacerts);
        let (reported, bundle) = east_view(admin).await;
        if let Ok((serial, root_cert_pem)) = &on_disk
            && reported.intermediate_serial == *serial
            && reported.applied_bundle_version == bundle.version
            && *root_cert_pem == bundle.root_cert_pem
            && reported.last_error.is_empty()
        {
            return (serial.clone(), reported);
        }
        assert!(
            Instant::now() < deadline,
            "{point}: the server's view never converged on the agent's cacerts: on disk {on_disk:?}, reported {reported:?}, bundle v{}; agent log:\n{}",
            bundle.version,
            log_tail(log)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_sigkilled_at_random_points_leaves_complete_cacerts_and_converges() {
    common::install_crypto();
    let seed = seed();
    println!("agent kill test seed {seed:#x} (replay: TRUSTPLANE_KILL_SEED={seed:#x})");
    let mut rng = Rng(seed);
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    let server_log = work.path().join("server.log");
    let log = work.path().join("agent.log");
    let cacerts = work.path().join("cacerts");
    init(&data);
    let (server, url) = spawn_server(&data, "127.0.0.1:0", &server_log)
        .unwrap_or_else(|error| panic!("seed {seed:#x}: the server does not start: {error}"));
    let endpoint = Endpoint::new(&data, &url);
    let mut admin = endpoint.admin().await.ok().unwrap();
    let token = admin
        .add_cluster(proto::AddClusterRequest {
            name: "east".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .join_token;
    let mut agent = spawn_agent_binary(&url, &data, work.path(), Some(&token), &log);
    let (first, _) = converge(
        &mut admin,
        &cacerts,
        &format!("enrollment (seed {seed:#x})"),
        &log,
    )
    .await;
    let mut on_disk = vec![first];
    let (mut reissues, mut between_write_and_report, mut rotation_started) = (0, 0, false);
    let (mut at_switch, mut aborted) = (0, 0);
    for kill in 1..=AGENT_KILLS {
        // Mostly a reissue (new key, CSR, SignIntermediate, write, report);
        // once a rotation start (a new root-cert.pem); sometimes nothing
        // (the kill then lands in the agent's start-up and adoption).
        let switched = data_link(&cacerts);
        let action = if kill == AGENT_KILLS / 2 {
            aborted += until_not_aborted(async || {
                admin
                    .rotate_start(proto::RotateStartRequest {
                        options: Some(proto::RotationOptions {
                            grace_seconds: GRACE_SECONDS,
                            ..Default::default()
                        }),
                    })
                    .await
            })
            .await;
            rotation_started = true;
            "after rotate start"
        } else if !rng.one_in(4) {
            aborted += until_not_aborted(async || {
                admin
                    .reissue_cluster(proto::ReissueClusterRequest {
                        name: "east".into(),
                    })
                    .await
            })
            .await;
            reissues += 1;
            "after a reissue"
        } else {
            "with nothing requested"
        };
        // Half the kills at a random time; the other half (when cacerts are
        // to change) the moment the new set is switched in, which is just
        // before the agent reports it.
        let waited = Instant::now();
        let when = if action != "with nothing requested" && rng.one_in(2) {
            let deadline = Instant::now() + Duration::from_secs(15);
            while data_link(&cacerts) == switched {
                assert!(
                    Instant::now() < deadline,
                    "seed {seed:#x}: agent kill #{kill}: the agent never wrote new cacerts {action}; log:\n{}",
                    log_tail(&log)
                );
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            at_switch += 1;
            "at the cacerts switch"
        } else {
            tokio::time::sleep(rng.millis(5, 400)).await;
            "at a random time"
        };
        let point = format!(
            "agent kill #{kill}/{AGENT_KILLS} (seed {seed:#x}, {when}, {} ms {action})",
            waited.elapsed().as_millis()
        );
        sigkill(agent, "agent", &point, &log);
        let (serial, root_cert_pem) = check_cacerts_dir(&cacerts, &point);
        let (reported, bundle) = east_view(&mut admin).await;
        if reported.intermediate_serial != serial
            || (root_cert_pem == bundle.root_cert_pem
                && reported.applied_bundle_version < bundle.version)
        {
            between_write_and_report += 1;
        }
        if on_disk.last() != Some(&serial) {
            on_disk.push(serial);
        }
        agent = spawn_agent_binary(&url, &data, work.path(), None, &log);
        // The restarted agent catches up and the server sees it, before the
        // next request: a reissue asked for while the server still holds an
        // older report would name that older intermediate, and the agent
        // would rightly ignore it (see `reissue_names_the_newest_intermediate`).
        let (serial, _) = converge(&mut admin, &cacerts, &point, &log).await;
        if on_disk.last() != Some(&serial) {
            on_disk.push(serial);
        }
    }
    let (_, reported) = converge(
        &mut admin,
        &cacerts,
        &format!("after the agent kills (seed {seed:#x})"),
        &log,
    )
    .await;
    let point = format!("after the agent kills (seed {seed:#x})");
    sigkill(agent, "agent", &point, &log);
    sigkill(server, "server", &point, &server_log);
    // Every intermediate the agent wrote is recorded, for east, once.
    let shared = Shared::new();
    for serial in &on_disk {
        shared.with(|ledger| {
            ledger.received.push(Received {
                serial: serial.clone(),
                kind: IssuedKind::Intermediate,
                cluster: "east".into(),
                how: "written by the agent".into(),
            });
        });
    }
    let check = check_store(&data, &shared, &point);
    let audit = check_audit_chain(&data, &point);
    println!(
        "kills: {AGENT_KILLS} agent ({reissues} after a reissue, rotation started: {rotation_started}, {at_switch} at the moment new cacerts were switched in); {} distinct intermediates on disk, each a complete cacerts set, all recorded ({} certificates in the store); {between_write_and_report} kills left cacerts newer than the server's view, which then converged (v{}, serial {}); {aborted} admin calls answered `Aborted` (raced an agent report) and retried; audit verify {audit}",
        on_disk.len(),
        check.records,
        reported.applied_bundle_version,
        reported.intermediate_serial,
    );
}

// ---- a finding of the agent kills, reproduced without a kill --------------

/// An agent killed after writing a new intermediate and before reporting
/// it (or whose report is still on its way) serves an intermediate the
/// server has issued but not yet heard of. `cluster reissue` must replace
/// that one. Today it names the last *reported* serial: the agent, which no
/// longer holds it, ignores the directive, and the intermediate it serves
/// is never replaced although the command succeeded.
#[tokio::test]
#[ignore = "known bug found by the kill test: `cluster reissue` names the last reported intermediate, not the newest issued one"]
async fn reissue_names_the_newest_intermediate() {
    let server = common::start_server().await;
    let channel = server.enroll("east").await;
    let mut east = IntermediateServiceClient::new(channel.clone());
    let mut sign = async || {
        let (_, csr) = key_and_csr("east intermediate CA");
        east.sign_intermediate(proto::SignIntermediateRequest {
            csr: csr.into_bytes(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
    };
    let reported = sign().await;
    let served = sign().await;
    IntermediateServiceClient::new(channel.clone())
        .report_status(proto::ReportStatusRequest {
            applied_bundle_version: reported.bundle.as_ref().unwrap().version,
            intermediate_serial: reported.serial.clone(),
            intermediate_not_after_unix: reported.not_after_unix,
            cert_chain_pem: reported.cert_chain_pem.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    // The agent wrote `served` and was killed before reporting it.
    server
        .admin()
        .await
        .reissue_cluster(proto::ReissueClusterRequest {
            name: "east".into(),
        })
        .await
        .unwrap();
    let bundle =
        trustplane::proto::trust_bundle_service_client::TrustBundleServiceClient::new(channel)
            .get_bundle(proto::GetBundleRequest {})
            .await
            .unwrap()
            .into_inner();
    assert_eq!(
        bundle.reissue_intermediate_serial, served.serial,
        "the reissue names {} (last reported) while east serves {} (issued later): the agent will ignore it",
        bundle.reissue_intermediate_serial, served.serial
    );
}

/// An agent killed during its first start, after the server accepted its
/// join token and before the agent saved its identity, must be able to
/// enroll when restarted the way it was started (same token). (Found by the
/// kill test: the token was spent, the cluster `enrolled`, the agent had no
/// identity and exited with "join token ... was already used".) The agent
/// now saves its key before `Enroll` and repeats it with the same token and
/// key, which the server answers again. Each attempt kills the agent the
/// moment the server lists the cluster as enrolled; with the debug build on
/// a 2-core machine about half of such kills land before the identity is
/// saved.
#[tokio::test]
async fn agent_killed_during_enrollment_enrolls_again_with_its_token() {
    common::install_crypto();
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    let log = work.path().join("agent.log");
    init(&data);
    let (_server, url) =
        spawn_server(&data, "127.0.0.1:0", &work.path().join("server.log")).unwrap();
    let mut admin = Endpoint::new(&data, &url).admin().await.ok().unwrap();
    for attempt in 0..5 {
        let name = format!("e{attempt}");
        let token = admin
            .add_cluster(proto::AddClusterRequest {
                name: name.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .join_token;
        let dir = work.path().join(&name);
        let state = async |admin: &mut AdminServiceClient<Channel>| {
            let listed = admin
                .list_clusters(proto::ListClustersRequest {})
                .await
                .unwrap()
                .into_inner();
            let row = listed
                .clusters
                .into_iter()
                .find(|cluster| cluster.name == name)
                .unwrap();
            (row.state, row.applied_bundle_version)
        };
        let agent = spawn_agent_binary(&url, &data, &dir, Some(&token), &log);
        let deadline = Instant::now() + Duration::from_secs(30);
        while state(&mut admin).await.0 != "enrolled" {
            assert!(Instant::now() < deadline, "{name} never enrolled");
        }
        let point = format!("{name}: killed the moment the server saw it enrolled");
        sigkill(agent, "agent", &point, &log);
        let _again = spawn_agent_binary(&url, &data, &dir, Some(&token), &log);
        let deadline = Instant::now() + Duration::from_secs(15);
        while state(&mut admin).await.1 < 1 {
            assert!(
                Instant::now() < deadline,
                "{point}: restarted with its token, it never applied the bundle; log:\n{}",
                log_tail(&log)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
