//! The one `cacerts` reconciler: from what a cluster's sink holds, the
//! bundle view (version, roots, signing root, reissue directive) and `now`,
//! decide what to do next — nothing, write a new `root-cert.pem`, obtain a
//! new intermediate — and when to look again: the renewal time (⅔ of the
//! lifetime, jittered) and the retry backoff. Pure: values in, values out;
//! the random part of jitter is a number in `[0, 1)` passed in (or drawn by
//! [`random_unit`]).
//!
//! The agent (intermediate from a CSR sent to the server) and push mode
//! (intermediate from the server's own key) are thin drivers around it,
//! through `sink::Keeper`; both send the same [`StatusReport`].

use std::time::{Duration, SystemTime};

use ring::rand::SecureRandom;

use crate::ca::{self, CaError, CacertsCheck, CacertsFiles, Certificate, Severity};

/// Share of an intermediate's lifetime after which it is renewed.
pub const RENEW_FRACTION: f64 = 2.0 / 3.0;
/// Expiry within this window is logged as a warning by the cacerts check.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(30 * 24 * 3600);

/// What the cluster should hold, as the server publishes it.
#[derive(Clone, Copy, Debug)]
pub struct BundleView<'a> {
    /// The bundle version.
    pub version: u64,
    /// `root-cert.pem`: every root the mesh trusts now.
    pub root_cert_pem: &'a str,
    /// SHA-256 (hex) of the root that signs intermediates now; empty when
    /// the server does not say (then any root of the bundle will do).
    pub signing_root_sha256: &'a str,
    /// Serial (hex) of an intermediate an operator asked to replace; empty
    /// for none.
    pub reissue_serial: &'a str,
}

/// What to do next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Nothing to change.
    Keep,
    /// Same key and certificate, new `root-cert.pem` (or just record the
    /// version when the bytes are unchanged).
    RewriteRoot,
    /// New key, CSR and intermediate.
    Issue(IssueReason),
}

/// Why a new intermediate is obtained.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IssueReason {
    /// The sink holds no usable set.
    NoIntermediate,
    /// The renewal time has come.
    Renewal,
    /// The new bundle no longer holds the root our chain ends in.
    RootRetired,
    /// Another root signs intermediates now (root rotation).
    SignerChanged,
    /// An operator asked for a new intermediate (`cluster reissue`).
    Requested,
}

impl std::fmt::Display for IssueReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            IssueReason::NoIntermediate => "no usable intermediate",
            IssueReason::Renewal => "renewal time reached",
            IssueReason::RootRetired => "the bundle no longer holds our root",
            IssueReason::SignerChanged => "another root signs intermediates now (rotation)",
            IssueReason::Requested => "a reissue was requested",
        })
    }
}

/// A certificate set that cannot be used as the applied one.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// A file of the set does not parse or lacks a field.
    #[error("{what}")]
    Unreadable {
        /// What was read, e.g. "ca-cert.pem is not one certificate".
        what: &'static str,
        /// The certificate error.
        #[source]
        source: CaError,
    },
    /// `cert-chain.pem` holds no certificate.
    #[error("the certificate chain is empty")]
    EmptyChain,
    /// The assembled set fails istiod's checks; it must not be written.
    #[error("refusing to write cacerts that istiod would reject: {0}")]
    Rejected(String),
}

fn unreadable(what: &'static str) -> impl FnOnce(CaError) -> ReconcileError {
    move |source| ReconcileError::Unreadable { what, source }
}

/// The intermediate a sink holds and what the reconciler knows about it.
#[derive(Clone, Debug)]
pub struct Applied {
    /// The bundle version its `root-cert.pem` was taken from (0 for a set
    /// adopted from the sink: the bundle is then applied next).
    pub bundle_version: u64,
    /// Lowercase hex serial of the intermediate.
    pub serial: String,
    /// When it was issued (NotBefore plus the issuer's clock-skew backdate).
    pub issued_at: SystemTime,
    /// Its NotAfter.
    pub not_after: SystemTime,
    /// The root its `cert-chain.pem` ends in.
    pub chain_root: Certificate,
    /// `cert-chain.pem` as written (reported to the server for its gates).
    pub cert_chain_pem: String,
    /// When to renew it (⅔ of the lifetime, jittered).
    pub renew_at: SystemTime,
}

