//! Certificates and keys: mesh roots, cluster intermediates, control-plane
//! (mTLS) certificates, workload certificates for checks, CSR verification
//! and chain verification.
//!
//! Files, each importing only the ones listed before it (and this one):
//! - `key.rs`: private keys in zeroizing wrappers ([`PrivateKey`]).
//! - `csr.rs`: CSR creation and verification, public-key classification.
//! - `verify.rs`: signature, validity and path checks ([`verify_issued`],
//!   [`verify_chain_to_roots`], [`verify_leaf_path`]).
//! - `issue.rs`: roots, intermediates, control-plane and workload
//!   certificates; each verified against its issuer before it is returned.
//! - `probe.rs`: the one probe, a throw-away workload certificate signed with
//!   a CA's key and verified through the chain to the roots ([`probe_ca_key`]).
//! - `import.rs`: the checks for importing an existing root ([`import_root`]).
//! - `cacerts.rs`: checking an Istio `cacerts` set as istiod loads it.
//!
//! This file holds the shared types ([`Certificate`], [`CaError`], …) and
//! the CA-flag checks (basicConstraints, keyUsage) every file uses.
//!
//! Pure: no I/O, no clock (callers pass `now`), no environment. Randomness
//! (keys, serials) comes from ring's system RNG. Owns nothing persistent; the
//! store and the signer decide where keys live.

mod cacerts;
mod conformance;
mod csr;
mod import;
mod issue;
mod key;
mod probe;
mod verify;
#[cfg(test)]
mod verify_tests;

use std::time::{Duration, SystemTime};

pub use cacerts::{CacertsCheck, CacertsFiles, Finding, Severity, check_cacerts};
pub use conformance::check_signed_intermediate;
pub use csr::{MAX_CSR_BYTES, create_csr, verify_csr};
pub use import::import_root;
pub use issue::{
    BACKDATE, CONTROL_PLANE_CA_COMMON_NAME, ControlPlaneRole, RootRequest, create_control_plane_ca,
    create_root, create_successor_root, issue_control_plane_cert, sign_intermediate, sign_workload,
};
pub use key::PrivateKey;
pub use probe::{probe_ca_key, probe_workload};
pub use verify::{
    has_uri_name_constraints, key_matches_certificate, verify_chain_to_roots, verify_issued,
    verify_leaf_path,
};

/// The key algorithms trustplane generates or accepts in CSRs.
///
/// Text form (config, flags, policy): `ecdsa-p256`, `ecdsa-p384`, `rsa`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum KeyAlgorithm {
    /// ECDSA on NIST P-256 with SHA-256.
    EcdsaP256,
    /// ECDSA on NIST P-384 with SHA-384.
    EcdsaP384,
    /// RSA (2048 to 8192 bits) with PKCS#1 v1.5 SHA-256. Accepted in CSRs
    /// and imported roots; ring cannot generate RSA keys.
    Rsa,
}

impl KeyAlgorithm {
    /// The text form used in flags, config and policy files.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyAlgorithm::EcdsaP256 => "ecdsa-p256",
            KeyAlgorithm::EcdsaP384 => "ecdsa-p384",
            KeyAlgorithm::Rsa => "rsa",
        }
    }
}

impl std::fmt::Display for KeyAlgorithm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for KeyAlgorithm {
    type Err = CaError;

    /// Parses `ecdsa-p256`, `ecdsa-p384` or `rsa`.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "ecdsa-p256" => Ok(KeyAlgorithm::EcdsaP256),
            "ecdsa-p384" => Ok(KeyAlgorithm::EcdsaP384),
            "rsa" => Ok(KeyAlgorithm::Rsa),
            other => Err(CaError::UnknownKeyAlgorithm {
                name: other.to_string(),
            }),
        }
    }
}

/// A public key as found in a CSR or certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicKeyInfo {
    /// The key's algorithm.
    pub algorithm: KeyAlgorithm,
    /// Key size in bits (256 or 384 for ECDSA, the modulus size for RSA).
    pub bits: u32,
    /// DER SubjectPublicKeyInfo.
    pub spki_der: Vec<u8>,
}

