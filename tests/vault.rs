//! Vault-backed deployments against a real OpenBao server (`bao`, see
//! `common::openbao`): the mesh root lives in OpenBao's PKI and trustplane
//! never sees its key.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::binary::{BINARY, start_server_with};
use common::fixtures::openssl_verify;
use common::fleet::*;
use common::istio::{istio_sign, istio_verify};
use common::mesh::Mesh;
use common::openbao::OpenBao;
use trustplane::agent::{self, AgentConfig};
use trustplane::ca::{self, Certificate, IntermediateProfile, KeyAlgorithm, PrivateKey};
use trustplane::clock::SystemClock;
use trustplane::proto;
use trustplane::signer::{RootSigner, SignerError, VaultSigner};
use trustplane::sink::{ClusterSink, DirectorySink};
use trustplane::vault::{Secret, Vault, VaultConfig, VaultErrorKind, classify, pki};

fn config(bao: &OpenBao) -> VaultConfig {
    VaultConfig {
        addr: Some(bao.addr.clone()),
        token: Some(bao.token.parse::<Secret>().unwrap()),
        pki_mount: "pki".into(),
        kv_mount: "secret".into(),
        kv_prefix: "trustplane".into(),
        approle_mount: "approle".into(),
        k8s_mount: "kubernetes".into(),
        ..VaultConfig::default()
    }
}

/// The issuer `name`'s certificate and id, read with the root token.
fn issuer(bao: &OpenBao, name: &str) -> (Certificate, String) {
    let (status, body) = bao.http("GET", &format!("pki/issuer/{name}/json"), None);
    assert_eq!(status, 200, "{body}");
    (
        Certificate::from_pem(body["data"]["certificate"].as_str().unwrap()).unwrap(),
        body["data"]["issuer_id"].as_str().unwrap().to_string(),
    )
}

/// A token for trustplane with only the policy `init` printed, so every
/// test runs with least privilege and a token that is not a word found in
/// logs by chance.
fn scoped_token(bao: &OpenBao, policy_text: &str, extra: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("policy.hcl");
    std::fs::write(&file, policy_text).unwrap();
    bao.bao(&["policy", "write", "trustplane", file.to_str().unwrap()]);
    let mut args = vec!["token", "create", "-policy=trustplane", "-format=json"];
    args.extend_from_slice(extra);
    let output = bao.bao(&args);
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    json["auth"]["client_token"].as_str().unwrap().to_string()
}

fn run_init(bao: &OpenBao, data: &Path, token: &str, extra: &[&str]) -> Output {
    Command::new(BINARY)
        .args([
            "init",
            "--trust-domain",
            "cluster.local",
            "--signer",
            "vault",
            "--vault-addr",
            &bao.addr,
            "--data-dir",
        ])
        .arg(data)
        .args(extra)
        .env("VAULT_TOKEN", token)
        .env_remove("TRUSTPLANE_KEK")
        .env_remove("VAULT_ADDR")
        .output()
        .unwrap()
}

