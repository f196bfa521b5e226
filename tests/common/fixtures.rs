//! Test fixtures shared by the unit tests (src/lib.rs includes this file as
//! `crate::fixtures` under `cfg(test)`) and the integration tests
//! (`common::fixtures`): roots, intermediates, cacerts material, self-signed
//! CAs, and the `openssl` found on `PATH` for cross-checks.
//!
//! It names the crate only as `trustplane::` (src/lib.rs declares
//! `extern crate self as trustplane` for its tests) and uses only the public
//! API and dev-dependencies, so the one file compiles in both places.
// Each test binary uses a part of the fixtures.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, SystemTime};

use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, KeyUsagePurpose};
use trustplane::ca::{self, Certificate, IntermediateProfile, KeyAlgorithm, PrivateKey};
use trustplane::sink::CacertsMaterial;

/// The trust domain of every fixture.
pub const TRUST_DOMAIN: &str = "cluster.local";
/// The organisation of fixture roots and intermediates.
pub const ORGANISATION: &str = "Example Org";
pub const DAY: Duration = Duration::from_secs(24 * 3600);

/// A fixed, whole-second "now" for reproducible assertions.
pub fn test_now() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_790_000_000)
}

/// A P-256 root request for `trust_domain`, organisation
/// [`ORGANISATION`], valid ten years.
pub fn root_request(trust_domain: &str) -> ca::RootRequest {
    ca::RootRequest {
        trust_domain: trust_domain.into(),
        organisation: ORGANISATION.into(),
        key_algorithm: KeyAlgorithm::EcdsaP256,
        validity: 3650 * DAY,
    }
}

/// A new P-256 root for [`TRUST_DOMAIN`] with `organisation` in its
/// subject, valid from the real clock's now for ten years (the key is
/// dropped: see [`new_root_with_key`]).
pub fn new_root(organisation: &str) -> Certificate {
    new_root_with_key(organisation).0
}

/// As [`new_root`], with the root's key.
pub fn new_root_with_key(organisation: &str) -> (Certificate, PrivateKey) {
    ca::create_root(
        &ca::RootRequest {
            organisation: organisation.into(),
            ..root_request(TRUST_DOMAIN)
        },
        trustplane::clock::SystemClock.now(),
    )
    .expect("create root")
}

/// The intermediate profile for `cluster` in [`TRUST_DOMAIN`].
pub fn profile(cluster: &str, lifetime: Duration, name_constraints: bool) -> IntermediateProfile {
    IntermediateProfile {
        trust_domain: TRUST_DOMAIN.into(),
        organisation: ORGANISATION.into(),
        cluster: cluster.into(),
        lifetime,
        name_constraints,
    }
}

/// An intermediate signed by `root` under `profile` for a freshly generated
/// P-256 cluster key, from a CSR as an agent sends it; and that key.
pub fn new_intermediate(
    profile: &IntermediateProfile,
    root: &Certificate,
    root_key: &PrivateKey,
    now: SystemTime,
) -> (Certificate, PrivateKey) {
    let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).expect("generate key");
    let csr = ca::create_csr(&key, &profile.cluster).expect("create csr");
    let csr = ca::verify_csr(csr.as_bytes()).expect("verify csr");
    let intermediate =
        ca::sign_intermediate(&csr, profile, root, root_key, now).expect("sign intermediate");
    (intermediate, key)
}

/// A root, a year-long intermediate for cluster `east` with a freshly
/// generated key, and that key.
pub fn root_and_intermediate(
    now: SystemTime,
) -> (Certificate, PrivateKey, Certificate, PrivateKey) {
    let (root, root_key) = ca::create_root(&root_request(TRUST_DOMAIN), now).expect("create root");
    let (intermediate, cluster_key) =
        new_intermediate(&profile("east", 365 * DAY, false), &root, &root_key, now);
    (root, root_key, intermediate, cluster_key)
}

/// A real root → intermediate cacerts set at `bundle_version`, valid now
/// by the real clock, so that checks and serials work.
pub fn cacerts_material(bundle_version: u64) -> CacertsMaterial {
    let (root, _, intermediate, key) = root_and_intermediate(trustplane::clock::SystemClock.now());
    CacertsMaterial {
        ca_cert_pem: intermediate.to_pem(),
        ca_key_pem: key.to_pkcs8_pem(),
        cert_chain_pem: format!("{}{}", intermediate.to_pem(), root.to_pem()),
        root_cert_pem: root.to_pem(),
        bundle_version,
    }
}

/// rcgen parameters of a CA named `name` (common name only, no path length
/// limit, keyCertSign and cRLSign).
pub fn ca_params(name: &str) -> CertificateParams {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params
}