/// A CSR whose signature has been verified; only its public key is used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedCsr {
    /// The public key the CSR was signed with.
    pub public_key: PublicKeyInfo,
    /// The subject as written in the CSR (informational only: never copied).
    pub subject: String,
    /// The CSR itself (DER), for a signer that needs the request (Vault).
    pub der: Vec<u8>,
}

/// Everything the CA decides about a cluster intermediate. The CSR only
/// contributes its public key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IntermediateProfile {
    /// Trust domain, e.g. `cluster.local`; becomes the URI SAN `spiffe://<td>`.
    pub trust_domain: String,
    /// Subject organisation (`O=`).
    pub organisation: String,
    /// Cluster name: `CN=<cluster> intermediate CA`, `L=<cluster>`.
    pub cluster: String,
    /// Requested lifetime; clipped to the issuer's expiry.
    pub lifetime: Duration,
    /// Add URI + DNS permitted subtrees for the trust domain (see policy docs:
    /// rustls-webpki rejects every chain carrying URI name constraints).
    pub name_constraints: bool,
}

/// An X.509 certificate, kept as DER. Its PEM form is derived from the DER
/// deterministically (64-column base64, `\n` line ends), so the same
/// certificate always has the same PEM bytes.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Certificate {
    /// Shared by clones (certificates are cloned into every bundle, view
    /// and record), one pointer wide.
    inner: std::sync::Arc<CertificateInner>,
}

#[derive(PartialEq, Eq, Hash)]
struct CertificateInner {
    der: Vec<u8>,
    /// Read once when the DER is checked: the fields every issuance and
    /// gate asks for again and again (each read used to parse the DER).
    serial_hex: String,
    not_before: SystemTime,
    not_after: SystemTime,
}

impl std::fmt::Debug for Certificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certificate")
            .field("subject", &self.subject().unwrap_or_default())
            .field("serial", &self.serial_hex().unwrap_or_default())
            .finish()
    }
}

impl Certificate {
    /// Wraps DER bytes after checking that they parse as one X.509 certificate.
    ///
    /// Errors: [`CaError::MalformedDer`] when they do not,
    /// [`CaError::Unexpected`] for trailing bytes.
    pub fn from_der(der: Vec<u8>) -> Result<Self, CaError> {
        let (rest, parsed) =
            x509_parser::parse_x509_certificate(&der).map_err(CaError::der("certificate"))?;
        if !rest.is_empty() {
            return Err(CaError::Unexpected {
                what: "certificate",
                expected: "one DER certificate",
                found: format!("{} trailing bytes after it", rest.len()),
            });
        }
        let serial_hex = serial_to_hex(parsed.tbs_certificate.raw_serial());
        let not_before = unix_to_system_time(parsed.validity().not_before.timestamp());
        let not_after = unix_to_system_time(parsed.validity().not_after.timestamp());
        drop(parsed);
        Ok(Certificate {
            inner: std::sync::Arc::new(CertificateInner {
                der,
                serial_hex,
                not_before,
                not_after,
            }),
        })
    }

    /// Parses exactly one `CERTIFICATE` PEM block.
    ///
    /// Errors: [`CaError::Unexpected`] for any other number of blocks, and
    /// those of [`Certificate::parse_pem_chain`].
    pub fn from_pem(text: &str) -> Result<Self, CaError> {
        match <[Certificate; 1]>::try_from(Self::parse_pem_chain(text)?) {
            Ok([certificate]) => Ok(certificate),
            Err(all) => Err(CaError::Unexpected {
                what: "certificate PEM",
                expected: "exactly one certificate",
                found: all.len().to_string(),
            }),
        }
    }

