//! The probe: sign a throw-away workload certificate with a CA's key and
//! verify it, through the chain to the roots ([`probe_ca_key`]) or against
//! the CA alone ([`probe_ca_signature`]).
//!
//! It sits above `issue` (which signs the leaf) and `verify` (which checks
//! the path), so neither of those imports the other both ways.

use std::time::{Duration, SystemTime};

use super::issue::sign_workload;
use super::verify::verify_leaf_path;
use super::{CaError, Certificate, KeyAlgorithm, PrivateKey};

/// Lifetime of the throw-away workload certificate.
const PROBE_LIFETIME: Duration = Duration::from_secs(10 * 60);

/// rustls-webpki cannot verify a CA certificate as an end entity, so a CA is
/// path-checked by signing a throwaway workload certificate with its key and
/// verifying that leaf through `chain` (the CA first, then up) to `roots`.
///
/// Errors: [`CaError::EmptyChain`], the errors of [`verify_leaf_path`] when
/// the probe does not verify (note that rustls-webpki rejects every chain
/// carrying URI name constraints), or those of [`sign_workload`].
pub fn probe_ca_key(
    chain: &[Certificate],
    key: &PrivateKey,
    roots: &[Certificate],
    now: SystemTime,
) -> Result<(), CaError> {
    let certificate_authority = chain
        .first()
        .ok_or(CaError::EmptyChain { what: "CA chain" })?;
    probe_workload(
        chain,
        key,
        roots,
        &probe_identity(certificate_authority),
        now,
    )
}

/// The probe with a chosen workload identity: signs a throwaway workload
/// certificate for `spiffe_id` with `key` as the first CA of `chain` and
/// verifies it through `chain` to `roots` — what a peer in another cluster
/// does with that workload's certificate (the demo shows it per pair).
///
/// Errors: as [`probe_ca_key`].
pub fn probe_workload(
    chain: &[Certificate],
    key: &PrivateKey,
    roots: &[Certificate],
    spiffe_id: &str,
    now: SystemTime,
) -> Result<(), CaError> {
    let certificate_authority = chain
        .first()
        .ok_or(CaError::EmptyChain { what: "CA chain" })?;
    let leaf = sign_leaf(certificate_authority, key, spiffe_id, now)?;
    verify_leaf_path(&leaf, chain, roots, now)
}

/// Signs a throwaway workload certificate with `key` as
/// `certificate_authority` and checks it against that CA by signature and
/// names only (no path to a root). Proves that the key signs for the CA and
/// that the CA's subject survives rcgen's re-encoding as an issuer name.
///
/// Errors: those of [`sign_workload`], which verifies the leaf against
/// `certificate_authority` before returning it.
pub(crate) fn probe_ca_signature(
    certificate_authority: &Certificate,
    key: &PrivateKey,
    now: SystemTime,
) -> Result<(), CaError> {
    sign_probe_leaf(certificate_authority, key, now).map(|_| ())
}

/// The throwaway workload certificate for a fresh P-256 key, signed with
/// `key` as `certificate_authority` (and verified against it by
/// [`sign_workload`]).
fn sign_probe_leaf(
    certificate_authority: &Certificate,
    key: &PrivateKey,
    now: SystemTime,
) -> Result<Certificate, CaError> {
    let identity = probe_identity(certificate_authority);
    sign_leaf(certificate_authority, key, &identity, now)
}

/// A throwaway workload certificate for `spiffe_id` and a fresh P-256 key,
/// signed with `key` as `certificate_authority`.
fn sign_leaf(
    certificate_authority: &Certificate,
    key: &PrivateKey,
    spiffe_id: &str,
    now: SystemTime,
) -> Result<Certificate, CaError> {
    let probe_key = PrivateKey::generate(KeyAlgorithm::EcdsaP256)?;
    sign_workload(
        &probe_key.public_key_der()?,
        spiffe_id,
        certificate_authority,
        key,
        PROBE_LIFETIME,
        now,
    )
}

/// The SPIFFE ID of a probe workload under `certificate_authority`: inside
/// its trust domain when it has one.
fn probe_identity(certificate_authority: &Certificate) -> String {
    let trust_domain = certificate_authority
        .uri_sans()
        .ok()
        .and_then(|uris| {
            uris.into_iter()
                .find_map(|uri| uri.strip_prefix("spiffe://").map(str::to_string))
        })
        .map(|rest| rest.trim_end_matches('/').to_string())
        .filter(|trust_domain| !trust_domain.is_empty() && !trust_domain.contains('/'))
        .unwrap_or_else(|| "trustplane.probe".into());
    format!("spiffe://{trust_domain}/ns/trustplane-probe/sa/probe")
}

#[cfg(test)]
#[allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::ca::issue::create_root;
    use crate::fixtures::{root_and_intermediate, root_request, test_now};

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn leaf_path_and_probe() {
        let now = test_now();
        let (root, _, intermediate, cluster_key) = root_and_intermediate(now);
        probe_ca_key(
            std::slice::from_ref(&intermediate),
            &cluster_key,
            std::slice::from_ref(&root),
            now,
        )
        .expect("probe");
        // With the root included in the chain, as in cert-chain.pem.
        probe_ca_key(
            &[intermediate.clone(), root.clone()],
            &cluster_key,
            std::slice::from_ref(&root),
            now,
        )
        .expect("probe with root in chain");
        let (other_root, other_key) =
            create_root(&root_request("cluster.local"), now).expect("root");
        assert!(
            probe_ca_key(
                std::slice::from_ref(&intermediate),
                &cluster_key,
                std::slice::from_ref(&other_root),
                now
            )
            .is_err()
        );
        // The wrong key for the CA: the probe leaf does not verify.
        assert!(
            probe_ca_key(
                std::slice::from_ref(&intermediate),
                &other_key,
                std::slice::from_ref(&root),
                now
            )
            .is_err()
        );
        assert!(probe_ca_key(&[], &cluster_key, std::slice::from_ref(&root), now).is_err());
        assert_eq!(
            probe_identity(&intermediate),
            "spiffe://cluster.local/ns/trustplane-probe/sa/probe"
        );
        // Expired chain.
        assert!(
            probe_ca_key(
                std::slice::from_ref(&intermediate),
                &cluster_key,
                std::slice::from_ref(&root),
                now + 400 * 24 * HOUR
            )
            .is_err()
        );
    }

    #[test]
    fn signature_probe_needs_the_key_of_the_ca() {
        let now = test_now();
        let (root, root_key, intermediate, cluster_key) = root_and_intermediate(now);
        probe_ca_signature(&intermediate, &cluster_key, now).expect("intermediate");
        probe_ca_signature(&root, &root_key, now).expect("root");
        assert!(probe_ca_signature(&intermediate, &root_key, now).is_err());
    }
}
