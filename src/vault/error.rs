//! What went wrong in a Vault call, said with the path and the next step.

use std::future::Future;
use std::time::Duration;

use vaultrs::error::ClientError;

use crate::telemetry::error_text;

/// The kind of a Vault failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VaultErrorKind {
    /// Settings that cannot work (no address, no credentials, bad CA file).
    Config,
    /// No connection (refused, DNS, TLS, timeout).
    Unreachable,
    /// Vault answered 503: sealed or in standby without a leader.
    Sealed,
    /// 403: the token lacks the policy, or expired / was revoked.
    PermissionDenied,
    /// 404: nothing at this path (issuer or mount missing).
    NotFound,
    /// KV check-and-set lost: someone else wrote first.
    Conflict,
    /// 400: Vault refused the request's parameters.
    BadRequest,
    /// 5xx other than 503, or 429.
    Server,
    /// The answer could not be read as expected.
    Invalid,
}

impl VaultErrorKind {
    /// The kind as a fixed name for metrics.
    pub fn metric_label(self) -> &'static str {
        match self {
            VaultErrorKind::Config => "config",
            VaultErrorKind::Unreachable => "unreachable",
            VaultErrorKind::Sealed => "sealed",
            VaultErrorKind::PermissionDenied => "permission_denied",
            VaultErrorKind::NotFound => "not_found",
            VaultErrorKind::Conflict => "conflict",
            VaultErrorKind::BadRequest => "bad_request",
            VaultErrorKind::Server => "server",
            VaultErrorKind::Invalid => "invalid",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            VaultErrorKind::Config => "configuration",
            VaultErrorKind::Unreachable => "Vault unreachable",
            VaultErrorKind::Sealed => "Vault sealed or has no active node",
            VaultErrorKind::PermissionDenied => "permission denied",
            VaultErrorKind::NotFound => "not found",
            VaultErrorKind::Conflict => "check-and-set conflict",
            VaultErrorKind::BadRequest => "request refused",
            VaultErrorKind::Server => "Vault server error",
            VaultErrorKind::Invalid => "unexpected answer",
        }
    }

    fn hint(self) -> &'static str {
        match self {
            VaultErrorKind::Config => "fix the Vault settings (see `trustplane server --help`)",
            VaultErrorKind::Unreachable => {
                "check VAULT_ADDR, the network and VAULT_CACERT; trustplane retries meanwhile"
            }
            VaultErrorKind::Sealed => {
                "unseal Vault (`bao operator unseal` / `vault operator unseal`); trustplane retries meanwhile"
            }
            VaultErrorKind::PermissionDenied => {
                "the token lacks this path in its policy, or it expired or was revoked (an AppRole or Kubernetes login is repeated once first): see `trustplane init --signer vault` for the policy, then log in again, or give trustplane a new token (VAULT_TOKEN) and restart it"
            }
            VaultErrorKind::NotFound => {
                "check the mount and issuer names (--vault-pki-mount, --vault-issuer, --vault-kv-mount)"
            }
            VaultErrorKind::Conflict => "another trustplane server wrote first; re-read and retry",
            VaultErrorKind::BadRequest => "see Vault's message above",
            VaultErrorKind::Server => "see Vault's logs; trustplane retries meanwhile",
            VaultErrorKind::Invalid => "check that the address is a Vault or OpenBao server",
        }
    }
}

/// A failed Vault call: the path, the kind, Vault's own words and a hint.
#[derive(Clone, Debug)]
pub struct VaultError {
    /// The Vault path (without `/v1/`), or empty for settings.
    pub path: String,
    /// What kind of failure.
    pub kind: VaultErrorKind,
    /// Vault's messages or the transport error.
    pub detail: String,
}

impl std::fmt::Display for VaultError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let space = if self.path.is_empty() { "" } else { " " };
        write!(
            f,
            "Vault{space}{}: {}: {}; {}",
            self.path,
            self.kind.describe(),
            self.detail,
            self.hint()
        )
    }
}

impl std::error::Error for VaultError {}

impl VaultError {
    /// A settings error.
    pub fn config(detail: impl Into<String>) -> Self {
        VaultError {
            path: String::new(),
            kind: VaultErrorKind::Config,
            detail: detail.into(),
        }
    }