/// The PEM of a new self-signed P-256 CA named `name` (see [`ca_params`]).
pub fn self_signed_ca_pem(name: &str) -> String {
    let key = KeyPair::generate().expect("generate key");
    ca_params(name).self_signed(&key).expect("self-sign").pem()
}

/// Writes `certificates` to `directory/name` as PEM.
pub fn write_pem(directory: &Path, name: &str, certificates: &[&Certificate]) {
    let text: String = certificates
        .iter()
        .map(|certificate| certificate.to_pem())
        .collect();
    std::fs::write(directory.join(name), text).expect("write pem");
}

/// The `openssl` executable found on `PATH`; panics, saying how to install
/// it, when there is none (tests that cross-check with OpenSSL never skip).
#[allow(clippy::disallowed_methods)] // test tooling: looks up PATH itself, as a shell does
pub fn openssl() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|directory| directory.join("openssl"))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!(
                "openssl is required for these tests and is not on PATH ({}); \
                 install it (apt-get install openssl)",
                path.to_string_lossy()
            )
        })
}

/// Runs `openssl` with `arguments` in `directory`; panics with its stderr
/// on failure.
pub fn run_openssl(directory: &Path, arguments: &[&str]) -> Output {
    let output = Command::new(openssl())
        .args(arguments)
        .current_dir(directory)
        .output()
        .expect("run openssl");
    assert!(
        output.status.success(),
        "openssl {arguments:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// Generates a key with `openssl genpkey` into `directory/name` and returns
/// its PEM (PKCS#8).
pub fn openssl_genpkey(directory: &Path, name: &str, options: &[&str]) -> String {
    let mut arguments = vec!["genpkey", "-out", name];
    arguments.extend_from_slice(options);
    run_openssl(directory, &arguments);
    std::fs::read_to_string(directory.join(name)).expect("read key")
}

/// Makes a self-signed certificate valid 30 days with `openssl req -x509`
/// in `directory`: a new key from `new_key` (e.g. `["-newkey", "rsa:2048"]`)
/// written to `key_file` (PKCS#8), the certificate for `subject` with each
/// of `extensions` added (`-addext`) written to `certificate_file`.
pub fn openssl_self_signed(
    directory: &Path,
    new_key: &[&str],
    subject: &str,
    extensions: &[&str],
    key_file: &str,
    certificate_file: &str,
) {
    let mut arguments = vec!["req", "-x509"];
    arguments.extend_from_slice(new_key);
    arguments.extend_from_slice(&[
        "-nodes",
        "-keyout",
        key_file,
        "-out",
        certificate_file,
        "-days",
        "30",
        "-subj",
        subject,
    ]);
    for extension in extensions {
        arguments.extend_from_slice(&["-addext", extension]);
    }
    run_openssl(directory, &arguments);
}

/// An OpenSSL-made RSA-2048 root CA as Istio's tools/certs make them:
/// writes `root.pem` and its PKCS#1 key `root-key.pem` into `directory`
/// and returns their paths.
pub fn openssl_rsa_root(directory: &Path) -> (PathBuf, PathBuf) {
    openssl_self_signed(
        directory,
        &["-newkey", "rsa:2048"],
        "/O=Example Org/CN=rsa root CA",
        &[
            "basicConstraints=critical,CA:TRUE",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
        "root-key8.pem",
        "root.pem",
    );
    run_openssl(
        directory,
        &[
            "rsa",
            "-in",
            "root-key8.pem",
            "-traditional",
            "-out",
            "root-key.pem",
        ],
    );
    (directory.join("root.pem"), directory.join("root-key.pem"))
}

/// Runs `openssl verify` with `arguments` in `directory`; returns whether it
/// succeeded and its output.
pub fn openssl_verify(directory: &Path, arguments: &[&str]) -> (bool, String) {
    let output = Command::new(openssl())
        .arg("verify")
        .args(arguments)
        .current_dir(directory)
        .output()
        .expect("run openssl");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

/// Runs `openssl verify` of `certificate_pem` under `root_pem`, with the
/// `untrusted` intermediates if any, writing them into `directory`; returns
/// whether it succeeded and its output.
pub fn openssl_verify_pem(
    directory: &Path,
    root_pem: &str,
    untrusted: Option<&str>,
    certificate_pem: &str,
) -> (bool, String) {
    std::fs::write(directory.join("openssl-root.pem"), root_pem).expect("write root");
    std::fs::write(directory.join("openssl-leaf.pem"), certificate_pem).expect("write leaf");
    let mut arguments = vec!["-CAfile", "openssl-root.pem"];
    if let Some(untrusted) = untrusted {
        std::fs::write(directory.join("openssl-untrusted.pem"), untrusted)
            .expect("write untrusted");
        arguments.extend_from_slice(&["-untrusted", "openssl-untrusted.pem"]);
    }
    arguments.push("openssl-leaf.pem");
    openssl_verify(directory, &arguments)
}
