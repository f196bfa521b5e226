//! Checks that an intermediate signed outside this process (by Vault PKI)
//! is exactly what trustplane's profile asks for, field by field, and
//! passes the same x509-parser and rustls-webpki checks as one issued here.
//! A difference is an error naming the field; the certificate is dropped.

use std::time::{Duration, SystemTime};

use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::oid_registry::{
    OID_X509_COMMON_NAME, OID_X509_LOCALITY_NAME, OID_X509_ORGANIZATION_NAME,
};

use super::issue::BACKDATE;
use super::verify::verify_issued;
use super::{CaError, Certificate, IntermediateProfile, system_time_to_unix};

/// How far the signer's clock may differ from ours.
pub const CLOCK_SKEW: Duration = Duration::from_secs(120);

fn mismatch(field: &'static str, expected: impl Into<String>, found: impl Into<String>) -> CaError {
    CaError::ProfileMismatch {
        field,
        expected: expected.into(),
        found: found.into(),
    }
}

/// Checks `certificate`, signed by `issuer` for the public key `spki_der`
/// under `profile` at `now`: signature, names and key identifiers against
/// the issuer and validity now ([`verify_issued`]); rustls-webpki parses it;
/// subject `O=<organisation>, CN=<cluster> intermediate CA, L=<cluster>`
/// and nothing else; one URI SAN `spiffe://<trust domain>` and no other
/// name; CA:true critical with pathLen 0; keyUsage critical exactly
/// digitalSignature, keyCertSign, cRLSign; no extendedKeyUsage; no
/// nameConstraints (unless the profile asks, which a Vault signer refuses
/// earlier); the public key the CSR's; NotAfter within `now + lifetime`
/// (plus `CLOCK_SKEW`, 2 min) and the issuer's NotAfter; NotBefore no later than
/// `now + CLOCK_SKEW` and no earlier than `now - BACKDATE - CLOCK_SKEW`.
///
/// Errors: [`CaError::ProfileMismatch`] naming the first field that
/// differs, and the errors of [`verify_issued`] and rustls-webpki.
pub fn check_signed_intermediate(
    certificate: &Certificate,
    spki_der: &[u8],
    profile: &IntermediateProfile,
    issuer: &Certificate,
    now: SystemTime,
) -> Result<(), CaError> {
    verify_issued(certificate, issuer, now)?;
    let der = rustls_pki_types::CertificateDer::from(certificate.der());
    webpki::EndEntityCert::try_from(&der).map_err(|source| CaError::Webpki {
        what: "rustls-webpki cannot parse the signed intermediate",
        source,
    })?;
    let parsed = certificate.parsed()?;
    check_subject(&parsed, profile)?;
    check_names(&parsed, profile)?;
    match certificate.require_ca() {
        Ok(Some(0)) => {}
        Ok(other) => {
            return Err(mismatch(
                "basicConstraints",
                "CA:true, pathLen 0",
                format!("CA:true, pathLen {other:?}"),
            ));
        }
        Err(_) => {
            return Err(mismatch(
                "basicConstraints",
                "CA:true, pathLen 0",
                "CA:false",
            ));
        }
    }
    check_extensions(&parsed, profile)?;
    if certificate.public_key_der()? != spki_der {
        return Err(mismatch(
            "subjectPublicKeyInfo",
            "the CSR's public key",
            "another key",
        ));
    }
    check_validity(certificate, profile, issuer, now)
}

fn check_subject(
    parsed: &X509Certificate<'_>,
    profile: &IntermediateProfile,
) -> Result<(), CaError> {
    let mut expected = vec![
        (
            OID_X509_ORGANIZATION_NAME.to_id_string(),
            profile.organisation.clone(),
        ),
        (
            OID_X509_COMMON_NAME.to_id_string(),
            format!("{} intermediate CA", profile.cluster),
        ),
        (
            OID_X509_LOCALITY_NAME.to_id_string(),
            profile.cluster.clone(),
        ),
    ];
    let mut found = Vec::new();
    for attribute in parsed.subject().iter_attributes() {
        let value = attribute.as_str().map_err(CaError::field("subject"))?;
        found.push((attribute.attr_type().to_id_string(), value.to_string()));
    }
    expected.sort();
    found.sort();
    if expected != found {
        return Err(mismatch(
            "subject",
            format!(
                "O={}, CN={} intermediate CA, L={}",
                profile.organisation, profile.cluster, profile.cluster
            ),
            parsed.subject().to_string(),
        ));
    }
    Ok(())
}

fn check_names(parsed: &X509Certificate<'_>, profile: &IntermediateProfile) -> Result<(), CaError> {
    let expected = format!("spiffe://{}", profile.trust_domain);
    let names: Vec<String> = parsed
        .subject_alternative_name()
        .map_err(CaError::field("subjectAltName"))?
        .map(|extension| {
            extension
                .value
                .general_names
                .iter()
                .map(|name| match name {
                    GeneralName::URI(uri) => (*uri).to_string(),
                    other => format!("{other}"),
                })
                .collect()
        })
        .unwrap_or_default();
    if names != [expected.clone()] {
        return Err(mismatch(
            "subjectAltName",
            format!("URI:{expected} alone"),
            names.join(", "),
        ));
    }
    Ok(())
}