impl Applied {
    /// Reads what the reconciler needs from `ca-cert.pem` and
    /// `cert-chain.pem`, with the renewal time at `renew_fraction` of the
    /// lifetime moved by `unit` (in `[0, 1)`; see [`renewal_time`]).
    ///
    /// Errors: [`ReconcileError::Unreadable`], [`ReconcileError::EmptyChain`].
    pub fn read(
        ca_cert_pem: &str,
        cert_chain_pem: &str,
        bundle_version: u64,
        renew_fraction: f64,
        unit: f64,
    ) -> Result<Self, ReconcileError> {
        let certificate = Certificate::from_pem(ca_cert_pem)
            .map_err(unreadable("ca-cert.pem is not one certificate"))?;
        let serial = certificate
            .serial_hex()
            .map_err(unreadable("ca-cert.pem has no readable serial"))?;
        let not_after = certificate
            .not_after()
            .map_err(unreadable("ca-cert.pem has no readable validity"))?;
        // The issuer backdates NotBefore for clock skew; that slack is not
        // lifetime, so renewal is timed from the issuance moment.
        let issued_at = issued_at(
            certificate
                .not_before()
                .map_err(unreadable("ca-cert.pem has no readable validity"))?,
            not_after,
        );
        let chain_root = Certificate::parse_pem_chain(cert_chain_pem)
            .map_err(unreadable("cert-chain.pem does not parse"))?
            .pop()
            .ok_or(ReconcileError::EmptyChain)?;
        Ok(Self {
            bundle_version,
            serial,
            issued_at,
            not_after,
            chain_root,
            cert_chain_pem: cert_chain_pem.to_string(),
            renew_at: renewal_time(issued_at, not_after, renew_fraction, unit),
        })
    }
}

/// What to do with the set found in a sink when nothing is applied yet.
#[derive(Debug)]
pub enum Adoption {
    /// Keep using it (recorded as bundle version 0, so that the bundle is
    /// applied next).
    Adopt(Applied),
    /// Replace it; the reason is for the log.
    Replace(String),
}

/// Whether the set in a sink (`None`: nothing there) can be adopted at
/// `now`: it passes istiod's checks, is not due for renewal and chains to a
/// root of `bundle`. A signer change or reissue directive is left to
/// [`decide`], which runs next.
///
/// Errors: [`ReconcileError::Unreadable`] when the bundle does not parse
/// (nothing is decided against such a bundle).
pub fn adopt(
    files: Option<&CacertsFiles>,
    bundle: &BundleView<'_>,
    now: SystemTime,
    renew_fraction: f64,
    unit: f64,
) -> Result<Adoption, ReconcileError> {
    let Some(files) = files else {
        return Ok(Adoption::Replace("no cacerts yet".to_string()));
    };
    let check = ca::check_cacerts(files, now, EXPIRY_WARNING);
    if !check.passed() {
        return Ok(Adoption::Replace(format!(
            "the existing cacerts do not pass the checks: {}",
            check_errors(&check)
        )));
    }
    let (Some(ca_cert_pem), Some(cert_chain_pem)) = (&files.ca_cert, &files.cert_chain) else {
        return Ok(Adoption::Replace(
            "the existing cacerts are incomplete".to_string(),
        ));
    };
    let applied = match Applied::read(ca_cert_pem, cert_chain_pem, 0, renew_fraction, unit) {
        Ok(applied) => applied,
        Err(error) => {
            return Ok(Adoption::Replace(format!(
                "the existing cacerts are unusable: {error}"
            )));
        }
    };
    if renewal_due(applied.issued_at, applied.not_after, renew_fraction, now) {
        return Ok(Adoption::Replace(format!(
            "the existing intermediate {} is due for renewal",
            applied.serial
        )));
    }
    if !bundle_contains(bundle.root_cert_pem, &applied.chain_root)? {
        return Ok(Adoption::Replace(format!(
            "the existing intermediate {} chains to a root outside the trust bundle",
            applied.serial
        )));
    }
    Ok(Adoption::Adopt(applied))
}

