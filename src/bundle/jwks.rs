//! The SPIFFE trust bundle format: a JWK set with one `x509-svid` key per
//! root (SPIFFE Trust Domain and Bundle specification, section 4), written
//! for the bundle and read back the way a SPIFFE consumer reads it.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde::{Deserialize, Serialize};
use x509_parser::oid_registry::{OID_EC_P256, OID_NIST_EC_P384};
use x509_parser::public_key::PublicKey;

use super::BundleError;
use crate::ca::{CaError, Certificate};

/// The whole document; fields serialize in this order.
#[derive(Serialize)]
struct SpiffeBundle {
    keys: Vec<JsonWebKey>,
    spiffe_sequence: u64,
    spiffe_refresh_hint: u64,
}

/// One root as a JWK.
#[derive(Debug, PartialEq, Eq, Serialize)]
pub(super) struct JsonWebKey {
    #[serde(rename = "use")]
    usage: &'static str,
    kty: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    crv: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    x: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    y: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    n: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    e: Option<String>,
    x5c: Vec<String>,
}

/// The SPIFFE bundle JSON for `roots`, in order.
pub(super) fn spiffe_bundle_json(
    roots: &[Certificate],
    version: u64,
    refresh_hint: Duration,
) -> Result<String, BundleError> {
    let bundle = SpiffeBundle {
        keys: roots.iter().map(json_web_key).collect::<Result<_, _>>()?,
        spiffe_sequence: version,
        spiffe_refresh_hint: refresh_hint.as_secs(),
    };
    serde_json::to_string(&bundle).map_err(|error| {
        BundleError::InvalidRoot(CaError::Json {
            what: "SPIFFE bundle JSON",
            source: error,
        })
    })
}

/// The JWK for one root: EC (P-256, P-384) or RSA.
pub(super) fn json_web_key(root: &Certificate) -> Result<JsonWebKey, BundleError> {
    let (_, certificate) = x509_parser::parse_x509_certificate(root.der())
        .map_err(|error| invalid(CaError::der("certificate")(error)))?;
    let public_key_info = &certificate.tbs_certificate.subject_pki;
    let public_key = public_key_info
        .parsed()
        .map_err(|error| invalid(CaError::field("public key")(error)))?;
    let mut key = JsonWebKey {
        usage: "x509-svid",
        kty: "",
        crv: None,
        x: None,
        y: None,
        n: None,
        e: None,
        x5c: vec![STANDARD.encode(root.der())],
    };
    match public_key {
        PublicKey::EC(point) => {
            let curve = public_key_info
                .algorithm
                .parameters
                .as_ref()
                .and_then(|parameters| parameters.as_oid().ok());
            let (name, coordinate_length) = match curve {
                Some(oid) if oid == OID_EC_P256 => ("P-256", 32),
                Some(oid) if oid == OID_NIST_EC_P384 => ("P-384", 48),
                Some(oid) => return Err(unsupported(format!("EC curve {oid}"))),
                None => return Err(unsupported("EC key without a named curve".into())),
            };
            // Only the uncompressed form (0x04 || x || y) carries both
            // coordinates; certificates use it in practice.
            let (x, y) = match point.data() {
                [0x04, coordinates @ ..] if coordinates.len() == 2 * coordinate_length => {
                    coordinates.split_at(coordinate_length)
                }
                _ => {
                    return Err(unsupported(format!(
                        "{name} point not in uncompressed form"
                    )));
                }
            };
            key.kty = "EC";
            key.crv = Some(name);
            key.x = Some(URL_SAFE_NO_PAD.encode(x));
            key.y = Some(URL_SAFE_NO_PAD.encode(y));
        }
        PublicKey::RSA(rsa) => {
            // JWK integers are unsigned big-endian without leading zero
            // octets (RFC 7518 §6.3.1.1); DER may prefix one.
            key.kty = "RSA";
            key.n = Some(URL_SAFE_NO_PAD.encode(without_leading_zeros(rsa.modulus)));
            key.e = Some(URL_SAFE_NO_PAD.encode(without_leading_zeros(rsa.exponent)));
        }
        _ => {
            return Err(unsupported(format!(
                "key algorithm {} (use EC P-256, EC P-384 or RSA)",
                public_key_info.algorithm.algorithm
            )));
        }
    }
    Ok(key)
}

