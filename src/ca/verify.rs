//! Verification: signature checks (x509-parser) and path checks
//! (rustls-webpki).

use std::time::SystemTime;

use super::{CaError, Certificate, PrivateKey};

/// Checks that `issuer` signed `certificate` (x509-parser), that the issuer
/// is a CA, that the names chain (issuer DN = certificate's issuer DN, AKI =
/// issuer SKI) and that `certificate` is valid at `now`.
pub fn verify_issued(
    certificate: &Certificate,
    issuer: &Certificate,
    now: SystemTime,
) -> Result<(), CaError> {
    todo!("{certificate:?}{issuer:?}{now:?}")
}

/// Verifies a leaf (end-entity) certificate through `intermediates` to one of
/// `roots` with rustls-webpki, for client or server use.
pub fn verify_leaf_path(
    leaf: &Certificate,
    intermediates: &[Certificate],
    roots: &[Certificate],
    now: SystemTime,
) -> Result<(), CaError> {
    todo!("{leaf:?}{intermediates:?}{roots:?}{now:?}")
}

/// Whether `key` is the private key of `certificate`.
pub fn key_matches_certificate(certificate: &Certificate, key: &PrivateKey) -> Result<bool, CaError> {
    todo!("{certificate:?}{key:?}")
}

/// rustls-webpki cannot verify a CA certificate as an end entity, so a CA is
/// path-checked by signing a throwaway workload certificate with its key and
/// verifying that leaf through `chain` (the CA first, then up) to `roots`.
pub fn probe_ca_key(
    chain: &[Certificate],
    key: &PrivateKey,
    roots: &[Certificate],
    now: SystemTime,
) -> Result<(), CaError> {
    todo!("{chain:?}{key:?}{roots:?}{now:?}")
}