    /// Parses every `CERTIFICATE` PEM block in order. Other block types are
    /// an error (a private key pasted into a chain file must not pass).
    ///
    /// Errors: [`CaError::MalformedPem`], [`CaError::Unexpected`] (no block,
    /// another block type), [`CaError::MalformedDer`] (a bad certificate).
    pub fn parse_pem_chain(text: &str) -> Result<Vec<Self>, CaError> {
        let blocks = pem::parse_many(text.as_bytes()).map_err(|source| CaError::MalformedPem {
            what: "certificate",
            source,
        })?;
        if blocks.is_empty() {
            return Err(CaError::Unexpected {
                what: "certificate PEM",
                expected: "CERTIFICATE PEM blocks",
                found: "no PEM block".into(),
            });
        }
        blocks
            .into_iter()
            .map(|block| {
                if block.tag() != "CERTIFICATE" {
                    return Err(CaError::Unexpected {
                        what: "certificate PEM",
                        expected: "CERTIFICATE PEM blocks",
                        found: block.tag().to_string(),
                    });
                }
                Certificate::from_der(block.into_contents())
            })
            .collect()
    }

    /// The DER bytes.
    pub fn der(&self) -> &[u8] {
        &self.inner.der
    }

    /// Lowercase hex SHA-256 of the DER (the certificate's fingerprint).
    pub fn sha256_hex(&self) -> String {
        hex::encode(ring::digest::digest(&ring::digest::SHA256, &self.inner.der))
    }

    /// The canonical PEM form (one block, trailing newline).
    pub fn to_pem(&self) -> String {
        let block = pem::Pem::new("CERTIFICATE", self.inner.der.clone());
        pem::encode_config(
            &block,
            pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
        )
    }

    fn parsed(&self) -> Result<x509_parser::certificate::X509Certificate<'_>, CaError> {
        x509_parser::parse_x509_certificate(&self.inner.der)
            .map(|(_, certificate)| certificate)
            .map_err(CaError::der("certificate"))
    }

    /// Lowercase hex serial number without leading zero bytes.
    pub fn serial_hex(&self) -> Result<String, CaError> {
        Ok(self.inner.serial_hex.clone())
    }

    /// The subject distinguished name in RFC 4514-like text.
    pub fn subject(&self) -> Result<String, CaError> {
        Ok(self.parsed()?.subject().to_string())
    }

    /// Start of validity.
    pub fn not_before(&self) -> Result<SystemTime, CaError> {
        Ok(self.inner.not_before)
    }

    /// End of validity.
    pub fn not_after(&self) -> Result<SystemTime, CaError> {
        Ok(self.inner.not_after)
    }

    /// Whether basicConstraints says CA:true.
    ///
    /// Errors: [`CaError::MalformedDer`] / [`CaError::MalformedField`] when the certificate or its
    /// basicConstraints does not parse.
    pub fn is_ca(&self) -> Result<bool, CaError> {
        Ok(basic_constraint(&self.parsed()?)?.is_ca())
    }

    /// Checks that basicConstraints says CA:true and returns its
    /// pathLenConstraint.
    ///
    /// Errors: [`CaError::NotACa`] when it does not, [`CaError::MalformedDer`] /
    /// [`CaError::MalformedField`] when the certificate or its basicConstraints does not parse.
    pub fn require_ca(&self) -> Result<Option<u32>, CaError> {
        require_ca(&self.parsed()?)
    }

    /// The DER SubjectPublicKeyInfo.
    pub fn public_key_der(&self) -> Result<Vec<u8>, CaError> {
        Ok(self.parsed()?.tbs_certificate.subject_pki.raw.to_vec())
    }

    /// URI subject alternative names (e.g. `spiffe://cluster.local`).
    pub fn uri_sans(&self) -> Result<Vec<String>, CaError> {
        let certificate = self.parsed()?;
        let mut uris = Vec::new();
        if let Some(extension) = certificate
            .subject_alternative_name()
            .map_err(CaError::field("subjectAltName"))?
        {
            for name in &extension.value.general_names {
                if let x509_parser::extensions::GeneralName::URI(uri) = name {
                    uris.push((*uri).to_string());
                }
            }
        }
        Ok(uris)
    }
}

/// What a certificate's basicConstraints says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BasicConstraint {
    /// No basicConstraints, or CA:false.
    EndEntity,
    /// CA:true, with its pathLenConstraint if any.
    Ca {
        /// How many intermediates may follow below this CA.
        path_length: Option<u32>,
    },
}

impl BasicConstraint {
    /// Whether it says CA:true.
    pub(crate) fn is_ca(self) -> bool {
        matches!(self, BasicConstraint::Ca { .. })
    }
}

