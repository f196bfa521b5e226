//! Checking an Istio `cacerts` set the way istiod loads it.

use std::time::{Duration, SystemTime};

use super::probe::{probe_ca_key, probe_ca_signature};
use super::verify::{ChainFailure, has_uri_name_constraints, trace_chain_to_roots};
use super::{
    Certificate, PrivateKey, basic_constraint, key_matches_certificate, may_sign_certificates,
};

/// The contents of Istio's four `cacerts` files (any may be missing).
#[derive(Clone, Default)]
pub struct CacertsFiles {
    /// `ca-cert.pem`.
    pub ca_cert: Option<String>,
    /// `ca-key.pem` (never printed).
    pub ca_key: Option<zeroize::Zeroizing<String>>,
    /// `cert-chain.pem`.
    pub cert_chain: Option<String>,
    /// `root-cert.pem`.
    pub root_cert: Option<String>,
}

impl std::fmt::Debug for CacertsFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacertsFiles").finish_non_exhaustive()
    }
}

/// How bad a finding is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Informational (a check that passed).
    Ok,
    /// Works now but needs attention (e.g. expiry within 30 days).
    Warning,
    /// istiod would refuse this set, or workloads would not verify.
    Error,
}

/// One check and its outcome.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Finding {
    /// Short check name, e.g. `files-present`, `key-matches`, `chain-verifies`.
    pub check: String,
    /// Outcome.
    pub severity: Severity,
    /// What was found and, for problems, what to do.
    pub message: String,
}

/// The result of [`check_cacerts`].
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct CacertsCheck {
    /// Every check in order.
    pub findings: Vec<Finding>,
}

impl CacertsCheck {
    /// Whether no finding is an error.
    pub fn passed(&self) -> bool {
        self.findings
            .iter()
            .all(|finding| finding.severity != Severity::Error)
    }
}

/// Checks a `cacerts` set like istiod: all four files present, the key
/// matches `ca-cert.pem`, it is a CA, `cert-chain.pem` starts with
/// `ca-cert.pem`, the chain verifies to a root in `root-cert.pem`, a workload
/// certificate signed with the key verifies (rustls-webpki), and expiry
/// warnings (error when expired, warning within `warn_within`).
///
/// Checks that depend on an input that is missing or does not parse are not
/// run; the finding for that input says what to fix first.
pub fn check_cacerts(
    files: &CacertsFiles,
    now: SystemTime,
    warn_within: std::time::Duration,
) -> CacertsCheck {
    let mut check = CacertsCheck::default();
    let (Some(ca_cert), Some(ca_key), Some(cert_chain), Some(root_cert)) = (
        files.ca_cert.as_deref(),
        files.ca_key.as_deref(),
        files.cert_chain.as_deref(),
        files.root_cert.as_deref(),
    ) else {
        let missing: Vec<&str> = [
            ("ca-cert.pem", files.ca_cert.is_none()),
            ("ca-key.pem", files.ca_key.is_none()),
            ("cert-chain.pem", files.cert_chain.is_none()),
            ("root-cert.pem", files.root_cert.is_none()),
        ]
        .into_iter()
        .filter_map(|(name, absent)| absent.then_some(name))
        .collect();
        check.error(
            "files-present",
            format!(
                "missing {}: istiod needs all four of ca-cert.pem, ca-key.pem, cert-chain.pem \
                 and root-cert.pem in the cacerts Secret; write them together",
                missing.join(", ")
            ),
        );
        return check;
    };
    check.ok(
        "files-present",
        "ca-cert.pem, ca-key.pem, cert-chain.pem and root-cert.pem are present",
    );

    let Some(certificate_authority) = check.parse_one(ca_cert) else {
        return check;
    };
    let key = match PrivateKey::from_pem(ca_key) {
        Ok(key) => {
            check.ok(
                "ca-key-parses",
                format!("ca-key.pem holds a {} key", key.algorithm()),
            );
            key
        }
        Err(error) => {
            check.error(
                "ca-key-parses",
                format!(
                    "ca-key.pem: {error}; it must be an unencrypted PEM private key \
                     (PKCS#8, SEC1 or PKCS#1)"
                ),
            );
            return check;
        }
    };
    let mut usable = true;
    match key_matches_certificate(&certificate_authority, &key) {
        Ok(true) => check.ok(
            "key-matches",
            "ca-key.pem is the private key of ca-cert.pem",
        ),
        Ok(false) => {
            usable = false;
            check.error(
                "key-matches",
                "ca-key.pem does not belong to ca-cert.pem: write the key and certificate \
                 from the same issuance together",
            );
        }
        Err(error) => {
            usable = false;
            check.error("key-matches", format!("cannot compare the keys: {error}"));
        }
    }
    check.is_ca(&certificate_authority);

    let chain = match Certificate::parse_pem_chain(cert_chain) {
        Ok(chain) => chain,
        Err(error) => {
            check.error(
                "cert-chain-parses",
                format!("cert-chain.pem: {error}; it must hold PEM certificates only"),
            );
            return check;
        }
    };
    if chain.first() == Some(&certificate_authority) {
        check.ok(
            "chain-starts-with-ca-cert",
            "cert-chain.pem starts with ca-cert.pem",
        );
    } else {
        check.error(
            "chain-starts-with-ca-cert",
            "the first certificate of cert-chain.pem is not ca-cert.pem: write cert-chain.pem \
             as ca-cert.pem followed by its issuers up to the root",
        );
        usable = false;
    }
    let roots = match Certificate::parse_pem_chain(root_cert) {
        Ok(roots) => roots,
        Err(error) => {
            check.error(
                "root-cert-parses",
                format!("root-cert.pem: {error}; it must hold the trusted root certificates"),
            );
            return check;
        }
    };

    // The chain as istiod verifies it: ca-cert.pem, then cert-chain.pem
    // after its first entry.
    let mut path = vec![certificate_authority.clone()];
    path.extend(chain.iter().skip(1).cloned());
    let chain_verifies = check.chain_verifies(&path, &roots, now);
    if usable && chain_verifies {
        check.probe(&path, &key, &roots, now);
    } else {
        check.warning(
            "probe-workload",
            "skipped: fix the errors above first (a workload certificate cannot verify \
             while the key or chain is wrong)",
        );
    }
    check.expiry(&path, now, warn_within);
    check
}