/// The next action for the applied set (`None`: nothing usable applied) and
/// `bundle` at `now`. A signer change or a reissue directive naming our
/// serial replaces a valid intermediate; then renewal; then a new bundle
/// version is applied by rewriting `root-cert.pem` if it still holds our
/// chain's root, else by a new intermediate.
///
/// Errors: [`ReconcileError::Unreadable`] when the bundle does not parse
/// (nothing is obtained or written for such a bundle).
pub fn decide(
    applied: Option<&Applied>,
    bundle: &BundleView<'_>,
    now: SystemTime,
) -> Result<Action, ReconcileError> {
    let Some(applied) = applied else {
        return Ok(Action::Issue(IssueReason::NoIntermediate));
    };
    let bundle_has_chain_root = bundle_contains(bundle.root_cert_pem, &applied.chain_root)?;
    Ok(
        if !bundle.signing_root_sha256.is_empty()
            && applied.chain_root.sha256_hex() != bundle.signing_root_sha256
        {
            Action::Issue(IssueReason::SignerChanged)
        } else if !bundle.reissue_serial.is_empty() && applied.serial == bundle.reissue_serial {
            Action::Issue(IssueReason::Requested)
        } else if now >= applied.renew_at {
            Action::Issue(IssueReason::Renewal)
        } else if bundle.version <= applied.bundle_version {
            Action::Keep
        } else if bundle_has_chain_root {
            Action::RewriteRoot
        } else {
            Action::Issue(IssueReason::RootRetired)
        },
    )
}

/// Checks a complete set the way istiod would before it is written.
///
/// Errors: [`ReconcileError::Rejected`] listing every failed check. Returns
/// the warnings (e.g. an expiry within 30 days) for the log.
pub fn check_before_write(
    files: &CacertsFiles,
    now: SystemTime,
) -> Result<Vec<String>, ReconcileError> {
    let check = ca::check_cacerts(files, now, EXPIRY_WARNING);
    if !check.passed() {
        return Err(ReconcileError::Rejected(check_errors(&check)));
    }
    Ok(check
        .findings
        .iter()
        .filter(|finding| finding.severity == Severity::Warning)
        .map(|finding| format!("{}: {}", finding.check, finding.message))
        .collect())
}

/// What a driver reports to the server after every change and error: the
/// applied bundle version, the intermediate in use and its chain, and the
/// current error. The agent sends it as `ReportStatus`; push mode records it
/// directly.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StatusReport {
    /// The bundle version applied (0 for none).
    pub applied_bundle_version: u64,
    /// Lowercase hex serial of the intermediate in use (empty for none).
    pub intermediate_serial: String,
    /// Its expiry, seconds since the Unix epoch (0 for none).
    pub intermediate_not_after_unix: i64,
    /// `cert-chain.pem` in use (empty for none).
    pub cert_chain_pem: String,
    /// The current error (empty for none).
    pub error: String,
}

impl StatusReport {
    /// The report for `applied` (`None`: nothing applied) and the current
    /// `error`.
    pub fn new(applied: Option<&Applied>, error: Option<&str>) -> Self {
        let error = error.unwrap_or_default().to_string();
        match applied {
            Some(applied) => Self {
                applied_bundle_version: applied.bundle_version,
                intermediate_serial: applied.serial.clone(),
                intermediate_not_after_unix: ca::system_time_to_unix(applied.not_after),
                cert_chain_pem: applied.cert_chain_pem.clone(),
                error,
            },
            None => Self {
                error,
                ..Self::default()
            },
        }
    }
}

/// How long a driver sleeps before it looks again: until the earliest of
/// `deadlines` (the renewal time, a retry, a report; `None`s are ignored),
/// at once for one that has passed, and never longer than `cap` (a driver
/// re-checks at least that often even when nothing is due).
pub fn wait_before_next(
    now: SystemTime,
    deadlines: &[Option<SystemTime>],
    cap: Duration,
) -> Duration {
    deadlines
        .iter()
        .flatten()
        .map(|deadline| deadline.duration_since(now).unwrap_or(Duration::ZERO))
        .fold(cap, Duration::min)
}

/// Whether `root` is one of the certificates in `root_cert_pem`.
///
/// Errors: [`ReconcileError::Unreadable`] when the bundle does not parse.
pub fn bundle_contains(root_cert_pem: &str, root: &Certificate) -> Result<bool, ReconcileError> {
    Ok(Certificate::parse_pem_chain(root_cert_pem)
        .map_err(unreadable("the trust bundle does not parse"))?
        .iter()
        .any(|candidate| candidate == root))
}

