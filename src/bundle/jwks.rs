//! The SPIFFE trust bundle format: a JWK set with one `x509-svid` key per
//! root (SPIFFE Trust Domain and Bundle specification, section 4).

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde::Serialize;
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
#[derive(Serialize)]
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