impl CacertsCheck {
    fn push(&mut self, check: &str, severity: Severity, message: impl Into<String>) {
        self.findings.push(Finding {
            check: check.into(),
            severity,
            message: message.into(),
        });
    }

    fn ok(&mut self, check: &str, message: impl Into<String>) {
        self.push(check, Severity::Ok, message);
    }

    fn warning(&mut self, check: &str, message: impl Into<String>) {
        self.push(check, Severity::Warning, message);
    }

    fn error(&mut self, check: &str, message: impl Into<String>) {
        self.push(check, Severity::Error, message);
    }

    /// `ca-cert.pem` must hold exactly one certificate.
    fn parse_one(&mut self, text: &str) -> Option<Certificate> {
        match Certificate::from_pem(text) {
            Ok(certificate) => {
                self.ok(
                    "ca-cert-parses",
                    format!("ca-cert.pem is {}", describe(&certificate)),
                );
                Some(certificate)
            }
            Err(error) => {
                self.error(
                    "ca-cert-parses",
                    format!(
                        "ca-cert.pem: {error}; it must hold exactly the intermediate CA certificate"
                    ),
                );
                None
            }
        }
    }

    fn is_ca(&mut self, certificate: &Certificate) {
        // Like istiod, an extension that does not parse counts as absent.
        let result = certificate.parsed().map(|parsed| {
            let ca = basic_constraint(&parsed).is_ok_and(|constraint| constraint.is_ca());
            let signs = may_sign_certificates(&parsed).unwrap_or(true);
            (ca, signs)
        });
        match result {
            Ok((true, true)) => self.ok(
                "ca-cert-is-ca",
                "ca-cert.pem is a CA that may sign certificates",
            ),
            Ok((false, _)) => self.error(
                "ca-cert-is-ca",
                "ca-cert.pem is not a CA (basicConstraints CA:true missing): issue it as an \
                 intermediate CA, not as a leaf",
            ),
            Ok((true, false)) => self.error(
                "ca-cert-is-ca",
                "ca-cert.pem may not sign certificates (keyUsage lacks keyCertSign): reissue it",
            ),
            Err(error) => self.error("ca-cert-is-ca", format!("ca-cert.pem: {error}")),
        }
    }

