//! Tests of `verify.rs`. They live outside it because they need `issue.rs`
//! to make certificates, and `issue.rs` imports `verify.rs`: keeping them
//! here keeps the import graph of `src/ca` acyclic.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::time::Duration;

use super::issue::{create_root, sign_workload};
use super::verify::{key_matches_certificate, verify_issued};
use super::{CaError, Certificate, KeyAlgorithm, PrivateKey};
use crate::fixtures::{root_and_intermediate, root_request, test_now};

const HOUR: Duration = Duration::from_secs(3600);

#[test]
fn verify_issued_accepts_the_chain_and_rejects_the_wrong_issuer() {
    let now = test_now();
    let (root, _root_key, intermediate, _cluster_key) = root_and_intermediate(now);
    verify_issued(&intermediate, &root, now).expect("intermediate");
    verify_issued(&root, &root, now).expect("root");
    let (other_root, _) = create_root(&root_request("cluster.local"), now).expect("root");
    // Same subject DN, different key: the AKI (and signature) catch it.
    let error = verify_issued(&intermediate, &other_root, now).expect_err("other root");
    assert!(
        matches!(
            error,
            CaError::KeyIdentifierMismatch { .. } | CaError::BadSignature { .. }
        ),
        "{error}"
    );
    // The issuer's DN differs.
    let (foreign_root, _) = create_root(&root_request("foreign.domain"), now).expect("root");
    let error = verify_issued(&intermediate, &foreign_root, now).expect_err("foreign");
    assert!(error.to_string().contains("names issuer"), "{error}");
    // A leaf is not an issuer.
    let leaf_key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).expect("key");
    let (_, _, intermediate2, cluster_key2) = root_and_intermediate(now);
    let leaf = sign_workload(
        &leaf_key.public_key_der().expect("spki"),
        "spiffe://cluster.local/ns/a/sa/b",
        &intermediate2,
        &cluster_key2,
        HOUR,
        now,
    )
    .expect("leaf");
    let error = verify_issued(&intermediate2, &leaf, now).expect_err("leaf as issuer");
    assert!(error.to_string().contains("not a CA"), "{error}");
}

#[test]
fn verify_issued_checks_validity() {
    let now = test_now();
    let (root, _, intermediate, _) = root_and_intermediate(now);
    let error = verify_issued(&intermediate, &root, now + 400 * 24 * HOUR).expect_err("expired");
    assert!(matches!(error, CaError::NotValidNow { .. }), "{error}");
    let error = verify_issued(&intermediate, &root, now - HOUR).expect_err("not yet");
    match error {
        CaError::NotValidNow { not_before, .. } => assert!(not_before.ends_with('Z')),
        other => panic!("{other}"),
    }
}

#[test]
fn verify_issued_detects_a_tampered_signature() {
    let now = test_now();
    let (root, _, intermediate, _) = root_and_intermediate(now);
    let mut der = intermediate.der().to_vec();
    let index = der.len() - 10;
    der[index] ^= 0x01;
    let tampered = Certificate::from_der(der).expect("still parses");
    let error = verify_issued(&tampered, &root, now).expect_err("tampered");
    assert!(error.to_string().contains("signature"), "{error}");
}

#[test]
fn key_matching() {
    let now = test_now();
    let (root, root_key, intermediate, cluster_key) = root_and_intermediate(now);
    assert!(key_matches_certificate(&root, &root_key).expect("match"));
    assert!(key_matches_certificate(&intermediate, &cluster_key).expect("match"));
    assert!(!key_matches_certificate(&root, &cluster_key).expect("match"));
    let p384 = PrivateKey::generate(KeyAlgorithm::EcdsaP384).expect("key");
    assert!(!key_matches_certificate(&root, &p384).expect("match"));
}