/// The basicConstraints of a parsed certificate: the one reading of the CA
/// flag and pathLen.
///
/// Errors: [`CaError::MalformedField`] when the extension does not parse or is
/// present twice.
pub(crate) fn basic_constraint(
    certificate: &x509_parser::certificate::X509Certificate<'_>,
) -> Result<BasicConstraint, CaError> {
    let extension = certificate
        .basic_constraints()
        .map_err(CaError::field("basicConstraints"))?;
    Ok(match extension.map(|extension| extension.value) {
        Some(value) if value.ca => BasicConstraint::Ca {
            path_length: value.path_len_constraint,
        },
        _ => BasicConstraint::EndEntity,
    })
}

/// [`basic_constraint`] as a requirement: the pathLenConstraint of a CA.
///
/// Errors: [`CaError::NotACa`] unless CA:true, and those of
/// [`basic_constraint`].
pub(crate) fn require_ca(
    certificate: &x509_parser::certificate::X509Certificate<'_>,
) -> Result<Option<u32>, CaError> {
    match basic_constraint(certificate)? {
        BasicConstraint::Ca { path_length } => Ok(path_length),
        BasicConstraint::EndEntity => Err(CaError::NotACa {
            subject: certificate.subject().to_string(),
            reason: "basicConstraints does not say CA:true",
            source: None,
        }),
    }
}

/// Whether keyUsage lets a parsed certificate sign certificates: it is
/// absent or includes keyCertSign.
///
/// Errors: [`CaError::MalformedField`] when the extension does not parse or is
/// present twice.
pub(crate) fn may_sign_certificates(
    certificate: &x509_parser::certificate::X509Certificate<'_>,
) -> Result<bool, CaError> {
    let key_usage = certificate
        .key_usage()
        .map_err(CaError::field("keyUsage"))?;
    Ok(key_usage.is_none_or(|extension| extension.value.key_cert_sign()))
}

/// Seconds since the Unix epoch (negative before it) to `SystemTime`.
pub fn unix_to_system_time(seconds: i64) -> SystemTime {
    let offset = Duration::from_secs(seconds.unsigned_abs());
    // Total: a time the platform cannot represent (i64::MIN seconds) is
    // clamped to the epoch rather than panicking.
    if seconds >= 0 {
        SystemTime::UNIX_EPOCH.checked_add(offset)
    } else {
        SystemTime::UNIX_EPOCH.checked_sub(offset)
    }
    .unwrap_or(SystemTime::UNIX_EPOCH)
}

