//! Entry points for the fuzz targets in `fuzz/` and for the stable replay
//! in `tests/fuzz_regressions.rs`: both call the same functions, so a crash
//! the fuzzer found replays as an ordinary test.
//!
//! Each entry feeds arbitrary bytes to one reader of untrusted input and
//! must return normally whatever the bytes: a panic, an overflow or an
//! abort is a bug in the reader. Where a reader accepts the input, the entry
//! also checks a property of what it returned (a written form reads back as
//! the same value); an `assert!` that fires is a bug found, not a bad input.
//!
//! Not part of the supported interface (hidden from the docs).

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;

use crate::bundle::{self, TrustBundle};
use crate::ca::{self, CacertsFiles, Certificate};
use crate::policy::{self, Policy};
use crate::sink::SecretFormat;

/// One fuzz target: its name (the `fuzz/fuzz_targets/<name>.rs` file, the
/// corpus and regression directories) and its entry.
pub type Target = (&'static str, fn(&[u8]));

/// Every target, by name.
pub const TARGETS: &[Target] = &[
    ("csr", csr),
    ("pem_bundle", pem_bundle),
    ("spiffe_bundle", spiffe_bundle),
    ("cacerts", cacerts),
    ("policy", policy),
    ("kubeconfig", kubeconfig),
];

/// The trust domain used where a reader needs one.
const TRUST_DOMAIN: &str = "cluster.local";

/// The `now` of [`cacerts`] when the input names none.
const DEFAULT_NOW_UNIX: i64 = 1_790_000_000;

/// CSR parse and verification ([`ca::verify_csr`]), PEM or DER, then the
/// default policy's decision on the verified key. A CSR accepted as DER is
/// accepted the same as PEM.
pub fn csr(data: &[u8]) {
    let Ok(verified) = ca::verify_csr(data) else {
        return;
    };
    assert!(!verified.public_key.spki_der.is_empty());
    if let Ok(policy) = Policy::builtin_default() {
        let _ = policy.decide(TRUST_DOMAIN, "fuzz", &verified, None);
    }
    let as_pem = pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", data.to_vec()));
    if !data.trim_ascii_start().starts_with(b"-----BEGIN") && as_pem.len() <= ca::MAX_CSR_BYTES {
        let as_pem = ca::verify_csr(as_pem.as_bytes());
        assert_eq!(as_pem.ok(), Some(verified), "DER and PEM disagree");
    }
}

/// A PEM certificate bundle (`root-cert.pem`, `cert-chain.pem`):
/// [`Certificate::parse_pem_chain`], every accessor, and, when the
/// certificates make a trust bundle, its `root-cert.pem` and SPIFFE forms,
/// which must read back as the same roots.
pub fn pem_bundle(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(certificates) = Certificate::parse_pem_chain(text) else {
        return;
    };
    for certificate in &certificates {
        let _ = certificate.serial_hex();
        let _ = certificate.subject();
        let _ = certificate.not_before();
        let _ = certificate.not_after();
        let _ = certificate.is_ca();
        let _ = certificate.public_key_der();
        let _ = certificate.uri_sans();
        let _ = ca::has_uri_name_constraints(certificate);
        let _ = format!("{certificate:?}");
        let canonical = Certificate::from_pem(&certificate.to_pem()).ok();
        assert_eq!(canonical.as_ref(), Some(certificate), "PEM round trip");
    }
    let Ok(bundle) = TrustBundle::new(TRUST_DOMAIN, 1, certificates) else {
        return;
    };
    let reread = Certificate::parse_pem_chain(&bundle.root_cert_pem()).ok();
    assert_eq!(reread.as_deref(), Some(bundle.roots()), "root-cert.pem");
    let _ = bundle.digest_hex();
    check_spiffe_round_trip(&bundle);
}

/// The SPIFFE bundle JSON reader ([`bundle::read_spiffe_bundle_json`]); the
/// roots it accepts, written again, read back the same.
pub fn spiffe_bundle(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(contents) = bundle::read_spiffe_bundle_json(text) else {
        return;
    };
    let version = contents.sequence.unwrap_or(1);
    // A repeated root is refused by the bundle, not the reader.
    if let Ok(bundle) = TrustBundle::new(TRUST_DOMAIN, version, contents.roots) {
        check_spiffe_round_trip(&bundle);
    }
}

fn check_spiffe_round_trip(bundle: &TrustBundle) {
    let written = bundle.spiffe_bundle_json(Duration::from_secs(300));
    let read = written
        .ok()
        .and_then(|json| bundle::read_spiffe_bundle_json(&json).ok());
    assert_eq!(
        read.as_ref().map(|read| read.roots.as_slice()),
        Some(bundle.roots()),
        "SPIFFE round trip"
    );
}

/// The `cacerts` readers and checker: the input is a map of names to bytes
/// (`name NUL value NUL name NUL value ...`), read as a Secret in both
/// formats and as a directory, each result checked by
/// [`ca::check_cacerts`] at the `now` the optional entry `now` gives in
/// decimal Unix seconds.
pub fn cacerts(data: &[u8]) {
    let entries = named_entries(data);
    let now = entries
        .get("now")
        .and_then(|value| std::str::from_utf8(value).ok())
        .and_then(|value| value.trim().parse::<i64>().ok())
        .unwrap_or(DEFAULT_NOW_UNIX);
    let now = ca::unix_to_system_time(now);
    let secret = Secret {
        data: Some(
            entries
                .iter()
                .map(|(name, value)| (name.clone(), ByteString(value.clone())))
                .collect(),
        ),
        ..Secret::default()
    };
    for format in [SecretFormat::Istio, SecretFormat::Tls] {
        if let Some(files) = crate::sink::kube::cacerts_files(&secret, format, now) {
            check(&files, now);
        }
    }
    // A directory's files as `read_to_string` gives them.
    let file = |name: &str| {
        entries
            .get(name)
            .and_then(|value| String::from_utf8(value.clone()).ok())
    };
    let files = CacertsFiles {
        ca_cert: file("ca-cert.pem"),
        ca_key: file("ca-key.pem").map(zeroize::Zeroizing::new),
        cert_chain: file("cert-chain.pem"),
        root_cert: file("root-cert.pem"),
    };
    check(&files, now);
}

fn check(files: &CacertsFiles, now: SystemTime) {
    let checked = ca::check_cacerts(files, now, Duration::from_secs(30 * 24 * 3600));
    let _ = checked.passed();
    let _ = serde_json::to_string(&checked);
}

/// `name NUL value NUL ...` as a map (a later name wins; a name without a
/// value is dropped).
fn named_entries(data: &[u8]) -> BTreeMap<String, Vec<u8>> {
    let mut parts = data.split(|byte| *byte == 0);
    let mut entries = BTreeMap::new();
    while let (Some(name), Some(value)) = (parts.next(), parts.next()) {
        entries.insert(String::from_utf8_lossy(name).into_owned(), value.to_vec());
    }
    entries
}

/// The policy loader ([`Policy::from_yaml`]); an accepted policy's
/// lifetimes print in a form that parses back to the same duration.
pub fn policy(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(policy) = Policy::from_yaml("fuzz.yaml", text) else {
        return;
    };
    for (name, rules) in &policy.trust_domains {
        let _ = policy.trust_domain(name);
        for lifetime in [rules.default_lifetime, rules.max_lifetime] {
            let printed = policy::format_lifetime(lifetime);
            assert_eq!(
                humantime::parse_duration(&printed).ok(),
                Some(lifetime),
                "{printed:?} does not parse back"
            );
        }
    }
}

/// The push-mode kubeconfig validator ([`crate::kubeconfig::validate`]): it
/// never panics, and what it accepts has one https server and no command,
/// file path or insecure setting (checked again on the accepted text).
pub fn kubeconfig(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(validated) = crate::kubeconfig::validate(text) {
        assert!(
            crate::kubeconfig::validate(validated.text()).is_ok(),
            "an accepted kubeconfig must validate again"
        );
    }
}
