//! Verification: signature checks (x509-parser) and path checks
//! (rustls-webpki).

use std::time::{Duration, SystemTime};

use rustls_pki_types::{CertificateDer, UnixTime};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::FromDer;
use x509_parser::time::ASN1Time;
use x509_parser::x509::SubjectPublicKeyInfo;

use super::{
    CaError, Certificate, KeyAlgorithm, PrivateKey, basic_constraint, may_sign_certificates,
    system_time_to_unix,
};

/// Checks that `issuer` signed `certificate` (x509-parser), that the issuer
/// is a CA, that the names chain (issuer DN = certificate's issuer DN, AKI =
/// issuer SKI) and that `certificate` is valid at `now`.
///
/// Errors: one variant per failed check ([`CaError::IssuerNotCa`],
/// [`CaError::IssuerMayNotSign`], [`CaError::IssuerNameMismatch`],
/// [`CaError::KeyIdentifierMismatch`], [`CaError::BadSignature`]),
/// [`CaError::NotValidNow`], [`CaError::VerificationTime`],
/// [`CaError::MalformedDer`] / [`CaError::MalformedField`].
pub fn verify_issued(
    certificate: &Certificate,
    issuer: &Certificate,
    now: SystemTime,
) -> Result<(), CaError> {
    let parsed = certificate.parsed()?;
    let issuer_parsed = issuer.parsed()?;
    let subject = parsed.subject().to_string();
    let issuer_subject = issuer_parsed.subject().to_string();
    // A basicConstraints that does not parse counts as "not a CA" here.
    if !basic_constraint(&issuer_parsed).is_ok_and(|constraint| constraint.is_ca()) {
        return Err(CaError::IssuerNotCa {
            issuer: issuer_subject,
        });
    }
    if !may_sign_certificates(&issuer_parsed)? {
        return Err(CaError::IssuerMayNotSign {
            issuer: issuer_subject,
        });
    }
    if parsed.issuer().as_raw() != issuer_parsed.subject().as_raw() {
        return Err(CaError::IssuerNameMismatch {
            subject,
            named: parsed.issuer().to_string(),
            issuer: issuer_subject,
        });
    }
    if let (Some(authority), Some(subject_key)) = (
        authority_key_identifier(&parsed),
        subject_key_identifier(&issuer_parsed),
    ) && authority != subject_key
    {
        return Err(CaError::KeyIdentifierMismatch {
            subject,
            authority: hex::encode(authority),
            issuer_subject_key: hex::encode(subject_key),
        });
    }
    if !signatures::known_good(certificate, issuer) {
        parsed
            .verify_signature(Some(issuer_parsed.public_key()))
            .map_err(|source| CaError::BadSignature {
                subject,
                issuer: issuer_subject,
                source,
            })?;
        signatures::remember_good(certificate, issuer);
    }
    check_parsed_valid_at(&parsed, now)
}

/// Signatures already verified, so that a chain checked again (rotation
/// gates check every cluster's reported chain on each tick and status
/// call: 54% of a 100-cluster rotation's instructions, callgrind) is not
/// verified again. A signature's validity does not depend on time, so only
/// the cryptographic check is skipped; names, constraints and validity are
/// checked on every call. Keyed by SHA-256 over both DER encodings (each is
/// self-delimiting); only successes are kept; bounded.
mod signatures {
    use std::collections::HashSet;
    use std::sync::{Mutex, OnceLock, PoisonError};

    use crate::ca::Certificate;

    /// Entries kept before the memo starts again from empty.
    const CAPACITY: usize = 1 << 16;

    fn memo() -> &'static Mutex<HashSet<[u8; 32]>> {
        static MEMO: OnceLock<Mutex<HashSet<[u8; 32]>>> = OnceLock::new();
        MEMO.get_or_init(Mutex::default)
    }

    fn key(certificate: &Certificate, issuer: &Certificate) -> [u8; 32] {
        let mut context = ring::digest::Context::new(&ring::digest::SHA256);
        context.update(certificate.der());
        context.update(issuer.der());
        let mut key = [0; 32];
        key.copy_from_slice(context.finish().as_ref());
        key
    }

    pub(super) fn known_good(certificate: &Certificate, issuer: &Certificate) -> bool {
        memo()
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(&key(certificate, issuer))
    }

    pub(super) fn remember_good(certificate: &Certificate, issuer: &Certificate) {
        let key = key(certificate, issuer);
        let mut memo = memo().lock().unwrap_or_else(PoisonError::into_inner);
        if memo.len() >= CAPACITY {
            memo.clear();
        }
        memo.insert(key);
    }
}