/// `SystemTime` to seconds since the Unix epoch (negative before it).
pub fn system_time_to_unix(time: SystemTime) -> i64 {
    match time.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_secs()).unwrap_or(i64::MAX),
        Err(before) => -i64::try_from(before.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

/// Errors from certificate and key operations. Messages never contain key
/// material. The messages of input errors (everything but the internal
/// failures, see [`CaError::is_internal`]) say what to fix.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// DER that does not parse as `what` (a certificate, a CSR, a public key).
    #[error("malformed input: {what}: {source}")]
    MalformedDer {
        /// What the bytes should have been.
        what: &'static str,
        /// x509-parser's error.
        #[source]
        source: x509_parser::nom::Err<x509_parser::error::X509Error>,
    },
    /// A field or extension of a parsed certificate, CSR or public key that
    /// does not parse or is present twice.
    #[error("malformed input: {field}: {source}")]
    MalformedField {
        /// The field or extension, e.g. `basicConstraints`.
        field: &'static str,
        /// x509-parser's error.
        #[source]
        source: x509_parser::error::X509Error,
    },
    /// PEM text that does not parse.
    #[error("malformed input: {what} PEM: {source}")]
    MalformedPem {
        /// What the PEM should have held.
        what: &'static str,
        /// The PEM parser's error.
        #[source]
        source: pem::PemError,
    },
    /// Input that parses but is not what was expected: the wrong PEM
    /// blocks or number of them, trailing bytes.
    #[error("malformed input: {what}: expected {expected}, found {found}")]
    Unexpected {
        /// The input.
        what: &'static str,
        /// What it should hold.
        expected: &'static str,
        /// What it holds.
        found: String,
    },
    /// A private key that does not parse or that ring or rcgen refuse. The
    /// source never quotes key bytes (PEM errors, which can, are not kept).
    #[error("malformed input: private key: {problem}{}", cause_suffix(source.as_ref()))]
    MalformedKey {
        /// What is wrong and, where it helps, how to fix it.
        problem: &'static str,
        /// The key parser's error, when there is one.
        #[source]
        source: Option<KeyError>,
    },
    /// A name that cannot go into a certificate (trust domain, cluster,
    /// DNS name, URI, SPIFFE ID) or a certificate without the names it needs.
    #[error("malformed input: {kind} {name:?} {requirement}")]
    InvalidName {
        /// Which name.
        kind: &'static str,
        /// The name as given.
        name: String,
        /// What it fails to be.
        requirement: &'static str,
        /// rcgen's error, when rcgen refused it.
        #[source]
        source: Option<rcgen::Error>,
    },
    /// A document that cannot be written as JSON (the SPIFFE bundle).
    #[error("malformed input: {what}: {source}")]
    Json {
        /// The document.
        what: &'static str,
        /// serde_json's error.
        #[source]
        source: serde_json::Error,
    },
    /// A key algorithm name that trustplane does not know.
    #[error("unknown key algorithm {name:?}: use ecdsa-p256, ecdsa-p384 or rsa")]
    UnknownKeyAlgorithm {
        /// The name as given.
        name: String,
    },
    /// A CSR larger than [`MAX_CSR_BYTES`].
    #[error("CSR is {size} bytes; the limit is {limit} bytes")]
    CsrTooLarge {
        /// Size of the rejected input.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// A CSR whose self-signature does not verify.
    #[error("CSR signature does not verify: the CSR was altered or not signed by its key")]
    CsrBadSignature {
        /// x509-parser's error.
        #[source]
        source: x509_parser::error::X509Error,
    },
    /// A key type or size that trustplane does not accept.
    #[error("unsupported key: {key}{}{advice}", if advice.is_empty() { "" } else { "; " })]
    UnsupportedKey {
        /// The key (or signature) as found, e.g. `EC curve P-521`.
        key: String,
        /// What to use instead (may be empty).
        advice: &'static str,
        /// rcgen's error, when rcgen refused the key.
        #[source]
        source: Option<rcgen::Error>,
    },
    /// A certificate that cannot serve as a CA (an imported root, a bundle
    /// root, an issuer).
    #[error("not a usable root CA: {subject}: {reason}{}", cause_suffix(source.as_ref()))]
    NotACa {
        /// Subject of the certificate.
        subject: String,
        /// Which requirement it fails.
        reason: &'static str,
        /// The failure that shows it, when a check failed.
        #[source]
        source: Option<Box<CaError>>,
    },
    /// A private key that does not belong to the certificate.
    #[error("the private key does not match the certificate's public key")]
    KeyMismatch,
    /// A certificate outside its validity window at the given time.
    #[error(
        "certificate {subject} is not valid at the given time (valid {not_before} to {not_after})"
    )]
    NotValidNow {
        /// Subject of the certificate.
        subject: String,
        /// Start of validity (RFC 3339).
        not_before: String,
        /// End of validity (RFC 3339).
        not_after: String,
    },
    /// The system random number generator failed.
    #[error("certificate generation failed: {purpose}: the system random number generator failed")]
    Random {
        /// What the randomness was for.
        purpose: &'static str,
        /// ring's error.
        #[source]
        source: RingError,
    },
    /// A validity time that a certificate cannot hold.
    #[error("certificate generation failed: {what} is out of range")]
    TimeOutOfRange {
        /// Which time.
        what: &'static str,
        /// The time library's error, when it refused the time.
        #[source]
        source: Option<time::error::ComponentRange>,
    },
    /// rcgen failed to build or sign a certificate or CSR.
    #[error("certificate generation failed: {step}: {source}")]
    Generation {
        /// What was being built.
        step: &'static str,
        /// rcgen's error.
        #[source]
        source: rcgen::Error,
    },
    /// An issuer without basicConstraints CA:true.
    #[error("verification failed: issuer {issuer} is not a CA (basicConstraints CA:true missing)")]
    IssuerNotCa {
        /// Subject of the issuer.
        issuer: String,
    },
    /// An issuer whose keyUsage lacks keyCertSign.
    #[error(
        "verification failed: issuer {issuer} may not sign certificates (keyUsage lacks keyCertSign)"
    )]
    IssuerMayNotSign {
        /// Subject of the issuer.
        issuer: String,
    },
    /// A certificate that names another issuer.
    #[error("verification failed: {subject} names issuer {named}, not {issuer}")]
    IssuerNameMismatch {
        /// Subject of the certificate.
        subject: String,
        /// The issuer it names.
        named: String,
        /// Subject of the issuer it was checked against.
        issuer: String,
    },
    /// A certificate whose authorityKeyIdentifier is not the issuer's
    /// subjectKeyIdentifier.
    #[error(
        "verification failed: {subject}: authorityKeyIdentifier {authority} does not match \
         the issuer's subjectKeyIdentifier {issuer_subject_key}"
    )]
    KeyIdentifierMismatch {
        /// Subject of the certificate.
        subject: String,
        /// Its authorityKeyIdentifier (hex).
        authority: String,
        /// The issuer's subjectKeyIdentifier (hex).
        issuer_subject_key: String,
    },
    /// A signature that does not verify with the issuer's key.
    #[error(
        "verification failed: {subject}: signature does not verify with the key of {issuer} ({source})"
    )]
    BadSignature {
        /// Subject of the certificate.
        subject: String,
        /// Subject of the issuer.
        issuer: String,
        /// x509-parser's error.
        #[source]
        source: x509_parser::error::X509Error,
    },
    /// An empty certificate chain.
    #[error("verification failed: the {what} is empty")]
    EmptyChain {
        /// Which chain.
        what: &'static str,
    },
    /// A chain link that does not verify.
    #[error(
        "verification failed: {subject} is not issued by the next certificate of the chain: {source}"
    )]
    BrokenLink {
        /// Subject of the certificate whose link fails.
        subject: String,
        /// Why.
        #[source]
        source: Box<CaError>,
    },
    /// A trusted root that does not verify itself.
    #[error("verification failed: the trusted root {root} does not verify: {source}")]
    InvalidRoot {
        /// Subject of the root.
        root: String,
        /// Why.
        #[source]
        source: Box<CaError>,
    },
    /// A chain that reaches none of the trusted roots.
    #[error(
        "verification failed: {subject} does not chain to any of the {roots} trusted root(s){}",
        cause_suffix(source.as_ref())
    )]
    Untrusted {
        /// Subject of the last certificate of the chain.
        subject: String,
        /// How many roots were tried.
        roots: usize,
        /// The error against the last root tried, if any root was given.
        #[source]
        source: Option<Box<CaError>>,
    },
    /// rustls-webpki refuses a certificate or a trust anchor.
    #[error("verification failed: {what}: {source:?}")]
    Webpki {
        /// What it refused.
        what: &'static str,
        /// rustls-webpki's error.
        #[source]
        source: webpki::Error,
    },
    /// A leaf that rustls-webpki cannot verify to a trusted root, neither
    /// for client nor for server use.
    #[error(
        "verification failed: {leaf} does not chain to a trusted root (as client: {client:?}; \
         as server: {server:?})"
    )]
    LeafUntrusted {
        /// Subject (or first URI SAN) of the leaf.
        leaf: String,
        /// rustls-webpki's error for client use (boxed: two of them would
        /// make every `Result<_, CaError>` large).
        client: Box<webpki::Error>,
        /// rustls-webpki's error for server use.
        #[source]
        server: webpki::Error,
    },
    /// An intermediate signed elsewhere (Vault) that differs from the
    /// profile trustplane asked for.
    #[error(
        "the signed intermediate differs from trustplane's profile in {field}: expected {expected}, found {found}; it was not handed out"
    )]
    ProfileMismatch {
        /// The certificate field, e.g. `basicConstraints`.
        field: &'static str,
        /// What the profile asks for.
        expected: String,
        /// What the certificate holds.
        found: String,
    },
    /// A verification time that certificates cannot express.
    #[error("verification failed: the verification time ({seconds} s after 1970) is out of range")]
    VerificationTime {
        /// Seconds since the Unix epoch (negative before it).
        seconds: i64,
        /// x509-parser's error, when it refused the time.
        #[source]
        source: Option<x509_parser::error::X509Error>,
    },
}

