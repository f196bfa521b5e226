//! Private keys in zeroizing wrappers.

use zeroize::Zeroizing;

use super::{CaError, KeyAlgorithm};

/// A private key as PKCS#8 DER in memory that is wiped on drop. Its `Debug`
/// prints `[redacted]`; it is never `Serialize`.
#[derive(Clone)]
pub struct PrivateKey {
    pkcs8: Zeroizing<Vec<u8>>,
    algorithm: KeyAlgorithm,
    bits: u32,
}

impl std::fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PrivateKey({}, [redacted])", self.algorithm)
    }
}

impl PrivateKey {
    /// Generates a new ECDSA key. Errors: [`CaError::UnsupportedKey`] for RSA
    /// (ring cannot generate RSA keys).
    pub fn generate(algorithm: KeyAlgorithm) -> Result<Self, CaError> {
        todo!("{algorithm}")
    }

    /// Parses a PEM private key: PKCS#8 (`PRIVATE KEY`), SEC1 (`EC PRIVATE
    /// KEY`) or PKCS#1 (`RSA PRIVATE KEY`, 2048 to 8192 bits). Errors:
    /// [`CaError::Malformed`] or [`CaError::UnsupportedKey`]; never echoes key bytes.
    pub fn from_pem(text: &str) -> Result<Self, CaError> {
        todo!("{}", text.len())
    }

    /// Wraps PKCS#8 DER after checking that ring can sign with it.
    pub fn from_pkcs8_der(der: &[u8]) -> Result<Self, CaError> {
        todo!("{}", der.len())
    }

    /// The PKCS#8 DER bytes.
    pub fn pkcs8_der(&self) -> &[u8] {
        &self.pkcs8
    }

    /// The PKCS#8 PEM form (`PRIVATE KEY`), wiped on drop.
    pub fn to_pkcs8_pem(&self) -> Zeroizing<String> {
        todo!()
    }

    /// The key's algorithm.
    pub fn algorithm(&self) -> KeyAlgorithm {
        self.algorithm
    }

    /// Key size in bits.
    pub fn bits(&self) -> u32 {
        self.bits
    }

    /// The DER SubjectPublicKeyInfo of the matching public key.
    pub fn public_key_der(&self) -> Result<Vec<u8>, CaError> {
        todo!()
    }
}
