//! The agent against a real in-process server: it writes Istio's cacerts
//! that pass the same checks as `trustplane verify`, follows new bundle
//! versions, renews at two thirds of the lifetime, adopts what it wrote
//! before, and retries while the server is down.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::fixtures::new_root;
use trustplane::agent::{self, AgentConfig, AgentHandle, AgentStatus};
use trustplane::ca::{self, Certificate, KeyAlgorithm};
use trustplane::cli::read_cacerts_dir;
use trustplane::clock::{Clock as _, TestClock};
use trustplane::proto;
use trustplane::sink::{ClusterSink, DirectorySink};

fn spawn_agent(
    server: &common::TestServer,
    identity: &Path,
    cacerts: &Path,
    token: Option<String>,
) -> AgentHandle {
    let sink: Arc<dyn ClusterSink> = Arc::new(DirectorySink::new(cacerts.to_path_buf()));
    agent::spawn(
        AgentConfig {
            server_ca_pem: Some(server.control_plane_ca_pem.clone()),
            join_token: token.map(zeroize::Zeroizing::new),
            key_algorithm: KeyAlgorithm::EcdsaP256,
            max_backoff: Duration::from_secs(1),
            clock: server.clock.clone(),
            ..AgentConfig::new(server.url(), identity.to_path_buf())
        },
        sink,
    )
}

async fn wait_for(
    handle: &AgentHandle,
    what: &str,
    condition: impl Fn(&AgentStatus) -> bool,
) -> AgentStatus {
    wait_moving(handle, None, what, condition).await
}

