//! Agent tests that do not need `crate::ca`'s key and check functions:
//! config, errors, startup failures, stopping, and the mTLS
//! wiring against an in-process bundle service (certificates made with
//! rcgen directly).

use std::pin::Pin;

use rcgen::{CertificateParams, ExtendedKeyUsagePurpose, Issuer, KeyPair};
use tokio::sync::mpsc;
use tonic::transport::{Certificate as TlsCertificate, Identity, Server, ServerTlsConfig};
use zeroize::Zeroizing;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::enroll::enrollment_refused;
use super::*;
use crate::ca::KeyAlgorithm;
use crate::fixtures::ca_params;
use crate::proto::GetBundleRequest;
use crate::proto::trust_bundle_service_server::{TrustBundleService, TrustBundleServiceServer};
use crate::proto::{Bundle, WatchBundleRequest};
use crate::sink::{MemorySink, SinkError};
use crate::telemetry::error_text;

const WAIT: Duration = Duration::from_secs(10);

/// A control-plane CA, a server certificate for localhost/127.0.0.1 and a
/// client certificate, all from rcgen.
struct Pki {
    ca_pem: String,
    server_cert_pem: String,
    server_key_pem: String,
    client_cert_pem: String,
    client_key_pem: String,
}

fn pki() -> Pki {
    let ca_key = KeyPair::generate().unwrap();
    let ca_params = ca_params("test control-plane CA");
    let ca_pem = ca_params.self_signed(&ca_key).unwrap().pem();
    let issuer = Issuer::new(ca_params, ca_key);

    let server_key = KeyPair::generate().unwrap();
    let mut server_params =
        CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    server_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server_cert_pem = server_params.signed_by(&server_key, &issuer).unwrap().pem();

    let client_key = KeyPair::generate().unwrap();
    let mut client_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    client_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "trustplane agent east");
    client_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let client_cert_pem = client_params.signed_by(&client_key, &issuer).unwrap().pem();

    Pki {
        ca_pem,
        server_cert_pem,
        server_key_pem: server_key.serialize_pem(),
        client_cert_pem,
        client_key_pem: client_key.serialize_pem(),
    }
}

fn write_identity(dir: &std::path::Path, pki: &Pki) {
    identity::save_identity(
        dir,
        &ClientIdentity {
            cluster: "east".into(),
            server_ca_pem: pki.ca_pem.clone(),
            client_cert_pem: pki.client_cert_pem.clone(),
            client_key_pem: Zeroizing::new(pki.client_key_pem.clone()),
            server: None,
        },
    )
    .unwrap();
}

fn config(server: &str, identity_dir: PathBuf) -> AgentConfig {
    let mut config = AgentConfig::new(server, identity_dir);
    config.max_backoff = Duration::from_millis(400);
    config
}

async fn wait_for_status(
    status: &mut watch::Receiver<AgentStatus>,
    predicate: impl Fn(&AgentStatus) -> bool,
) -> AgentStatus {
    tokio::time::timeout(WAIT, status.wait_for(|current| predicate(current)))
        .await
        .expect("status not reached in time")
        .expect("agent dropped its status")
        .clone()
}

async fn closed_port() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap().port()
}

#[test]
fn error_text_joins_causes_once() {
    let error = AgentError::Sink(SinkError::Io {
        action: "write",
        path: PathBuf::from("/etc/cacerts/x"),
        source: std::io::Error::other("disk full"),
    });
    assert_eq!(
        error_text(&error),
        "could not update the cacerts: could not write /etc/cacerts/x: disk full"
    );
    let rpc = AgentError::Rpc {
        call: "SignIntermediate",
        source: tonic::Status::unavailable("connection refused"),
    };
    let text = error_text(&rpc);
    assert!(text.starts_with("SignIntermediate failed: "), "{text}");
    assert!(text.contains("connection refused"), "{text}");
}

#[test]
fn refused_enrollment_tells_how_to_get_a_new_token() {
    let text = AgentError::EnrollmentRefused {
        message: "token already used".into(),
    }
    .to_string();
    assert!(text.contains("token already used"));
    assert!(text.contains("ask your admin for a new token (`trustplane cluster add <name>`)"));
    // The server's own advice (a used token: remove, then add) is not
    // contradicted by the generic one.
    let text = AgentError::EnrollmentRefused {
        message: "join token for cluster \"e0\" was already used at 2026-01-01T00:00:00Z; if this cluster's agent lost its identity, run `trustplane cluster remove e0` then `trustplane cluster add e0` for a new token".into(),
    }
    .to_string();
    assert!(text.ends_with("for a new token"), "{text}");
    assert!(!text.contains("ask your admin"), "{text}");
    assert!(enrollment_refused(tonic::Code::PermissionDenied));
    assert!(enrollment_refused(tonic::Code::Unauthenticated));
    assert!(enrollment_refused(tonic::Code::InvalidArgument));
    assert!(!enrollment_refused(tonic::Code::Unavailable));
    assert!(!enrollment_refused(tonic::Code::DeadlineExceeded));
}