    /// An error of `kind` at `path` (a failed call: counted in
    /// `trustplane_vault_errors_total`).
    pub fn new(path: impl Into<String>, kind: VaultErrorKind, detail: impl Into<String>) -> Self {
        crate::telemetry::metrics::record_vault_error(kind.metric_label());
        VaultError {
            path: path.into(),
            kind,
            detail: detail.into(),
        }
    }

    /// What to do next. A refused login (`auth/<mount>/login`) has no
    /// token or policy yet: its fix is the role and the credentials.
    pub fn hint(&self) -> &'static str {
        if self.kind == VaultErrorKind::PermissionDenied
            && self.path.starts_with("auth/")
            && self.path.ends_with("/login")
        {
            "the login was refused: check the auth method's role and the credentials (role id and secret id, or the service-account token and the namespace the role binds), then try again"
        } else {
            self.kind.hint()
        }
    }

    /// Whether a retry after a pause may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(
            self.kind,
            VaultErrorKind::Unreachable | VaultErrorKind::Sealed | VaultErrorKind::Server
        )
    }
}

/// Classifies a vaultrs error for a call on `path` (counted in
/// `trustplane_vault_errors_total`).
pub fn classify(path: &str, error: ClientError) -> VaultError {
    let (kind, detail) = kind_and_detail(&error);
    VaultError::new(path, kind, detail)
}

/// The kind of a vaultrs error and its text, for a caller that refines the
/// kind before it builds (and so counts) the [`VaultError`].
pub(crate) fn kind_and_detail(error: &ClientError) -> (VaultErrorKind, String) {
    match error {
        ClientError::APIError { code, errors } => {
            let detail = if errors.is_empty() {
                format!("HTTP {code}")
            } else {
                format!("HTTP {code}: {}", errors.join("; "))
            };
            let joined = errors.join(" ");
            let kind = match code {
                400 if joined.contains("check-and-set") => VaultErrorKind::Conflict,
                400 => VaultErrorKind::BadRequest,
                403 => VaultErrorKind::PermissionDenied,
                404 => VaultErrorKind::NotFound,
                // OpenBao and Vault answer an unknown issuer reference with
                // 500 "unable to find PKI issuer for reference".
                500 if joined.contains("unable to find PKI issuer") => VaultErrorKind::NotFound,
                503 => VaultErrorKind::Sealed,
                _ => VaultErrorKind::Server,
            };
            (kind, detail)
        }
        ClientError::RestClientError { source } => {
            (VaultErrorKind::Unreachable, error_text(source))
        }
        ClientError::JsonParseError { .. }
        | ClientError::ResponseEmptyError
        | ClientError::ResponseDataEmptyError => (VaultErrorKind::Invalid, error_text(error)),
        _ => (VaultErrorKind::Config, error_text(error)),
    }
}

/// Runs `call` until it succeeds, fails for good, or `attempts` transient
/// failures passed; pauses 100 ms, 200 ms, … up to 5 s between attempts.
pub async fn retry<T, F, Fut>(attempts: u32, mut call: F) -> Result<T, VaultError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, VaultError>>,
{
    let mut pause = Duration::from_millis(100);
    let mut attempt = 1;
    loop {
        match call().await {
            Err(error) if error.is_transient() && attempt < attempts => {
                tracing::warn!(error = %error, attempt, "Vault call failed; retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(5));
                attempt += 1;
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::VaultErrorKind;
    use crate::telemetry::metrics::VAULT_ERROR_KINDS;

    #[test]
    fn every_kind_has_its_own_metric_label_and_each_is_listed() {
        let labels: Vec<&str> = [
            VaultErrorKind::Config,
            VaultErrorKind::Unreachable,
            VaultErrorKind::Sealed,
            VaultErrorKind::PermissionDenied,
            VaultErrorKind::NotFound,
            VaultErrorKind::Conflict,
            VaultErrorKind::BadRequest,
            VaultErrorKind::Server,
            VaultErrorKind::Invalid,
        ]
        .map(VaultErrorKind::metric_label)
        .to_vec();
        assert_eq!(labels, VAULT_ERROR_KINDS);
    }
}
