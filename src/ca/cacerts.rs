//! Checking an Istio `cacerts` set the way istiod loads it.

use std::time::SystemTime;

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
        self.findings.iter().all(|finding| finding.severity != Severity::Error)
    }
}

/// Checks a `cacerts` set like istiod: all four files present, the key
/// matches `ca-cert.pem`, it is a CA, `cert-chain.pem` starts with
/// `ca-cert.pem`, the chain verifies to a root in `root-cert.pem`, a workload
/// certificate signed with the key verifies (rustls-webpki), and expiry
/// warnings (error when expired, warning within `warn_within`).
pub fn check_cacerts(
    files: &CacertsFiles,
    now: SystemTime,
    warn_within: std::time::Duration,
) -> CacertsCheck {
    todo!("{files:?}{now:?}{warn_within:?}")
}