    /// Each link with `verify_issued`, then the last certificate to a root
    /// ([`trace_chain_to_roots`]).
    fn chain_verifies(
        &mut self,
        path: &[Certificate],
        roots: &[Certificate],
        now: SystemTime,
    ) -> bool {
        match trace_chain_to_roots(path, roots, now) {
            Ok(root) if path.last() == Some(root) => {
                self.ok(
                    "chain-verifies",
                    format!(
                        "the chain ends at {}, which root-cert.pem trusts",
                        describe(root)
                    ),
                );
                true
            }
            Ok(root) => {
                self.ok(
                    "chain-verifies",
                    format!(
                        "the chain verifies to {} from root-cert.pem",
                        describe(root)
                    ),
                );
                true
            }
            Err(ChainFailure::Empty) => {
                self.error("chain-verifies", "the chain is empty");
                false
            }
            Err(ChainFailure::Link { certificate, error }) => {
                self.error(
                    "chain-verifies",
                    format!(
                        "{} is not issued by the next certificate in cert-chain.pem ({error}): \
                         write the chain in order, leaf-most first",
                        describe(&certificate)
                    ),
                );
                false
            }
            Err(ChainFailure::Root { root, error }) => {
                self.error(
                    "chain-verifies",
                    format!("the root {} does not verify: {error}", describe(&root)),
                );
                false
            }
            Err(ChainFailure::Untrusted { last, error }) => {
                self.error(
                    "chain-verifies",
                    format!(
                        "the chain ends at {}, which no root in root-cert.pem issued{}: add its root to \
                         root-cert.pem (the trust bundle) or reissue the intermediate under a trusted root",
                        describe(&last),
                        error
                            .map(|error| format!(" (last error: {error})"))
                            .unwrap_or_default()
                    ),
                );
                false
            }
        }
    }

    /// A workload certificate signed with the key verifies to the roots.
    fn probe(
        &mut self,
        path: &[Certificate],
        key: &PrivateKey,
        roots: &[Certificate],
        now: SystemTime,
    ) {
        let uri_constraints = path
            .iter()
            .any(|certificate| has_uri_name_constraints(certificate).unwrap_or(false));
        match probe_ca_key(path, key, roots, now) {
            Ok(()) => self.ok(
                "probe-workload",
                "a workload certificate signed with ca-key.pem verifies to root-cert.pem",
            ),
            Err(_) if uri_constraints => self.probe_with_signatures_only(path, key, now),
            Err(error) => self.error(
                "probe-workload",
                format!(
                    "a workload certificate signed with ca-key.pem does not verify to \
                     root-cert.pem ({error}): workloads would reject each other's certificates"
                ),
            ),
        }
    }

    /// rustls-webpki refuses chains with URI name constraints (Go and
    /// OpenSSL, hence istiod and Envoy, accept them): check the probe leaf by
    /// signature instead and say so.
    fn probe_with_signatures_only(
        &mut self,
        path: &[Certificate],
        key: &PrivateKey,
        now: SystemTime,
    ) {
        let result = match path.first() {
            Some(certificate_authority) => probe_ca_signature(certificate_authority, key, now),
            None => Err(super::CaError::EmptyChain { what: "chain" }),
        };
        match result {
            Ok(()) => self.ok(
                "probe-workload",
                "a workload certificate signed with ca-key.pem verifies against ca-cert.pem; \
                 the chain carries URI name constraints, which rustls-webpki refuses \
                 (Istio, Envoy and OpenSSL accept them), so only signatures were checked",
            ),
            Err(error) => self.error(
                "probe-workload",
                format!("a workload certificate signed with ca-key.pem does not verify: {error}"),
            ),
        }
    }