/// Why a chain does not reach a trusted root ([`trace_chain_to_roots`]).
#[derive(Debug)]
pub enum ChainFailure {
    /// The chain holds no certificate.
    Empty,
    /// `certificate` is not issued by the next certificate of the chain.
    Link {
        /// The certificate whose link fails.
        certificate: Certificate,
        /// Why.
        error: CaError,
    },
    /// The chain ends at a trusted root that does not verify itself.
    Root {
        /// The root.
        root: Certificate,
        /// Why.
        error: CaError,
    },
    /// The last certificate is neither a trusted root nor issued by one.
    Untrusted {
        /// The last certificate of the chain.
        last: Certificate,
        /// The error against the last root tried, if any root was given.
        error: Option<CaError>,
    },
}

/// Walks `chain` (a CA first, then its issuers) as istiod does: each
/// certificate must be issued by the next ([`verify_issued`], at `now`),
/// and the last must be one of `roots` (valid and self-signed) or issued
/// by one. Returns the root it reaches.
///
/// Errors: the first [`ChainFailure`] met.
pub fn trace_chain_to_roots<'roots>(
    chain: &[Certificate],
    roots: &'roots [Certificate],
    now: SystemTime,
) -> Result<&'roots Certificate, ChainFailure> {
    for pair in chain.windows(2) {
        if let [certificate, issuer] = pair
            && let Err(error) = verify_issued(certificate, issuer, now)
        {
            return Err(ChainFailure::Link {
                certificate: certificate.clone(),
                error,
            });
        }
    }
    let last = chain.last().ok_or(ChainFailure::Empty)?;
    if let Some(root) = roots.iter().find(|root| *root == last) {
        return match verify_issued(root, root, now) {
            Ok(()) => Ok(root),
            Err(error) => Err(ChainFailure::Root {
                root: root.clone(),
                error,
            }),
        };
    }
    let mut last_error = None;
    for root in roots {
        match verify_issued(last, root, now) {
            Ok(()) => return Ok(root),
            Err(error) => last_error = Some(error),
        }
    }
    Err(ChainFailure::Untrusted {
        last: last.clone(),
        error: last_error,
    })
}

/// Checks that `chain` (a CA first, then its issuers) verifies up to one of
/// `roots` at `now` ([`trace_chain_to_roots`]).
///
/// Errors: [`CaError::EmptyChain`], [`CaError::BrokenLink`] naming the link
/// that fails, [`CaError::InvalidRoot`], or [`CaError::Untrusted`] when the
/// chain does not reach a trusted root.
pub fn verify_chain_to_roots(
    chain: &[Certificate],
    roots: &[Certificate],
    now: SystemTime,
) -> Result<(), CaError> {
    let subject = |certificate: &Certificate| certificate.subject().unwrap_or_default();
    trace_chain_to_roots(chain, roots, now)
        .map(|_| ())
        .map_err(|failure| match failure {
            ChainFailure::Empty => CaError::EmptyChain {
                what: "certificate chain",
            },
            ChainFailure::Link { certificate, error } => CaError::BrokenLink {
                subject: subject(&certificate),
                source: Box::new(error),
            },
            ChainFailure::Root { root, error } => CaError::InvalidRoot {
                root: subject(&root),
                source: Box::new(error),
            },
            ChainFailure::Untrusted { last, error } => CaError::Untrusted {
                subject: subject(&last),
                roots: roots.len(),
                source: error.map(Box::new),
            },
        })
}