fn check_extensions(
    parsed: &X509Certificate<'_>,
    profile: &IntermediateProfile,
) -> Result<(), CaError> {
    let key_usage = parsed.key_usage().map_err(CaError::field("keyUsage"))?;
    let expected_usage = "critical digitalSignature, keyCertSign, cRLSign";
    match key_usage {
        Some(extension)
            if extension.critical
                && extension.value.digital_signature()
                && extension.value.key_cert_sign()
                && extension.value.crl_sign()
                && extension.value.flags == 0b0110_0001 => {}
        Some(extension) => {
            return Err(mismatch(
                "keyUsage",
                expected_usage,
                format!(
                    "{}{}",
                    if extension.critical { "critical " } else { "" },
                    extension.value
                ),
            ));
        }
        None => return Err(mismatch("keyUsage", expected_usage, "none")),
    }
    for extension in parsed.iter_extensions() {
        match extension.parsed_extension() {
            ParsedExtension::ExtendedKeyUsage(_) => {
                return Err(mismatch("extendedKeyUsage", "none", "present"));
            }
            ParsedExtension::NameConstraints(_) if !profile.name_constraints => {
                return Err(mismatch("nameConstraints", "none", "present"));
            }
            _ => {}
        }
    }
    if profile.name_constraints && parsed.name_constraints().ok().flatten().is_none() {
        return Err(mismatch("nameConstraints", "the trust domain", "none"));
    }
    Ok(())
}

fn check_validity(
    certificate: &Certificate,
    profile: &IntermediateProfile,
    issuer: &Certificate,
    now: SystemTime,
) -> Result<(), CaError> {
    let text = |time: SystemTime| humantime::format_rfc3339_seconds(time).to_string();
    let not_before = certificate.not_before()?;
    let not_after = certificate.not_after()?;
    let issuer_end = issuer.not_after()?;
    let latest_end = now
        .checked_add(profile.lifetime + CLOCK_SKEW)
        .map_or(issuer_end, |end| end.min(issuer_end));
    if not_after > latest_end {
        return Err(mismatch(
            "validity (NotAfter)",
            format!(
                "at most {} (policy lifetime and the root's expiry)",
                text(latest_end)
            ),
            text(not_after),
        ));
    }
    let earliest_start = now.checked_sub(BACKDATE + CLOCK_SKEW).unwrap_or(now);
    let latest_start = now.checked_add(CLOCK_SKEW).unwrap_or(now);
    if not_before < earliest_start || not_before > latest_start {
        return Err(mismatch(
            "validity (NotBefore)",
            format!(
                "between {} and {}",
                text(earliest_start),
                text(latest_start)
            ),
            text(not_before),
        ));
    }
    // Unix seconds only to keep the ordering check total.
    if system_time_to_unix(not_after) <= system_time_to_unix(not_before) {
        return Err(mismatch(
            "validity",
            "NotBefore before NotAfter",
            "an empty period",
        ));
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::ca::{
        KeyAlgorithm, PrivateKey, create_csr, sign_intermediate, sign_workload, verify_csr,
    };
    use crate::fixtures::{DAY, new_root_with_key, profile, test_now};

    fn field_of(result: Result<(), CaError>) -> &'static str {
        match result {
            Err(CaError::ProfileMismatch { field, .. }) => field,
            other => panic!("expected a profile mismatch, got {other:?}"),
        }
    }

    fn csr() -> crate::ca::VerifiedCsr {
        let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
        verify_csr(create_csr(&key, "ignored").unwrap().as_bytes()).unwrap()
    }

    #[test]
    fn a_certificate_of_the_profile_passes_and_each_difference_is_named() {
        let now = test_now();
        let (root, root_key) = new_root_with_key("test");
        let east = profile("east", 30 * DAY, false);
        let request = csr();
        let issued = sign_intermediate(&request, &east, &root, &root_key, now).unwrap();
        let spki = &request.public_key.spki_der;
        check_signed_intermediate(&issued, spki, &east, &root, now).unwrap();

        // Another cluster's names.
        let west = sign_intermediate(
            &request,
            &profile("west", 30 * DAY, false),
            &root,
            &root_key,
            now,
        )
        .unwrap();
        assert_eq!(
            field_of(check_signed_intermediate(&west, spki, &east, &root, now)),
            "subject"
        );
        // Another key than the CSR's.
        let other = csr();
        assert_eq!(
            field_of(check_signed_intermediate(
                &issued,
                &other.public_key.spki_der,
                &east,
                &root,
                now
            )),
            "subjectPublicKeyInfo"
        );
        // Longer than the policy allows.
        let long = sign_intermediate(
            &request,
            &profile("east", 90 * DAY, false),
            &root,
            &root_key,
            now,
        )
        .unwrap();
        assert_eq!(
            field_of(check_signed_intermediate(&long, spki, &east, &root, now)),
            "validity (NotAfter)"
        );
        // Name constraints nobody asked for.
        let constrained = sign_intermediate(
            &request,
            &profile("east", 30 * DAY, true),
            &root,
            &root_key,
            now,
        )
        .unwrap();
        assert_eq!(
            field_of(check_signed_intermediate(
                &constrained,
                spki,
                &east,
                &root,
                now
            )),
            "nameConstraints"
        );
        // Not a CA at all (a workload certificate for the same key).
        let leaf =
            sign_workload(spki, "spiffe://cluster.local", &root, &root_key, DAY, now).unwrap();
        let field = field_of(check_signed_intermediate(&leaf, spki, &east, &root, now));
        assert!(field == "subject" || field == "basicConstraints", "{field}");
        // Signed by another root: refused before any field is compared.
        let (other_root, other_key) = new_root_with_key("other");
        let foreign = sign_intermediate(&request, &east, &other_root, &other_key, now).unwrap();
        assert!(matches!(
            check_signed_intermediate(&foreign, spki, &east, &root, now),
            Err(CaError::IssuerNameMismatch { .. }
                | CaError::BadSignature { .. }
                | CaError::KeyIdentifierMismatch { .. })
        ));
    }
}
