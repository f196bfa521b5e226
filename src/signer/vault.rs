//! [`VaultSigner`]: the mesh root lives in Vault / OpenBao PKI and never
//! leaves it. trustplane checks the CSR and the policy first (the callers
//! do, exactly as for the local signer), asks the issuer-specific
//! `sign-intermediate` for its own profile, and verifies the answer field
//! by field before handing it out
//! ([`crate::ca::check_signed_intermediate`]).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::{RootSigner, SignerError};
use crate::ca::{
    BACKDATE, CaError, Certificate, IntermediateProfile, VerifiedCsr, check_signed_intermediate,
};
use crate::vault::Vault;
use crate::vault::pki::{self, INTERMEDIATE_KEY_USAGE, SignIntermediateRequest};

/// Why a Vault signer cannot honour a policy that asks for URI name
/// constraints. Checked against OpenBao 2.7.2: `sign-intermediate` accepts
/// `permitted_dns_domains`, and answers `permitted_uri_domains` with the
/// warning "Endpoint ignored these unrecognized parameters" and a
/// certificate without them.
pub const NO_URI_NAME_CONSTRAINTS: &str = "the policy asks for URI name constraints (name_constraints: true), which the Vault signer cannot issue: OpenBao's PKI has permitted_dns_domains but no permitted_uri_domains (Vault >= 1.19 has it), and trustplane does not issue without the constraints it was asked for. Turn name_constraints off for this trust domain, or use the local signer";

/// A root held by a Vault PKI issuer.
pub struct VaultSigner {
    vault: Arc<Vault>,
    mount: String,
    issuer: String,
    root: Certificate,
}

impl std::fmt::Debug for VaultSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VaultSigner")
            .field("mount", &self.mount)
            .field("issuer", &self.issuer)
            .finish_non_exhaustive()
    }
}

impl VaultSigner {
    /// A signer for `issuer` (id or name) in the PKI `mount`, whose
    /// certificate is `root` (as trustplane's store records it; check it
    /// against Vault with [`pki::check_issuer`] at start).
    pub fn new(vault: Arc<Vault>, mount: &str, issuer: &str, root: Certificate) -> Self {
        VaultSigner {
            vault,
            mount: mount.to_string(),
            issuer: issuer.to_string(),
            root,
        }
    }

    /// The PKI mount.
    pub fn mount(&self) -> &str {
        &self.mount
    }

    /// The issuer reference.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }
}

/// The chain Vault returned, normalised to Istio's `cert-chain.pem` form
/// (the intermediate, then the root), checked to end at `root`.
///
/// Errors: [`CaError::ProfileMismatch`] naming `issuing_ca` or `ca_chain`
/// when Vault's chain names another issuer or holds other certificates.
pub fn normalise_chain(
    certificate: &Certificate,
    answer: &pki::SignIntermediateResponse,
    root: &Certificate,
) -> Result<Vec<Certificate>, CaError> {
    let issuing = Certificate::from_pem(&answer.issuing_ca)?;
    if &issuing != root {
        return Err(CaError::ProfileMismatch {
            field: "issuing_ca",
            expected: format!("the root {}", root.subject().unwrap_or_default()),
            found: issuing.subject().unwrap_or_default(),
        });
    }
    // Vault's ca_chain: sometimes the issued certificate first, then the
    // issuer's chain; older versions only the issuer's chain.
    for pem in &answer.ca_chain {
        let member = Certificate::from_pem(pem)?;
        if &member != certificate && &member != root {
            return Err(CaError::ProfileMismatch {
                field: "ca_chain",
                expected: "the intermediate and the root only".into(),
                found: member.subject().unwrap_or_default(),
            });
        }
    }
    Ok(vec![certificate.clone(), root.clone()])
}

