//! In-process tests of the server's limits and of its certificate renewal:
//! the TLS handshake timeout, the cap on unauthenticated connections, watch
//! streams per cluster, call rates with their retry-after, a removed
//! cluster's watch stream, and the server certificate renewed on the
//! injected clock without a restart. Timing bounds are generous: these are
//! behaviour tests, not benchmarks.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tonic::Code;
use trustplane::ca::{self, Certificate, KeyAlgorithm, PrivateKey};
use trustplane::clock::{Clock, SystemClock, TestClock};
use trustplane::proto;
use trustplane::proto::intermediate_service_client::IntermediateServiceClient;
use trustplane::proto::trust_bundle_service_client::TrustBundleServiceClient;
use trustplane::server::Limits;

/// Generous: the server must act within its limit plus this.
const MARGIN: Duration = Duration::from_secs(10);

async fn server_with(limits: Limits, clock: Arc<dyn Clock>) -> common::TestServer {
    common::start_server_with_limits(
        trustplane::Policy::builtin_default().unwrap(),
        clock,
        limits,
    )
    .await
}

/// rustls's time, read from a test's clock.
#[derive(Debug)]
struct ClockTime(Arc<dyn Clock>);

impl rustls::time_provider::TimeProvider for ClockTime {
    fn current_time(&self) -> Option<UnixTime> {
        Some(UnixTime::since_unix_epoch(
            self.0.now().duration_since(SystemTime::UNIX_EPOCH).ok()?,
        ))
    }
}

/// A raw TLS client without a client certificate that verifies the server
/// against the control-plane CA at `clock`'s time.
fn tls_client(server: &common::TestServer, clock: Arc<dyn Clock>) -> TlsConnector {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    let ca = Certificate::from_pem(&server.control_plane_ca_pem).unwrap();
    roots.add(CertificateDer::from(ca.der().to_vec())).unwrap();
    let mut config =
        rustls::ClientConfig::builder_with_details(provider, Arc::new(ClockTime(clock)))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    TlsConnector::from(Arc::new(config))
}

async fn tls_connect(
    connector: &TlsConnector,
    server: &common::TestServer,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(server.running.address).await?;
    let name = ServerName::try_from("localhost").unwrap();
    tokio::time::timeout(MARGIN, connector.connect(name, tcp))
        .await
        .map_err(|_| std::io::Error::other("handshake did not finish"))?
}

fn server_serial(stream: &TlsStream<TcpStream>) -> String {
    let chain = stream.get_ref().1.peer_certificates().unwrap();
    Certificate::from_der(chain[0].to_vec())
        .unwrap()
        .serial_hex()
        .unwrap()
}

/// Waits until the server closes `stream` (EOF or reset), at most `limit`.
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> Duration {
    let started = Instant::now();
    let mut buffer = [0u8; 64];
    loop {
        match tokio::time::timeout(limit, stream.read(&mut buffer)).await {
            Err(_) => panic!("the server kept the connection open for {limit:?}"),
            Ok(Ok(0)) | Ok(Err(_)) => return started.elapsed(),
            // A TLS alert or other bytes: keep reading until it closes.
            Ok(Ok(_)) => continue,
        }
    }
}

/// A status report; whether its content is accepted is not these tests'
/// concern, only whether the rate limit let it through.
async fn report(channel: tonic::transport::Channel) -> Result<(), tonic::Status> {
    match IntermediateServiceClient::new(channel)
        .report_status(proto::ReportStatusRequest::default())
        .await
    {
        Err(status) if status.code() == Code::ResourceExhausted => Err(status),
        _ => Ok(()),
    }
}

/// A call on `channel` answers (the connection is served).
async fn served(channel: tonic::transport::Channel) {
    let bundle = tokio::time::timeout(
        MARGIN,
        TrustBundleServiceClient::new(channel).get_bundle(proto::GetBundleRequest::default()),
    )
    .await
    .expect("no answer")
    .unwrap();
    assert!(bundle.into_inner().version >= 1);
}

async fn watch(
    channel: tonic::transport::Channel,
) -> Result<tonic::Streaming<proto::Bundle>, tonic::Status> {
    let mut stream = TrustBundleServiceClient::new(channel)
        .watch_bundle(proto::WatchBundleRequest { known_version: 0 })
        .await?
        .into_inner();
    // The first message proves the stream is open on the server.
    let first = tokio::time::timeout(MARGIN, stream.message())
        .await
        .unwrap()?;
    assert!(first.is_some());
    Ok(stream)
}

#[tokio::test]
async fn an_idle_tcp_connection_is_closed_after_the_tls_handshake_timeout() {
    let timeout = Duration::from_secs(1);
    let server = server_with(
        Limits {
            tls_handshake_timeout: timeout,
            ..Limits::default()
        },
        SystemClock::shared(),
    )
    .await;
    let mut idle = TcpStream::connect(server.running.address).await.unwrap();
    let elapsed = closed_within(&mut idle, timeout + MARGIN).await;
    assert!(
        elapsed >= timeout / 2,
        "closed after {elapsed:?}: sooner than the handshake timeout, so not by it"
    );
}

