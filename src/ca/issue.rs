//! Issuing certificates: roots, intermediates, control-plane and workload
//! certificates. Every issued certificate is verified against its issuer
//! before it is returned.
//!
//! rcgen's defaults are not a CA's defaults (validity 1975–4096, a serial
//! derived from the key, no AKI), so every field is set here explicitly.

use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use ring::rand::{SecureRandom, SystemRandom};
use time::OffsetDateTime;

use super::csr::public_key_info;
use super::verify::verify_issued;
use super::{
    CaError, Certificate, IntermediateProfile, KeyAlgorithm, PrivateKey, VerifiedCsr,
    system_time_to_unix,
};

/// How far NotBefore of issued (non-root) certificates is moved into the
/// past, to tolerate clock skew between the CA and the verifiers.
pub const BACKDATE: Duration = Duration::from_secs(5 * 60);

/// Subject common name of the control-plane CA.
pub const CONTROL_PLANE_CA_COMMON_NAME: &str = "trustplane control-plane CA";

/// OID of the nameConstraints extension (RFC 5280 4.2.1.10).
const NAME_CONSTRAINTS_OID: &[u64] = &[2, 5, 29, 30];

/// What a new mesh root looks like.
#[derive(Clone, Debug)]
pub struct RootRequest {
    /// Trust domain; subject `CN=<td> root CA`, URI SAN `spiffe://<td>`.
    pub trust_domain: String,
    /// Subject organisation.
    pub organisation: String,
    /// ECDSA P-256 (default) or P-384.
    pub key_algorithm: KeyAlgorithm,
    /// Validity from `now` (default 10 years).
    pub validity: Duration,
}

/// Creates a self-signed mesh root: CA:true critical, keyUsage critical
/// keyCertSign+cRLSign, SKI, random 128-bit positive serial.
///
/// Errors: [`CaError::UnsupportedKey`] for RSA (ring cannot generate it),
/// [`CaError::InvalidName`] for an invalid trust domain,
/// [`CaError::Generation`] when signing fails.
pub fn create_root(
    request: &RootRequest,
    now: SystemTime,
) -> Result<(Certificate, PrivateKey), CaError> {
    create_root_named(request, &format!("{} root CA", request.trust_domain), now)
}

/// Like [`create_root`], for the new root of a rotation: subject
/// `CN=<td> root CA <label>`, so that the old and the new root have
/// different names and tools (and people) can tell their chains apart.
///
/// Errors: as [`create_root`].
pub fn create_successor_root(
    request: &RootRequest,
    label: &str,
    now: SystemTime,
) -> Result<(Certificate, PrivateKey), CaError> {
    create_root_named(
        request,
        &format!("{} root CA {label}", request.trust_domain),
        now,
    )
}

fn create_root_named(
    request: &RootRequest,
    common_name: &str,
    now: SystemTime,
) -> Result<(Certificate, PrivateKey), CaError> {
    check_trust_domain(&request.trust_domain)?;
    let key = PrivateKey::generate(request.key_algorithm)?;
    let mut params = base_params(now, now.checked_add(request.validity), None)?;
    params.distinguished_name = distinguished_name(&[
        (DnType::OrganizationName, &request.organisation),
        (DnType::CommonName, common_name),
    ]);
    params.subject_alt_names = vec![spiffe_trust_domain_san(&request.trust_domain)?];
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let certificate = self_sign(&params, &key, now)?;
    Ok((certificate, key))
}

/// Signs a cluster intermediate for the CSR's public key; every field comes
/// from `profile` (CA:true critical pathLen 0, keyUsage critical
/// keyCertSign+cRLSign+digitalSignature, no EKU, AKI/SKI, random serial,
/// NotBefore `now - 5 min`, NotAfter `min(now + lifetime, issuer expiry)`).
///
/// Errors: [`CaError::InvalidName`] (invalid profile names),
/// [`CaError::UnsupportedKey`], [`CaError::Generation`], the errors of
/// [`verify_issued`] (e.g. [`CaError::NotValidNow`]) when the result does
/// not verify against `issuer` (e.g. an expired issuer).
pub fn sign_intermediate(
    csr: &VerifiedCsr,
    profile: &IntermediateProfile,
    issuer: &Certificate,
    issuer_key: &PrivateKey,
    now: SystemTime,
) -> Result<Certificate, CaError> {
    check_trust_domain(&profile.trust_domain)?;
    if profile.cluster.trim().is_empty() {
        return Err(CaError::InvalidName {
            kind: "cluster name",
            name: profile.cluster.clone(),
            requirement: "is empty",
            source: None,
        });
    }
    let mut params = issued_params(now, profile.lifetime, issuer)?;
    params.distinguished_name = distinguished_name(&[
        (DnType::OrganizationName, &profile.organisation),
        (
            DnType::CommonName,
            &format!("{} intermediate CA", profile.cluster),
        ),
        (DnType::LocalityName, &profile.cluster),
    ]);
    params.subject_alt_names = vec![spiffe_trust_domain_san(&profile.trust_domain)?];
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
    ];
    if profile.name_constraints {
        params
            .custom_extensions
            .push(name_constraints_extension(&profile.trust_domain));
    }
    sign_with_issuer(&params, &csr.public_key.spki_der, issuer, issuer_key, now)
}

