//! Replays every fuzz seed (`fuzz/seeds/<target>/`) and every saved crash
//! input (`fuzz/regressions/<target>/`) through the same entry functions the
//! fuzz targets call (`trustplane::fuzzing`), on the stable toolchain, so a
//! bug the fuzzer once found fails CI if it comes back.
//!
//! The seeds are written by `write_seeds` below (ignored; run it with
//! `cargo test --test fuzz_regressions -- --ignored write_seeds`) from the
//! project's own fixtures and OpenSSL.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use common::fixtures::{self, DAY, TRUST_DOMAIN, test_now};
use trustplane::TrustBundle;
use trustplane::ca::{self, Certificate, KeyAlgorithm, PrivateKey};
use trustplane::fuzzing::TARGETS;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// The files of `directory`, sorted; panics when it does not exist.
fn files_in(directory: &Path) -> Vec<PathBuf> {
    let entries = std::fs::read_dir(directory)
        .unwrap_or_else(|error| panic!("cannot read {}: {error}", directory.display()));
    let mut files: Vec<PathBuf> = entries
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    files
}

/// Runs `entry` on `path`'s bytes; the failure message names the file.
fn replay(target: &str, entry: fn(&[u8]), path: &Path) -> Option<String> {
    let data = std::fs::read(path).unwrap();
    std::panic::catch_unwind(|| entry(&data))
        .err()
        .map(|_| format!("{target}: {} panicked", path.display()))
}