#[tokio::test]
async fn connections_over_the_unauthenticated_cap_are_closed_and_an_agent_is_still_served() {
    let cap = 4;
    let extra = 3;
    let server = server_with(
        Limits {
            max_unauthenticated_connections: cap,
            tls_handshake_timeout: Duration::from_secs(60),
            ..Limits::default()
        },
        SystemClock::shared(),
    )
    .await;
    let agent = server.enroll("east").await;
    served(agent.clone()).await;

    // TLS connections without a certificate fill the cap. The agent's
    // authenticated connection stays open throughout and does not count;
    // the enrollment's anonymous one may take a moment to close, so a
    // refused attempt is retried until the cap is reached.
    let connector = tls_client(&server, SystemClock::shared());
    let mut held = Vec::new();
    let deadline = Instant::now() + MARGIN;
    while held.len() < cap {
        match tls_connect(&connector, &server).await {
            Ok(stream) => held.push(stream),
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(error) => panic!(
                "only {} unauthenticated connections were accepted with a cap of {cap}: {error}",
                held.len()
            ),
        }
    }
    // Over the cap, every new connection is closed at once.
    for _ in 0..extra {
        assert!(
            tls_connect(&connector, &server).await.is_err(),
            "a connection over the cap was kept"
        );
    }
    // An idle TCP connection over the cap is closed at once, long before
    // the 60 s handshake timeout.
    let mut idle = TcpStream::connect(server.running.address).await.unwrap();
    closed_within(&mut idle, MARGIN).await;

    // The agent's authenticated connection is not counted: it is served.
    served(agent.clone()).await;
    watch(agent).await.unwrap();
    drop(held);
}

#[tokio::test]
async fn a_connection_without_a_certificate_ends_after_its_lifetime() {
    let lifetime = Duration::from_secs(1);
    let server = server_with(
        Limits {
            unauthenticated_connection_lifetime: lifetime,
            ..Limits::default()
        },
        SystemClock::shared(),
    )
    .await;
    let connector = tls_client(&server, SystemClock::shared());
    let mut stream = tls_connect(&connector, &server).await.unwrap();
    let started = Instant::now();
    let mut buffer = [0u8; 256];
    loop {
        // The server's HTTP/2 SETTINGS arrive first; then it closes.
        match tokio::time::timeout(lifetime + MARGIN, stream.read(&mut buffer)).await {
            Err(_) => panic!("kept open past its lifetime"),
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(_)) => continue,
        }
    }
    assert!(started.elapsed() >= lifetime / 2);
}

#[tokio::test]
async fn a_cluster_may_hold_only_so_many_watch_streams() {
    let server = server_with(
        Limits {
            max_watch_streams_per_identity: 2,
            ..Limits::default()
        },
        SystemClock::shared(),
    )
    .await;
    let east = server.enroll("east").await;
    let first = watch(east.clone()).await.unwrap();
    let _second = watch(east.clone()).await.unwrap();
    let refused = watch(east.clone()).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted);
    assert!(
        refused
            .message()
            .contains("--max-watch-streams-per-identity"),
        "{}",
        refused.message()
    );
    // Another cluster has its own allowance.
    let west = server.enroll("west").await;
    watch(west).await.unwrap();
    // A closed stream frees its place (the server notices the reset soon).
    drop(first);
    let deadline = Instant::now() + MARGIN;
    loop {
        match watch(east.clone()).await {
            Ok(_) => break,
            Err(status) if Instant::now() < deadline => {
                assert_eq!(status.code(), Code::ResourceExhausted);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(status) => panic!("the place was not freed: {status}"),
        }
    }
}

#[tokio::test]
async fn calls_over_the_rate_are_refused_with_a_retry_after() {
    let clock = TestClock::starting_now();
    let server = server_with(
        Limits {
            report_status_per_minute: NonZeroU32::new(2).unwrap(),
            sign_intermediate_per_hour: NonZeroU32::new(1).unwrap(),
            ..Limits::default()
        },
        clock.clone(),
    )
    .await;
    let east = server.enroll("east").await;
    report(east.clone()).await.unwrap();
    report(east.clone()).await.unwrap();
    let refused = report(east.clone()).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted);
    assert!(
        refused.message().contains("--report-status-per-minute"),
        "{}",
        refused.message()
    );
    let retry_after: u64 = refused
        .metadata()
        .get("retry-after")
        .expect("retry-after metadata")
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(retry_after, 30, "2 per minute: one more every 30 s");
    assert!(
        refused.message().contains("retry after 30 s"),
        "{}",
        refused.message()
    );
    // Another cluster is not slowed by east.
    let west = server.enroll("west").await;
    report(west).await.unwrap();
    // After the retry-after, east is accepted again.
    clock.advance(Duration::from_secs(retry_after));
    report(east.clone()).await.unwrap();

    let sign = |channel: tonic::transport::Channel| async move {
        let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
        let csr = ca::create_csr(&key, "rate").unwrap();
        IntermediateServiceClient::new(channel)
            .sign_intermediate(proto::SignIntermediateRequest {
                csr: csr.into_bytes(),
                cluster: String::new(),
            })
            .await
    };
    sign(east.clone()).await.unwrap();
    let refused = sign(east).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted);
    assert!(
        refused.message().contains("--sign-intermediate-per-hour"),
        "{}",
        refused.message()
    );
    assert_eq!(
        refused
            .metadata()
            .get("retry-after")
            .unwrap()
            .to_str()
            .unwrap(),
        "3600"
    );
}

