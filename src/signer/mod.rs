//! Root signers: who holds the mesh root key and signs intermediates with it.
//!
//! [`LocalSigner`] holds the key in memory (sealed at rest in the store with
//! a key-encryption key, see [`sealed`]); [`VaultSigner`] asks a Vault /
//! OpenBao PKI issuer, and the root key never leaves Vault.

pub mod sealed;
pub mod vault;

pub use vault::VaultSigner;

use std::time::SystemTime;

use crate::ca::{CaError, Certificate, IntermediateProfile, PrivateKey, VerifiedCsr};

/// Errors from signers.
#[derive(Debug, thiserror::Error)]
pub enum SignerError {
    /// Issuance or verification failed.
    #[error(transparent)]
    Ca(#[from] CaError),
    /// Key-encryption key missing, malformed or wrong.
    #[error("key-encryption key: {0}")]
    Kek(String),
    /// Sealed data that does not open with this key (wrong key or tampered).
    #[error(
        "sealed secret {name:?} does not open: wrong key-encryption key or the data was altered"
    )]
    Unseal {
        /// Name of the secret.
        name: String,
    },
    /// A Vault call failed (sealed, unreachable, denied, issuer missing).
    #[error(transparent)]
    Vault(crate::vault::VaultError),
    /// The signer cannot honour what was asked (said why and what to do).
    #[error("{0}")]
    Refused(String),
    /// File I/O for key material.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Signs cluster intermediates with a mesh root.
#[async_trait::async_trait]
pub trait RootSigner: Send + Sync {
    /// The root that signs new intermediates.
    fn signing_root(&self) -> &Certificate;

    /// Signs an intermediate for the CSR's public key with `profile`, and
    /// verifies it against the root before returning it.
    async fn sign_intermediate(
        &self,
        csr: &VerifiedCsr,
        profile: &IntermediateProfile,
        now: SystemTime,
    ) -> Result<Certificate, SignerError>;
}

/// A root key held in this process's memory (zeroized on drop).
#[derive(Debug)]
pub struct LocalSigner {
    root: Certificate,
    key: PrivateKey,
}

impl LocalSigner {
    /// Pairs a root certificate with its key. Errors:
    /// [`CaError::KeyMismatch`] when the key is not the root's.
    pub fn new(root: Certificate, key: PrivateKey) -> Result<Self, SignerError> {
        if !crate::ca::key_matches_certificate(&root, &key)? {
            return Err(SignerError::Ca(CaError::KeyMismatch));
        }
        Ok(LocalSigner { root, key })
    }

    /// The root key, for offline issuance in the same process.
    pub fn key(&self) -> &PrivateKey {
        &self.key
    }
}

#[async_trait::async_trait]
impl RootSigner for LocalSigner {
    fn signing_root(&self) -> &Certificate {
        &self.root
    }

    async fn sign_intermediate(
        &self,
        csr: &VerifiedCsr,
        profile: &IntermediateProfile,
        now: SystemTime,
    ) -> Result<Certificate, SignerError> {
        Ok(crate::ca::sign_intermediate(
            csr, profile, &self.root, &self.key, now,
        )?)
    }
}