/// Creates the control-plane CA (separate from every mesh root): subject
/// `O=<organisation>, CN=trustplane control-plane CA`, ECDSA P-256, CA:true
/// pathLen 0, keyUsage keyCertSign+cRLSign, valid from `now`.
///
/// Errors: [`CaError::Random`], [`CaError::Generation`].
pub fn create_control_plane_ca(
    organisation: &str,
    validity: Duration,
    now: SystemTime,
) -> Result<(Certificate, PrivateKey), CaError> {
    let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256)?;
    let mut params = base_params(now, now.checked_add(validity), None)?;
    params.distinguished_name = distinguished_name(&[
        (DnType::OrganizationName, organisation),
        (DnType::CommonName, CONTROL_PLANE_CA_COMMON_NAME),
    ]);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let certificate = self_sign(&params, &key, now)?;
    Ok((certificate, key))
}

/// Which control-plane certificate to issue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ControlPlaneRole {
    /// The server: serverAuth, DNS and IP SANs.
    Server {
        /// DNS names.
        dns_names: Vec<String>,
        /// IP addresses.
        ip_addresses: Vec<std::net::IpAddr>,
    },
    /// A client identity (cluster agent or admin): clientAuth, one URI SAN.
    Client {
        /// e.g. `spiffe://trustplane.control/cluster/east`.
        uri: String,
    },
}

/// Issues a control-plane (mTLS) certificate for a public key: CA:false,
/// AKI/SKI, random serial, NotBefore `now - 5 min`, NotAfter
/// `min(now + lifetime, issuer expiry)`; a server gets serverAuth and its DNS
/// and IP SANs, a client gets clientAuth and its URI SAN.
///
/// Errors: [`CaError::InvalidName`] (no SAN, invalid names),
/// [`CaError::MalformedDer`], [`CaError::UnsupportedKey`],
/// [`CaError::Generation`], the errors of [`verify_issued`].
pub fn issue_control_plane_cert(
    spki_der: &[u8],
    role: &ControlPlaneRole,
    issuer: &Certificate,
    issuer_key: &PrivateKey,
    lifetime: Duration,
    now: SystemTime,
) -> Result<Certificate, CaError> {
    let mut params = issued_params(now, lifetime, issuer)?;
    params.is_ca = IsCa::ExplicitNoCa;
    match role {
        ControlPlaneRole::Server {
            dns_names,
            ip_addresses,
        } => {
            if dns_names.is_empty() && ip_addresses.is_empty() {
                return Err(CaError::InvalidName {
                    kind: "server certificate name list",
                    name: String::new(),
                    requirement: "is empty: a server certificate needs at least one DNS name \
                                  or IP address",
                    source: None,
                });
            }
            let common_name = dns_names
                .first()
                .map_or("trustplane server", String::as_str);
            params.distinguished_name = distinguished_name(&[(DnType::CommonName, common_name)]);
            for name in dns_names {
                params
                    .subject_alt_names
                    .push(SanType::DnsName(name.as_str().try_into().map_err(
                        |source| CaError::InvalidName {
                            kind: "DNS name",
                            name: name.clone(),
                            requirement: "is not ASCII",
                            source: Some(source),
                        },
                    )?));
            }
            params
                .subject_alt_names
                .extend(ip_addresses.iter().copied().map(SanType::IpAddress));
            params.key_usages = vec![
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::KeyEncipherment,
            ];
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        }
        ControlPlaneRole::Client { uri } => {
            // X.520 limits a common name to 64 characters.
            let common_name = if uri.len() <= 64 {
                uri.as_str()
            } else {
                "trustplane client"
            };
            params.distinguished_name = distinguished_name(&[(DnType::CommonName, common_name)]);
            params.subject_alt_names = vec![uri_san(uri)?];
            params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        }
    }
    sign_with_issuer(&params, spki_der, issuer, issuer_key, now)
}