    /// Error when a chain certificate has expired (or is not yet valid),
    /// warning when one expires within `warn_within`.
    fn expiry(&mut self, path: &[Certificate], now: SystemTime, warn_within: Duration) {
        let mut soonest: Option<(SystemTime, &Certificate)> = None;
        for certificate in path {
            let (Ok(not_before), Ok(not_after)) =
                (certificate.not_before(), certificate.not_after())
            else {
                continue;
            };
            if not_before > now {
                self.error(
                    "expiry",
                    format!(
                        "{} is not valid until {}: check the clock of the issuing CA",
                        describe(certificate),
                        describe_time(not_before)
                    ),
                );
                return;
            }
            if soonest.is_none_or(|(time, _)| not_after < time) {
                soonest = Some((not_after, certificate));
            }
        }
        let Some((not_after, certificate)) = soonest else {
            return;
        };
        if not_after < now {
            self.error(
                "expiry",
                format!(
                    "{} expired at {}: renew the intermediate now (trustplane agent renews \
                     automatically when it runs)",
                    describe(certificate),
                    describe_time(not_after)
                ),
            );
        } else if not_after.duration_since(now).unwrap_or_default() <= warn_within {
            self.warning(
                "expiry",
                format!(
                    "{} expires at {}: renew it before then",
                    describe(certificate),
                    describe_time(not_after)
                ),
            );
        } else {
            self.ok(
                "expiry",
                format!(
                    "the first certificate of the chain to expire is {}, at {}",
                    describe(certificate),
                    describe_time(not_after)
                ),
            );
        }
    }
}

/// `"<subject>" (serial <hex>)` for messages.
fn describe(certificate: &Certificate) -> String {
    format!(
        "\"{}\" (serial {})",
        certificate.subject().unwrap_or_default(),
        certificate.serial_hex().unwrap_or_default()
    )
}

fn describe_time(time: SystemTime) -> String {
    match x509_parser::time::ASN1Time::from_timestamp(super::system_time_to_unix(time)) {
        Ok(time) => super::verify::rfc3339(time),
        Err(_) => format!("{time:?}"),
    }
}