impl CaError {
    /// Whether the failure is the CA's own (randomness, generation,
    /// verification of what it issued or holds) rather than bad input.
    pub fn is_internal(&self) -> bool {
        matches!(
            self,
            CaError::Random { .. }
                | CaError::TimeOutOfRange { .. }
                | CaError::Generation { .. }
                | CaError::IssuerNotCa { .. }
                | CaError::IssuerMayNotSign { .. }
                | CaError::IssuerNameMismatch { .. }
                | CaError::KeyIdentifierMismatch { .. }
                | CaError::BadSignature { .. }
                | CaError::EmptyChain { .. }
                | CaError::BrokenLink { .. }
                | CaError::InvalidRoot { .. }
                | CaError::Untrusted { .. }
                | CaError::Webpki { .. }
                | CaError::LeafUntrusted { .. }
                | CaError::VerificationTime { .. }
                | CaError::ProfileMismatch { .. }
        )
    }

    /// A [`CaError::MalformedDer`] for `what`.
    pub(crate) fn der(
        what: &'static str,
    ) -> impl FnOnce(x509_parser::nom::Err<x509_parser::error::X509Error>) -> CaError {
        move |source| CaError::MalformedDer { what, source }
    }

    /// A [`CaError::MalformedField`] for `field`.
    pub(crate) fn field(
        field: &'static str,
    ) -> impl FnOnce(x509_parser::error::X509Error) -> CaError {
        move |source| CaError::MalformedField { field, source }
    }
}

