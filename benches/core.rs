//! Criterion benches of the pure core: what one issuance and one bundle
//! publication cost without network, store or runtime. `benches/run.sh`
//! runs them (`cargo bench --bench core`) next to the end-to-end figures,
//! so that a regression shows where it is.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::{Duration, SystemTime};

use criterion::{Criterion, criterion_group, criterion_main};
use trustplane::bundle::TrustBundle;
use trustplane::ca::{self, IntermediateProfile, KeyAlgorithm, PrivateKey, RootRequest};
use trustplane::clock::SystemClock;
use trustplane::reconcile::{self, Applied, BundleView};

const DAY: Duration = Duration::from_secs(24 * 3600);
const TRUST_DOMAIN: &str = "cluster.local";

fn root(organisation: &str, now: SystemTime) -> (ca::Certificate, PrivateKey) {
    ca::create_root(
        &RootRequest {
            trust_domain: TRUST_DOMAIN.into(),
            organisation: organisation.into(),
            key_algorithm: KeyAlgorithm::EcdsaP256,
            validity: 3650 * DAY,
        },
        now,
    )
    .unwrap()
}

fn profile() -> IntermediateProfile {
    IntermediateProfile {
        trust_domain: TRUST_DOMAIN.into(),
        organisation: "trustplane bench".into(),
        cluster: "east".into(),
        lifetime: 365 * DAY,
        name_constraints: false,
    }
}

/// One issuance, piece by piece: CSR verification, building and signing
/// the intermediate, verifying what was signed.
fn issuance(c: &mut Criterion) {
    let now = SystemClock.now();
    let (root, root_key) = root("Root A", now);
    let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let csr_pem = ca::create_csr(&key, "east intermediate CA").unwrap();
    let csr = ca::verify_csr(csr_pem.as_bytes()).unwrap();
    let profile = profile();
    let intermediate = ca::sign_intermediate(&csr, &profile, &root, &root_key, now).unwrap();

    c.bench_function("csr_verify (P-256 CSR: parse + signature)", |b| {
        b.iter(|| ca::verify_csr(black_box(csr_pem.as_bytes())).unwrap())
    });
    c.bench_function(
        "intermediate_build_and_sign (P-256 root; includes verifying it)",
        |b| {
            b.iter(|| {
                ca::sign_intermediate(black_box(&csr), &profile, &root, &root_key, now).unwrap()
            })
        },
    );
    // The first verification of an issued certificate (its ECDSA check) is
    // part of `intermediate_build_and_sign`: signing verifies what it made
    // and remembers the signature. What a later check costs (names,
    // constraints, validity; a rotation gate's, a status call's) is this:
    c.bench_function("intermediate_verify_issued (signature remembered)", |b| {
        b.iter(|| ca::verify_issued(black_box(&intermediate), &root, now).unwrap())
    });
}

/// Encoding a published bundle of two roots (a rotation's {A, B}).
fn bundle_encoding(c: &mut Criterion) {
    let now = SystemClock.now();
    let bundle = TrustBundle::new(
        TRUST_DOMAIN,
        2,
        vec![root("Root A", now).0, root("Root B", now).0],
    )
    .unwrap();
    c.bench_function("bundle_root_cert_pem (2 roots)", |b| {
        b.iter(|| black_box(&bundle).root_cert_pem())
    });
    c.bench_function("bundle_spiffe_json (2 roots)", |b| {
        b.iter(|| {
            black_box(&bundle)
                .spiffe_bundle_json(Duration::from_secs(300))
                .unwrap()
        })
    });
}

/// The agent's reconciler deciding what a new bundle version means for the
/// intermediate it holds: a rewrite of `root-cert.pem` (root added) and a
/// new intermediate (signer changed).
fn reconciler(c: &mut Criterion) {
    let now = SystemClock.now();
    let (root_a, key_a) = root("Root A", now);
    let (root_b, _) = root("Root B", now);
    let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let csr = ca::verify_csr(ca::create_csr(&key, "east").unwrap().as_bytes()).unwrap();
    let intermediate = ca::sign_intermediate(&csr, &profile(), &root_a, &key_a, now).unwrap();
    let chain = format!("{}{}", intermediate.to_pem(), root_a.to_pem());
    let applied = Applied::read(&intermediate.to_pem(), &chain, 1, 2.0 / 3.0, 0.5).unwrap();
    let both = format!("{}{}", root_a.to_pem(), root_b.to_pem());
    let trust_new = BundleView {
        version: 2,
        root_cert_pem: &both,
        signing_root_sha256: &root_a.sha256_hex(),
        reissue_serial: "",
    };
    let sign_new_sha = root_b.sha256_hex();
    let sign_new = BundleView {
        version: 3,
        root_cert_pem: &both,
        signing_root_sha256: &sign_new_sha,
        reissue_serial: "",
    };
    c.bench_function("reconcile_decide (trust-new: rewrite root-cert.pem)", |b| {
        b.iter(|| reconcile::decide(Some(black_box(&applied)), &trust_new, now).unwrap())
    });
    c.bench_function("reconcile_decide (sign-new: new intermediate)", |b| {
        b.iter(|| reconcile::decide(Some(black_box(&applied)), &sign_new, now).unwrap())
    });
    c.bench_function(
        "reconcile_applied_read (ca-cert.pem + cert-chain.pem)",
        |b| {
            b.iter(|| {
                Applied::read(black_box(&intermediate.to_pem()), &chain, 1, 2.0 / 3.0, 0.5).unwrap()
            })
        },
    );
}

criterion_group! {
    name = core;
    // Short runs: run.sh runs the end-to-end benches too.
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = issuance, bundle_encoding, reconciler
}
criterion_main!(core);