#[cfg(test)]
#[allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::ca::{KeyAlgorithm, create_root};
    use crate::fixtures::{
        DAY, new_intermediate, profile, root_and_intermediate, root_request, test_now,
    };

    fn good_set(now: SystemTime) -> (CacertsFiles, Certificate) {
        let (root, _, intermediate, cluster_key) = root_and_intermediate(now);
        let files = CacertsFiles {
            ca_cert: Some(intermediate.to_pem()),
            ca_key: Some(cluster_key.to_pkcs8_pem()),
            cert_chain: Some(format!("{}{}", intermediate.to_pem(), root.to_pem())),
            root_cert: Some(root.to_pem()),
        };
        (files, root)
    }

    fn finding<'a>(check: &'a CacertsCheck, name: &str) -> &'a Finding {
        check
            .findings
            .iter()
            .find(|finding| finding.check == name)
            .unwrap_or_else(|| panic!("no {name} finding in {:#?}", check.findings))
    }

    #[test]
    fn good_set_passes() {
        let now = test_now();
        let (files, _) = good_set(now);
        let check = check_cacerts(&files, now, 30 * DAY);
        assert!(check.passed(), "{:#?}", check.findings);
        assert!(
            check
                .findings
                .iter()
                .all(|finding| finding.severity == Severity::Ok),
            "{:#?}",
            check.findings
        );
        for name in [
            "files-present",
            "ca-cert-parses",
            "ca-key-parses",
            "key-matches",
            "ca-cert-is-ca",
            "chain-starts-with-ca-cert",
            "chain-verifies",
            "probe-workload",
            "expiry",
        ] {
            finding(&check, name);
        }
        // Without the root at the end of cert-chain.pem it still verifies.
        let mut files = files;
        files.cert_chain = files.ca_cert.clone();
        assert!(check_cacerts(&files, now, 30 * DAY).passed());
    }

    #[test]
    fn missing_file_is_an_error() {
        let now = test_now();
        let (mut files, _) = good_set(now);
        files.ca_key = None;
        let check = check_cacerts(&files, now, 30 * DAY);
        assert!(!check.passed());
        let missing = finding(&check, "files-present");
        assert_eq!(missing.severity, Severity::Error);
        assert!(
            missing.message.starts_with("missing ca-key.pem:"),
            "{}",
            missing.message
        );
    }

    #[test]
    fn mismatched_key_is_an_error() {
        let now = test_now();
        let (mut files, _) = good_set(now);
        let other = PrivateKey::generate(KeyAlgorithm::EcdsaP256).expect("key");
        files.ca_key = Some(other.to_pkcs8_pem());
        let check = check_cacerts(&files, now, 30 * DAY);
        assert!(!check.passed());
        assert_eq!(finding(&check, "key-matches").severity, Severity::Error);
        assert_ne!(finding(&check, "probe-workload").severity, Severity::Ok);
        // A key that is not PEM at all.
        files.ca_key = Some(zeroize::Zeroizing::new("not a key".to_string()));
        let check = check_cacerts(&files, now, 30 * DAY);
        assert_eq!(finding(&check, "ca-key-parses").severity, Severity::Error);
    }

    #[test]
    fn chain_to_a_foreign_root_is_an_error() {
        let now = test_now();
        let (mut files, _) = good_set(now);
        let (foreign, _) = create_root(&root_request("cluster.local"), now).expect("root");
        files.root_cert = Some(foreign.to_pem());
        files.cert_chain = files.ca_cert.clone();
        let check = check_cacerts(&files, now, 30 * DAY);
        assert!(!check.passed());
        let chain = finding(&check, "chain-verifies");
        assert_eq!(chain.severity, Severity::Error, "{}", chain.message);
        assert!(chain.message.contains("root-cert.pem"), "{}", chain.message);
        // The same with the original root at the end of cert-chain.pem but
        // not in root-cert.pem.
        let (good, root) = good_set(now);
        let mut files = good;
        files.root_cert = Some(foreign.to_pem());
        let check = check_cacerts(&files, now, 30 * DAY);
        assert_eq!(finding(&check, "chain-verifies").severity, Severity::Error);
        // A bundle holding both roots is fine.
        files.root_cert = Some(format!("{}{}", foreign.to_pem(), root.to_pem()));
        assert!(check_cacerts(&files, now, 30 * DAY).passed());
    }

    #[test]
    fn chain_not_starting_with_ca_cert_is_an_error() {
        let now = test_now();
        let (mut files, root) = good_set(now);
        files.cert_chain = Some(root.to_pem());
        let check = check_cacerts(&files, now, 30 * DAY);
        assert_eq!(
            finding(&check, "chain-starts-with-ca-cert").severity,
            Severity::Error
        );
    }

    #[test]
    fn expiry_warning_and_error() {
        let now = test_now();
        let (files, _) = good_set(now);
        // The intermediate lives 365 days.
        let soon = now + 350 * DAY;
        let check = check_cacerts(&files, soon, 30 * DAY);
        assert!(check.passed(), "{:#?}", check.findings);
        assert_eq!(finding(&check, "expiry").severity, Severity::Warning);
        let late = now + 366 * DAY;
        let check = check_cacerts(&files, late, 30 * DAY);
        assert!(!check.passed());
        assert_eq!(finding(&check, "expiry").severity, Severity::Error);
    }

    #[test]
    fn uri_name_constraints_are_checked_by_signature() {
        let now = test_now();
        let (root, root_key) = create_root(&root_request("cluster.local"), now).expect("root");
        let (intermediate, key) =
            new_intermediate(&profile("east", DAY, true), &root, &root_key, now);
        assert!(has_uri_name_constraints(&intermediate).expect("nc"));
        let files = CacertsFiles {
            ca_cert: Some(intermediate.to_pem()),
            ca_key: Some(key.to_pkcs8_pem()),
            cert_chain: Some(format!("{}{}", intermediate.to_pem(), root.to_pem())),
            root_cert: Some(root.to_pem()),
        };
        let check = check_cacerts(&files, now, Duration::from_secs(3600));
        assert!(check.passed(), "{:#?}", check.findings);
        assert!(
            finding(&check, "probe-workload")
                .message
                .contains("name constraints")
        );
    }

    #[test]
    fn debug_hides_the_key() {
        let now = test_now();
        let (files, _) = good_set(now);
        let text = format!("{files:?}");
        assert!(!text.contains("PRIVATE KEY"), "{text}");
    }
}