/// The underlying error of a private key that does not parse or is refused.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The PKCS#8 structure.
    #[error(transparent)]
    Pkcs8(#[from] pkcs8::Error),
    /// The SEC1 EC key.
    #[error(transparent)]
    Sec1(#[from] sec1::Error),
    /// The PKCS#1 RSA key.
    #[error(transparent)]
    Pkcs1(#[from] pkcs1::Error),
    /// DER encoding.
    #[error(transparent)]
    Der(#[from] pkcs8::der::Error),
    /// The algorithm parameters.
    #[error(transparent)]
    Spki(#[from] pkcs8::spki::Error),
    /// ring refused the key.
    #[error(transparent)]
    Rejected(#[from] RingError),
    /// rcgen refused the key for signing.
    #[error(transparent)]
    Rcgen(#[from] rcgen::Error),
}

/// ring's errors, carried typed: ring implements `std::error::Error` only
/// with its `std` feature, which this crate does not enable.
#[derive(Debug, thiserror::Error)]
pub enum RingError {
    /// A failure ring does not describe (e.g. the random number generator).
    #[error("{0}")]
    Unspecified(ring::error::Unspecified),
    /// ring refused a key, and says why.
    #[error("{0}")]
    KeyRejected(ring::error::KeyRejected),
}

impl From<ring::error::Unspecified> for RingError {
    fn from(error: ring::error::Unspecified) -> Self {
        RingError::Unspecified(error)
    }
}

impl From<ring::error::KeyRejected> for RingError {
    fn from(error: ring::error::KeyRejected) -> Self {
        RingError::KeyRejected(error)
    }
}

/// ` (cause)` for messages that name an optional cause, or nothing.
fn cause_suffix(source: Option<&impl std::fmt::Display>) -> String {
    source
        .map(|source| format!(" ({source})"))
        .unwrap_or_default()
}

/// A DER serial as lowercase hex without leading zero bytes (`00` for zero).
fn serial_to_hex(bytes: &[u8]) -> String {
    let trimmed: Vec<u8> = bytes
        .iter()
        .copied()
        .skip_while(|byte| *byte == 0)
        .collect();
    hex::encode(if trimmed.is_empty() { vec![0] } else { trimmed })
}
