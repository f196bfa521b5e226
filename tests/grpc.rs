//! In-process gRPC tests: a real server on 127.0.0.1:0 over TLS, real
//! clients. Enroll → sign → watch → report, authorisation, tokens, bundle
//! watches, CSR rejection, and `openssl verify` on issued chains.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::fixtures::{new_root, run_openssl};
use tonic::Code;
use trustplane::ca::{self, Certificate, KeyAlgorithm, PrivateKey};
use trustplane::clock::TestClock;
use trustplane::proto;
use trustplane::proto::admin_service_client::AdminServiceClient;
use trustplane::proto::intermediate_service_client::IntermediateServiceClient;
use trustplane::proto::trust_bundle_service_client::TrustBundleServiceClient;
use trustplane::server::token_hash;
use trustplane::store::{RedbStore, Store, Table};
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::prelude::FromDer;

fn intermediate_csr() -> (PrivateKey, String) {
    let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let csr = ca::create_csr(&key, "anything the cluster likes").unwrap();
    (key, csr)
}

/// A valid CSR (as DER) with one byte of its signature flipped.
fn csr_with_corrupted_signature() -> Vec<u8> {
    let (_, csr) = intermediate_csr();
    let mut der = pem::parse(csr).unwrap().into_contents();
    let (_, request) = X509CertificationRequest::from_der(&der).unwrap();
    let signature = request.signature_value.data.to_vec();
    // The signature BIT STRING is the CSR's last element, so its last byte
    // (the low byte of ECDSA's `s`) is the DER's last byte.
    assert!(der.ends_with(&signature));
    let last = der.len() - 1;
    der[last] ^= 0x01;
    der
}

/// An Ed25519 CSR (PEM) made by `openssl req`.
fn ed25519_csr() -> Vec<u8> {
    let work = tempfile::tempdir().unwrap();
    run_openssl(
        work.path(),
        &[
            "req", "-new", "-newkey", "ed25519", "-nodes", "-subj", "/CN=x", "-keyout", "k",
            "-out", "csr.pem",
        ],
    );
    std::fs::read(work.path().join("csr.pem")).unwrap()
}