#[test]
fn default_config_is_valid_and_debug_hides_the_token() {
    let mut config = AgentConfig::new("https://127.0.0.1:8443", PathBuf::from("/var/lib/agent"));
    config.join_token = Some(Zeroizing::new("tp1.east.top-secret".into()));
    config.validate().unwrap();
    assert_eq!(config.key_algorithm, KeyAlgorithm::EcdsaP256);
    assert!((config.renew_fraction - 2.0 / 3.0).abs() < 1e-12);
    let text = format!("{config:?}");
    assert!(!text.contains("top-secret"), "{text}");
}

#[tokio::test]
async fn config_validation_reports_every_problem() {
    let mut config = AgentConfig::new("http://plain", PathBuf::new());
    config.renew_fraction = 1.5;
    config.max_backoff = Duration::ZERO;
    config.key_algorithm = KeyAlgorithm::Rsa;
    let Err(AgentError::InvalidConfig(text)) = config.validate() else {
        panic!("expected an invalid config");
    };
    for needle in ["https://", "renew fraction", "max backoff", "rsa"] {
        assert!(text.contains(needle), "{needle:?} missing from {text}");
    }
    // The identity store's problems are reported with the config's.
    let (status, _receiver) = watch::channel(AgentStatus::default());
    let (_stop_sender, stop) = watch::channel(false);
    let Err(AgentError::InvalidConfig(text)) =
        run(config, Arc::new(MemorySink::new()), status, stop).await
    else {
        panic!("expected an invalid config");
    };
    for needle in ["https://", "rsa", "identity directory"] {
        assert!(text.contains(needle), "{needle:?} missing from {text}");
    }
}

#[tokio::test]
async fn invalid_config_ends_the_agent_with_the_reason_in_status() {
    let temp = tempfile::tempdir().unwrap();
    let mut config = config("https://127.0.0.1:1", temp.path().to_path_buf());
    config.renew_fraction = 0.0;
    let handle = spawn(config, Arc::new(MemorySink::new()));
    let result = tokio::time::timeout(WAIT, handle.task)
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(result, Err(AgentError::InvalidConfig(_))));
    let status = handle.status.borrow().clone();
    assert!(status.last_error.unwrap().contains("renew fraction"));
}

#[tokio::test]
async fn no_identity_and_no_token_is_fatal() {
    let temp = tempfile::tempdir().unwrap();
    let handle = spawn(
        config("https://127.0.0.1:1", temp.path().join("identity")),
        Arc::new(MemorySink::new()),
    );
    let result = tokio::time::timeout(WAIT, handle.task)
        .await
        .unwrap()
        .unwrap();
    let error = result.unwrap_err();
    assert!(matches!(error, AgentError::NoIdentity { .. }), "{error:?}");
    assert!(error.to_string().contains("trustplane cluster add"));
}

#[tokio::test]
async fn malformed_token_is_fatal_and_not_echoed() {
    let temp = tempfile::tempdir().unwrap();
    let mut config = config("https://127.0.0.1:1", temp.path().join("identity"));
    config.join_token = Some(Zeroizing::new("east-very-secret".into()));
    config.server_ca_pem = Some(pki().ca_pem);
    let (status, _receiver) = watch::channel(AgentStatus::default());
    let (_stop_sender, stop) = watch::channel(false);
    let error = run(config, Arc::new(MemorySink::new()), status, stop)
        .await
        .unwrap_err();
    assert!(matches!(error, AgentError::InvalidJoinToken));
    assert!(!error_text(&error).contains("very-secret"));
}

#[tokio::test]
async fn enrollment_needs_the_server_ca() {
    let temp = tempfile::tempdir().unwrap();
    let mut config = config("https://127.0.0.1:1", temp.path().join("identity"));
    config.join_token = Some(Zeroizing::new("tp1.east.secret".into()));
    let (status, receiver) = watch::channel(AgentStatus::default());
    let (_stop_sender, stop) = watch::channel(false);
    let error = run(config.clone(), Arc::new(MemorySink::new()), status, stop)
        .await
        .unwrap_err();
    assert!(matches!(error, AgentError::MissingServerCa), "{error:?}");
    assert!(receiver.borrow().last_error.is_some());

    config.server_ca_pem = Some("not a certificate".into());
    let (status, _receiver) = watch::channel(AgentStatus::default());
    let (_stop_sender, stop) = watch::channel(false);
    let error = run(config, Arc::new(MemorySink::new()), status, stop)
        .await
        .unwrap_err();
    assert!(matches!(error, AgentError::Certificate { .. }), "{error:?}");
}