/// Waits for `condition`, moving `clock` (when given) by 100 ms at every
/// look, so that an agent sleeping on it (a retry backoff) goes on.
async fn wait_moving(
    handle: &AgentHandle,
    clock: Option<&TestClock>,
    what: &str,
    condition: impl Fn(&AgentStatus) -> bool,
) -> AgentStatus {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = handle.status.borrow().clone();
        if condition(&status) {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "agent never reached: {what}; last status {status:?}"
        );
        if let Some(clock) = clock {
            clock.advance(Duration::from_millis(100));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn assert_verifies(cacerts: &Path) {
    let check = ca::check_cacerts(
        &read_cacerts_dir(cacerts).unwrap(),
        trustplane::clock::SystemClock.now(),
        Duration::from_secs(0),
    );
    assert!(
        check.passed(),
        "{}: {:?}",
        cacerts.display(),
        check.findings
    );
}

async fn reported_version(server: &common::TestServer, cluster: &str) -> u64 {
    let listed = server
        .admin()
        .await
        .list_clusters(proto::ListClustersRequest {})
        .await
        .unwrap()
        .into_inner();
    listed
        .clusters
        .iter()
        .find(|status| status.name == cluster)
        .map(|status| status.applied_bundle_version)
        .unwrap_or(0)
}

#[tokio::test]
async fn agent_writes_verifiable_cacerts_and_follows_new_bundle_versions() {
    let server = common::start_server().await;
    let work = tempfile::tempdir().unwrap();
    let (identity, cacerts) = (work.path().join("identity"), work.path().join("cacerts"));
    let token = server.add_cluster("east").await;
    let handle = spawn_agent(&server, &identity, &cacerts, Some(token));
    wait_for(&handle, "bundle v1 applied", |status| {
        status.applied_bundle_version == 1
    })
    .await;
    assert_verifies(&cacerts);
    let v1 = std::fs::read_to_string(cacerts.join("root-cert.pem")).unwrap();
    let serial = std::fs::read_to_string(cacerts.join("ca-cert.pem")).unwrap();

    let authority = server.authority().clone();
    let next = authority
        .publication
        .current()
        .bundle
        .with_appended(new_root("second"))
        .unwrap();
    authority.publication.publish(next).unwrap();
    wait_for(&handle, "bundle v2 applied", |status| {
        status.applied_bundle_version == 2
    })
    .await;
    let v2 = std::fs::read_to_string(cacerts.join("root-cert.pem")).unwrap();
    assert_eq!(Certificate::parse_pem_chain(&v2).unwrap().len(), 2);
    assert!(
        v2.contains(&v1),
        "istiod accepts the change only if the old bytes are kept"
    );
    assert_eq!(
        std::fs::read_to_string(cacerts.join("ca-cert.pem")).unwrap(),
        serial,
        "a new bundle that still holds our root keeps the intermediate"
    );
    assert_verifies(&cacerts);
    let deadline = Instant::now() + Duration::from_secs(10);
    while reported_version(&server, "east").await != 2 {
        assert!(
            Instant::now() < deadline,
            "the server never saw the v2 report"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    handle.stop();
    handle.task.await.unwrap().unwrap();
}

/// An agent killed after the server accepted its token and before it saved
/// the answer left only its enrolling key (saved before `Enroll`):
/// restarted with the same token, it enrolls again with that key, and the
/// key becomes the identity's.
#[tokio::test]
async fn an_agent_whose_enrollment_answer_was_lost_enrolls_again_with_its_saved_key() {
    use std::os::unix::fs::PermissionsExt as _;
    let server = common::start_server().await;
    let work = tempfile::tempdir().unwrap();
    let (identity, cacerts) = (work.path().join("identity"), work.path().join("cacerts"));
    let token = server.add_cluster("east").await;
    // What the killed agent left: its key, and a spent token.
    let key = ca::PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    std::fs::create_dir_all(&identity).unwrap();
    let enrolling_key = identity.join("enrolling-key.pem");
    std::fs::write(&enrolling_key, key.to_pkcs8_pem().as_bytes()).unwrap();
    std::fs::set_permissions(&enrolling_key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let lost = trustplane::proto::intermediate_service_client::IntermediateServiceClient::new(
        server.anonymous().await,
    )
    .enroll(proto::EnrollRequest {
        cluster: "east".into(),
        join_token: token.clone(),
        client_csr_pem: ca::create_csr(&key, "agent").unwrap(),
    })
    .await
    .unwrap()
    .into_inner();
    let lost_serial = Certificate::from_pem(&lost.client_cert_pem)
        .unwrap()
        .serial_hex()
        .unwrap();

    let handle = spawn_agent(&server, &identity, &cacerts, Some(token));
    wait_for(&handle, "bundle v1 applied", |status| {
        status.applied_bundle_version == 1
    })
    .await;
    assert_eq!(
        std::fs::read_to_string(identity.join("client-key.pem")).unwrap(),
        *key.to_pkcs8_pem(),
        "the saved enrolling key is the identity's key"
    );
    assert!(
        !enrolling_key.exists(),
        "the enrolling key is gone once the identity is saved"
    );
    let saved_serial =
        Certificate::from_pem(&std::fs::read_to_string(identity.join("client.pem")).unwrap())
            .unwrap()
            .serial_hex()
            .unwrap();
    assert_ne!(saved_serial, lost_serial);
    let (record, _) = server.authority().core().cluster("east").unwrap().unwrap();
    assert_eq!(record.client_cert_serial, Some(saved_serial));
    handle.stop();
    handle.task.await.unwrap().unwrap();
}

#[tokio::test]
async fn agent_renews_at_two_thirds_of_the_intermediate_lifetime() {
    // Server and agent share a test clock: the lifetime passes when the test
    // moves the clock, not by waiting.
    let clock = TestClock::starting_now();
    let server =
        common::start_server_with_clock(common::policy_with_lifetime("9s"), clock.clone()).await;
    let work = tempfile::tempdir().unwrap();
    let (identity, cacerts) = (work.path().join("identity"), work.path().join("cacerts"));
    let token = server.add_cluster("east").await;
    let handle = spawn_agent(&server, &identity, &cacerts, Some(token));
    let first = wait_for(&handle, "first intermediate", |status| {
        !status.intermediate_serial.is_empty()
    })
    .await;
    let first_key = std::fs::read_to_string(cacerts.join("ca-key.pem")).unwrap();
    // 2/3 of 9 s is 6 s, ±5 % of the lifetime as jitter, and X.509 times
    // are whole seconds (up to 1 s earlier): renewal is due between 4.55 s
    // and 6.45 s after issuance. Timed from the backdated NotBefore
    // instead, renewal would come at once.
    clock.advance(Duration::from_secs(4));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        handle.status.borrow().intermediate_serial,
        first.intermediate_serial,
        "renewed too early: before 4 s of a 9 s lifetime"
    );
    clock.advance(Duration::from_millis(2500));
    let renewed = wait_for(&handle, "renewed intermediate by 6.5 s", |status| {
        !status.intermediate_serial.is_empty()
            && status.intermediate_serial != first.intermediate_serial
    })
    .await;
    assert_ne!(
        std::fs::read_to_string(cacerts.join("ca-key.pem")).unwrap(),
        first_key,
        "renewal uses a new key"
    );
    assert!(renewed.intermediate_not_after_unix > first.intermediate_not_after_unix);
    assert_verifies(&cacerts);
    handle.stop();
    handle.task.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_restarted_agent_adopts_its_cacerts_without_a_token() {
    let server = common::start_server().await;
    let work = tempfile::tempdir().unwrap();
    let (identity, cacerts) = (work.path().join("identity"), work.path().join("cacerts"));
    let token = server.add_cluster("east").await;
    let handle = spawn_agent(&server, &identity, &cacerts, Some(token));
    let before = wait_for(&handle, "bundle v1 applied", |status| {
        status.applied_bundle_version == 1
    })
    .await;
    handle.stop();
    handle.task.await.unwrap().unwrap();

    let handle = spawn_agent(&server, &identity, &cacerts, None);
    let after = wait_for(&handle, "bundle v1 applied again", |status| {
        status.applied_bundle_version == 1
    })
    .await;
    assert_eq!(
        after.intermediate_serial, before.intermediate_serial,
        "the existing intermediate is adopted, not re-issued"
    );
    assert_verifies(&cacerts);
    handle.stop();
    handle.task.await.unwrap().unwrap();
}

#[tokio::test]
async fn agent_retries_while_the_server_is_down_and_catches_up() {
    let clock = TestClock::starting_now();
    let server = common::start_server_with_clock(
        trustplane::Policy::builtin_default().unwrap(),
        clock.clone(),
    )
    .await;
    let work = tempfile::tempdir().unwrap();
    let (identity, cacerts) = (work.path().join("identity"), work.path().join("cacerts"));
    let token = server.add_cluster("east").await;
    let handle = spawn_agent(&server, &identity, &cacerts, Some(token));
    wait_for(&handle, "bundle v1 applied", |status| {
        status.applied_bundle_version == 1
    })
    .await;

    let stopped = server.stop().await;
    wait_for(&handle, "an error while the server is down", |status| {
        status.last_error.is_some()
    })
    .await;
    // Two seconds of retries (backoff capped at 1 s) on the agent's clock.
    for _ in 0..20 {
        clock.advance(Duration::from_millis(100));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let still_down = handle.status.borrow().clone();
    assert!(still_down.last_error.is_some(), "{still_down:?}");
    assert_verifies(&cacerts);

    let server = common::TestServer::resume(stopped).await;
    let authority = server.authority().clone();
    let next = authority
        .publication
        .current()
        .bundle
        .with_appended(new_root("while down"))
        .unwrap();
    authority.publication.publish(next).unwrap();
    let status = wait_moving(
        &handle,
        Some(&clock),
        "bundle v2 applied after the outage",
        |status| status.applied_bundle_version == 2 && status.last_error.is_none(),
    )
    .await;
    assert_eq!(status.applied_bundle_version, 2);
    assert_verifies(&cacerts);
    handle.stop();
    handle.task.await.unwrap().unwrap();
}

/// The serial of the client certificate in an identity directory.
fn identity_serial(identity: &Path) -> String {
    let pem = std::fs::read_to_string(identity.join("client.pem")).unwrap();
    Certificate::from_pem(&pem).unwrap().serial_hex().unwrap()
}

/// The client certificate serial the server holds for `cluster`.
fn recorded_serial(server: &common::TestServer, cluster: &str) -> String {
    let (record, _) = server.authority().core().cluster(cluster).unwrap().unwrap();
    record.client_cert_serial.unwrap()
}

#[tokio::test]
async fn an_agent_renews_its_identity_across_three_lifetimes_and_never_loses_service() {
    // The TLS layer (rustls) checks certificate validity against the real
    // time, the server's identify() and the agent against the test clock.
    // Certificates are backdated by ca::BACKDATE (5 min), so a certificate
    // issued at test time T is valid in real time from T - 5 min: with a
    // 90 s client lifetime, three lifetimes (270 s) of test time stay inside
    // that window, and every certificate issued is valid for rustls too
    // (the test itself takes well under 90 s of real time).
    const LIFETIME: Duration = Duration::from_secs(90);
    let clock = TestClock::starting_now();
    let server = common::start_server_with_client_lifetime(
        trustplane::Policy::builtin_default().unwrap(),
        clock.clone(),
        Some(LIFETIME),
    )
    .await;
    let work = tempfile::tempdir().unwrap();
    let (identity, cacerts) = (work.path().join("identity"), work.path().join("cacerts"));
    let token = server.add_cluster("east").await;
    let handle = spawn_agent(&server, &identity, &cacerts, Some(token));
    wait_for(&handle, "bundle v1 applied", |status| {
        status.applied_bundle_version == 1
    })
    .await;
    let intermediate = handle.status.borrow().intermediate_serial.clone();
    let started = clock.now();
    let mut serials = vec![identity_serial(&identity)];
    assert_eq!(recorded_serial(&server, "east"), serials[0]);
    while clock.now() < started + 3 * LIFETIME {
        let previous = serials.last().unwrap().clone();
        let old_certificate = std::fs::read_to_string(identity.join("client.pem")).unwrap();
        let old_key = std::fs::read_to_string(identity.join("client-key.pem")).unwrap();
        let issued_at = Certificate::from_pem(&old_certificate)
            .unwrap()
            .not_before()
            .unwrap()
            + ca::BACKDATE;
        // Move one second at a time until the agent renewed (due at 2/3 of
        // the lifetime, ±5 %, i.e. 55.5 s to 64.5 s after issuance).
        while recorded_serial(&server, "east") == previous {
            assert!(
                clock.now() < issued_at + LIFETIME - Duration::from_secs(20),
                "no renewal by {:?} after issuance",
                clock.now().duration_since(issued_at).unwrap()
            );
            clock.advance(Duration::from_secs(1));
            tokio::time::sleep(Duration::from_millis(20)).await;
            let status = handle.status.borrow().clone();
            assert_eq!(status.last_error, None, "service lost: {status:?}");
            assert_eq!(status.applied_bundle_version, 1);
        }
        let renewed_after = clock.now().duration_since(issued_at).unwrap();
        assert!(
            renewed_after >= Duration::from_secs(55),
            "renewed after only {renewed_after:?} of a {LIFETIME:?} lifetime"
        );
        // The new identity is on disk, whole, and the old one is refused.
        let deadline = Instant::now() + Duration::from_secs(10);
        while identity_serial(&identity) != recorded_serial(&server, "east") {
            assert!(Instant::now() < deadline, "renewed identity never saved");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let current = identity_serial(&identity);
        assert!(!serials.contains(&current), "serial reused: {current}");
        serials.push(current);
        let old_channel = trustplane::cli::connect(
            &server.url(),
            &server.control_plane_ca_pem,
            Some((&old_certificate, &old_key)),
        )
        .await
        .unwrap();
        let refused =
            proto::intermediate_service_client::IntermediateServiceClient::new(old_channel)
                .report_status(proto::ReportStatusRequest::default())
                .await
                .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
        assert!(
            refused.message().contains(&previous),
            "{}",
            refused.message()
        );
        // The agent reports over its new identity at once.
        let renewed_at = ca::system_time_to_unix(clock.now());
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (record, _) = server.authority().core().cluster("east").unwrap().unwrap();
            if record
                .report
                .is_some_and(|report| report.reported_unix >= renewed_at)
            {
                break;
            }
            assert!(Instant::now() < deadline, "no report after the renewal");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    assert!(serials.len() >= 4, "expected 3+ renewals: {serials:?}");
    // The watch stream runs on the last identity: a new bundle arrives.
    let authority = server.authority().clone();
    let next = authority
        .publication
        .current()
        .bundle
        .with_appended(new_root("second"))
        .unwrap();
    authority.publication.publish(next).unwrap();
    let status = wait_for(&handle, "bundle v2 applied", |status| {
        status.applied_bundle_version == 2
    })
    .await;
    assert_eq!(status.last_error, None);
    assert_eq!(
        status.intermediate_serial, intermediate,
        "identity renewals leave the intermediate alone"
    );
    assert_verifies(&cacerts);
    handle.stop();
    handle.task.await.unwrap().unwrap();
}

#[tokio::test]
async fn an_identity_renewal_missed_while_the_server_is_down_happens_once_it_is_back() {
    // Test-clock times stay within the 5 min backdate of real time, as in
    // the three-lifetimes test above.
    const LIFETIME: Duration = Duration::from_secs(90);
    let clock = TestClock::starting_now();
    let server = common::start_server_with_client_lifetime(
        trustplane::Policy::builtin_default().unwrap(),
        clock.clone(),
        Some(LIFETIME),
    )
    .await;
    let work = tempfile::tempdir().unwrap();
    let (identity, cacerts) = (work.path().join("identity"), work.path().join("cacerts"));
    let token = server.add_cluster("east").await;
    let handle = spawn_agent(&server, &identity, &cacerts, Some(token));
    wait_for(&handle, "bundle v1 applied", |status| {
        status.applied_bundle_version == 1
    })
    .await;
    let first = identity_serial(&identity);
    let pem = std::fs::read_to_string(identity.join("client.pem")).unwrap();
    let issued_at = Certificate::from_pem(&pem).unwrap().not_before().unwrap() + ca::BACKDATE;

    let stopped = server.stop().await;
    // Past the renewal time (at most 64.5 s) with the server down: the agent
    // keeps its identity and its cacerts, and says what fails.
    while clock.now() < issued_at + Duration::from_secs(70) {
        clock.advance(Duration::from_millis(500));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let down = wait_moving(&handle, None, "the outage noticed", |status| {
        status.last_error.is_some()
    })
    .await;
    assert_eq!(down.applied_bundle_version, 1);
    assert_eq!(identity_serial(&identity), first);
    assert_verifies(&cacerts);

    let server = common::TestServer::resume(stopped).await;
    let renewed = loop {
        let recorded = recorded_serial(&server, "east");
        if recorded != first {
            break recorded;
        }
        assert!(
            clock.now() < issued_at + LIFETIME,
            "not renewed before the identity expired"
        );
        clock.advance(Duration::from_millis(200));
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while identity_serial(&identity) != renewed {
        assert!(Instant::now() < deadline, "renewed identity never saved");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    wait_moving(&handle, Some(&clock), "healthy again", |status| {
        status.last_error.is_none() && status.applied_bundle_version == 1
    })
    .await;
    handle.stop();
    handle.task.await.unwrap().unwrap();
}

/// An agent given several replicas' addresses, the first of which nothing
/// listens on: it enrolls and watches through the next one, follows new
/// versions there, and saves the whole list with its identity.
#[tokio::test]
async fn an_agent_given_several_servers_skips_an_unreachable_one_for_enrollment_and_watch() {
    let server = common::start_server().await;
    let work = tempfile::tempdir().unwrap();
    let (identity, cacerts) = (work.path().join("identity"), work.path().join("cacerts"));
    let token = server.add_cluster("east").await;
    let dead = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!(
            "https://127.0.0.1:{}",
            listener.local_addr().unwrap().port()
        )
    };
    let servers = format!("{dead}, {}", server.url());
    let sink: Arc<dyn ClusterSink> = Arc::new(DirectorySink::new(cacerts.clone()));
    let handle = agent::spawn(
        AgentConfig {
            server_ca_pem: Some(server.control_plane_ca_pem.clone()),
            join_token: Some(zeroize::Zeroizing::new(token)),
            max_backoff: Duration::from_secs(1),
            ..AgentConfig::new(servers.clone(), identity.clone())
        },
        sink,
    );
    wait_for(
        &handle,
        "bundle v1 applied through the second server",
        |status| status.applied_bundle_version == 1,
    )
    .await;
    assert_verifies(&cacerts);
    let authority = server.authority().clone();
    let next = authority
        .publication
        .current()
        .bundle
        .with_appended(new_root("second"))
        .unwrap();
    authority.publication.publish(next).unwrap();
    wait_for(&handle, "bundle v2 applied", |status| {
        status.applied_bundle_version == 2
    })
    .await;
    assert_eq!(reported_version(&server, "east").await, 2);
    let saved = std::fs::read_to_string(identity.join("server")).unwrap();
    assert_eq!(saved.trim(), servers);
    handle.stop();
    handle.task.await.unwrap().unwrap();
}