/// Verifies a leaf (end-entity) certificate through `intermediates` to one of
/// `roots` with rustls-webpki, for client or server use.
///
/// Errors: [`CaError::LeafUntrusted`] with rustls-webpki's reasons,
/// [`CaError::Webpki`] when it cannot read the leaf or a root,
/// [`CaError::VerificationTime`].
pub fn verify_leaf_path(
    leaf: &Certificate,
    intermediates: &[Certificate],
    roots: &[Certificate],
    now: SystemTime,
) -> Result<(), CaError> {
    let leaf_der = CertificateDer::from(leaf.der());
    let end_entity =
        webpki::EndEntityCert::try_from(&leaf_der).map_err(|source| CaError::Webpki {
            what: "leaf certificate",
            source,
        })?;
    let root_ders: Vec<CertificateDer<'_>> = roots
        .iter()
        .map(|root| CertificateDer::from(root.der()))
        .collect();
    let anchors = root_ders
        .iter()
        .map(|root| {
            webpki::anchor_from_trusted_cert(root).map_err(|source| CaError::Webpki {
                what: "trust anchor",
                source,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let intermediate_ders: Vec<CertificateDer<'_>> = intermediates
        .iter()
        .map(|intermediate| CertificateDer::from(intermediate.der()))
        .collect();
    let unix_seconds = system_time_to_unix(now);
    // Before 1970: nothing to keep from the integer conversion's error.
    let seconds = u64::try_from(unix_seconds).map_err(|_| CaError::VerificationTime {
        seconds: unix_seconds,
        source: None,
    })?;
    let time = UnixTime::since_unix_epoch(Duration::from_secs(seconds));
    let verify = |usage| {
        end_entity
            .verify_for_usage(
                webpki::ALL_VERIFICATION_ALGS,
                &anchors,
                &intermediate_ders,
                time,
                usage,
                None,
                None,
            )
            .map(|_| ())
    };
    let Err(client) = verify(webpki::KeyUsage::client_auth()) else {
        return Ok(());
    };
    let Err(server) = verify(webpki::KeyUsage::server_auth()) else {
        return Ok(());
    };
    Err(CaError::LeafUntrusted {
        leaf: leaf
            .subject()
            .ok()
            .filter(|subject| !subject.is_empty())
            .unwrap_or_else(|| {
                leaf.uri_sans()
                    .ok()
                    .and_then(|uris| uris.into_iter().next())
                    .unwrap_or_else(|| "leaf certificate".into())
            }),
        client: Box::new(client),
        server,
    })
}

/// Whether `key` is the private key of `certificate`.
///
/// Errors: [`CaError::MalformedDer`] when either public key does not parse.
pub fn key_matches_certificate(
    certificate: &Certificate,
    key: &PrivateKey,
) -> Result<bool, CaError> {
    let certificate_spki = certificate.public_key_der()?;
    let key_spki = key.public_key_der()?;
    let (_, from_certificate) = SubjectPublicKeyInfo::from_der(&certificate_spki)
        .map_err(CaError::der("certificate public key"))?;
    let (_, from_key) = SubjectPublicKeyInfo::from_der(&key_spki)
        .map_err(CaError::der("private key's public key"))?;
    if from_certificate.algorithm.algorithm != from_key.algorithm.algorithm
        || from_certificate.subject_public_key.data != from_key.subject_public_key.data
    {
        return Ok(false);
    }
    // For EC keys the curve is part of the key; RSA parameters (NULL or
    // absent) carry nothing.
    if matches!(
        key.algorithm(),
        KeyAlgorithm::EcdsaP256 | KeyAlgorithm::EcdsaP384
    ) {
        let curve = |spki: &SubjectPublicKeyInfo<'_>| {
            spki.algorithm
                .parameters
                .as_ref()
                .and_then(|parameters| parameters.as_oid().ok())
                .map(|oid| oid.to_id_string())
        };
        return Ok(curve(&from_certificate) == curve(&from_key));
    }
    Ok(true)
}

/// Whether any certificate carries a nameConstraints extension with a URI
/// subtree (rustls-webpki refuses those chains; Go and OpenSSL accept them).
pub fn has_uri_name_constraints(certificate: &Certificate) -> Result<bool, CaError> {
    let parsed = certificate.parsed()?;
    let constraints = parsed
        .name_constraints()
        .map_err(CaError::field("nameConstraints"))?;
    Ok(constraints.is_some_and(|extension| {
        let value = extension.value;
        [&value.permitted_subtrees, &value.excluded_subtrees]
            .into_iter()
            .flatten()
            .flatten()
            .any(|subtree| matches!(subtree.base, GeneralName::URI(_)))
    }))
}

/// [`CaError::NotValidNow`] unless `certificate` is valid at `now`.
pub(crate) fn check_valid_at(certificate: &Certificate, now: SystemTime) -> Result<(), CaError> {
    check_parsed_valid_at(&certificate.parsed()?, now)
}

fn check_parsed_valid_at(parsed: &X509Certificate<'_>, now: SystemTime) -> Result<(), CaError> {
    let seconds = system_time_to_unix(now);
    let time = ASN1Time::from_timestamp(seconds).map_err(|source| CaError::VerificationTime {
        seconds,
        source: Some(source),
    })?;
    if parsed.validity().is_valid_at(time) {
        return Ok(());
    }
    Err(CaError::NotValidNow {
        subject: parsed.subject().to_string(),
        not_before: rfc3339(parsed.validity().not_before),
        not_after: rfc3339(parsed.validity().not_after),
    })
}

/// RFC 3339 UTC text of a certificate time.
pub(crate) fn rfc3339(time: ASN1Time) -> String {
    let time = time.to_datetime();
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        time.year(),
        u8::from(time.month()),
        time.day(),
        time.hour(),
        time.minute(),
        time.second()
    )
}

/// The SubjectKeyIdentifier of `parsed`, if it has one.
pub(crate) fn subject_key_identifier(parsed: &X509Certificate<'_>) -> Option<Vec<u8>> {
    parsed
        .iter_extensions()
        .find_map(|extension| match extension.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(identifier) => Some(identifier.0.to_vec()),
            _ => None,
        })
}

/// The key identifier of `parsed`'s AuthorityKeyIdentifier, if it has one.
pub(crate) fn authority_key_identifier(parsed: &X509Certificate<'_>) -> Option<Vec<u8>> {
    parsed
        .iter_extensions()
        .find_map(|extension| match extension.parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(identifier) => identifier
                .key_identifier
                .as_ref()
                .map(|key_identifier| key_identifier.0.to_vec()),
            _ => None,
        })
}
