//! The trust bundle: an ordered, versioned set of root certificates for one
//! trust domain, in Istio's `root-cert.pem` form and as a SPIFFE bundle.
//! Pure.
//!
//! Byte stability: a root keeps exactly the same PEM bytes in every version;
//! new roots are appended at the end and old ones removed from the front,
//! never reordered, because istiod (≤ 1.29) accepts a changed
//! `root-cert.pem` only when the old bytes are a substring of the new or the
//! other way round.

use std::time::Duration;

use crate::ca::Certificate;

/// A versioned set of trusted roots for one trust domain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrustBundle {
    trust_domain: String,
    version: u64,
    roots: Vec<Certificate>,
}

/// Errors from bundle operations.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// A bundle must hold at least one root.
    #[error("a trust bundle must contain at least one root")]
    Empty,
    /// The root is already in the bundle.
    #[error("root {serial} is already in the bundle")]
    DuplicateRoot {
        /// Hex serial of the duplicate.
        serial: String,
    },
    /// A certificate that cannot be put in a bundle.
    #[error("invalid root: {0}")]
    InvalidRoot(#[source] crate::ca::CaError),
}

impl TrustBundle {
    /// A bundle with the given roots and version. Errors when `roots` is
    /// empty or holds a duplicate.
    pub fn new(trust_domain: &str, version: u64, roots: Vec<Certificate>) -> Result<Self, BundleError> {
        todo!("{trust_domain}{version}{roots:?}")
    }

    /// The trust domain.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The version (monotonic).
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The roots, oldest first.
    pub fn roots(&self) -> &[Certificate] {
        &self.roots
    }

    /// Istio's `root-cert.pem`: each root's PEM block, in order.
    pub fn root_cert_pem(&self) -> String {
        todo!()
    }

    /// SHA-256 of [`Self::root_cert_pem`], lowercase hex.
    pub fn digest_hex(&self) -> String {
        todo!()
    }

    /// The next version with `root` appended at the end.
    pub fn with_appended(&self, root: Certificate) -> Result<TrustBundle, BundleError> {
        todo!("{root:?}")
    }

    /// The next version without the oldest root. Errors when it would be empty.
    pub fn with_oldest_removed(&self) -> Result<TrustBundle, BundleError> {
        todo!()
    }

    /// The SPIFFE bundle (JWKS): one key per root with `use: x509-svid` and
    /// one `x5c`, `spiffe_sequence` = version, `spiffe_refresh_hint` in
    /// seconds.
    pub fn spiffe_bundle_json(&self, refresh_hint: Duration) -> Result<String, BundleError> {
        todo!("{refresh_hint:?}")
    }
}