#[tokio::test]
async fn incomplete_identity_without_token_is_fatal() {
    let temp = tempfile::tempdir().unwrap();
    std::fs::write(temp.path().join(identity::CLIENT_CERT_FILE), "cert").unwrap();
    let handle = spawn(
        config("https://127.0.0.1:1", temp.path().to_path_buf()),
        Arc::new(MemorySink::new()),
    );
    let result = tokio::time::timeout(WAIT, handle.task)
        .await
        .unwrap()
        .unwrap();
    let Err(AgentError::IncompleteIdentity { missing, .. }) = result else {
        panic!("expected an incomplete identity, got {result:?}");
    };
    assert_eq!(missing, "cluster, server-ca.pem, client-key.pem");
}

#[tokio::test]
async fn stop_before_start_returns_at_once() {
    let temp = tempfile::tempdir().unwrap();
    let (status, _receiver) = watch::channel(AgentStatus::default());
    let (stop_sender, stop) = watch::channel(false);
    stop_sender.send_replace(true);
    let result = tokio::time::timeout(
        WAIT,
        run(
            config("https://127.0.0.1:1", temp.path().to_path_buf()),
            Arc::new(MemorySink::new()),
            status,
            stop,
        ),
    )
    .await
    .unwrap();
    assert!(result.is_ok());
}

/// With an identity on disk and the server down, the agent retries with
/// backoff, shows the error in its status, and stops promptly when asked.
#[tokio::test]
async fn stop_ends_the_agent_while_it_retries() {
    let temp = tempfile::tempdir().unwrap();
    let pki = pki();
    write_identity(temp.path(), &pki);
    let server = format!("https://127.0.0.1:{}", closed_port().await);
    let sink = Arc::new(MemorySink::new());
    let mut handle = spawn(config(&server, temp.path().to_path_buf()), sink.clone());

    let status = wait_for_status(&mut handle.status, |status| status.last_error.is_some()).await;
    assert_eq!(status.cluster, "east");
    assert!(status.last_error.unwrap().contains("WatchBundle"));

    handle.stop();
    let result = tokio::time::timeout(Duration::from_secs(2), handle.task)
        .await
        .expect("the agent did not stop promptly")
        .unwrap();
    assert!(result.is_ok(), "{result:?}");
    assert!(sink.writes().is_empty());
}

/// A bundle service that records each watch (with the caller's client
/// certificate count) and keeps the stream open without sending anything.
struct SilentBundles {
    watches: mpsc::UnboundedSender<(u64, usize)>,
}

type BundleStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<Bundle, tonic::Status>> + Send + 'static>>;

#[tonic::async_trait]
impl TrustBundleService for SilentBundles {
    async fn get_bundle(
        &self,
        _request: tonic::Request<GetBundleRequest>,
    ) -> Result<tonic::Response<Bundle>, tonic::Status> {
        Err(tonic::Status::unimplemented("not in this test"))
    }

    type WatchBundleStream = BundleStream;

    async fn watch_bundle(
        &self,
        request: tonic::Request<WatchBundleRequest>,
    ) -> Result<tonic::Response<Self::WatchBundleStream>, tonic::Status> {
        let client_certificates = request
            .peer_certs()
            .map_or(0, |certificates| certificates.len());
        let _ = self
            .watches
            .send((request.get_ref().known_version, client_certificates));
        Ok(tonic::Response::new(Box::pin(tokio_stream::pending())))
    }
}

/// The agent connects with mTLS using the identity directory and verifies
/// the server (SANs localhost and 127.0.0.1) with the stored control-plane CA.
#[tokio::test]
async fn agent_watches_the_bundle_over_mutual_tls() {
    let pki = pki();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (watches, mut watched) = mpsc::unbounded_channel();
    let tls = ServerTlsConfig::new()
        .identity(Identity::from_pem(
            &pki.server_cert_pem,
            &pki.server_key_pem,
        ))
        .client_ca_root(TlsCertificate::from_pem(&pki.ca_pem));
    let server = tokio::spawn(
        Server::builder()
            .tls_config(tls)
            .unwrap()
            .add_service(TrustBundleServiceServer::new(SilentBundles { watches }))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );

    let temp = tempfile::tempdir().unwrap();
    write_identity(temp.path(), &pki);
    let handle = spawn(
        config(&format!("https://{address}"), temp.path().to_path_buf()),
        Arc::new(MemorySink::new()),
    );
    let (known_version, client_certificates) = tokio::time::timeout(WAIT, watched.recv())
        .await
        .expect("the agent did not watch in time")
        .unwrap();
    assert_eq!(known_version, 0);
    assert_eq!(
        client_certificates, 1,
        "the agent must present its client certificate"
    );
    assert_eq!(handle.status.borrow().cluster, "east");
    assert_eq!(handle.status.borrow().last_error, None);

    handle.stop();
    let result = tokio::time::timeout(Duration::from_secs(2), handle.task)
        .await
        .expect("the agent did not stop promptly")
        .unwrap();
    assert!(result.is_ok(), "{result:?}");
    server.abort();
}