/// Issues a workload (leaf) certificate as istiod would: URI SAN
/// `spiffe_id`, serverAuth+clientAuth, CA:false. Used by `demo`, `verify`
/// and tests.
///
/// Like istiod's: empty subject (so the SAN is critical), keyUsage critical
/// digitalSignature+keyEncipherment, AKI, random serial, NotBefore
/// `now - 5 min`, NotAfter `min(now + lifetime, issuer expiry)`.
///
/// Errors: [`CaError::InvalidName`], [`CaError::MalformedDer`],
/// [`CaError::UnsupportedKey`], [`CaError::Generation`], the errors of
/// [`verify_issued`].
pub fn sign_workload(
    spki_der: &[u8],
    spiffe_id: &str,
    issuer: &Certificate,
    issuer_key: &PrivateKey,
    lifetime: Duration,
    now: SystemTime,
) -> Result<Certificate, CaError> {
    if !spiffe_id.starts_with("spiffe://") {
        return Err(CaError::InvalidName {
            kind: "workload identity",
            name: spiffe_id.to_string(),
            requirement: "is not a spiffe:// URI",
            source: None,
        });
    }
    let mut params = issued_params(now, lifetime, issuer)?;
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = vec![uri_san(spiffe_id)?];
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    sign_with_issuer(&params, spki_der, issuer, issuer_key, now)
}

/// A random positive serial of 16 bytes (126 random bits; the top bit is
/// clear so it is positive and the next is set so it is always 16 bytes).
fn random_serial() -> Result<SerialNumber, CaError> {
    let mut bytes = [0u8; 16];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|source| CaError::Random {
            purpose: "serial number",
            source: source.into(),
        })?;
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    Ok(SerialNumber::from_slice(&bytes))
}

/// `SystemTime` to whole-second `OffsetDateTime` (certificates have no
/// sub-second precision).
fn offset_date_time(time: SystemTime) -> Result<OffsetDateTime, CaError> {
    OffsetDateTime::from_unix_timestamp(system_time_to_unix(time)).map_err(|source| {
        CaError::TimeOutOfRange {
            what: "a validity time",
            source: Some(source),
        }
    })
}

/// Parameters with an explicit serial and validity and nothing else (rcgen's
/// default subject is replaced by an empty one).
fn base_params(
    not_before: SystemTime,
    not_after: Option<SystemTime>,
    clip_to: Option<SystemTime>,
) -> Result<CertificateParams, CaError> {
    let not_after = not_after.ok_or(CaError::TimeOutOfRange {
        what: "the validity end",
        source: None,
    })?;
    let not_after = match clip_to {
        Some(limit) if limit < not_after => limit,
        _ => not_after,
    };
    let mut params = CertificateParams::default();
    params.not_before = offset_date_time(not_before)?;
    params.not_after = offset_date_time(not_after)?;
    params.serial_number = Some(random_serial()?);
    params.distinguished_name = DistinguishedName::new();
    Ok(params)
}

/// Parameters for a certificate signed by `issuer`: backdated NotBefore,
/// NotAfter clipped to the issuer's, AKI on.
fn issued_params(
    now: SystemTime,
    lifetime: Duration,
    issuer: &Certificate,
) -> Result<CertificateParams, CaError> {
    let not_before = now.checked_sub(BACKDATE).unwrap_or(now);
    let mut params = base_params(
        not_before,
        now.checked_add(lifetime),
        Some(issuer.not_after()?),
    )?;
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}

fn distinguished_name(entries: &[(DnType, &str)]) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    for (kind, value) in entries {
        name.push(kind.clone(), *value);
    }
    name
}

/// SPIFFE trust domain names: lowercase letters, digits, `.`, `-`, `_`.
fn check_trust_domain(trust_domain: &str) -> Result<(), CaError> {
    let valid = !trust_domain.is_empty()
        && trust_domain.len() <= 255
        && trust_domain.bytes().all(|byte| {
            byte.is_ascii_lowercase() || byte.is_ascii_digit() || b".-_".contains(&byte)
        });
    if valid {
        Ok(())
    } else {
        Err(CaError::InvalidName {
            kind: "trust domain",
            name: trust_domain.to_string(),
            requirement: "is not a SPIFFE trust domain name (lowercase letters, digits, '.', \
                          '-', '_')",
            source: None,
        })
    }
}

fn uri_san(uri: &str) -> Result<SanType, CaError> {
    Ok(SanType::URI(uri.try_into().map_err(|source| {
        CaError::InvalidName {
            kind: "URI",
            name: uri.to_string(),
            requirement: "is not ASCII",
            source: Some(source),
        }
    })?))
}

fn spiffe_trust_domain_san(trust_domain: &str) -> Result<SanType, CaError> {
    uri_san(&format!("spiffe://{trust_domain}"))
}