#[tokio::test]
async fn enroll_sign_watch_report_round_trip() {
    let server = common::start_server().await;
    let channel = server.enroll("east").await;

    let (key, csr) = intermediate_csr();
    let signed = IntermediateServiceClient::new(channel.clone())
        .sign_intermediate(proto::SignIntermediateRequest {
            csr: csr.into_bytes(),
            cluster: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let intermediate = Certificate::from_pem(&signed.certificate_pem).unwrap();
    let chain = Certificate::parse_pem_chain(&signed.cert_chain_pem).unwrap();
    assert_eq!(chain.len(), 2, "cert-chain.pem is intermediate then root");
    assert_eq!(chain[0], intermediate);
    assert_eq!(intermediate.serial_hex().unwrap(), signed.serial);
    assert!(
        intermediate
            .subject()
            .unwrap()
            .contains("east intermediate CA")
    );
    assert!(ca::key_matches_certificate(&intermediate, &key).unwrap());
    let bundle = signed.bundle.clone().unwrap();
    assert_eq!(bundle.version, 1);
    let roots = Certificate::parse_pem_chain(&bundle.root_cert_pem).unwrap();
    assert_eq!(roots, vec![chain[1].clone()]);
    ca::probe_ca_key(&chain, &key, &roots, trustplane::clock::SystemClock.now()).unwrap();

    let mut watch = TrustBundleServiceClient::new(channel.clone())
        .watch_bundle(proto::WatchBundleRequest { known_version: 0 })
        .await
        .unwrap()
        .into_inner();
    let first = tokio::time::timeout(Duration::from_secs(5), watch.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(first.version, 1, "the watch starts with the current bundle");
    assert_eq!(first.digest, bundle.digest);

    IntermediateServiceClient::new(channel)
        .report_status(proto::ReportStatusRequest {
            applied_bundle_version: 1,
            intermediate_serial: signed.serial.clone(),
            intermediate_not_after_unix: signed.not_after_unix,
            cert_chain_pem: signed.cert_chain_pem.clone(),
            error: String::new(),
            cluster: String::new(),
        })
        .await
        .unwrap();
    let listed = server
        .admin()
        .await
        .list_clusters(proto::ListClustersRequest {})
        .await
        .unwrap()
        .into_inner();
    let east = listed
        .clusters
        .iter()
        .find(|cluster| cluster.name == "east")
        .unwrap();
    assert_eq!(east.state, "enrolled");
    assert_eq!(east.applied_bundle_version, 1);
    assert_eq!(east.intermediate_serial, signed.serial);
    assert!(east.last_report_unix > 0);
}

#[tokio::test]
async fn a_cluster_cannot_act_for_another_cluster() {
    let server = common::start_server().await;
    let east = server.enroll("east").await;
    let _west = server.enroll("west").await;
    let (_, csr) = intermediate_csr();
    let refused = IntermediateServiceClient::new(east.clone())
        .sign_intermediate(proto::SignIntermediateRequest {
            csr: csr.into_bytes(),
            cluster: "west".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    assert!(
        refused.message().contains("may only act for itself"),
        "{}",
        refused.message()
    );

    let refused = IntermediateServiceClient::new(east.clone())
        .report_status(proto::ReportStatusRequest {
            cluster: "west".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);

    let refused = AdminServiceClient::new(east)
        .add_cluster(proto::AddClusterRequest {
            name: "sneaky".into(),
            token_ttl_seconds: 0,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    assert!(refused.message().contains("may not call AdminService"));
}

#[tokio::test]
async fn calls_without_a_client_certificate_are_unauthenticated() {
    let server = common::start_server().await;
    let anonymous = server.anonymous().await;
    let (_, csr) = intermediate_csr();
    let refused = IntermediateServiceClient::new(anonymous.clone())
        .sign_intermediate(proto::SignIntermediateRequest {
            csr: csr.into_bytes(),
            cluster: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);
    assert_eq!(
        TrustBundleServiceClient::new(anonymous.clone())
            .get_bundle(proto::GetBundleRequest {})
            .await
            .unwrap_err()
            .code(),
        Code::Unauthenticated
    );
    assert_eq!(
        AdminServiceClient::new(anonymous)
            .list_clusters(proto::ListClustersRequest {})
            .await
            .unwrap_err()
            .code(),
        Code::Unauthenticated
    );
}

#[tokio::test]
async fn join_tokens_are_single_use_and_bound_to_their_cluster() {
    let server = common::start_server().await;
    let token = server.add_cluster("east").await;
    let other = server.add_cluster("west").await;

    let wrong_cluster = server.enroll_with("east", &other).await.unwrap_err();
    assert_eq!(wrong_cluster.code(), Code::PermissionDenied);
    assert!(
        wrong_cluster
            .message()
            .contains("belongs to another cluster"),
        "{}",
        wrong_cluster.message()
    );

    server.enroll_with("east", &token).await.unwrap();
    let replayed = server.enroll_with("east", &token).await.unwrap_err();
    assert_eq!(replayed.code(), Code::PermissionDenied);
    assert!(
        replayed.message().contains("already used"),
        "{}",
        replayed.message()
    );
    assert!(
        replayed
            .message()
            .contains("trustplane cluster remove east")
            && replayed.message().contains("trustplane cluster add east"),
        "{}",
        replayed.message()
    );

    let unknown = server
        .enroll_with("west", "tp1.west.not-a-real-token")
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::PermissionDenied);
    assert!(
        unknown.message().contains("unknown"),
        "{}",
        unknown.message()
    );
}

#[tokio::test]
async fn a_new_token_or_a_removal_invalidates_earlier_join_tokens() {
    let server = common::start_server().await;
    // A second token for a pending cluster replaces the first.
    let first = server.add_cluster("east").await;
    let second = server.add_cluster("east").await;
    let replaced = server.enroll_with("east", &first).await.unwrap_err();
    assert_eq!(replaced.code(), Code::PermissionDenied);
    assert!(
        replaced.message().contains("unknown"),
        "{}",
        replaced.message()
    );

    // Removing the cluster kills its unused token: after the same name is
    // added again, only the new token enrolls.
    let mut admin = server.admin().await;
    admin
        .remove_cluster(proto::RemoveClusterRequest {
            name: "east".into(),
        })
        .await
        .unwrap();
    let third = server.add_cluster("east").await;
    let stale = server.enroll_with("east", &second).await.unwrap_err();
    assert_eq!(stale.code(), Code::PermissionDenied);
    server.enroll_with("east", &third).await.unwrap();
}

#[tokio::test]
async fn join_tokens_are_stored_hashed_and_last_an_hour_by_default() {
    let server = common::start_server().await;
    let before = ca::system_time_to_unix(trustplane::clock::SystemClock.now());
    let response = server
        .admin()
        .await
        .add_cluster(proto::AddClusterRequest {
            name: "east".into(),
            token_ttl_seconds: 0,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let after = ca::system_time_to_unix(trustplane::clock::SystemClock.now());
    assert!(
        (before + 3600 - 2..=after + 3600 + 2).contains(&response.token_expires_unix),
        "token_ttl_seconds 0 means 1 h: expires {} for a call between {before} and {after}",
        response.token_expires_unix
    );
    let token = response.join_token;
    let secret = token.splitn(3, '.').nth(2).unwrap().to_string();
    assert!(
        token.starts_with("tp1.east.") && secret.len() >= 40,
        "{token}"
    );

    let stopped = server.stop().await;
    let store_path = stopped.data_dir.store_path();
    let store = RedbStore::open(&store_path).unwrap();
    let tokens = store.list(Table::Tokens).unwrap();
    assert_eq!(tokens.len(), 1, "one token record");
    for (key, value) in &tokens {
        let value = String::from_utf8_lossy(&value.value);
        for plain in [token.as_str(), secret.as_str()] {
            assert!(!key.contains(plain), "token key holds the token: {key}");
            assert!(
                !value.contains(plain),
                "token record holds the token: {value}"
            );
        }
    }
    let (key, value) = &tokens[0];
    assert_eq!(key, &token_hash(&token), "tokens are keyed by their hash");
    let record: serde_json::Value = serde_json::from_slice(&value.value).unwrap();
    assert_eq!(record["cluster"], "east");
    assert_eq!(record["expires_unix"], response.token_expires_unix);
    drop(store);
    // Nor anywhere else in the database file.
    let file = std::fs::read(&store_path).unwrap();
    for plain in [token.as_bytes(), secret.as_bytes()] {
        assert!(
            !file.windows(plain.len()).any(|window| window == plain),
            "the database file holds the join token in plain text"
        );
    }
}

/// An agent killed after the server accepted its join token and before it
/// saved the answer repeats `Enroll` with the same token and key: it is
/// answered again with a fresh certificate whose serial replaces the
/// unclaimed one. Any other reuse of the token stays refused.
#[tokio::test]
async fn a_repeated_enrollment_with_the_same_key_is_answered_again() {
    let clock = TestClock::starting_now();
    let server = common::start_server_with_clock(
        trustplane::Policy::builtin_default().unwrap(),
        clock.clone(),
    )
    .await;
    let mut admin = server.admin().await;
    let mut token_for = async |name: &str| {
        admin
            .add_cluster(proto::AddClusterRequest {
                name: name.into(),
                token_ttl_seconds: 600,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .join_token
    };
    let token = token_for("east").await;
    let west_token = token_for("west").await;
    let enroll = |cluster: &str, token: &str, key: &PrivateKey| {
        let request = proto::EnrollRequest {
            cluster: cluster.into(),
            join_token: token.into(),
            client_csr_pem: ca::create_csr(key, "agent").unwrap(),
        };
        let server = &server;
        async move {
            IntermediateServiceClient::new(server.anonymous().await)
                .enroll(request)
                .await
                .map(tonic::Response::into_inner)
        }
    };
    let serial = |pem: &str| Certificate::from_pem(pem).unwrap().serial_hex().unwrap();
    let as_identity = |certificate: String, key: &PrivateKey| {
        let key_pem = key.to_pkcs8_pem();
        let url = server.url();
        let ca_pem = server.control_plane_ca_pem.clone();
        async move {
            trustplane::cli::connect(&url, &ca_pem, Some((&certificate, &key_pem)))
                .await
                .unwrap()
        }
    };
    let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let first = enroll("east", &token, &key).await.unwrap();
    let repeated = enroll("east", &token, &key).await.unwrap();
    let (first_serial, repeated_serial) = (
        serial(&first.client_cert_pem),
        serial(&repeated.client_cert_pem),
    );
    assert_ne!(first_serial, repeated_serial, "a repeat gets a new serial");
    let (record, _) = server.authority().core().cluster("east").unwrap().unwrap();
    assert_eq!(
        record.client_cert_serial.as_deref(),
        Some(repeated_serial.as_str())
    );
    // The first, unclaimed certificate is refused from now on; the new one works.
    let refused = TrustBundleServiceClient::new(as_identity(first.client_cert_pem, &key).await)
        .get_bundle(proto::GetBundleRequest {})
        .await
        .unwrap_err();
    assert_eq!(
        refused.code(),
        Code::PermissionDenied,
        "{}",
        refused.message()
    );
    let repeated_channel = as_identity(repeated.client_cert_pem.clone(), &key).await;
    TrustBundleServiceClient::new(repeated_channel.clone())
        .get_bundle(proto::GetBundleRequest {})
        .await
        .unwrap();
    let audit = server
        .authority()
        .audit
        .entries(&trustplane::server::AuditQuery {
            since_unix: None,
            action: Some("cluster-enroll".into()),
            limit: 100,
        })
        .unwrap();
    assert!(
        audit.iter().any(|entry| entry.detail.contains("repeated")
            && entry.detail.contains(&first_serial)
            && entry.detail.contains(&repeated_serial)),
        "{audit:?}"
    );

    // The same token with another key is a replay.
    let other_key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let replayed = enroll("east", &token, &other_key).await.unwrap_err();
    assert_eq!(replayed.code(), Code::PermissionDenied);
    assert!(
        replayed.message().contains("was already used")
            && replayed
                .message()
                .contains("trustplane cluster remove east"),
        "{}",
        replayed.message()
    );

    // Once the agent renewed (it has its identity), the same key is refused too.
    let renewed_key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    IntermediateServiceClient::new(repeated_channel)
        .renew_identity(proto::RenewIdentityRequest {
            client_csr_pem: ca::create_csr(&renewed_key, "agent").unwrap(),
        })
        .await
        .unwrap();
    let claimed = enroll("east", &token, &key).await.unwrap_err();
    assert_eq!(claimed.code(), Code::PermissionDenied);
    assert!(
        claimed.message().contains("was already used"),
        "{}",
        claimed.message()
    );

    // After the token's expiry, the same key is refused.
    let west_key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    enroll("west", &west_token, &west_key).await.unwrap();
    clock.advance(Duration::from_secs(600));
    let expired = enroll("west", &west_token, &west_key).await.unwrap_err();
    assert_eq!(expired.code(), Code::PermissionDenied);
    assert!(
        expired.message().contains("was already used"),
        "{}",
        expired.message()
    );
}

#[tokio::test]
async fn an_expired_join_token_is_refused() {
    let clock = TestClock::starting_now();
    let server = common::start_server_with_clock(
        trustplane::Policy::builtin_default().unwrap(),
        clock.clone(),
    )
    .await;
    let token = server
        .admin()
        .await
        .add_cluster(proto::AddClusterRequest {
            name: "east".into(),
            token_ttl_seconds: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .join_token;
    clock.advance(Duration::from_secs(1));
    let expired = server.enroll_with("east", &token).await.unwrap_err();
    assert_eq!(expired.code(), Code::PermissionDenied);
    assert!(
        expired.message().contains("expired"),
        "{}",
        expired.message()
    );
}

#[tokio::test]
async fn a_removed_cluster_is_refused() {
    let server = common::start_server().await;
    let channel = server.enroll("east").await;
    server
        .admin()
        .await
        .remove_cluster(proto::RemoveClusterRequest {
            name: "east".into(),
        })
        .await
        .unwrap();
    let (_, csr) = intermediate_csr();
    let refused = IntermediateServiceClient::new(channel)
        .sign_intermediate(proto::SignIntermediateRequest {
            csr: csr.into_bytes(),
            cluster: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    assert!(
        refused.message().contains("not registered"),
        "{}",
        refused.message()
    );
}

#[tokio::test]
async fn a_watcher_receives_every_new_bundle_version() {
    let server = common::start_server().await;
    let channel = server.enroll("east").await;
    let mut watch = TrustBundleServiceClient::new(channel)
        .watch_bundle(proto::WatchBundleRequest { known_version: 0 })
        .await
        .unwrap()
        .into_inner();
    let first = watch.message().await.unwrap().unwrap();
    assert_eq!(first.version, 1);

    let authority = server.authority().clone();
    let next = authority
        .publication
        .current()
        .bundle
        .with_appended(new_root("second"))
        .unwrap();
    authority.publication.publish(next).unwrap();
    let second = tokio::time::timeout(Duration::from_secs(5), watch.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(second.version, 2);
    assert_eq!(
        Certificate::parse_pem_chain(&second.root_cert_pem)
            .unwrap()
            .len(),
        2
    );
    assert!(
        second.root_cert_pem.starts_with(&first.root_cert_pem),
        "the old root keeps its bytes at the front (istiod's substring rule)"
    );
    assert_ne!(second.digest, first.digest);
}

#[tokio::test]
async fn a_slow_watcher_gets_the_latest_version_not_a_backlog() {
    let server = common::start_server().await;
    let channel = server.enroll("east").await;
    let mut watch = TrustBundleServiceClient::new(channel)
        .watch_bundle(proto::WatchBundleRequest { known_version: 0 })
        .await
        .unwrap()
        .into_inner();
    let authority = server.authority().clone();
    for index in 0..20 {
        let next = authority
            .publication
            .current()
            .bundle
            .with_appended(new_root(&format!("root {index}")))
            .unwrap();
        authority.publication.publish(next).unwrap();
    }
    let mut seen = Vec::new();
    loop {
        let bundle = tokio::time::timeout(Duration::from_secs(5), watch.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        seen.push(bundle.version);
        if bundle.version == 21 {
            break;
        }
    }
    assert!(
        seen.len() <= 4,
        "a slow consumer must not receive the backlog: {seen:?}"
    );
    assert!(
        seen.windows(2).all(|pair| pair[0] < pair[1]),
        "versions only go up: {seen:?}"
    );
}

async fn next(stream: &mut tonic::Streaming<proto::Bundle>) -> proto::Bundle {
    tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .expect("no message on the stream")
        .unwrap()
        .unwrap()
}

/// A stream reads its cluster's reissue directive when directives change
/// and keeps it with every later bundle version; another cluster's stream
/// never carries it.
#[tokio::test]
async fn a_watch_stream_keeps_its_clusters_reissue_directive_across_new_versions() {
    let server = common::start_server().await;
    let east = server.enroll("east").await;
    let west = server.enroll("west").await;
    let (_, csr) = intermediate_csr();
    let mut intermediates = IntermediateServiceClient::new(east.clone());
    let signed = intermediates
        .sign_intermediate(proto::SignIntermediateRequest {
            csr: csr.into_bytes(),
            cluster: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    intermediates
        .report_status(proto::ReportStatusRequest {
            applied_bundle_version: 1,
            intermediate_serial: signed.serial.clone(),
            intermediate_not_after_unix: signed.not_after_unix,
            cert_chain_pem: signed.cert_chain_pem.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    let open = |channel| async move {
        TrustBundleServiceClient::new(channel)
            .watch_bundle(proto::WatchBundleRequest { known_version: 0 })
            .await
            .unwrap()
            .into_inner()
    };
    let mut east_stream = open(east).await;
    let mut west_stream = open(west).await;
    let first = next(&mut east_stream).await;
    assert_eq!(
        (first.version, first.reissue_intermediate_serial.as_str()),
        (1, "")
    );
    assert_eq!(next(&mut west_stream).await.version, 1);

    server
        .admin()
        .await
        .reissue_cluster(proto::ReissueClusterRequest {
            name: "east".into(),
        })
        .await
        .unwrap();
    let asked = next(&mut east_stream).await;
    assert_eq!(
        asked.version, 1,
        "the same version, resent with the directive"
    );
    assert_eq!(asked.reissue_intermediate_serial, signed.serial);

    let authority = server.authority().clone();
    let newer = authority
        .publication
        .current()
        .bundle
        .with_appended(new_root("second"))
        .unwrap();
    authority.publication.publish(newer).unwrap();
    let second = next(&mut east_stream).await;
    assert_eq!(second.version, 2);
    assert_eq!(
        second.reissue_intermediate_serial, signed.serial,
        "the directive stays with every new version until it is done"
    );
    let west_second = next(&mut west_stream).await;
    assert_eq!(
        (
            west_second.version,
            west_second.reissue_intermediate_serial.as_str()
        ),
        (2, ""),
        "another cluster's directive never reaches this stream"
    );
}

/// Shutting the server down ends open watch streams (and so does not wait
/// for their clients to leave).
#[tokio::test]
async fn shutdown_ends_open_watch_streams() {
    let server = common::start_server().await;
    let east = server.enroll("east").await;
    let mut stream = TrustBundleServiceClient::new(east)
        .watch_bundle(proto::WatchBundleRequest { known_version: 0 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stream.message().await.unwrap().unwrap().version, 1);
    tokio::time::timeout(Duration::from_secs(10), server.stop())
        .await
        .expect("shutdown waited for an open watch stream");
    let ended = tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .expect("the stream stayed open after shutdown");
    assert!(
        !matches!(ended, Ok(Some(_))),
        "no bundle after shutdown: {ended:?}"
    );
}

#[tokio::test]
async fn bad_csrs_get_precise_invalid_argument_errors() {
    let server = common::start_server().await;
    let mut client = IntermediateServiceClient::new(server.enroll("east").await);
    let cases: Vec<(&str, Vec<u8>, &[&str])> = vec![
        ("garbage", b"this is not a CSR".to_vec(), &["malformed"]),
        ("oversize", vec![b'A'; 70 * 1024], &["limit is 65536 bytes"]),
        (
            "certificate instead of CSR",
            new_root("x").to_pem().into_bytes(),
            &["malformed"],
        ),
        (
            "corrupted signature",
            csr_with_corrupted_signature(),
            &["csr signature does not verify"],
        ),
        (
            "ed25519 key",
            ed25519_csr(),
            &["unsupported key", "ed25519"],
        ),
    ];
    for (name, csr, expected) in cases {
        let refused = client
            .sign_intermediate(proto::SignIntermediateRequest {
                csr,
                cluster: String::new(),
            })
            .await
            .unwrap_err();
        assert_eq!(
            refused.code(),
            Code::InvalidArgument,
            "{name}: {}",
            refused.message()
        );
        for expected in expected {
            assert!(
                refused.message().to_lowercase().contains(expected),
                "{name}: {:?} should mention {expected:?}",
                refused.message()
            );
        }
    }
}

#[tokio::test]
async fn a_refused_csr_stores_nothing() {
    let server = common::start_server().await;
    let mut client = IntermediateServiceClient::new(server.enroll("east").await);
    let (_, good) = intermediate_csr();
    client
        .sign_intermediate(proto::SignIntermediateRequest {
            csr: good.into_bytes(),
            cluster: String::new(),
        })
        .await
        .unwrap();
    for refused in [
        b"garbage".to_vec(),
        csr_with_corrupted_signature(),
        ed25519_csr(),
    ] {
        let status = client
            .sign_intermediate(proto::SignIntermediateRequest {
                csr: refused,
                cluster: String::new(),
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{}", status.message());
    }
    // Stop the server so the database can be opened and inspected.
    let common::TestServer {
        dir: _dir,
        data_dir,
        running,
        ..
    } = server;
    running.shutdown().await.unwrap();
    let store_path = data_dir.store_path();
    let store = RedbStore::open(&store_path).unwrap();
    let intermediates = store
        .list(Table::Certificates)
        .unwrap()
        .into_iter()
        .filter(|(_, value)| String::from_utf8_lossy(&value.value).contains("\"intermediate\""))
        .count();
    assert_eq!(
        intermediates, 1,
        "only the good CSR produced a certificate record"
    );
}

#[tokio::test]
async fn issued_chains_pass_openssl_verify() {
    let server = common::start_server().await;
    let mut client = IntermediateServiceClient::new(server.enroll("east").await);
    let (key, csr) = intermediate_csr();
    let signed = client
        .sign_intermediate(proto::SignIntermediateRequest {
            csr: csr.into_bytes(),
            cluster: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let root_pem = signed.bundle.unwrap().root_cert_pem;
    let work = tempfile::tempdir().unwrap();
    let (ok, output) =
        common::fixtures::openssl_verify_pem(work.path(), &root_pem, None, &signed.certificate_pem);
    assert!(ok, "openssl verify intermediate: {output}");

    let intermediate = Certificate::from_pem(&signed.certificate_pem).unwrap();
    let workload_key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let leaf = ca::sign_workload(
        &workload_key.public_key_der().unwrap(),
        "spiffe://cluster.local/ns/default/sa/x",
        &intermediate,
        &key,
        Duration::from_secs(3600),
        trustplane::clock::SystemClock.now(),
    )
    .unwrap();
    let (ok, output) = common::fixtures::openssl_verify_pem(
        work.path(),
        &root_pem,
        Some(&signed.certificate_pem),
        &leaf.to_pem(),
    );
    assert!(ok, "openssl verify workload through intermediate: {output}");

    let (ok, _) = common::fixtures::openssl_verify_pem(
        work.path(),
        &new_root("foreign").to_pem(),
        Some(&signed.certificate_pem),
        &leaf.to_pem(),
    );
    assert!(!ok, "a foreign root must not verify the chain");
}

#[tokio::test]
async fn push_mode_registration_validates_its_input() {
    let server = common::start_server().await;
    let mut admin = server.admin().await;
    let cases = [
        ("not: [a kubeconfig", "istio", "does not parse"),
        (
            "apiVersion: v1\nkind: Config\nclusters: []\n",
            "pkcs12",
            "secret format",
        ),
    ];
    for (kubeconfig, format, expected) in cases {
        let refused = admin
            .add_cluster(proto::AddClusterRequest {
                name: "edge".into(),
                kubeconfig: kubeconfig.into(),
                secret_format: format.into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(
            refused.code(),
            Code::InvalidArgument,
            "{}",
            refused.message()
        );
        assert!(
            refused.message().contains(expected),
            "{}",
            refused.message()
        );
    }
    let listed = admin
        .list_clusters(proto::ListClustersRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(
        listed.clusters.is_empty(),
        "a refused registration stores nothing"
    );

    admin
        .add_cluster(proto::AddClusterRequest {
            name: "edge".into(),
            kubeconfig: inline_kubeconfig(""),
            ..Default::default()
        })
        .await
        .unwrap();
    let listed = admin
        .list_clusters(proto::ListClustersRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.clusters[0].mode, "push");
    assert_eq!(listed.clusters[0].state, "enrolled");
}

#[tokio::test]
async fn renew_identity_replaces_the_serial_refuses_the_old_certificate_and_is_audited() {
    let server = common::start_server().await;
    let token = server.add_cluster("east").await;
    let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let enrolled = IntermediateServiceClient::new(server.anonymous().await)
        .enroll(proto::EnrollRequest {
            cluster: "east".into(),
            join_token: token,
            client_csr_pem: ca::create_csr(&key, "agent").unwrap(),
        })
        .await
        .unwrap()
        .into_inner();
    let old_serial = Certificate::from_pem(&enrolled.client_cert_pem)
        .unwrap()
        .serial_hex()
        .unwrap();
    let as_identity = |certificate: String, key: &PrivateKey| {
        let key_pem = key.to_pkcs8_pem();
        let url = server.url();
        let ca_pem = server.control_plane_ca_pem.clone();
        async move {
            IntermediateServiceClient::new(
                trustplane::cli::connect(&url, &ca_pem, Some((&certificate, &key_pem)))
                    .await
                    .unwrap(),
            )
        }
    };
    let mut old = as_identity(enrolled.client_cert_pem.clone(), &key).await;
    let new_key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let renewed = old
        .renew_identity(proto::RenewIdentityRequest {
            client_csr_pem: ca::create_csr(&new_key, "agent").unwrap(),
        })
        .await
        .unwrap()
        .into_inner();
    let certificate = Certificate::from_pem(&renewed.client_certificate_pem).unwrap();
    let new_serial = certificate.serial_hex().unwrap();
    assert_ne!(new_serial, old_serial);
    assert_eq!(
        certificate.public_key_der().unwrap(),
        new_key.public_key_der().unwrap()
    );
    assert_eq!(
        renewed.not_after_unix,
        ca::system_time_to_unix(certificate.not_after().unwrap())
    );
    // 30 days by default (renewed at 2/3), not a year.
    let lifetime = certificate
        .not_after()
        .unwrap()
        .duration_since(certificate.not_before().unwrap())
        .unwrap();
    assert_eq!(
        lifetime,
        trustplane::server::CLIENT_CERT_LIFETIME + ca::BACKDATE
    );
    assert_eq!(renewed.control_plane_ca_pem, server.control_plane_ca_pem);
    let (record, _) = server.authority().core().cluster("east").unwrap().unwrap();
    assert_eq!(
        record.client_cert_serial.as_deref(),
        Some(new_serial.as_str())
    );
    // The old certificate is refused for everything but another renewal.
    let refused = old
        .report_status(proto::ReportStatusRequest::default())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    assert!(
        refused.message().contains(&old_serial),
        "{}",
        refused.message()
    );
    // The answer to that renewal may have been lost (a crash, a dropped
    // connection): until the new certificate is used, the old one may renew
    // again, and the unused certificate is replaced in turn.
    let retry_key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let retried = old
        .renew_identity(proto::RenewIdentityRequest {
            client_csr_pem: ca::create_csr(&retry_key, "agent").unwrap(),
        })
        .await
        .unwrap()
        .into_inner();
    let retried_serial = Certificate::from_pem(&retried.client_certificate_pem)
        .unwrap()
        .serial_hex()
        .unwrap();
    assert_ne!(retried_serial, new_serial);
    let lost = as_identity(renewed.client_certificate_pem.clone(), &new_key)
        .await
        .report_status(proto::ReportStatusRequest::default())
        .await
        .unwrap_err();
    assert_eq!(lost.code(), Code::PermissionDenied, "{lost:?}");
    // The new one works; once it is used, the old one may not renew again.
    as_identity(retried.client_certificate_pem.clone(), &retry_key)
        .await
        .report_status(proto::ReportStatusRequest::default())
        .await
        .unwrap();
    let refused = old
        .renew_identity(proto::RenewIdentityRequest {
            client_csr_pem: ca::create_csr(&new_key, "agent").unwrap(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    let (record, _) = server.authority().core().cluster("east").unwrap().unwrap();
    assert_eq!(
        record.client_cert_serial.as_deref(),
        Some(retried_serial.as_str())
    );
    assert_eq!(record.previous_client_cert_serial, None);
    let audit = server
        .authority()
        .audit
        .entries(&trustplane::server::AuditQuery {
            since_unix: None,
            action: None,
            limit: 100,
        })
        .unwrap();
    let entry = audit
        .iter()
        .find(|entry| entry.action == "identity-renew")
        .expect("renewal audited");
    assert_eq!(entry.actor, "cluster/east");
    assert!(
        entry.detail.contains(&old_serial) && entry.detail.contains(&new_serial),
        "{}",
        entry.detail
    );
    // Admins do not renew over this call.
    let admin_refused = IntermediateServiceClient::new(server.admin_channel().await)
        .renew_identity(proto::RenewIdentityRequest {
            client_csr_pem: ca::create_csr(&new_key, "agent").unwrap(),
        })
        .await
        .unwrap_err();
    assert_eq!(admin_refused.code(), Code::PermissionDenied);
}

/// A push-mode kubeconfig with inline credentials for an API server that
/// is not there (127.0.0.1:1), plus `user_extra` (indented YAML lines) in
/// its user.
fn inline_kubeconfig(user_extra: &str) -> String {
    use base64::Engine;
    let certificate = rcgen::generate_simple_self_signed(vec!["kube.example".to_string()])
        .unwrap()
        .cert
        .pem();
    let ca = base64::engine::general_purpose::STANDARD.encode(certificate);
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: edge\n  cluster:\n    server: https://127.0.0.1:1\n    certificate-authority-data: {ca}\nusers:\n- name: pusher\n  user:\n    token: abc\n{user_extra}contexts:\n- name: edge\n  context: {{cluster: edge, user: pusher}}\ncurrent-context: edge\n"
    )
}

#[tokio::test]
async fn a_kubeconfig_that_runs_a_command_or_reads_a_file_is_refused() {
    let server = common::start_server().await;
    let mut admin = server.admin().await;
    let cases = [
        (
            "    exec:\n      apiVersion: client.authentication.k8s.io/v1\n      command: id\n",
            "users[0].user.exec",
        ),
        ("    tokenFile: /etc/passwd\n", "users[0].user.tokenFile"),
        (
            "    client-key: /var/lib/trustplane/kek\n",
            "users[0].user.client-key",
        ),
    ];
    for (extra, field) in cases {
        let refused = admin
            .add_cluster(proto::AddClusterRequest {
                name: "edge".into(),
                kubeconfig: inline_kubeconfig(extra),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(
            refused.code(),
            Code::InvalidArgument,
            "{}",
            refused.message()
        );
        assert!(
            refused.message().contains(&format!("{field} is refused")),
            "{}",
            refused.message()
        );
    }
    let listed = admin
        .list_clusters(proto::ListClustersRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(
        listed.clusters.is_empty(),
        "a refused kubeconfig stores nothing"
    );
}

#[tokio::test]
async fn a_stored_kubeconfig_that_runs_a_command_is_not_used_and_cluster_list_says_why() {
    use trustplane::signer::sealed::{Kek, seal};
    use trustplane::store::{Batch, RedbStore, Store, Table, records};

    let server = common::start_server().await;
    server
        .admin()
        .await
        .add_cluster(proto::AddClusterRequest {
            name: "edge".into(),
            kubeconfig: inline_kubeconfig(""),
            ..Default::default()
        })
        .await
        .unwrap();
    // An old store: the kubeconfig was sealed before the check existed.
    // Its exec plugin would leave a mark if it ran.
    let stopped = server.stop().await;
    let marker = stopped.dir.path().join("exec-ran");
    let exec = inline_kubeconfig(&format!(
        "    exec:\n      apiVersion: client.authentication.k8s.io/v1\n      command: touch\n      args: [{}]\n",
        marker.display()
    ))
    .replace("    token: abc\n", "");
    {
        let store = RedbStore::open(&stopped.data_dir.store_path()).unwrap();
        let kek = Kek::load(Some(&stopped.data_dir.kek_path()), None).unwrap();
        let name = records::kubeconfig_secret_name("edge");
        let sealed = seal(&kek, &name, exec.as_bytes()).unwrap();
        store
            .commit(Batch::new().put(Table::Secrets, &name, sealed, None))
            .unwrap();
    }
    let server = common::TestServer::resume(stopped).await;
    let mut admin = server.admin().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let error = loop {
        let listed = admin
            .list_clusters(proto::ListClustersRequest {})
            .await
            .unwrap()
            .into_inner();
        let error = listed.clusters[0].last_error.clone();
        if error.contains("stored kubeconfig is refused") {
            break error;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "last error: {error:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(error.contains("users[0].user.exec is refused"), "{error}");
    assert!(!marker.exists(), "the exec plugin ran on the CA host");
}

#[tokio::test]
async fn status_reports_are_checked_against_what_was_issued_and_published() {
    let server = common::start_server().await;
    let east = server.enroll("east").await;
    let west = server.enroll("west").await;
    let sign = |channel: tonic::transport::Channel| async move {
        let (_, csr) = intermediate_csr();
        IntermediateServiceClient::new(channel)
            .sign_intermediate(proto::SignIntermediateRequest {
                csr: csr.into_bytes(),
                cluster: String::new(),
            })
            .await
            .unwrap()
            .into_inner()
    };
    let east_signed = sign(east.clone()).await;
    let west_signed = sign(west.clone()).await;
    let good = proto::ReportStatusRequest {
        applied_bundle_version: 1,
        intermediate_serial: east_signed.serial.clone(),
        intermediate_not_after_unix: east_signed.not_after_unix,
        cert_chain_pem: east_signed.cert_chain_pem.clone(),
        ..Default::default()
    };
    let mut client = IntermediateServiceClient::new(east.clone());
    let cases = [
        (
            proto::ReportStatusRequest {
                intermediate_serial: west_signed.serial.clone(),
                intermediate_not_after_unix: west_signed.not_after_unix,
                ..good.clone()
            },
            Code::FailedPrecondition,
            "was not issued to cluster \"east\"",
        ),
        (
            proto::ReportStatusRequest {
                intermediate_serial: "abcdef".into(),
                ..good.clone()
            },
            Code::FailedPrecondition,
            "was not issued to cluster",
        ),
        (
            proto::ReportStatusRequest {
                applied_bundle_version: u64::MAX,
                ..good.clone()
            },
            Code::FailedPrecondition,
            "above the published version 1",
        ),
        (
            proto::ReportStatusRequest {
                intermediate_not_after_unix: -1,
                ..good.clone()
            },
            Code::InvalidArgument,
            "is negative",
        ),
        (
            proto::ReportStatusRequest {
                intermediate_not_after_unix: i64::MAX,
                ..good.clone()
            },
            Code::InvalidArgument,
            "more than 100 years ahead",
        ),
        (
            proto::ReportStatusRequest {
                intermediate_not_after_unix: east_signed.not_after_unix + 1,
                ..good.clone()
            },
            Code::InvalidArgument,
            "is not the expiry",
        ),
        (
            proto::ReportStatusRequest {
                intermediate_serial: "\u{1b}[31mZZ".into(),
                ..good.clone()
            },
            Code::InvalidArgument,
            "lowercase hex",
        ),
        (
            proto::ReportStatusRequest {
                intermediate_serial: String::new(),
                ..good.clone()
            },
            Code::InvalidArgument,
            "without an intermediate serial",
        ),
    ];
    for (request, code, expected) in cases {
        let refused = client.report_status(request).await.unwrap_err();
        assert_eq!(refused.code(), code, "{}", refused.message());
        assert!(
            refused.message().contains(expected),
            "{}",
            refused.message()
        );
    }
    let mut admin = server.admin().await;
    let listed = admin
        .list_clusters(proto::ListClustersRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(
        listed
            .clusters
            .iter()
            .all(|cluster| cluster.last_report_unix == 0),
        "a refused report stores nothing"
    );

    // Nothing applied yet with an error, then the real report with an
    // error full of terminal escapes: accepted, stored printable.
    client
        .report_status(proto::ReportStatusRequest {
            error: "cannot write".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    client
        .report_status(proto::ReportStatusRequest {
            error: "boom\u{1b}[2J\r\nfake: ok".into(),
            ..good
        })
        .await
        .unwrap();
    let listed = admin
        .list_clusters(proto::ListClustersRequest {})
        .await
        .unwrap()
        .into_inner();
    let east = listed
        .clusters
        .iter()
        .find(|cluster| cluster.name == "east")
        .unwrap();
    assert_eq!(east.last_error, "boom [2J  fake: ok");
    assert_eq!(east.intermediate_serial, east_signed.serial);
}