/// The errors of a check, joined for a message.
pub fn check_errors(check: &CacertsCheck) -> String {
    check
        .findings
        .iter()
        .filter(|finding| finding.severity == Severity::Error)
        .map(|finding| format!("{}: {}", finding.check, finding.message))
        .collect::<Vec<_>>()
        .join("; ")
}

/// The first retry delay.
pub const INITIAL_BACKOFF: Duration = Duration::from_millis(200);
/// Retry delays are spread by ±20 % so that agents do not retry in step.
const BACKOFF_JITTER: f64 = 0.2;
/// Renewal is spread by ±5 % of the intermediate's lifetime.
const RENEWAL_JITTER: f64 = 0.05;

/// The delay before retry number `attempt` (0 for the first retry):
/// 200 ms × 2^attempt, capped at `max`, spread by ±20 % according to `unit`
/// (in `[0, 1)`, 0.5 means no spread), and never above `max`.
pub fn backoff_delay(attempt: u32, max: Duration, unit: f64) -> Duration {
    let exponent = i32::try_from(attempt.min(40)).unwrap_or(40);
    let max_seconds = max.as_secs_f64();
    let base = (INITIAL_BACKOFF.as_secs_f64() * 2f64.powi(exponent)).min(max_seconds);
    let spread = 1.0 + BACKOFF_JITTER * (2.0 * clamp_unit(unit) - 1.0);
    let seconds = (base * spread).clamp(0.0, max_seconds);
    Duration::try_from_secs_f64(seconds).unwrap_or(max)
}

/// When to renew a certificate valid from `not_before` to `not_after`:
/// at `fraction` of its lifetime, moved by up to ±5 % of the lifetime
/// according to `unit` (in `[0, 1)`, 0.5 means exactly at `fraction`), and
/// never outside the validity window.
pub fn renewal_time(
    not_before: SystemTime,
    not_after: SystemTime,
    fraction: f64,
    unit: f64,
) -> SystemTime {
    let lifetime = not_after
        .duration_since(not_before)
        .unwrap_or(Duration::ZERO)
        .as_secs_f64();
    let share = fraction + RENEWAL_JITTER * (2.0 * clamp_unit(unit) - 1.0);
    let offset = (lifetime * share).clamp(0.0, lifetime);
    Duration::try_from_secs_f64(offset)
        .ok()
        .and_then(|offset| not_before.checked_add(offset))
        .unwrap_or(not_after)
}

/// The moment a certificate was issued: its NotBefore plus the CA's
/// clock-skew backdate ([`crate::ca::BACKDATE`]), never after NotAfter.
/// Renewal is timed from here, so a short-lived certificate is not "due"
/// the moment it arrives.
pub fn issued_at(not_before: SystemTime, not_after: SystemTime) -> SystemTime {
    not_before
        .checked_add(crate::ca::BACKDATE)
        .map_or(not_after, |issued| issued.min(not_after))
}

/// Whether a certificate valid from `not_before` to `not_after` is past
/// `fraction` of its lifetime at `now` (no jitter: used to decide whether an
/// existing intermediate may be adopted).
pub fn renewal_due(
    not_before: SystemTime,
    not_after: SystemTime,
    fraction: f64,
    now: SystemTime,
) -> bool {
    now >= renewal_time(not_before, not_after, fraction, 0.5)
}

fn clamp_unit(unit: f64) -> f64 {
    if unit.is_nan() {
        0.5
    } else {
        unit.clamp(0.0, 1.0)
    }
}

/// A uniformly random number in `[0, 1)` from the system RNG (0.5 if the
/// RNG fails: jitter is a nicety, not a security property).
pub fn random_unit() -> f64 {
    let mut bytes = [0u8; 8];
    if ring::rand::SystemRandom::new().fill(&mut bytes).is_err() {
        return 0.5;
    }
    // 53 random bits: exactly representable in an f64 mantissa.
    let bits = u64::from_le_bytes(bytes) >> 11;
    bits as f64 / (1u64 << 53) as f64
}

/// Capped exponential backoff with jitter; [`Backoff::reset`] after success.
#[derive(Debug)]
pub struct Backoff {
    attempt: u32,
    max: Duration,
}

