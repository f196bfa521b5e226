//! CSR parsing and verification (x509-parser), and CSR creation for agents.

use super::{CaError, PrivateKey, VerifiedCsr};

/// The largest CSR accepted, in bytes (PEM or DER).
pub const MAX_CSR_BYTES: usize = 64 * 1024;

/// Parses a PEM or DER PKCS#10 CSR, verifies its self-signature, and checks
/// its key: ECDSA P-256/P-384 or RSA 2048–8192. CSR extensions are ignored
/// (never copied). Errors: [`CaError::CsrTooLarge`], [`CaError::Malformed`],
/// [`CaError::CsrBadSignature`], [`CaError::UnsupportedKey`].
pub fn verify_csr(input: &[u8]) -> Result<VerifiedCsr, CaError> {
    todo!("{}", input.len())
}

/// Creates a PEM CSR signed by `key` with subject `CN=<common_name>`.
pub fn create_csr(key: &PrivateKey, common_name: &str) -> Result<String, CaError> {
    todo!("{key:?}{common_name}")
}