#[tokio::test]
async fn a_removed_clusters_watch_stream_ends_at_once() {
    let server = common::start_server().await;
    let east = server.enroll("east").await;
    let mut stream = watch(east).await.unwrap();
    server
        .admin()
        .await
        .remove_cluster(proto::RemoveClusterRequest {
            name: "east".into(),
        })
        .await
        .unwrap();
    let ended = tokio::time::timeout(MARGIN, stream.message())
        .await
        .expect("the stream stayed open after the cluster was removed")
        .unwrap_err();
    assert_eq!(ended.code(), Code::PermissionDenied);
    assert!(
        ended.message().contains("cluster removed"),
        "{}",
        ended.message()
    );
}

#[tokio::test]
async fn the_server_certificate_is_renewed_at_two_thirds_of_its_lifetime_without_a_restart() {
    let clock = TestClock::starting_now();
    let server = server_with(Limits::default(), clock.clone()).await;
    let agent = server.enroll("east").await;
    let mut stream = watch(agent.clone()).await.unwrap();

    let connector = tls_client(&server, clock.clone());
    let before = tls_connect(&connector, &server).await.unwrap();
    let first_serial = server_serial(&before);
    let first = server.running.identity.certificate();
    assert_eq!(first.serial_hex().unwrap(), first_serial);
    let renew_at = trustplane::server::renewal_time(&first).unwrap();
    let lifetime = first
        .not_after()
        .unwrap()
        .duration_since(first.not_before().unwrap())
        .unwrap();
    assert!(
        renew_at
            .duration_since(first.not_before().unwrap())
            .unwrap()
            < lifetime * 7 / 10,
        "renewal is due at about 2/3 of the lifetime"
    );

    // Just before ⅔: the certificate stays.
    clock.advance(renew_at.duration_since(clock.now()).unwrap() - Duration::from_secs(60));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        server_serial(&tls_connect(&connector, &server).await.unwrap()),
        first_serial
    );

    // Past ⅔: new handshakes get a new certificate, valid at the clock's time.
    clock.advance(Duration::from_secs(120));
    let deadline = Instant::now() + MARGIN;
    let renewed = loop {
        let serial = server_serial(&tls_connect(&connector, &server).await.unwrap());
        if serial != first_serial {
            break serial;
        }
        assert!(
            Instant::now() < deadline,
            "the server certificate was not renewed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let current = server.running.identity.certificate();
    assert_eq!(current.serial_hex().unwrap(), renewed);
    assert!(current.not_after().unwrap() > first.not_after().unwrap());

    // Connections made before keep working: the agent's calls and stream.
    served(agent.clone()).await;
    let authority = server.authority().clone();
    let next = authority
        .publication
        .current()
        .bundle
        .with_appended(common::fixtures::new_root("second"))
        .unwrap();
    authority.publication.publish(next).unwrap();
    let second = tokio::time::timeout(MARGIN, stream.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(second.version, 2);
    drop(before);
}

#[tokio::test]
async fn a_flood_of_idle_and_slow_connections_leaves_agents_served() {
    let timeout = Duration::from_secs(2);
    let server = server_with(
        Limits {
            tls_handshake_timeout: timeout,
            ..Limits::default()
        },
        SystemClock::shared(),
    )
    .await;
    let agent = server.enroll("east").await;
    served(agent.clone()).await;

    // 1 500 idle TCP connections: more than the 1 000 unauthenticated places.
    let mut idle = Vec::new();
    for _ in 0..1_500 {
        idle.push(TcpStream::connect(server.running.address).await.unwrap());
    }
    // A slowloris client: a TLS record header, then one byte at a time.
    let mut slow = TcpStream::connect(server.running.address).await.unwrap();
    let slow_started = Instant::now();
    let slowloris = tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        let hello = [
            0x16u8, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
        ];
        for byte in hello.iter().chain(std::iter::repeat(&0u8)) {
            if slow.write_all(&[*byte]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        slow_started.elapsed()
    });

    // Meanwhile the agent is served on its connection.
    let started = Instant::now();
    served(agent.clone()).await;
    assert!(started.elapsed() < MARGIN);

    // The server closes the slow client and every idle connection within
    // the handshake timeout (plus a margin).
    let slow_closed = tokio::time::timeout(timeout + MARGIN, slowloris)
        .await
        .expect("the slowloris client was kept open")
        .unwrap();
    assert!(slow_closed < timeout + MARGIN);
    for connection in idle.iter_mut() {
        closed_within(connection, timeout + MARGIN).await;
    }
    drop(idle);

    // Once the flood is gone, a new agent connects, enrolls and is served.
    let west = server.enroll("west").await;
    served(west).await;
    served(agent).await;
}