fn http_get(address: &str, path: &str) -> (u16, String) {
    let output = Command::new("curl")
        .args(["-s", "-w", "\n%{http_code}"])
        .arg(format!("http://{address}{path}"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

fn free_address() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}

/// Waits up to 30 s for `condition` on `/readyz`.
async fn wait_ready(address: &str, what: &str, condition: impl Fn(u16, &str) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (code, body) = http_get(address, "/readyz");
        if condition(code, &body) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz never {what}: {code} {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(current) = pending.pop() {
        for entry in std::fs::read_dir(&current).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else {
                found.push(path);
            }
        }
    }
    found
}

/// No key of `roots` anywhere under `data`: no PEM key file matches one,
/// and no sealed secret of the store (opened with the KEK) is one; the
/// store holds no `root-key/` secret at all.
fn assert_no_root_key_under(data: &Path, roots: &[Certificate]) {
    for path in files_under(data) {
        let bytes = std::fs::read(&path).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        if text.contains("PRIVATE KEY-----") {
            let key = PrivateKey::from_pem(&text).unwrap();
            for root in roots {
                assert!(
                    !ca::key_matches_certificate(root, &key).unwrap(),
                    "{} holds the key of the mesh root",
                    path.display()
                );
            }
        }
    }
    let store = trustplane::store::RedbStore::open(&data.join("trustplane.redb")).unwrap();
    let kek = trustplane::signer::sealed::Kek::load(Some(&data.join("kek")), None).unwrap();
    use trustplane::store::{Store, Table};
    let secrets = store.list(Table::Secrets).unwrap();
    assert!(
        !secrets.is_empty(),
        "the control-plane CA key should be there"
    );
    for (name, stored) in secrets {
        assert!(
            !name.starts_with("root-key/"),
            "a root key is stored: {name}"
        );
        let plain = trustplane::signer::sealed::unseal(&kek, &name, &stored.value).unwrap();
        if let Ok(key) = PrivateKey::from_pkcs8_der(&plain) {
            for root in roots {
                assert!(
                    !ca::key_matches_certificate(root, &key).unwrap(),
                    "sealed secret {name} is the mesh root's key"
                );
            }
        }
    }
}

/// An agent that writes a directory, as istiod's `/etc/cacerts` mount.
fn directory_agent(
    fleet: &Fleet,
    admin_token: String,
    dir: &Path,
) -> (trustplane::agent::AgentHandle, Arc<DirectorySink>) {
    let sink = Arc::new(DirectorySink::new(dir.join("cacerts")));
    let dynamic: Arc<dyn ClusterSink> = sink.clone();
    let handle = agent::spawn(
        AgentConfig {
            server_ca_pem: Some(fleet.control_plane_ca_pem.clone()),
            join_token: Some(zeroize::Zeroizing::new(admin_token)),
            key_algorithm: KeyAlgorithm::EcdsaP256,
            max_backoff: Duration::from_millis(500),
            ..AgentConfig::new(fleet.url.clone(), dir.join("identity"))
        },
        dynamic,
    );
    (handle, sink)
}

/// `openssl verify` and Istio's own CA code on a cacerts directory: the
/// intermediate verifies to the root, istiod loads the four files and the
/// workload certificate it signs verifies under `root-cert.pem`.
fn check_cacerts_with_openssl_and_istio(cacerts: &Path) {
    let (ok, output) = openssl_verify(
        cacerts,
        &[
            "-CAfile",
            "root-cert.pem",
            "-untrusted",
            "cert-chain.pem",
            "ca-cert.pem",
        ],
    );
    assert!(ok, "openssl verify: {output}");
    let leaf = cacerts.parent().unwrap().join("workload.pem");
    let spiffe = "spiffe://cluster.local/ns/default/sa/app";
    if let Err(error) = istio_sign(cacerts, spiffe, &leaf) {
        panic!("istiod refuses the cacerts: {error}");
    }
    if let Err(error) = istio_verify(&leaf, &cacerts.join("root-cert.pem"), Some(spiffe)) {
        panic!("Go's x509 refuses the workload chain: {error}");
    }
}

#[tokio::test]
async fn a_dev_server_answers_and_a_missing_issuer_is_named() {
    let bao = OpenBao::dev();
    bao.pki_with_root("pki", "mesh-root", "mesh root");
    let vault = Vault::connect(config(&bao)).await.unwrap();
    let path = "pki/issuer/no-such-issuer/json";
    let error = vaultrs::pki::issuer::read(vault.client().as_ref(), "pki", Some("no-such-issuer"))
        .await
        .map_err(|error| classify(path, error))
        .unwrap_err();
    assert_eq!(error.kind, VaultErrorKind::NotFound, "{error}");
    assert!(error.to_string().contains(path), "{error}");
    let error = pki::read_issuer(&vault, "pki", "no-such-issuer")
        .await
        .unwrap_err();
    assert_eq!(error.kind, VaultErrorKind::NotFound, "{error}");
    assert!(error.to_string().contains("--vault-issuer"), "{error}");
    let issuer = vaultrs::pki::issuer::read(vault.client().as_ref(), "pki", Some("mesh-root"))
        .await
        .unwrap();
    assert!(issuer.certificate.contains("BEGIN CERTIFICATE"));
}

/// The whole product on OpenBao: `init --signer vault` adopts an issuer,
/// the server binary signs every cluster's intermediate through OpenBao,
/// the published bundle is OpenBao's issuer, a full rotation makes root B
/// an issuer in the same mount and keeps every pair of clusters verifying,
/// retire-old leaves the old issuer in place and says what may be done, and
/// no key of either root is ever under the data directory or in the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_rotation_with_both_roots_in_openbao_keeps_every_pair_verifying() {
    common::install_crypto();
    const CLUSTERS: usize = 3;
    let bao = OpenBao::dev();
    bao.pki_with_root("pki", "mesh-root", "cluster.local root CA");
    let (root_a, root_a_id) = issuer(&bao, "mesh-root");
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");

    // init with the root token prints the least-privilege policy...
    let init = run_init(&bao, &data, &bao.token, &["--vault-issuer", "mesh-root"]);
    let printed = String::from_utf8_lossy(&init.stdout).to_string();
    assert!(
        init.status.success(),
        "{printed}{}",
        String::from_utf8_lossy(&init.stderr)
    );
    let sign_path = format!("path \"pki/issuer/{root_a_id}/sign-intermediate\"");
    assert!(printed.contains(&sign_path), "{printed}");
    // The state stays in the embedded store: no KV path is asked for.
    assert!(!printed.contains("path \"secret/"), "{printed}");
    // ...which, plus the rotation block, is all the server's token gets.
    let policy_start = printed.find("# trustplane: sign").unwrap();
    let policy_text = printed[policy_start..]
        .lines()
        .take_while(|line| {
            !line.starts_with("The control-plane CA key") && !line.starts_with("Next:")
        })
        .map(|line| {
            line.strip_prefix("# path")
                .map_or(line.to_string(), |rest| format!("path{rest}"))
        })
        .collect::<Vec<_>>()
        .join("\n");
    let token = scoped_token(&bao, &policy_text, &["-ttl=1h"]);

    let log = work.path().join("server.log");
    let health = free_address();
    let (server, url) = start_server_with(
        &data,
        "127.0.0.1:0",
        &["--health-listen", &health],
        &[
            ("VAULT_ADDR", bao.addr.as_str()),
            ("VAULT_TOKEN", token.as_str()),
        ],
        Some(&log),
    );
    wait_ready(&health, "ready", |code, body| {
        code == 200 && body.contains(": active, unsealed")
    })
    .await;
    let mut admin = admin_for(&data, &url).await;
    let mesh = Mesh::new(Duration::from_secs(GRACE), SystemClock::shared());
    let control_plane_ca_pem = std::fs::read_to_string(data.join("control-plane-ca.pem")).unwrap();
    let mut fleet = Fleet::new(url.clone(), control_plane_ca_pem);
    for index in 0..CLUSTERS {
        fleet.add(&mut admin, &mesh, &format!("v{index}")).await;
    }
    let directory_token = admin
        .add_cluster(proto::AddClusterRequest {
            name: "files".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .join_token;
    let files_dir = work.path().join("files");
    let (files_agent, _) = directory_agent(&fleet, directory_token, &files_dir);
    wait_applied(&mut admin, 1, CLUSTERS + 1).await;
    mesh.check_all("stable on OpenBao").await;

    // The published roots are OpenBao's issuer, byte for byte.
    let stable = status(&mut admin).await;
    assert_eq!(bundle_roots(&stable), vec![root_a.clone()]);
    check_cacerts_with_openssl_and_istio(&files_dir.join("cacerts"));

    // Rotation: root B is a new issuer created in the same mount.
    let started = admin
        .rotate_start(proto::RotateStartRequest {
            options: Some(proto::RotationOptions {
                vault_issuer: "mesh-root-b".into(),
                ..rotation_options()
            }),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(started.phase, "trust-new");
    let (root_b, root_b_id) = issuer(&bao, "mesh-root-b");
    assert_eq!(bundle_roots(&started), vec![root_a.clone(), root_b.clone()]);
    wait_gate(&mut admin, None).await;
    let signing = advance(&mut admin).await.unwrap();
    assert_eq!(signing.phase, "sign-new");
    wait_gate(&mut admin, None).await;
    let retiring = advance(&mut admin).await.unwrap();
    assert_eq!(retiring.phase, "retire-old");
    assert_eq!(bundle_roots(&retiring), vec![root_b.clone()]);
    let advice = format!("bao write pki/issuer/{root_a_id} usage=read-only");
    assert!(
        retiring.next_step.contains(&advice),
        "{}",
        retiring.next_step
    );
    wait_gate(&mut admin, None).await;
    let done = advance(&mut admin).await.unwrap();
    assert_eq!(
        (done.phase.as_str(), done.outcome.as_str()),
        ("stable", "completed")
    );
    assert!(done.next_step.contains(&advice), "{}", done.next_step);
    let audit = admin
        .audit_log(proto::AuditLogRequest {
            action: "rotate".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let audit_text = format!("{audit:?}");
    assert!(
        audit_text.contains(&advice),
        "the audit trail says what may be done with the old issuer:\n{audit_text}"
    );
    mesh.check_all("after the rotation on OpenBao").await;
    let checks = assert_no_failures(&mesh).await;
    let summary = mesh.summary().await;
    assert!(summary.intermediates >= 2 * CLUSTERS, "{summary:?}");

    // The files cluster now chains to root B, and istiod accepts it.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let chain =
            std::fs::read_to_string(files_dir.join("cacerts/cert-chain.pem")).unwrap_or_default();
        if Certificate::parse_pem_chain(&chain)
            .unwrap_or_default()
            .last()
            == Some(&root_b)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the files cluster never re-issued from root B"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    check_cacerts_with_openssl_and_istio(&files_dir.join("cacerts"));

    // The old issuer is still in OpenBao, unchanged.
    let (still_a, _) = issuer(&bao, &root_a_id);
    assert_eq!(still_a, root_a);
    let (_, usage) = bao.http("GET", &format!("pki/issuer/{root_a_id}"), None);
    assert!(
        usage["data"]["usage"]
            .as_str()
            .unwrap()
            .contains("issuing-certificates"),
        "{usage}"
    );

    files_agent.stop();
    for name in fleet.clusters.keys().cloned().collect::<Vec<_>>() {
        fleet.stop(&name);
    }
    drop(server);
    assert_no_root_key_under(&data, &[root_a.clone(), root_b.clone()]);
    let log_text = std::fs::read_to_string(&log).unwrap();
    assert!(!log_text.contains("PRIVATE KEY"), "{log_text}");
    assert!(!log_text.contains(&token), "the Vault token is in the log");
    assert!(!printed.contains("PRIVATE KEY"), "{printed}");
    println!(
        "rotation on OpenBao: {checks} cross-cluster checks, 0 failures, {} intermediates; root B = issuer {root_b_id}",
        summary.intermediates
    );
}

/// A policy asking for URI name constraints is refused with the Vault
/// signer, at `init` and when the server opens the store; `issue` signs
/// offline through Vault; an issuer deleted in Vault makes a running
/// server unready, and it and missing Vault settings stop a starting server
/// with what to do.
#[tokio::test]
async fn uri_name_constraints_are_refused_and_a_missing_issuer_is_named() {
    let bao = OpenBao::dev();
    bao.pki_with_root("pki", "mesh-root", "cluster.local root CA");
    let work = tempfile::tempdir().unwrap();
    let policy = work.path().join("policy.yaml");
    std::fs::write(
        &policy,
        "trust_domains:\n  cluster.local:\n    organisation: test\n    allowed_key_algorithms: [ecdsa-p256]\n    default_intermediate_lifetime: 1d\n    max_intermediate_lifetime: 30d\n    name_constraints: true\n",
    )
    .unwrap();
    let refused = run_init(
        &bao,
        &work.path().join("data"),
        &bao.token,
        &[
            "--vault-issuer",
            "mesh-root",
            "--policy",
            policy.to_str().unwrap(),
        ],
    );
    assert!(!refused.status.success());
    let text = String::from_utf8_lossy(&refused.stderr);
    assert!(text.contains("permitted_uri_domains"), "{text}");
    assert!(text.contains("OpenBao"), "{text}");
    assert!(!work.path().join("data/trustplane.redb").exists());

    // A store made with a policy without them, served with one with them.
    let data = work.path().join("data2");
    let init = run_init(&bao, &data, &bao.token, &["--vault-issuer", "mesh-root"]);
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    let served = Command::new(BINARY)
        .args(["server", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .args([
            "--policy",
            policy.to_str().unwrap(),
            "--vault-addr",
            &bao.addr,
        ])
        .env("VAULT_TOKEN", &bao.token)
        .env_remove("TRUSTPLANE_KEK")
        .output()
        .unwrap();
    assert!(!served.status.success());
    let text = String::from_utf8_lossy(&served.stderr);
    assert!(text.contains("permitted_uri_domains"), "{text}");
    // `trustplane issue` signs offline through Vault too: a cacerts set
    // openssl and Istio's CA code accept.
    let out = work.path().join("issued/cacerts");
    let issued = Command::new(BINARY)
        .args([
            "issue",
            "--cluster",
            "offline",
            "--vault-addr",
            &bao.addr,
            "--data-dir",
        ])
        .arg(&data)
        .arg("--out")
        .arg(&out)
        .env("VAULT_TOKEN", &bao.token)
        .env_remove("TRUSTPLANE_KEK")
        .output()
        .unwrap();
    assert!(
        issued.status.success(),
        "{}",
        String::from_utf8_lossy(&issued.stderr)
    );
    check_cacerts_with_openssl_and_istio(&out);
    // An issuer deleted in Vault while a server runs: /readyz turns 503
    // naming the path (the bundle it serves no longer reflects Vault); a
    // server started then refuses to start, naming the path and the fix.
    let health = free_address();
    let (running, _) = start_server_with(
        &data,
        "127.0.0.1:0",
        &["--health-listen", &health, "--vault-addr", &bao.addr],
        &[("VAULT_TOKEN", &bao.token)],
        None,
    );
    wait_ready(&health, "ready", |code, _| code == 200).await;
    bao.bao(&["delete", "pki/issuer/mesh-root"]);
    wait_ready(&health, "503 naming the issuer path", |code, body| {
        code == 503 && body.contains("/json: not found")
    })
    .await;
    drop(running);
    let served = Command::new(BINARY)
        .args(["server", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .args(["--vault-addr", &bao.addr])
        .env("VAULT_TOKEN", &bao.token)
        .env_remove("TRUSTPLANE_KEK")
        .output()
        .unwrap();
    assert!(!served.status.success());
    let text = String::from_utf8_lossy(&served.stderr);
    assert!(
        text.contains("/json: not found") && text.contains("--vault-issuer"),
        "{text}"
    );
    // And without Vault settings the server says what it needs.
    let served = Command::new(BINARY)
        .args(["server", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .env_remove("TRUSTPLANE_KEK")
        .env_remove("VAULT_ADDR")
        .output()
        .unwrap();
    assert!(!served.status.success());
    let text = String::from_utf8_lossy(&served.stderr);
    assert!(
        text.contains("held by Vault") && text.contains("VAULT_ADDR"),
        "{text}"
    );
}

/// A CSR for a fresh P-256 key, verified as the server does.
fn verified_csr() -> ca::VerifiedCsr {
    let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let pem = ca::create_csr(&key, "east intermediate CA").unwrap();
    ca::verify_csr(pem.as_bytes()).unwrap()
}

fn east_profile() -> IntermediateProfile {
    IntermediateProfile {
        trust_domain: "cluster.local".into(),
        organisation: "test".into(),
        cluster: "east".into(),
        lifetime: Duration::from_secs(24 * 3600),
        name_constraints: false,
    }
}

/// Signs with the VaultSigner against `bao` (through `addr`, a proxy or
/// the server itself).
async fn sign_through(bao: &OpenBao, addr: &str) -> Result<Certificate, SignerError> {
    let (root, root_id) = issuer(bao, "mesh-root");
    let vault = Vault::connect(VaultConfig {
        addr: Some(addr.to_string()),
        ..config(bao)
    })
    .await
    .unwrap();
    let signer = VaultSigner::new(vault, "pki", &root_id, root);
    signer
        .sign_intermediate(&verified_csr(), &east_profile(), SystemClock.now())
        .await
}

/// A loopback HTTP proxy that rewrites each `sign-intermediate` request's
/// JSON body with `rewrite` before OpenBao sees it. This is the one mock of
/// the suite: a real OpenBao given trustplane's request never answers with
/// a certificate outside the profile, but a misconfigured or compromised
/// Vault could, and the refusal must be shown; making OpenBao itself sign
/// a different profile is the closest real answer to that.
async fn rewriting_proxy(upstream: String, rewrite: fn(&mut serde_json::Value)) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let upstream = upstream.trim_start_matches("http://").to_string();
    tokio::spawn(async move {
        loop {
            let Ok((mut client, _)) = listener.accept().await else {
                return;
            };
            let upstream = upstream.clone();
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buffer = [0u8; 8192];
                let head_end = loop {
                    let read = client.read(&mut buffer).await.unwrap_or(0);
                    if read == 0 {
                        return;
                    }
                    request.extend_from_slice(&buffer[..read]);
                    if let Some(position) =
                        request.windows(4).position(|window| window == b"\r\n\r\n")
                    {
                        break position + 4;
                    }
                };
                let head = String::from_utf8_lossy(&request[..head_end]).to_string();
                let length: usize = head
                    .lines()
                    .find_map(|line| {
                        let (name, value) = line.split_once(':')?;
                        name.eq_ignore_ascii_case("content-length")
                            .then(|| value.trim().parse().ok())?
                    })
                    .unwrap_or(0);
                while request.len() < head_end + length {
                    let read = client.read(&mut buffer).await.unwrap_or(0);
                    if read == 0 {
                        break;
                    }
                    request.extend_from_slice(&buffer[..read]);
                }
                let mut body = request[head_end..].to_vec();
                if head.contains("/sign-intermediate") {
                    let mut json: serde_json::Value = serde_json::from_slice(&body).unwrap();
                    rewrite(&mut json);
                    body = serde_json::to_vec(&json).unwrap();
                }
                let mut new_head = String::new();
                for line in head.trim_end().lines() {
                    let lower = line.to_ascii_lowercase();
                    if lower.starts_with("content-length:") || lower.starts_with("connection:") {
                        continue;
                    }
                    new_head.push_str(line);
                    new_head.push_str("\r\n");
                }
                new_head.push_str(&format!(
                    "Content-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                ));
                let mut server = tokio::net::TcpStream::connect(&upstream).await.unwrap();
                server.write_all(new_head.as_bytes()).await.unwrap();
                server.write_all(&body).await.unwrap();
                let mut answer = Vec::new();
                server.read_to_end(&mut answer).await.unwrap();
                client.write_all(&answer).await.unwrap();
                let _ = client.shutdown().await;
            });
        }
    });
    format!("http://{address}")
}

/// A change the proxy makes to a request body.
type Rewrite = fn(&mut serde_json::Value);

#[tokio::test]
async fn a_vault_answer_that_differs_from_the_profile_is_refused_naming_the_field() {
    common::install_crypto();
    let bao = OpenBao::dev();
    bao.pki_with_root("pki", "mesh-root", "cluster.local root CA");
    // Through the real server directly: the profile holds.
    let certificate = sign_through(&bao, &bao.addr).await.unwrap();
    assert_eq!(certificate.require_ca().unwrap(), Some(0));

    let cases: [(Rewrite, &str); 4] = [
        (
            |json| json["max_path_length"] = 1.into(),
            "basicConstraints",
        ),
        (
            |json| json["key_usage"] = serde_json::json!(["CertSign"]),
            "keyUsage",
        ),
        (
            |json| json["common_name"] = "west intermediate CA".into(),
            "subject",
        ),
        (
            |json| json["uri_sans"] = "spiffe://cluster.local,spiffe://evil.example".into(),
            "subjectAltName",
        ),
    ];
    for (rewrite, field) in cases {
        let proxy = rewriting_proxy(bao.addr.clone(), rewrite).await;
        let error = sign_through(&bao, &proxy).await.unwrap_err();
        match &error {
            SignerError::Ca(ca::CaError::ProfileMismatch { field: named, .. }) => {
                assert_eq!(*named, field, "{error}");
            }
            other => panic!("expected a profile mismatch in {field}, got {other:?}"),
        }
        assert!(error.to_string().contains("not handed out"), "{error}");
    }
}

/// Sealed and stopped OpenBao (raft storage) during a rotation: the errors
/// name the Vault path and the fix, gRPC answers Unavailable, `/readyz`
/// follows Vault's state, and once OpenBao is back and unsealed the
/// agents' retries go through and the rotation completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn openbao_stopped_and_sealed_mid_rotation_then_unsealed_the_rotation_resumes() {
    common::install_crypto();
    const CLUSTERS: usize = 2;
    let raft = tempfile::tempdir().unwrap();
    let mut bao = OpenBao::raft(raft.path());
    bao.pki_with_root("pki", "mesh-root", "cluster.local root CA");
    let (root_a, root_a_id) = issuer(&bao, "mesh-root");
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    let init = run_init(&bao, &data, &bao.token, &["--vault-issuer", "mesh-root"]);
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    let health = free_address();
    let (server, url) = start_server_with(
        &data,
        "127.0.0.1:0",
        &["--health-listen", &health],
        &[
            ("VAULT_ADDR", bao.addr.as_str()),
            ("VAULT_TOKEN", bao.token.as_str()),
        ],
        Some(&work.path().join("server.log")),
    );
    let mut admin = admin_for(&data, &url).await;
    let mesh = Mesh::new(Duration::from_secs(GRACE), SystemClock::shared());
    let control_plane_ca_pem = std::fs::read_to_string(data.join("control-plane-ca.pem")).unwrap();
    let mut fleet = Fleet::new(url.clone(), control_plane_ca_pem);
    for index in 0..CLUSTERS {
        fleet.add(&mut admin, &mesh, &format!("r{index}")).await;
    }
    wait_applied(&mut admin, 1, CLUSTERS).await;
    // A cluster identity of our own, to call SignIntermediate directly.
    let probe_token = admin
        .add_cluster(proto::AddClusterRequest {
            name: "probe".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .join_token;
    let probe = common::enroll_at(&url, &fleet.control_plane_ca_pem, "probe", &probe_token)
        .await
        .unwrap();
    let mut probe = proto::intermediate_service_client::IntermediateServiceClient::new(probe);
    let csr = || {
        let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
        ca::create_csr(&key, "probe").unwrap().into_bytes()
    };
    let started = admin
        .rotate_start(proto::RotateStartRequest {
            options: Some(proto::RotationOptions {
                vault_issuer: "mesh-root-b".into(),
                // The probe is a caller, not a cluster with cacerts.
                exclude_clusters: vec!["probe".into()],
                ..rotation_options()
            }),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(bundle_roots(&started)[0], root_a);
    wait_gate(&mut admin, None).await;
    // A signer connected while OpenBao is up, to see the errors directly.
    let vault = Vault::connect(config(&bao)).await.unwrap();
    let signer = VaultSigner::new(vault, "pki", &root_a_id, root_a.clone());

    // OpenBao stops: sign-new is entered (no Vault call), the agents' sign
    // requests fail cleanly and they keep retrying.
    bao.stop();
    wait_ready(&health, "unready", |code, body| {
        code == 503 && body.contains("vault")
    })
    .await;
    let signing = advance(&mut admin).await.unwrap();
    assert_eq!(signing.phase, "sign-new");
    let error = signer
        .sign_intermediate(&verified_csr(), &east_profile(), SystemClock.now())
        .await
        .unwrap_err();
    let SignerError::Vault(vault_error) = &error else {
        panic!("{error:?}")
    };
    assert_eq!(vault_error.kind, VaultErrorKind::Unreachable, "{error}");
    assert!(
        error
            .to_string()
            .contains(&format!("pki/issuer/{root_a_id}/sign-intermediate")),
        "{error}"
    );
    let grpc_status = tonic::Status::from(trustplane::server::ServerError::from(error));
    assert_eq!(
        grpc_status.code(),
        tonic::Code::Unavailable,
        "{grpc_status:?}"
    );
    // The same over the wire: an agent's SignIntermediate fails cleanly.
    let refused = probe
        .sign_intermediate(proto::SignIntermediateRequest {
            csr: csr(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert!(
        refused.message().contains("Vault") && refused.message().contains("retry"),
        "{refused:?}"
    );

    // Back, but sealed: the documented error.
    bao.restart_sealed();
    wait_ready(&health, "sealed", |code, body| {
        code == 503 && body.contains("sealed")
    })
    .await;
    let error = signer
        .sign_intermediate(&verified_csr(), &east_profile(), SystemClock.now())
        .await
        .unwrap_err();
    let SignerError::Vault(vault_error) = &error else {
        panic!("{error:?}")
    };
    assert_eq!(vault_error.kind, VaultErrorKind::Sealed, "{error}");
    let text = error.to_string();
    assert!(
        text.contains("sign-intermediate") && text.contains("operator unseal"),
        "{text}"
    );
    let refused = Vault::connect(config(&bao)).await.unwrap_err();
    assert_eq!(refused.kind, VaultErrorKind::Sealed, "{refused}");
    assert!(
        refused.to_string().contains("auth/token/lookup-self"),
        "{refused}"
    );
    let blocked = status(&mut admin).await;
    assert!(
        !blocked.gate_holds,
        "no cluster can re-issue while OpenBao is sealed"
    );

    // Unsealed: the retries go through and the rotation completes.
    let refused = probe
        .sign_intermediate(proto::SignIntermediateRequest {
            csr: csr(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    bao.unseal();
    wait_ready(&health, "ready again", |code, _| code == 200).await;
    probe
        .sign_intermediate(proto::SignIntermediateRequest {
            csr: csr(),
            ..Default::default()
        })
        .await
        .unwrap();
    wait_gate(&mut admin, None).await;
    advance(&mut admin).await.unwrap();
    wait_gate(&mut admin, None).await;
    let done = advance(&mut admin).await.unwrap();
    assert_eq!(
        (done.phase.as_str(), done.outcome.as_str()),
        ("stable", "completed")
    );
    let (root_b, _) = issuer(&bao, "mesh-root-b");
    assert_eq!(bundle_roots(&done), vec![root_b]);
    mesh.check_all("after OpenBao was stopped, sealed and unsealed")
        .await;
    assert_no_failures(&mesh).await;
    for name in fleet.clusters.keys().cloned().collect::<Vec<_>>() {
        fleet.stop(&name);
    }
    drop(server);
}

/// Token and AppRole logins with short TTLs: the token is renewed before it
/// expires, and an AppRole token that reached its max TTL is replaced by a
/// new login; both keep signing. The scoped policy allows nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_and_approle_logins_are_renewed_or_replaced_and_keep_signing() {
    common::install_crypto();
    let bao = OpenBao::dev();
    bao.pki_with_root("pki", "mesh-root", "cluster.local root CA");
    bao.pki_with_root("other-pki", "other-root", "other root");
    let (root, root_id) = issuer(&bao, "mesh-root");
    let policy = trustplane::vault::acl_policy(&config(&bao), Some(("pki", &root_id)), true);

    // A renewable token of 4 s (max 60 s): renewed at 2/3 of its TTL.
    let token = scoped_token(&bao, &policy, &["-ttl=4s", "-explicit-max-ttl=60s"]);
    let vault = Vault::connect(VaultConfig {
        token: Some(token.parse::<Secret>().unwrap()),
        ..config(&bao)
    })
    .await
    .unwrap();
    let lease = vault.lease();
    assert!(
        lease.renewable && lease.ttl.is_some_and(|ttl| ttl <= Duration::from_secs(4)),
        "{lease:?}"
    );
    let signer = VaultSigner::new(vault.clone(), "pki", &root_id, root.clone());
    tokio::time::sleep(Duration::from_secs(9)).await;
    signer
        .sign_intermediate(&verified_csr(), &east_profile(), SystemClock.now())
        .await
        .unwrap();
    // Least privilege: another mount's issuer may not sign, nor be read.
    let (other_root, other_id) = {
        let (status, body) = bao.http("GET", "other-pki/issuer/other-root/json", None);
        assert_eq!(status, 200, "{body}");
        (
            Certificate::from_pem(body["data"]["certificate"].as_str().unwrap()).unwrap(),
            body["data"]["issuer_id"].as_str().unwrap().to_string(),
        )
    };
    let denied = VaultSigner::new(vault.clone(), "other-pki", &other_id, other_root)
        .sign_intermediate(&verified_csr(), &east_profile(), SystemClock.now())
        .await
        .unwrap_err();
    let SignerError::Vault(denied) = denied else {
        panic!("{denied:?}")
    };
    assert_eq!(denied.kind, VaultErrorKind::PermissionDenied, "{denied}");
    assert!(
        denied
            .to_string()
            .contains(&format!("other-pki/issuer/{other_id}/sign-intermediate")),
        "{denied}"
    );
    let denied = pki::read_signing_issuer(&vault, "other-pki", "other-root")
        .await
        .unwrap_err();
    assert_eq!(denied.kind, VaultErrorKind::PermissionDenied, "{denied}");

    // A token that cannot be renewed expires: the error names the path
    // and says the token expired or lacks the path.
    let short = scoped_token(&bao, &policy, &["-ttl=2s", "-renewable=false"]);
    let expiring = Vault::connect(VaultConfig {
        token: Some(short.parse::<Secret>().unwrap()),
        ..config(&bao)
    })
    .await
    .unwrap();
    assert!(!expiring.lease().renewable);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let expired = VaultSigner::new(expiring, "pki", &root_id, root.clone())
        .sign_intermediate(&verified_csr(), &east_profile(), SystemClock.now())
        .await
        .unwrap_err();
    let SignerError::Vault(expired) = expired else {
        panic!("{expired:?}")
    };
    assert_eq!(expired.kind, VaultErrorKind::PermissionDenied, "{expired}");
    let text = expired.to_string();
    assert!(
        text.contains(&format!("pki/issuer/{root_id}/sign-intermediate"))
            && text.contains("the token expired: its TTL ran out"),
        "{text}"
    );

    // AppRole: tokens of 3 s, at most 5 s: renewals are capped, then a new
    // login replaces the token.
    bao.bao(&["auth", "enable", "approle"]);
    bao.bao(&[
        "write",
        "auth/approle/role/trustplane",
        "token_policies=trustplane",
        "token_ttl=3s",
        "token_max_ttl=5s",
    ]);
    let role_id: serde_json::Value = serde_json::from_slice(
        &bao.bao(&[
            "read",
            "-format=json",
            "auth/approle/role/trustplane/role-id",
        ])
        .stdout,
    )
    .unwrap();
    let secret_id: serde_json::Value = serde_json::from_slice(
        &bao.bao(&[
            "write",
            "-format=json",
            "-f",
            "auth/approle/role/trustplane/secret-id",
        ])
        .stdout,
    )
    .unwrap();
    let approle = Vault::connect(VaultConfig {
        token: None,
        role_id: Some(
            role_id["data"]["role_id"]
                .as_str()
                .unwrap()
                .parse()
                .unwrap(),
        ),
        secret_id: Some(
            secret_id["data"]["secret_id"]
                .as_str()
                .unwrap()
                .parse()
                .unwrap(),
        ),
        ..config(&bao)
    })
    .await
    .unwrap();
    let first_token = approle.client().settings.token.clone();
    let signer = VaultSigner::new(approle.clone(), "pki", &root_id, root);
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert_ne!(
        approle.client().settings.token,
        first_token,
        "the AppRole token past its max TTL was not replaced"
    );
    signer
        .sign_intermediate(&verified_csr(), &east_profile(), SystemClock.now())
        .await
        .unwrap();

    // Incomplete AppRole settings are named.
    let incomplete = Vault::connect(VaultConfig {
        token: None,
        role_id: Some("x".parse().unwrap()),
        ..config(&bao)
    })
    .await
    .unwrap_err();
    assert_eq!(incomplete.kind, VaultErrorKind::Config);
    assert!(
        incomplete.to_string().contains("VAULT_SECRET_ID"),
        "{incomplete}"
    );
}

/// HTTPS with a CA file (`VAULT_CACERT`) and an OpenBao namespace
/// (`VAULT_NAMESPACE`, sent as X-Vault-Namespace): signing works with both,
/// and each missing one is named.
#[tokio::test]
async fn tls_with_a_ca_file_and_a_namespace() {
    common::install_crypto();
    let bao = OpenBao::dev_tls();
    let ca_file = bao.ca_file.clone().unwrap();
    bao.bao(&["namespace", "create", "mesh"]);
    bao.bao(&[
        "secrets",
        "enable",
        "-namespace=mesh",
        "-path=pki",
        "-max-lease-ttl=87600h",
        "pki",
    ]);
    bao.bao(&[
        "write",
        "-namespace=mesh",
        "pki/root/generate/internal",
        "common_name=cluster.local root CA",
        "issuer_name=mesh-root",
        "key_type=ec",
        "key_bits=256",
        "ttl=87000h",
    ]);
    let (status, body) = bao.http("GET", "mesh/pki/issuer/mesh-root/json", None);
    assert_eq!(status, 200, "{body}");
    let root = Certificate::from_pem(body["data"]["certificate"].as_str().unwrap()).unwrap();
    let root_id = body["data"]["issuer_id"].as_str().unwrap().to_string();
    let settings = VaultConfig {
        cacert: Some(ca_file.clone()),
        namespace: Some("mesh".into()),
        ..config(&bao)
    };

    let vault = Vault::connect(settings.clone()).await.unwrap();
    let signer = VaultSigner::new(vault.clone(), "pki", &root_id, root.clone());
    let certificate = signer
        .sign_intermediate(&verified_csr(), &east_profile(), SystemClock.now())
        .await
        .unwrap();
    ca::verify_issued(&certificate, &root, SystemClock.now()).unwrap();
    assert!(pki::health(&vault).await.unwrap().contains("active"));

    // Without the namespace the mount is not there.
    let outside = Vault::connect(VaultConfig {
        namespace: None,
        ..settings.clone()
    })
    .await
    .unwrap();
    let missing = pki::read_issuer(&outside, "pki", "mesh-root")
        .await
        .unwrap_err();
    assert_eq!(missing.kind, VaultErrorKind::NotFound, "{missing}");
    // Without the CA file TLS fails, and the error says where to look.
    let untrusted = Vault::connect(VaultConfig {
        cacert: None,
        ..settings.clone()
    })
    .await
    .unwrap_err();
    assert_eq!(untrusted.kind, VaultErrorKind::Unreachable, "{untrusted}");
    assert!(
        untrusted.to_string().contains("VAULT_CACERT"),
        "{untrusted}"
    );
    // A CA file that is not there is a settings error.
    let absent = Vault::connect(VaultConfig {
        cacert: Some(PathBuf::from("/nonexistent/ca.pem")),
        ..settings
    })
    .await
    .unwrap_err();
    assert_eq!(absent.kind, VaultErrorKind::Config, "{absent}");
    assert!(
        absent.to_string().contains("/nonexistent/ca.pem"),
        "{absent}"
    );
}

/// `init --signer vault` without `--vault-issuer` generates the root inside
/// OpenBao (`root/generate/internal`: the key is never exported) with the
/// key type of `--key-algorithm` and trustplane's root names; a second
/// generation is refused with how to adopt it instead.
#[tokio::test]
async fn init_generates_the_root_inside_openbao_with_the_key_algorithm() {
    let bao = OpenBao::dev();
    bao.bao(&[
        "secrets",
        "enable",
        "-path=pki",
        "-max-lease-ttl=87600h",
        "pki",
    ]);
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    let init = run_init(
        &bao,
        &data,
        &bao.token,
        &[
            "--key-algorithm",
            "ecdsa-p384",
            "--root-validity",
            "5y",
            "-o",
            "json",
        ],
    );
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    let printed: serde_json::Value = serde_json::from_slice(&init.stdout).unwrap();
    assert_eq!(printed["vault_issuer"]["issuer_name"], "trustplane-root");
    let issuer_id = printed["vault_issuer"]["issuer_id"].as_str().unwrap();
    assert!(
        printed["vault_policy"]
            .as_str()
            .unwrap()
            .contains(&format!("pki/issuer/{issuer_id}/sign-intermediate")),
        "{printed}"
    );
    let (root, id) = issuer(&bao, "trustplane-root");
    assert_eq!(id, issuer_id);
    assert_eq!(
        root.serial_hex().unwrap(),
        printed["root_serial"].as_str().unwrap()
    );
    assert!(root.subject().unwrap().contains("cluster.local root CA"));
    assert_eq!(root.uri_sans().unwrap(), ["spiffe://cluster.local"]);
    // The root's public key is on P-384 (OID 1.3.132.0.34 in its SPKI).
    const SECP384R1: [u8; 7] = [0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22];
    let spki = root.public_key_der().unwrap();
    assert!(
        spki.windows(SECP384R1.len())
            .any(|window| window == SECP384R1),
        "not a P-384 key"
    );
    let (_, config) = bao.http("GET", "pki/issuer/trustplane-root", None);
    let key_id = config["data"]["key_id"].as_str().unwrap();
    let (_, key) = bao.http("GET", &format!("pki/key/{key_id}"), None);
    assert_eq!(key["data"]["key_type"], "ec", "{key}");
    assert_no_root_key_under(&data, &[root]);

    let again = run_init(&bao, &work.path().join("other"), &bao.token, &[]);
    assert!(!again.status.success());
    let text = String::from_utf8_lossy(&again.stderr);
    assert!(text.contains("--vault-issuer trustplane-root"), "{text}");
}

/// `trustplane init` run with only `vars` of the Vault settings in its
/// environment: every `VAULT_*` and `TRUSTPLANE_VAULT_*` variable of the
/// test's own environment is removed first.
fn run_init_with_env(data: &Path, args: &[&str], vars: &[(&str, &str)]) -> Output {
    let mut command = Command::new(BINARY);
    command
        .args([
            "init",
            "--trust-domain",
            "cluster.local",
            "--signer",
            "vault",
            "-o",
            "json",
            "--data-dir",
        ])
        .arg(data)
        .args(args)
        .env_remove("TRUSTPLANE_KEK");
    for (name, _) in std::env::vars() {
        if name.starts_with("VAULT_") || name.starts_with("TRUSTPLANE_VAULT_") {
            command.env_remove(name);
        }
    }
    command.envs(vars.iter().copied());
    command.output().unwrap()
}

#[tokio::test]
async fn init_takes_its_vault_address_token_and_pki_mount_from_a_vault_config_file() {
    use std::os::unix::fs::PermissionsExt;

    let bao = OpenBao::dev();
    // Not the default mount: the file must be what names it.
    bao.bao(&[
        "secrets",
        "enable",
        "-path=mesh-pki",
        "-max-lease-ttl=87600h",
        "pki",
    ]);
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("vault.yaml");
    std::fs::write(
        &file,
        format!(
            "# trustplane's Vault settings\nvault-addr: {}\nvault-token: {}\nvault-pki-mount: mesh-pki\n",
            bao.addr, bao.token
        ),
    )
    .unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let config = file.to_str().unwrap();

    // Only the file: no VAULT_ADDR, no VAULT_TOKEN, no flag.
    let data = work.path().join("data");
    let init = run_init_with_env(&data, &["--vault-config", config], &[]);
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    let printed: serde_json::Value = serde_json::from_slice(&init.stdout).unwrap();
    assert_eq!(printed["vault_issuer"]["mount"], "mesh-pki", "{printed}");
    let (status, body) = bao.http("GET", "mesh-pki/issuer/trustplane-root/json", None);
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["data"]["issuer_id"], printed["vault_issuer"]["issuer_id"],
        "{printed}"
    );
    assert!(
        printed["vault_policy"]
            .as_str()
            .unwrap()
            .contains("path \"mesh-pki/issuer/"),
        "{printed}"
    );
    // The same through TRUSTPLANE_VAULT_CONFIG; an environment variable
    // beats the file (a dead address in the file), a flag beats both (a
    // missing mount in the variable).
    std::fs::write(
        &file,
        format!(
            "vault-addr: http://127.0.0.1:1\nvault-token: {}\nvault-pki-mount: mesh-pki\n",
            bao.token
        ),
    )
    .unwrap();
    let adopted = run_init_with_env(
        &work.path().join("adopted"),
        &[
            "--vault-issuer",
            "trustplane-root",
            "--vault-pki-mount",
            "mesh-pki",
        ],
        &[
            ("TRUSTPLANE_VAULT_CONFIG", config),
            ("VAULT_ADDR", &bao.addr),
            ("TRUSTPLANE_VAULT_PKI_MOUNT", "no-such-mount"),
        ],
    );
    assert!(
        adopted.status.success(),
        "{}",
        String::from_utf8_lossy(&adopted.stderr)
    );
    let printed: serde_json::Value = serde_json::from_slice(&adopted.stdout).unwrap();
    assert_eq!(printed["vault_issuer"]["issuer_name"], "trustplane-root");
    assert_eq!(printed["vault_issuer"]["mount"], "mesh-pki");

    // A file holding the token that others may read is refused before
    // anything is made, and the message says how to fix it.
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let refused_data = work.path().join("refused");
    let refused = run_init_with_env(
        &refused_data,
        &["--vault-config", config],
        &[("VAULT_ADDR", &bao.addr)],
    );
    assert!(!refused.status.success());
    let text = String::from_utf8_lossy(&refused.stderr);
    assert!(text.contains("vault-token"), "{text}");
    assert!(text.contains(&format!("chmod 600 {config}")), "{text}");
    assert!(!text.contains(&bao.token), "{text}");
    assert!(!refused_data.exists());
}