fn without_leading_zeros(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|byte| *byte != 0)
        .unwrap_or(bytes.len().saturating_sub(1));
    bytes.get(start..).unwrap_or(bytes)
}

fn invalid(error: CaError) -> BundleError {
    BundleError::InvalidRoot(error)
}

fn unsupported(message: String) -> BundleError {
    BundleError::InvalidRoot(CaError::UnsupportedKey {
        key: message,
        advice: "",
        source: None,
    })
}

/// A SPIFFE bundle as read back: its X.509 authorities in document order
/// and the two SPIFFE parameters when present.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpiffeBundleContents {
    /// The `x509-svid` roots, in the order of `keys`.
    pub roots: Vec<Certificate>,
    /// `spiffe_sequence`.
    pub sequence: Option<u64>,
    /// `spiffe_refresh_hint`, in seconds.
    pub refresh_hint: Option<u64>,
}

/// The document as read; fields the reader does not use are ignored, as the
/// specification asks of consumers.
#[derive(Deserialize)]
struct SpiffeBundleDocument {
    keys: Vec<JsonWebKeyDocument>,
    spiffe_sequence: Option<u64>,
    spiffe_refresh_hint: Option<u64>,
}

/// One JWK as read.
#[derive(Deserialize)]
struct JsonWebKeyDocument {
    #[serde(rename = "use")]
    usage: Option<String>,
    kty: Option<String>,
    crv: Option<String>,
    x: Option<String>,
    y: Option<String>,
    n: Option<String>,
    e: Option<String>,
    x5c: Option<Vec<String>>,
}

/// Reads a SPIFFE bundle: every `x509-svid` key must carry exactly one
/// `x5c` certificate that is a CA and whose public key is the one the JWK
/// parameters state (`kty`, `crv`, `x`, `y` / `n`, `e`, compared with what
/// [`spiffe_bundle_json`] writes for that certificate). Keys of another
/// `use` (e.g. `jwt-svid`) are skipped.
///
/// Errors: [`BundleError::MalformedSpiffe`] naming the key and the problem,
/// [`BundleError::InvalidRoot`] for a certificate that does not parse, is
/// not a CA or has a key the format cannot express.
pub fn read_spiffe_bundle_json(text: &str) -> Result<SpiffeBundleContents, BundleError> {
    let document: SpiffeBundleDocument =
        serde_json::from_str(text).map_err(|error| malformed(format!("not a JWK set: {error}")))?;
    let mut roots = Vec::new();
    for (index, key) in document.keys.into_iter().enumerate() {
        if key.usage.as_deref() != Some("x509-svid") {
            continue;
        }
        let [encoded] = key.x5c.as_deref().unwrap_or_default() else {
            return Err(malformed(format!(
                "keys[{index}]: an x509-svid key needs exactly one x5c certificate"
            )));
        };
        let der = STANDARD
            .decode(encoded)
            .map_err(|error| malformed(format!("keys[{index}].x5c[0]: not base64: {error}")))?;
        let root = Certificate::from_der(der).map_err(invalid)?;
        root.require_ca().map_err(invalid)?;
        let expected = json_web_key(&root)?;
        let stated = (
            key.kty.as_deref(),
            key.crv.as_deref(),
            key.x.as_deref(),
            key.y.as_deref(),
            key.n.as_deref(),
            key.e.as_deref(),
        );
        let certified = (
            Some(expected.kty),
            expected.crv,
            expected.x.as_deref(),
            expected.y.as_deref(),
            expected.n.as_deref(),
            expected.e.as_deref(),
        );
        if stated != certified {
            return Err(malformed(format!(
                "keys[{index}]: the key parameters are not those of its x5c certificate"
            )));
        }
        roots.push(root);
    }
    Ok(SpiffeBundleContents {
        roots,
        sequence: document.spiffe_sequence,
        refresh_hint: document.spiffe_refresh_hint,
    })
}

fn malformed(problem: String) -> BundleError {
    BundleError::MalformedSpiffe { problem }
}