/// DER tag-length-value with a definite length.
pub(crate) fn der_tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let length = content.len();
    if length < 0x80 {
        out.push(length as u8);
    } else {
        let bytes = length.to_be_bytes();
        let significant: Vec<u8> = bytes
            .iter()
            .copied()
            .skip_while(|byte| *byte == 0)
            .collect();
        out.push(0x80 | significant.len() as u8);
        out.extend_from_slice(&significant);
    }
    out.extend_from_slice(content);
    out
}

/// A critical nameConstraints extension permitting the trust domain as a DNS
/// name and as a URI host. rcgen's `GeneralSubtree` has no URI form, so the
/// DER is built here.
fn name_constraints_extension(trust_domain: &str) -> CustomExtension {
    // GeneralSubtree ::= SEQUENCE { base GeneralName } (minimum 0, no maximum)
    let dns = der_tlv(0x30, &der_tlv(0x82, trust_domain.as_bytes()));
    let uri = der_tlv(0x30, &der_tlv(0x86, trust_domain.as_bytes()));
    // permittedSubtrees [0] IMPLICIT GeneralSubtrees
    let permitted = der_tlv(0xa0, &[dns, uri].concat());
    let mut extension =
        CustomExtension::from_oid_content(NAME_CONSTRAINTS_OID, der_tlv(0x30, &permitted));
    extension.set_criticality(true);
    extension
}

/// Self-signs `params` with `key` and checks the result against itself.
fn self_sign(
    params: &CertificateParams,
    key: &PrivateKey,
    now: SystemTime,
) -> Result<Certificate, CaError> {
    let key_pair = key.key_pair()?;
    let signed = params
        .self_signed(key_pair)
        .map_err(|source| CaError::Generation {
            step: "self-sign",
            source,
        })?;
    let certificate = Certificate::from_der(signed.der().to_vec())?;
    verify_issued(&certificate, &certificate, now)?;
    Ok(certificate)
}

/// Signs `params` for the public key `spki_der` with `issuer`'s key and
/// verifies the result against `issuer` before returning it.
fn sign_with_issuer(
    params: &CertificateParams,
    spki_der: &[u8],
    issuer: &Certificate,
    issuer_key: &PrivateKey,
    now: SystemTime,
) -> Result<Certificate, CaError> {
    let (rest, spki) = <x509_parser::x509::SubjectPublicKeyInfo as x509_parser::prelude::FromDer<
        '_,
        x509_parser::error::X509Error,
    >>::from_der(spki_der)
    .map_err(CaError::der("public key"))?;
    if !rest.is_empty() {
        return Err(CaError::Unexpected {
            what: "public key",
            expected: "one SubjectPublicKeyInfo",
            found: format!("{} trailing bytes after it", rest.len()),
        });
    }
    public_key_info(&spki)?;
    let public_key = rcgen::SubjectPublicKeyInfo::from_der(spki_der).map_err(|source| {
        CaError::UnsupportedKey {
            key: "public key".into(),
            advice: "rcgen cannot read it",
            source: Some(source),
        }
    })?;
    let key_pair = issuer_key.key_pair()?;
    let rcgen_issuer = issuer_from_certificate(issuer, key_pair)?;
    let signed = params
        .signed_by(&public_key, &rcgen_issuer)
        .map_err(|source| CaError::Generation {
            step: "sign",
            source,
        })?;
    let certificate = Certificate::from_der(signed.der().to_vec())?;
    verify_issued(&certificate, issuer, now)?;
    // A second parser: rustls-webpki must accept the encoding (it rejects
    // unknown critical extensions, for one). Its path check needs a leaf
    // signed with the subject's key, which for CSR-signed intermediates
    // only the cluster holds: the agent makes it before writing cacerts.
    let der = rustls_pki_types::CertificateDer::from(certificate.der());
    webpki::EndEntityCert::try_from(&der).map_err(|source| CaError::Webpki {
        what: "rustls-webpki cannot parse the issued certificate",
        source,
    })?;
    Ok(certificate)
}

/// An rcgen issuer for `certificate`: its subject (re-encoded by rcgen) and
/// its SKI (or one derived from its key) for the AKI.
fn issuer_from_certificate<'key>(
    certificate: &Certificate,
    key_pair: &'key KeyPair,
) -> Result<Issuer<'static, &'key KeyPair>, CaError> {
    // rcgen only represents single-valued RDNs (and would panic on an empty
    // one): reject the rest up front with a clear message.
    let parsed = certificate.parsed()?;
    if parsed
        .subject()
        .iter()
        .any(|relative_name| relative_name.iter().count() != 1)
    {
        return Err(CaError::NotACa {
            subject: parsed.subject().to_string(),
            reason: "the issuer's subject has a multi-valued or empty RDN, which trustplane \
                     cannot reproduce as an issuer name",
            source: None,
        });
    }
    Issuer::from_ca_cert_der(&certificate.der().into(), key_pair).map_err(|source| {
        CaError::Generation {
            step: "issuer",
            source,
        }
    })
}