impl Backoff {
    /// A backoff starting at 200 ms and capped at `max`.
    pub fn new(max: Duration) -> Self {
        Self { attempt: 0, max }
    }

    /// The delay before the next retry; each call doubles the next one.
    pub fn next_delay(&mut self) -> Duration {
        let delay = backoff_delay(self.attempt, self.max, random_unit());
        self.attempt = self.attempt.saturating_add(1);
        delay
    }

    /// Starts over at 200 ms.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    use crate::ca::{CacertsCheck, Finding};
    use crate::fixtures::self_signed_ca_pem;

    fn at(seconds: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(seconds)
    }

    /// An applied set at bundle `version`, renewing at `renew_at`, whose
    /// chain ends in `root_pem`.
    fn applied(version: u64, renew_at: SystemTime, root_pem: &str) -> Applied {
        Applied {
            bundle_version: version,
            serial: "01".into(),
            issued_at: at(0),
            not_after: at(300),
            chain_root: Certificate::from_pem(root_pem).unwrap(),
            cert_chain_pem: root_pem.to_string(),
            renew_at,
        }
    }

    fn view<'a>(
        version: u64,
        roots: &'a str,
        signing: &'a str,
        reissue: &'a str,
    ) -> BundleView<'a> {
        BundleView {
            version,
            root_cert_pem: roots,
            signing_root_sha256: signing,
            reissue_serial: reissue,
        }
    }

    #[test]
    fn decide_issues_without_an_intermediate() {
        let roots = self_signed_ca_pem("root A");
        assert_eq!(
            decide(None, &view(3, &roots, "", ""), at(100)).unwrap(),
            Action::Issue(IssueReason::NoIntermediate)
        );
    }

    #[test]
    fn decide_keeps_a_current_set() {
        let (root_a, root_b) = (self_signed_ca_pem("root A"), self_signed_ca_pem("root B"));
        let current = applied(3, at(200), &root_a);
        assert_eq!(
            decide(Some(&current), &view(3, &root_a, "", ""), at(100)).unwrap(),
            Action::Keep
        );
        // An older version (e.g. a lagging stream) changes nothing either.
        assert_eq!(
            decide(Some(&current), &view(2, &root_b, "", ""), at(100)).unwrap(),
            Action::Keep
        );
    }

    #[test]
    fn decide_rewrites_the_root_for_a_newer_bundle_that_holds_our_root() {
        let (root_a, root_b) = (self_signed_ca_pem("root A"), self_signed_ca_pem("root B"));
        let current = applied(3, at(200), &root_a);
        let both = format!("{root_b}{root_a}");
        assert_eq!(
            decide(Some(&current), &view(4, &both, "", ""), at(100)).unwrap(),
            Action::RewriteRoot
        );
    }

    #[test]
    fn decide_reissues_when_our_root_left_the_bundle() {
        let (root_a, root_b) = (self_signed_ca_pem("root A"), self_signed_ca_pem("root B"));
        let current = applied(3, at(200), &root_a);
        assert_eq!(
            decide(Some(&current), &view(4, &root_b, "", ""), at(100)).unwrap(),
            Action::Issue(IssueReason::RootRetired)
        );
    }

    #[test]
    fn decide_renews_at_the_renewal_time() {
        let root_a = self_signed_ca_pem("root A");
        let current = applied(3, at(200), &root_a);
        assert_eq!(
            decide(Some(&current), &view(3, &root_a, "", ""), at(200)).unwrap(),
            Action::Issue(IssueReason::Renewal)
        );
        assert_eq!(
            decide(Some(&current), &view(4, &root_a, "", ""), at(250)).unwrap(),
            Action::Issue(IssueReason::Renewal)
        );
    }

    #[test]
    fn a_new_signing_root_or_a_reissue_request_replaces_a_valid_intermediate() {
        let (root_a, root_b) = (self_signed_ca_pem("root A"), self_signed_ca_pem("root B"));
        let current = applied(3, at(200), &root_a);
        let ours = current.chain_root.sha256_hex();
        let other = Certificate::from_pem(&root_b).unwrap().sha256_hex();
        let decide_with = |signing: &str, reissue: &str| {
            decide(Some(&current), &view(3, &root_a, signing, reissue), at(100)).unwrap()
        };
        // No directive: keep.
        assert_eq!(decide_with("", ""), Action::Keep);
        assert_eq!(decide_with(&ours, ""), Action::Keep);
        // The server signs with another root now (rotation sign-new or abort).
        assert_eq!(
            decide_with(&other, ""),
            Action::Issue(IssueReason::SignerChanged)
        );
        // A reissue of our intermediate was requested; not once we replaced it.
        assert_eq!(
            decide_with(&ours, "01"),
            Action::Issue(IssueReason::Requested)
        );
        assert_eq!(decide_with(&ours, "02"), Action::Keep);
    }

    #[test]
    fn chain_root_and_bundle_membership_compare_certificates() {
        let root_a = self_signed_ca_pem("root A");
        let root_b = self_signed_ca_pem("root B");
        let intermediate = self_signed_ca_pem("intermediate");
        let chain = format!("{intermediate}{root_a}");
        let read = Applied::read(&intermediate, &chain, 0, RENEW_FRACTION, 0.5).unwrap();
        let root = read.chain_root;
        assert_eq!(root, Certificate::from_pem(&root_a).unwrap());
        assert!(bundle_contains(&root_a, &root).unwrap());
        assert!(bundle_contains(&format!("{root_b}{root_a}"), &root).unwrap());
        assert!(!bundle_contains(&root_b, &root).unwrap());
        assert!(matches!(
            bundle_contains("not pem", &root),
            Err(ReconcileError::Unreadable { .. })
        ));
        assert!(matches!(
            Applied::read(&intermediate, "", 0, RENEW_FRACTION, 0.5),
            Err(ReconcileError::EmptyChain | ReconcileError::Unreadable { .. })
        ));
    }

    #[test]
    fn check_errors_lists_only_errors() {
        let check = CacertsCheck {
            findings: vec![
                Finding {
                    check: "files-present".into(),
                    severity: Severity::Ok,
                    message: "all four files".into(),
                },
                Finding {
                    check: "key-matches".into(),
                    severity: Severity::Error,
                    message: "the key does not match".into(),
                },
                Finding {
                    check: "expiry".into(),
                    severity: Severity::Warning,
                    message: "expires soon".into(),
                },
            ],
        };
        assert_eq!(check_errors(&check), "key-matches: the key does not match");
    }

    #[test]
    fn the_next_look_is_the_earliest_deadline_capped() {
        let cap = Duration::from_secs(60);
        assert_eq!(wait_before_next(at(100), &[], cap), cap);
        assert_eq!(wait_before_next(at(100), &[None, Some(at(1000))], cap), cap);
        assert_eq!(
            wait_before_next(at(100), &[Some(at(130)), Some(at(110))], cap),
            Duration::from_secs(10)
        );
        assert_eq!(
            wait_before_next(at(100), &[Some(at(90)), Some(at(130))], cap),
            Duration::ZERO
        );
    }

    #[test]
    fn nothing_in_the_sink_is_replaced_and_a_report_without_a_set_carries_only_the_error() {
        let roots = self_signed_ca_pem("root A");
        assert!(matches!(
            adopt(None, &view(1, &roots, "", ""), at(1), RENEW_FRACTION, 0.5),
            Ok(Adoption::Replace(_))
        ));
        let report = StatusReport::new(None, Some("down"));
        assert_eq!(report.applied_bundle_version, 0);
        assert_eq!(report.error, "down");
        let current = applied(3, at(200), &roots);
        let report = StatusReport::new(Some(&current), None);
        assert_eq!(report.applied_bundle_version, 3);
        assert_eq!(report.intermediate_serial, "01");
        assert_eq!(report.intermediate_not_after_unix, 300);
        assert!(report.error.is_empty());
    }

    const MAX: Duration = Duration::from_secs(30);

    #[test]
    fn backoff_doubles_from_200_milliseconds() {
        assert_eq!(backoff_delay(0, MAX, 0.5), Duration::from_millis(200));
        assert_eq!(backoff_delay(1, MAX, 0.5), Duration::from_millis(400));
        assert_eq!(backoff_delay(2, MAX, 0.5), Duration::from_millis(800));
        assert_eq!(backoff_delay(5, MAX, 0.5), Duration::from_millis(6400));
    }

    #[test]
    fn backoff_is_capped_even_with_jitter_and_huge_attempts() {
        assert_eq!(backoff_delay(8, MAX, 0.5), MAX);
        assert_eq!(backoff_delay(u32::MAX, MAX, 0.5), MAX);
        assert!(backoff_delay(20, MAX, 0.999) <= MAX);
        assert_eq!(backoff_delay(3, Duration::ZERO, 0.9), Duration::ZERO);
    }

    #[test]
    fn backoff_jitter_spreads_by_twenty_percent() {
        let low = backoff_delay(2, MAX, 0.0);
        let high = backoff_delay(2, MAX, 1.0);
        assert_eq!(low, Duration::from_millis(640));
        assert_eq!(high, Duration::from_millis(960));
        assert_eq!(backoff_delay(2, MAX, f64::NAN), Duration::from_millis(800));
        // Capped delays only spread downwards.
        assert!(backoff_delay(10, MAX, 0.0) >= Duration::from_secs(24));
    }

    #[test]
    fn backoff_state_grows_and_resets() {
        let mut backoff = Backoff::new(MAX);
        let delays: Vec<Duration> = (0..4).map(|_| backoff.next_delay()).collect();
        for (attempt, delay) in delays.iter().enumerate() {
            let nominal = 0.2 * 2f64.powi(attempt as i32);
            let seconds = delay.as_secs_f64();
            assert!(seconds >= nominal * 0.8 - 1e-9 && seconds <= nominal * 1.2 + 1e-9);
        }
        backoff.reset();
        assert!(backoff.next_delay() <= Duration::from_millis(240));
    }

    #[test]
    fn renewal_at_two_thirds_of_lifetime_without_jitter() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let end = start + Duration::from_secs(90 * 3600);
        let renew = renewal_time(start, end, 2.0 / 3.0, 0.5);
        assert_eq!(renew.duration_since(start).unwrap().as_secs(), 60 * 3600);
    }

    #[test]
    fn renewal_jitter_is_five_percent_of_lifetime() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let end = start + Duration::from_secs(1000);
        let early = renewal_time(start, end, 0.5, 0.0);
        let late = renewal_time(start, end, 0.5, 1.0);
        assert_eq!(early.duration_since(start).unwrap().as_secs(), 450);
        assert_eq!(late.duration_since(start).unwrap().as_secs(), 550);
    }

    #[test]
    fn renewal_stays_inside_the_validity_window() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let end = start + Duration::from_secs(1000);
        assert_eq!(renewal_time(start, end, 1.0, 1.0), end);
        assert_eq!(renewal_time(start, end, 0.0, 0.0), start);
        // Inverted validity: renew at once.
        assert_eq!(renewal_time(end, start, 0.5, 0.5), end);
    }

    #[test]
    fn renewal_due_compares_against_the_fraction() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let end = start + Duration::from_secs(300);
        let fraction = 2.0 / 3.0;
        assert!(!renewal_due(
            start,
            end,
            fraction,
            start + Duration::from_secs(199)
        ));
        assert!(renewal_due(
            start,
            end,
            fraction,
            start + Duration::from_secs(200)
        ));
        assert!(renewal_due(
            start,
            end,
            fraction,
            end + Duration::from_secs(1)
        ));
    }

    #[test]
    fn renewal_is_timed_from_issuance_not_from_the_backdated_not_before() {
        let issued = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let not_before = issued - crate::ca::BACKDATE;
        let not_after = issued + Duration::from_secs(90);
        let start = issued_at(not_before, not_after);
        assert_eq!(start, issued);
        let renew = renewal_time(start, not_after, 2.0 / 3.0, 0.5);
        assert_eq!(renew, issued + Duration::from_secs(60));
        assert!(!renewal_due(
            start,
            not_after,
            2.0 / 3.0,
            issued + Duration::from_secs(1)
        ));
        // A certificate shorter than the backdate starts and ends at NotAfter.
        assert_eq!(
            issued_at(not_before, not_before + Duration::from_secs(10)),
            not_before + Duration::from_secs(10)
        );
    }

    #[test]
    fn random_unit_is_in_range() {
        for _ in 0..1000 {
            let unit = random_unit();
            assert!((0.0..1.0).contains(&unit));
        }
    }
}