#[test]
fn every_seed_and_every_regression_input_replays_without_a_panic() {
    let seeds = fuzz_dir().join("seeds");
    let regressions = fuzz_dir().join("regressions");
    assert!(
        regressions.is_dir(),
        "{} is missing: the saved crash inputs are gone",
        regressions.display()
    );
    // A directory under regressions/ must name a target, or its inputs
    // would silently never run.
    for directory in std::fs::read_dir(&regressions).unwrap() {
        let path = directory.unwrap().path();
        if path.is_dir() {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            assert!(
                TARGETS.iter().any(|(target, _)| *target == name),
                "{} names no fuzz target",
                path.display()
            );
        }
    }

    let mut failures = Vec::new();
    let mut counts = Vec::new();
    for (target, entry) in TARGETS {
        let seed_files = files_in(&seeds.join(target));
        assert!(
            !seed_files.is_empty(),
            "{} holds no seed: run `cargo test --test fuzz_regressions -- --ignored write_seeds`",
            seeds.join(target).display()
        );
        let regression_dir = regressions.join(target);
        let regression_files = if regression_dir.is_dir() {
            files_in(&regression_dir)
        } else {
            Vec::new()
        };
        for path in seed_files.iter().chain(&regression_files) {
            failures.extend(replay(target, *entry, path));
        }
        counts.push(format!(
            "{target}: {} seeds, {} regressions",
            seed_files.len(),
            regression_files.len()
        ));
    }
    println!("{}", counts.join("; "));
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A seed must reach past the first parse: each one is accepted by the
/// reader it seeds (a corpus of rejected inputs would fuzz nothing deep).
#[test]
fn every_seed_is_accepted_by_its_reader() {
    let seeds = fuzz_dir().join("seeds");
    for path in files_in(&seeds.join("csr")) {
        ca::verify_csr(&std::fs::read(&path).unwrap())
            .unwrap_or_else(|error| panic!("{}: {error}", path.display()));
    }
    for path in files_in(&seeds.join("pem_bundle")) {
        let text = std::fs::read_to_string(&path).unwrap();
        let roots = Certificate::parse_pem_chain(&text)
            .unwrap_or_else(|error| panic!("{}: {error}", path.display()));
        assert!(!roots.is_empty());
    }
    for path in files_in(&seeds.join("spiffe_bundle")) {
        let text = std::fs::read_to_string(&path).unwrap();
        let read = trustplane::bundle::read_spiffe_bundle_json(&text)
            .unwrap_or_else(|error| panic!("{}: {error}", path.display()));
        assert!(!read.roots.is_empty(), "{}", path.display());
    }
    for path in files_in(&seeds.join("policy")) {
        let text = std::fs::read_to_string(&path).unwrap();
        trustplane::Policy::from_yaml("seed", &text)
            .unwrap_or_else(|error| panic!("{}: {error}", path.display()));
    }
    // Kubeconfig seeds: the inline forms are accepted, `exec` is refused
    // naming the field (the seed that reaches the refusal path).
    for path in files_in(&seeds.join("kubeconfig")) {
        let text = std::fs::read_to_string(&path).unwrap();
        let verdict = trustplane::kubeconfig::validate(&text);
        if path.file_name().is_some_and(|name| name == "exec.yaml") {
            let error = verdict
                .err()
                .unwrap_or_else(|| panic!("{} accepted", path.display()));
            assert!(error.to_string().contains("exec"), "{error}");
        } else {
            verdict.unwrap_or_else(|error| panic!("{}: {error}", path.display()));
        }
    }
    // cacerts seeds are `name NUL value ...` maps; each names a `now`.
    for path in files_in(&seeds.join("cacerts")) {
        let data = std::fs::read(&path).unwrap();
        assert!(
            data.split(|byte| *byte == 0).any(|part| part == b"now"),
            "{}",
            path.display()
        );
    }
}

/// The `now` of the cacerts seeds: a day into the fixtures' validity.
fn seed_now() -> std::time::SystemTime {
    test_now() + DAY
}

fn named(entries: &[(&str, &str)]) -> Vec<u8> {
    let mut data = Vec::new();
    for (name, value) in entries {
        data.extend_from_slice(name.as_bytes());
        data.push(0);
        data.extend_from_slice(value.as_bytes());
        data.push(0);
    }
    data.pop();
    data
}

/// Writes the seed corpora under `fuzz/seeds/`; run by hand after a format
/// change (the files are committed).
#[test]
#[ignore = "writes fuzz/seeds; run by hand"]
fn write_seeds() {
    let seeds = fuzz_dir().join("seeds");
    let write = |target: &str, name: &str, data: &[u8]| {
        let directory = seeds.join(target);
        std::fs::create_dir_all(&directory).unwrap();
        std::fs::write(directory.join(name), data).unwrap();
    };
    let openssl_dir = tempfile::tempdir().unwrap();
    let (rsa_root, _) = fixtures::openssl_rsa_root(openssl_dir.path());
    let rsa_root = Certificate::from_pem(&std::fs::read_to_string(rsa_root).unwrap()).unwrap();
    let (root, _, intermediate, cluster_key) = fixtures::root_and_intermediate(test_now());
    let p384_root = ca::create_root(
        &ca::RootRequest {
            key_algorithm: KeyAlgorithm::EcdsaP384,
            ..fixtures::root_request(TRUST_DOMAIN)
        },
        test_now(),
    )
    .unwrap()
    .0;

    // CSRs: as agents make them (P-256 PEM, P-384 DER) and as OpenSSL
    // makes them (RSA, with requested extensions).
    let p256 = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    write(
        "csr",
        "p256.pem",
        ca::create_csr(&p256, "east").unwrap().as_bytes(),
    );
    let p384 = PrivateKey::generate(KeyAlgorithm::EcdsaP384).unwrap();
    let p384_csr = pem::parse(ca::create_csr(&p384, "west").unwrap()).unwrap();
    write("csr", "p384.der", p384_csr.contents());
    fixtures::run_openssl(
        openssl_dir.path(),
        &[
            "req",
            "-new",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "csr-key.pem",
            "-out",
            "rsa.csr",
            "-subj",
            "/O=Example Org/CN=south",
            "-addext",
            "basicConstraints=critical,CA:TRUE,pathlen:0",
            "-addext",
            "subjectAltName=URI:spiffe://cluster.local",
        ],
    );
    write(
        "csr",
        "rsa2048-openssl.pem",
        &std::fs::read(openssl_dir.path().join("rsa.csr")).unwrap(),
    );

    // PEM bundles: a root-cert.pem with three roots, a cert-chain.pem.
    let roots = [root.clone(), p384_root, rsa_root];
    let root_cert_pem: String = roots.iter().map(Certificate::to_pem).collect();
    write("pem_bundle", "root-cert.pem", root_cert_pem.as_bytes());
    let chain = format!("{}{}", intermediate.to_pem(), root.to_pem());
    write("pem_bundle", "cert-chain.pem", chain.as_bytes());

    // SPIFFE bundles: as the server writes them, and with a JWT key.
    let bundle = TrustBundle::new(TRUST_DOMAIN, 3, roots.to_vec()).unwrap();
    let json = bundle.spiffe_bundle_json(Duration::from_secs(300)).unwrap();
    write("spiffe_bundle", "three-roots.json", json.as_bytes());
    let mut with_jwt: serde_json::Value = serde_json::from_str(&json).unwrap();
    with_jwt["keys"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!(
            {"use": "jwt-svid", "kty": "EC", "kid": "k1", "crv": "P-256", "x": "AA", "y": "AA"}
        ));
    write(
        "spiffe_bundle",
        "with-jwt-key.json",
        with_jwt.to_string().as_bytes(),
    );

    // cacerts: the istio and the tls Secret forms of one valid set.
    let now = ca::system_time_to_unix(seed_now()).to_string();
    let key = cluster_key.to_pkcs8_pem();
    write(
        "cacerts",
        "istio",
        &named(&[
            ("now", &now),
            ("ca-cert.pem", &intermediate.to_pem()),
            ("ca-key.pem", &key),
            ("cert-chain.pem", &chain),
            ("root-cert.pem", &root.to_pem()),
        ]),
    );
    write(
        "cacerts",
        "tls",
        &named(&[
            ("now", &now),
            ("tls.crt", &intermediate.to_pem()),
            ("tls.key", &key),
            ("ca.crt", &root.to_pem()),
        ]),
    );

    // Push-mode kubeconfigs (for the kubeconfig validator's target): inline
    // credentials, which pass, and an exec plugin, which must be refused.
    let ca_data = STANDARD.encode(root.to_pem());
    let kubeconfig = |user: &str| {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: east\n  cluster:\n    \
             server: https://east.example:6443\n    certificate-authority-data: {ca_data}\n\
             users:\n- name: trustplane\n  user:\n{user}contexts:\n- name: east\n  \
             context:\n    cluster: east\n    user: trustplane\ncurrent-context: east\n"
        )
    };
    let client_data = format!(
        "    client-certificate-data: {}\n    client-key-data: {}\n",
        STANDARD.encode(intermediate.to_pem()),
        STANDARD.encode(key.as_bytes())
    );
    for (name, user) in [
        ("token.yaml", "    token: abc.def\n"),
        ("client-certificate.yaml", client_data.as_str()),
        (
            "exec.yaml",
            "    exec:\n      apiVersion: client.authentication.k8s.io/v1\n      command: id\n",
        ),
    ] {
        write("kubeconfig", name, kubeconfig(user).as_bytes());
    }

    // Policies: the shipped default and the examples.
    let policies = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    write(
        "policy",
        "default.yaml",
        &std::fs::read(policies.join("default.yaml")).unwrap(),
    );
    for path in files_in(&policies.join("examples")) {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        write("policy", &name, &std::fs::read(&path).unwrap());
    }
}