/// The request for `profile`: trustplane's names, `use_csr_values=false`,
/// `max_path_length=0`, the TTL clipped to the root's expiry (as the local
/// signer clips NotAfter). `trustplane bench openbao` sends the same.
pub fn request(
    mount: &str,
    issuer: &str,
    csr: &VerifiedCsr,
    profile: &IntermediateProfile,
    root_not_after: SystemTime,
    now: SystemTime,
) -> SignIntermediateRequest {
    let until_root_expiry = root_not_after.duration_since(now).unwrap_or(Duration::ZERO);
    let ttl = profile.lifetime.min(until_root_expiry);
    SignIntermediateRequest {
        mount: mount.to_string(),
        issuer: issuer.to_string(),
        csr: pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", csr.der.clone())),
        common_name: format!("{} intermediate CA", profile.cluster),
        organization: vec![profile.organisation.clone()],
        locality: vec![profile.cluster.clone()],
        uri_sans: format!("spiffe://{}", profile.trust_domain),
        ttl: format!("{}s", ttl.as_secs()),
        max_path_length: 0,
        use_csr_values: false,
        exclude_cn_from_sans: true,
        key_usage: INTERMEDIATE_KEY_USAGE
            .iter()
            .map(|usage| (*usage).to_string())
            .collect(),
        not_before_duration: BACKDATE.as_secs(),
        format: "pem".into(),
    }
}

#[async_trait::async_trait]
impl RootSigner for VaultSigner {
    fn signing_root(&self) -> &Certificate {
        &self.root
    }

    async fn sign_intermediate(
        &self,
        csr: &VerifiedCsr,
        profile: &IntermediateProfile,
        now: SystemTime,
    ) -> Result<Certificate, SignerError> {
        if profile.name_constraints {
            return Err(SignerError::Refused(NO_URI_NAME_CONSTRAINTS.into()));
        }
        let root_not_after = self.root.not_after()?;
        // A TTL of 0 would ask Vault for its default: refuse here instead.
        if root_not_after <= now {
            return Err(SignerError::Refused(format!(
                "the mesh root {} expired at {}: rotate to a new root (`trustplane rotate start --vault-issuer NAME`)",
                self.root.subject().unwrap_or_default(),
                humantime::format_rfc3339_seconds(root_not_after)
            )));
        }
        let answer = pki::sign_intermediate(&self.vault, || {
            request(&self.mount, &self.issuer, csr, profile, root_not_after, now)
        })
        .await
        .map_err(SignerError::Vault)?;
        let certificate = Certificate::from_pem(&answer.certificate)?;
        normalise_chain(&certificate, &answer, &self.root)?;
        check_signed_intermediate(
            &certificate,
            &csr.public_key.spki_der,
            profile,
            &self.root,
            now,
        )?;
        Ok(certificate)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::fixtures;

    fn answer(
        certificate: &Certificate,
        issuing: &Certificate,
        chain: &[&Certificate],
    ) -> pki::SignIntermediateResponse {
        pki::SignIntermediateResponse {
            certificate: certificate.to_pem(),
            issuing_ca: issuing.to_pem(),
            ca_chain: chain.iter().map(|member| member.to_pem()).collect(),
            serial_number: String::new(),
        }
    }

    #[test]
    fn every_chain_form_vault_returns_becomes_intermediate_then_root() {
        let (root, _, intermediate, _) = fixtures::root_and_intermediate(fixtures::test_now());
        let expected = vec![intermediate.clone(), root.clone()];
        // Newer Vault and OpenBao: the issued certificate first, then the
        // issuer's chain; older: the issuer's chain only; or none at all.
        for chain in [
            vec![&intermediate, &root],
            vec![&root],
            vec![&root, &intermediate],
            vec![],
        ] {
            let normalised =
                normalise_chain(&intermediate, &answer(&intermediate, &root, &chain), &root)
                    .unwrap();
            assert_eq!(normalised, expected, "chain of {} members", chain.len());
        }
    }

    #[test]
    fn a_chain_naming_another_issuer_or_holding_another_certificate_is_refused() {
        let (root, _, intermediate, _) = fixtures::root_and_intermediate(fixtures::test_now());
        let other = fixtures::new_root("other");
        match normalise_chain(
            &intermediate,
            &answer(&intermediate, &other, &[&other]),
            &root,
        ) {
            Err(CaError::ProfileMismatch { field, .. }) => assert_eq!(field, "issuing_ca"),
            other => panic!("expected issuing_ca refused, got {other:?}"),
        }
        match normalise_chain(
            &intermediate,
            &answer(&intermediate, &root, &[&intermediate, &other, &root]),
            &root,
        ) {
            Err(CaError::ProfileMismatch { field, .. }) => assert_eq!(field, "ca_chain"),
            other => panic!("expected ca_chain refused, got {other:?}"),
        }
    }
}