#[cfg(test)]
#[allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]
mod tests {
    use x509_parser::certificate::X509Certificate;
    use x509_parser::extensions::GeneralName;
    use x509_parser::oid_registry::{
        OID_X509_EXT_BASIC_CONSTRAINTS, OID_X509_EXT_KEY_USAGE, OID_X509_EXT_NAME_CONSTRAINTS,
        OID_X509_EXT_SUBJECT_ALT_NAME,
    };

    use super::*;
    use crate::ca::csr::{create_csr, verify_csr};
    use crate::ca::verify::{
        authority_key_identifier, key_matches_certificate, subject_key_identifier, verify_leaf_path,
    };
    use crate::fixtures::{
        DAY, new_intermediate, openssl_genpkey, openssl_verify, profile, root_and_intermediate,
        root_request, run_openssl, test_now, write_pem,
    };

    fn parse(certificate: &Certificate) -> X509Certificate<'_> {
        x509_parser::parse_x509_certificate(certificate.der())
            .expect("parse")
            .1
    }

    fn critical(parsed: &X509Certificate<'_>, oid: &x509_parser::der_parser::Oid<'_>) -> bool {
        parsed
            .get_extension_unique(oid)
            .expect("unique")
            .expect("present")
            .critical
    }

    fn serial_bytes(parsed: &X509Certificate<'_>) -> Vec<u8> {
        parsed.tbs_certificate.raw_serial().to_vec()
    }

    #[test]
    fn root_profile() {
        let now = test_now();
        let (root, key) = create_root(&root_request("cluster.local"), now).expect("root");
        let parsed = parse(&root);
        assert_eq!(
            parsed.subject().to_string(),
            "O=Example Org, CN=cluster.local root CA"
        );
        assert_eq!(parsed.issuer().as_raw(), parsed.subject().as_raw());
        let basic = parsed.basic_constraints().expect("bc").expect("present");
        assert!(basic.critical);
        assert!(basic.value.ca);
        assert_eq!(basic.value.path_len_constraint, None);
        let usage = parsed.key_usage().expect("ku").expect("present");
        assert!(usage.critical);
        assert!(usage.value.key_cert_sign() && usage.value.crl_sign());
        assert!(!usage.value.digital_signature());
        assert!(parsed.extended_key_usage().expect("eku").is_none());
        assert!(subject_key_identifier(&parsed).is_some());
        assert_eq!(
            root.uri_sans().expect("sans"),
            vec!["spiffe://cluster.local"]
        );
        assert_eq!(root.not_before().expect("nb"), now);
        assert_eq!(root.not_after().expect("na"), now + 3650 * DAY);
        let serial = serial_bytes(&parsed);
        assert_eq!(serial.len(), 16);
        assert!(serial[0] & 0x80 == 0 && serial[0] != 0);
        let (other, _) = create_root(&root_request("cluster.local"), now).expect("root");
        assert_ne!(serial, serial_bytes(&parse(&other)));
        assert!(key_matches_certificate(&root, &key).expect("match"));
        assert!(!key_matches_certificate(&other, &key).expect("match"));
        assert!(verify_issued(&root, &root, now).is_ok());
    }

    #[test]
    fn root_p384_and_rsa_refused() {
        let mut request = root_request("cluster.local");
        request.key_algorithm = KeyAlgorithm::EcdsaP384;
        let (root, key) = create_root(&request, test_now()).expect("root");
        assert_eq!(key.algorithm(), KeyAlgorithm::EcdsaP384);
        assert_eq!(
            parse(&root).signature_algorithm.algorithm,
            x509_parser::oid_registry::OID_SIG_ECDSA_WITH_SHA384
        );
        request.key_algorithm = KeyAlgorithm::Rsa;
        assert!(matches!(
            create_root(&request, test_now()),
            Err(CaError::UnsupportedKey { .. })
        ));
        request.trust_domain = "Bad Domain".into();
        request.key_algorithm = KeyAlgorithm::EcdsaP256;
        assert!(matches!(
            create_root(&request, test_now()),
            Err(CaError::InvalidName { .. })
        ));
    }

    #[test]
    fn intermediate_profile() {
        let now = test_now();
        let (root, _root_key, intermediate, cluster_key) = root_and_intermediate(now);
        let parsed = parse(&intermediate);
        let root_parsed = parse(&root);
        assert_eq!(
            parsed.subject().to_string(),
            "O=Example Org, CN=east intermediate CA, L=east"
        );
        assert_eq!(parsed.issuer().as_raw(), root_parsed.subject().as_raw());
        let basic = parsed.basic_constraints().expect("bc").expect("present");
        assert!(basic.critical);
        assert!(basic.value.ca);
        assert_eq!(basic.value.path_len_constraint, Some(0));
        let usage = parsed.key_usage().expect("ku").expect("present");
        assert!(usage.critical);
        assert!(usage.value.key_cert_sign());
        assert!(usage.value.crl_sign());
        assert!(usage.value.digital_signature());
        assert!(!usage.value.key_encipherment());
        assert!(parsed.extended_key_usage().expect("eku").is_none());
        assert!(parsed.name_constraints().expect("nc").is_none());
        let aki = authority_key_identifier(&parsed).expect("aki");
        assert_eq!(Some(aki), subject_key_identifier(&root_parsed));
        assert!(subject_key_identifier(&parsed).is_some());
        assert_eq!(
            intermediate.uri_sans().expect("sans"),
            vec!["spiffe://cluster.local"]
        );
        assert_eq!(intermediate.not_before().expect("nb"), now - BACKDATE);
        assert_eq!(intermediate.not_after().expect("na"), now + 365 * DAY);
        assert_eq!(
            intermediate.public_key_der().expect("spki"),
            cluster_key.public_key_der().expect("spki")
        );
        let serial = serial_bytes(&parsed);
        assert_eq!(serial.len(), 16);
        assert!(serial[0] & 0x80 == 0 && serial[0] != 0);
        // Extensions other than the ones chosen here are absent.
        let chosen = [
            OID_X509_EXT_BASIC_CONSTRAINTS,
            OID_X509_EXT_KEY_USAGE,
            OID_X509_EXT_SUBJECT_ALT_NAME,
            x509_parser::oid_registry::OID_X509_EXT_SUBJECT_KEY_IDENTIFIER,
            x509_parser::oid_registry::OID_X509_EXT_AUTHORITY_KEY_IDENTIFIER,
        ];
        for extension in parsed.extensions() {
            assert!(
                chosen.contains(&extension.oid),
                "unexpected {}",
                extension.oid
            );
        }
        assert!(critical(&parsed, &OID_X509_EXT_KEY_USAGE));
    }

    #[test]
    fn intermediate_serials_differ_for_the_same_key() {
        let now = test_now();
        let (root, root_key) = create_root(&root_request("cluster.local"), now).expect("root");
        let cluster_key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).expect("key");
        let csr =
            verify_csr(create_csr(&cluster_key, "east").expect("csr").as_bytes()).expect("csr");
        let profile = profile("east", DAY, false);
        let first = sign_intermediate(&csr, &profile, &root, &root_key, now).expect("first");
        let second = sign_intermediate(&csr, &profile, &root, &root_key, now).expect("second");
        assert_ne!(
            first.serial_hex().expect("s"),
            second.serial_hex().expect("s")
        );
    }

    #[test]
    fn intermediate_ignores_csr_subject_and_extensions() {
        let directory = tempfile::tempdir().expect("tempdir");
        let path = directory.path();
        openssl_genpkey(
            path,
            "key.pem",
            &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
        );
        run_openssl(
            path,
            &[
                "req",
                "-new",
                "-key",
                "key.pem",
                "-subj",
                "/CN=evil/O=attacker",
                "-out",
                "csr.pem",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "subjectAltName=URI:spiffe://other.domain,DNS:evil.example",
                "-addext",
                "extendedKeyUsage=serverAuth",
            ],
        );
        let csr = verify_csr(&std::fs::read(path.join("csr.pem")).expect("read")).expect("csr");
        let now = test_now();
        let (root, root_key) = create_root(&root_request("cluster.local"), now).expect("root");
        let intermediate =
            sign_intermediate(&csr, &profile("east", DAY, false), &root, &root_key, now)
                .expect("sign");
        let parsed = parse(&intermediate);
        assert_eq!(
            parsed.subject().to_string(),
            "O=Example Org, CN=east intermediate CA, L=east"
        );
        assert_eq!(
            intermediate.uri_sans().expect("sans"),
            vec!["spiffe://cluster.local"]
        );
        assert!(parsed.extended_key_usage().expect("eku").is_none());
        assert_eq!(
            parsed
                .basic_constraints()
                .expect("bc")
                .expect("bc")
                .value
                .path_len_constraint,
            Some(0)
        );
    }

    #[test]
    fn intermediate_not_after_clipped_to_root_expiry() {
        let now = test_now();
        let mut request = root_request("cluster.local");
        request.validity = 30 * DAY;
        let (root, root_key) = create_root(&request, now).expect("root");
        let cluster_key = PrivateKey::generate(KeyAlgorithm::EcdsaP384).expect("key");
        let csr =
            verify_csr(create_csr(&cluster_key, "east").expect("csr").as_bytes()).expect("csr");
        let intermediate = sign_intermediate(
            &csr,
            &profile("east", 365 * DAY, false),
            &root,
            &root_key,
            now,
        )
        .expect("sign");
        assert_eq!(
            intermediate.not_after().expect("na"),
            root.not_after().expect("na")
        );
        assert_eq!(intermediate.not_after().expect("na"), now + 30 * DAY);
        // An expired root cannot issue.
        let later = now + 31 * DAY;
        assert!(
            sign_intermediate(&csr, &profile("east", DAY, false), &root, &root_key, later).is_err()
        );
    }

    #[test]
    fn intermediate_name_constraints_only_when_asked() {
        let now = test_now();
        let (root, root_key) = create_root(&root_request("cluster.local"), now).expect("root");
        let cluster_key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).expect("key");
        let csr =
            verify_csr(create_csr(&cluster_key, "east").expect("csr").as_bytes()).expect("csr");
        let constrained =
            sign_intermediate(&csr, &profile("east", DAY, true), &root, &root_key, now)
                .expect("sign");
        let parsed = parse(&constrained);
        assert!(critical(&parsed, &OID_X509_EXT_NAME_CONSTRAINTS));
        let constraints = parsed
            .name_constraints()
            .expect("nc")
            .expect("present")
            .value;
        assert!(constraints.excluded_subtrees.is_none());
        let permitted = constraints.permitted_subtrees.as_ref().expect("permitted");
        let bases: Vec<String> = permitted
            .iter()
            .map(|subtree| match &subtree.base {
                GeneralName::DNSName(name) => format!("DNS:{name}"),
                GeneralName::URI(uri) => format!("URI:{uri}"),
                other => format!("{other:?}"),
            })
            .collect();
        assert_eq!(bases, vec!["DNS:cluster.local", "URI:cluster.local"]);
        let plain = sign_intermediate(&csr, &profile("east", DAY, false), &root, &root_key, now)
            .expect("sign");
        assert!(parse(&plain).name_constraints().expect("nc").is_none());
    }

    #[test]
    fn workload_and_control_plane_profiles() {
        let now = test_now();
        let (root, _root_key, intermediate, cluster_key) = root_and_intermediate(now);
        let leaf_key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).expect("key");
        let spki = leaf_key.public_key_der().expect("spki");
        let id = "spiffe://cluster.local/ns/default/sa/web";
        let leaf = sign_workload(&spki, id, &intermediate, &cluster_key, DAY, now).expect("leaf");
        let parsed = parse(&leaf);
        assert!(parsed.subject().as_raw().len() <= 2, "empty subject");
        assert!(critical(&parsed, &OID_X509_EXT_SUBJECT_ALT_NAME));
        assert_eq!(leaf.uri_sans().expect("sans"), vec![id]);
        assert!(!leaf.is_ca().expect("ca"));
        let usage = parsed.key_usage().expect("ku").expect("present").value;
        assert!(usage.digital_signature() && usage.key_encipherment() && !usage.key_cert_sign());
        let eku = parsed
            .extended_key_usage()
            .expect("eku")
            .expect("present")
            .value;
        assert!(eku.server_auth && eku.client_auth);
        assert_eq!(
            authority_key_identifier(&parsed),
            subject_key_identifier(&parse(&intermediate))
        );
        verify_leaf_path(
            &leaf,
            std::slice::from_ref(&intermediate),
            std::slice::from_ref(&root),
            now,
        )
        .expect("webpki path");

        let (control_ca, control_key) =
            create_control_plane_ca("Example Org", 365 * DAY, now).expect("control ca");
        let control_parsed = parse(&control_ca);
        assert_eq!(
            control_parsed.subject().to_string(),
            "O=Example Org, CN=trustplane control-plane CA"
        );
        assert!(control_ca.is_ca().expect("ca"));
        let server = issue_control_plane_cert(
            &spki,
            &ControlPlaneRole::Server {
                dns_names: vec!["trustplane.trustplane-system.svc".into()],
                ip_addresses: vec!["127.0.0.1".parse().expect("ip")],
            },
            &control_ca,
            &control_key,
            30 * DAY,
            now,
        )
        .expect("server");
        let server_parsed = parse(&server);
        let eku = server_parsed
            .extended_key_usage()
            .expect("eku")
            .expect("eku")
            .value;
        assert!(eku.server_auth && !eku.client_auth);
        assert!(!server.is_ca().expect("ca"));
        assert!(subject_key_identifier(&server_parsed).is_some());
        assert_eq!(
            authority_key_identifier(&server_parsed),
            subject_key_identifier(&control_parsed)
        );
        assert_eq!(server.not_before().expect("nb"), now - BACKDATE);
        let names: Vec<String> = server_parsed
            .subject_alternative_name()
            .expect("san")
            .expect("san")
            .value
            .general_names
            .iter()
            .map(|name| format!("{name}"))
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
        verify_leaf_path(&server, &[], std::slice::from_ref(&control_ca), now)
            .expect("server path");
        let client = issue_control_plane_cert(
            &spki,
            &ControlPlaneRole::Client {
                uri: "spiffe://trustplane.control/cluster/east".into(),
            },
            &control_ca,
            &control_key,
            30 * DAY,
            now,
        )
        .expect("client");
        let client_parsed = parse(&client);
        let eku = client_parsed
            .extended_key_usage()
            .expect("eku")
            .expect("eku")
            .value;
        assert!(eku.client_auth && !eku.server_auth);
        assert_eq!(
            client.uri_sans().expect("sans"),
            vec!["spiffe://trustplane.control/cluster/east"]
        );
        verify_leaf_path(&client, &[], std::slice::from_ref(&control_ca), now)
            .expect("client path");
        // The control-plane CA is not a mesh root.
        assert!(verify_leaf_path(&client, &[], std::slice::from_ref(&root), now).is_err());
    }

    #[test]
    fn openssl_cross_check_root_intermediate_leaf() {
        // openssl checks validity against the real clock, so use it here.
        let now = crate::clock::SystemClock.now();
        let directory = tempfile::tempdir().expect("tempdir");
        let path = directory.path();
        for name_constraints in [false, true] {
            let (root, root_key) = create_root(&root_request("cluster.local"), now).expect("root");
            let (intermediate, cluster_key) = new_intermediate(
                &profile("east", 365 * DAY, name_constraints),
                &root,
                &root_key,
                now,
            );
            let leaf_key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).expect("key");
            let leaf = sign_workload(
                &leaf_key.public_key_der().expect("spki"),
                "spiffe://cluster.local/ns/default/sa/web",
                &intermediate,
                &cluster_key,
                DAY,
                now,
            )
            .expect("leaf");
            write_pem(path, "root.pem", &[&root]);
            write_pem(path, "intermediate.pem", &[&intermediate]);
            write_pem(path, "leaf.pem", &[&leaf]);
            let (ok, text) = openssl_verify(path, &["-CAfile", "root.pem", "intermediate.pem"]);
            assert!(ok, "intermediate (nc={name_constraints}): {text}");
            let (ok, text) = openssl_verify(
                path,
                &[
                    "-CAfile",
                    "root.pem",
                    "-untrusted",
                    "intermediate.pem",
                    "leaf.pem",
                ],
            );
            assert!(ok, "leaf (nc={name_constraints}): {text}");
            let (ok, text) = openssl_verify(
                path,
                &[
                    "-CAfile",
                    "root.pem",
                    "-untrusted",
                    "intermediate.pem",
                    "-purpose",
                    "sslserver",
                    "leaf.pem",
                ],
            );
            assert!(ok, "leaf as server (nc={name_constraints}): {text}");
            if name_constraints {
                // A leaf outside the permitted URI subtree is refused by openssl.
                let outside = sign_workload(
                    &leaf_key.public_key_der().expect("spki"),
                    "spiffe://other.domain/ns/default/sa/web",
                    &intermediate,
                    &cluster_key,
                    DAY,
                    now,
                )
                .expect("leaf");
                write_pem(path, "outside.pem", &[&outside]);
                let (ok, text) = openssl_verify(
                    path,
                    &[
                        "-CAfile",
                        "root.pem",
                        "-untrusted",
                        "intermediate.pem",
                        "outside.pem",
                    ],
                );
                assert!(!ok, "name constraints must exclude other.domain: {text}");
            }
        }
        // A leaf chaining to a different root fails.
        let (other_root, _) = create_root(&root_request("cluster.local"), now).expect("root");
        write_pem(path, "other-root.pem", &[&other_root]);
        let (ok, text) = openssl_verify(
            path,
            &[
                "-CAfile",
                "other-root.pem",
                "-untrusted",
                "intermediate.pem",
                "leaf.pem",
            ],
        );
        assert!(!ok, "leaf must not verify under another root: {text}");
    }

    #[test]
    fn der_lengths() {
        assert_eq!(der_tlv(0x04, &[1, 2]), vec![0x04, 2, 1, 2]);
        let long = der_tlv(0x04, &[0; 200]);
        assert_eq!(&long[..3], &[0x04, 0x81, 200]);
        let longer = der_tlv(0x04, &[0; 300]);
        assert_eq!(&longer[..4], &[0x04, 0x82, 0x01, 0x2c]);
    }
}
