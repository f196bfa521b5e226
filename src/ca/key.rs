//! Private keys in zeroizing wrappers.
//!
//! Keys are held as PKCS#8 DER. SEC1 (`EC PRIVATE KEY`) and PKCS#1 (`RSA
//! PRIVATE KEY`) PEM keys are converted to PKCS#8 on import. Error messages
//! describe what was wrong with a key, never its bytes.

use pkcs8::der::Encode;
use pkcs8::der::asn1::{AnyRef, Null};
use pkcs8::spki::AlgorithmIdentifierRef;
use pkcs8::{ObjectIdentifier, PrivateKeyInfo};
use rcgen::PublicKeyData as _;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, RsaKeyPair};
use std::sync::{Arc, OnceLock};

use zeroize::Zeroizing;

use super::{CaError, KeyAlgorithm, KeyError};

/// `id-ecPublicKey`.
const EC_PUBLIC_KEY_OID: ObjectIdentifier = sec1::ALGORITHM_OID;
/// `rsaEncryption`.
const RSA_ENCRYPTION_OID: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
/// `prime256v1` (NIST P-256).
const P256_OID: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
/// `secp384r1` (NIST P-384).
const P384_OID: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");
/// `secp521r1` (NIST P-521), recognised only to name it in errors.
const P521_OID: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.35");
/// `id-Ed25519`, recognised only to name it in errors.
const ED25519_OID: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.112");
/// `id-Ed448`, recognised only to name it in errors.
const ED448_OID: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.113");

/// Smallest RSA modulus accepted, in bits.
pub(crate) const RSA_MIN_BITS: u32 = 2048;
/// Largest RSA modulus accepted, in bits.
pub(crate) const RSA_MAX_BITS: u32 = 8192;

/// A private key as PKCS#8 DER in memory that is wiped on drop. Its `Debug`
/// prints `[redacted]`; it is never `Serialize`.
#[derive(Clone)]
pub struct PrivateKey {
    pkcs8: Zeroizing<Vec<u8>>,
    algorithm: KeyAlgorithm,
    bits: u32,
    /// The parsed signing key, made on first use and kept: parsing a
    /// PKCS#8 EC key checks its public point, a scalar multiplication that
    /// cost as much as a signature on every issuance (callgrind). Shared by
    /// clones (the same key); wiped when the last one is dropped.
    signing: Arc<OnceLock<Zeroizing<rcgen::KeyPair>>>,
}

impl std::fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PrivateKey({}, [redacted])", self.algorithm)
    }
}

impl PrivateKey {
    /// Generates a new ECDSA key. Errors: [`CaError::UnsupportedKey`] for RSA
    /// (ring cannot generate RSA keys), [`CaError::Random`] when ring fails.
    pub fn generate(algorithm: KeyAlgorithm) -> Result<Self, CaError> {
        let (signing_algorithm, bits) = match algorithm {
            KeyAlgorithm::EcdsaP256 => (&signature::ECDSA_P256_SHA256_ASN1_SIGNING, 256),
            KeyAlgorithm::EcdsaP384 => (&signature::ECDSA_P384_SHA384_ASN1_SIGNING, 384),
            KeyAlgorithm::Rsa => {
                return Err(CaError::UnsupportedKey {
                    key: "RSA keys cannot be generated here (ring has no RSA key generation)"
                        .into(),
                    advice: "use ecdsa-p256 or ecdsa-p384, or import an RSA key",
                    source: None,
                });
            }
        };
        let document = EcdsaKeyPair::generate_pkcs8(signing_algorithm, &SystemRandom::new())
            .map_err(|source| CaError::Random {
                purpose: "ECDSA key generation",
                source: source.into(),
            })?;
        Ok(PrivateKey {
            pkcs8: Zeroizing::new(document.as_ref().to_vec()),
            algorithm,
            bits,
            signing: Arc::default(),
        })
    }

    /// Parses a PEM private key: PKCS#8 (`PRIVATE KEY`), SEC1 (`EC PRIVATE
    /// KEY`) or PKCS#1 (`RSA PRIVATE KEY`, 2048 to 8192 bits). Errors:
    /// [`CaError::MalformedKey`], [`CaError::Unexpected`] (the PEM blocks) or
    /// [`CaError::UnsupportedKey`]; never echoes key bytes.
    pub fn from_pem(text: &str) -> Result<Self, CaError> {
        // Parse errors from `pem` can quote input bytes, so they are replaced
        // by a fixed message and not kept as the source.
        let blocks = pem::parse_many(text.as_bytes()).map_err(|_| CaError::MalformedKey {
            problem: "not valid PEM (check the BEGIN/END lines)",
            source: None,
        })?;
        let mut keys = blocks
            .into_iter()
            .filter(|block| block.tag() != "EC PARAMETERS")
            .collect::<Vec<_>>();
        let block = match (keys.pop(), keys.is_empty()) {
            (Some(block), true) => block,
            (None, _) => {
                return Err(CaError::Unexpected {
                    what: "private key",
                    expected: "one PEM private key block",
                    found: "no PEM block".into(),
                });
            }
            (Some(_), false) => {
                return Err(CaError::Unexpected {
                    what: "private key",
                    expected: "exactly one PEM private key block",
                    found: format!("{} blocks", keys.len() + 1),
                });
            }
        };
        let tag = block.tag().to_string();
        let contents = Zeroizing::new(block.into_contents());
        match tag.as_str() {
            "PRIVATE KEY" => Self::from_pkcs8_der(&contents),
            "EC PRIVATE KEY" => {
                let pkcs8 = sec1_to_pkcs8(&contents)?;
                Self::from_pkcs8_der(&pkcs8)
            }
            "RSA PRIVATE KEY" => {
                let pkcs8 = pkcs1_to_pkcs8(&contents)?;
                Self::from_pkcs8_der(&pkcs8)
            }
            "ENCRYPTED PRIVATE KEY" => Err(CaError::MalformedKey {
                problem: "encrypted PKCS#8 keys are not supported; decrypt it first \
                          (openssl pkcs8 -in key.pem -out plain.pem)",
                source: None,
            }),
            other => Err(CaError::Unexpected {
                what: "private key",
                expected: "a PRIVATE KEY, EC PRIVATE KEY or RSA PRIVATE KEY PEM block",
                found: format!("{other:?}"),
            }),
        }
    }

    /// Wraps PKCS#8 DER after checking that ring can sign with it.
    ///
    /// Errors: [`CaError::MalformedKey`] when the DER does not parse or ring
    /// rejects it, [`CaError::UnsupportedKey`] for key types or sizes
    /// trustplane does not accept.
    pub fn from_pkcs8_der(der: &[u8]) -> Result<Self, CaError> {
        let info = PrivateKeyInfo::try_from(der).map_err(|source| CaError::MalformedKey {
            problem: "the PKCS#8 structure does not parse",
            source: Some(source.into()),
        })?;
        let oid = info.algorithm.oid;
        let (algorithm, bits) = if oid == EC_PUBLIC_KEY_OID {
            let curve =
                info.algorithm
                    .parameters_oid()
                    .map_err(|source| CaError::MalformedKey {
                        problem: "EC key without a named curve",
                        source: Some(source.into()),
                    })?;
            let (algorithm, bits, signing_algorithm) = if curve == P256_OID {
                (
                    KeyAlgorithm::EcdsaP256,
                    256,
                    &signature::ECDSA_P256_SHA256_ASN1_SIGNING,
                )
            } else if curve == P384_OID {
                (
                    KeyAlgorithm::EcdsaP384,
                    384,
                    &signature::ECDSA_P384_SHA384_ASN1_SIGNING,
                )
            } else {
                return Err(CaError::UnsupportedKey {
                    key: format!("EC curve {}", curve_name(&curve)),
                    advice: "use P-256 or P-384",
                    source: None,
                });
            };
            EcdsaKeyPair::from_pkcs8(signing_algorithm, der, &SystemRandom::new()).map_err(
                |source| CaError::MalformedKey {
                    problem: "the EC key was rejected; it must include its public key",
                    source: Some(KeyError::Rejected(source.into())),
                },
            )?;
            (algorithm, bits)
        } else if oid == RSA_ENCRYPTION_OID {
            let bits = rsa_private_key_bits(info.private_key)?;
            check_rsa_bits(bits)?;
            RsaKeyPair::from_pkcs8(der).map_err(|source| CaError::MalformedKey {
                problem: "the RSA key was rejected",
                source: Some(KeyError::Rejected(source.into())),
            })?;
            (KeyAlgorithm::Rsa, bits)
        } else if oid == ED25519_OID || oid == ED448_OID {
            return Err(CaError::UnsupportedKey {
                key: "EdDSA keys are not accepted by Istio CAs".into(),
                advice: "use ECDSA P-256, P-384 or RSA",
                source: None,
            });
        } else {
            return Err(CaError::UnsupportedKey {
                key: format!("key algorithm {oid}"),
                advice: "use ECDSA P-256, P-384 or RSA 2048-8192",
                source: None,
            });
        };
        Ok(PrivateKey {
            pkcs8: Zeroizing::new(der.to_vec()),
            algorithm,
            bits,
            signing: Arc::default(),
        })
    }

    /// The PKCS#8 DER bytes.
    pub fn pkcs8_der(&self) -> &[u8] {
        &self.pkcs8
    }

    /// The PKCS#8 PEM form (`PRIVATE KEY`), wiped on drop.
    pub fn to_pkcs8_pem(&self) -> Zeroizing<String> {
        let block = pem::Pem::new("PRIVATE KEY", self.pkcs8.to_vec());
        let text = Zeroizing::new(pem::encode_config(
            &block,
            pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
        ));
        drop(Zeroizing::new(block.into_contents()));
        text
    }

    /// The key's algorithm.
    pub fn algorithm(&self) -> KeyAlgorithm {
        self.algorithm
    }

    /// Key size in bits.
    pub fn bits(&self) -> u32 {
        self.bits
    }

    /// The DER SubjectPublicKeyInfo of the matching public key.
    ///
    /// Errors: [`CaError::MalformedKey`] when rcgen rejects the key.
    pub fn public_key_der(&self) -> Result<Vec<u8>, CaError> {
        Ok(self.key_pair()?.subject_public_key_info())
    }

    /// The rcgen key pair for signing, wiped on drop.
    pub(crate) fn key_pair(&self) -> Result<&rcgen::KeyPair, CaError> {
        if let Some(parsed) = self.signing.get() {
            return Ok(parsed);
        }
        let signature_algorithm = match self.algorithm {
            KeyAlgorithm::EcdsaP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            KeyAlgorithm::EcdsaP384 => &rcgen::PKCS_ECDSA_P384_SHA384,
            KeyAlgorithm::Rsa => &rcgen::PKCS_RSA_SHA256,
        };
        let der = rustls_pki_types::PrivatePkcs8KeyDer::from(self.pkcs8.as_slice());
        let parsed = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&der, signature_algorithm)
            .map(Zeroizing::new)
            .map_err(|source| CaError::MalformedKey {
                problem: "rejected for signing",
                source: Some(source.into()),
            })?;
        // A concurrent first use may have set it already; the loser's
        // copy is wiped when dropped.
        Ok(self.signing.get_or_init(|| parsed))
    }
}

/// Human name of a curve OID for error messages.
fn curve_name(curve: &ObjectIdentifier) -> String {
    if *curve == P521_OID {
        "P-521".into()
    } else {
        curve.to_string()
    }
}

/// Rejects RSA moduli outside 2048..=8192 bits.
pub(crate) fn check_rsa_bits(bits: u32) -> Result<(), CaError> {
    if (RSA_MIN_BITS..=RSA_MAX_BITS).contains(&bits) {
        Ok(())
    } else {
        Err(CaError::UnsupportedKey {
            key: format!("RSA key of {bits} bits"),
            // RSA_MIN_BITS to RSA_MAX_BITS.
            advice: "use 2048 to 8192 bits",
            source: None,
        })
    }
}

/// Bit length of an unsigned big-endian integer.
pub(crate) fn unsigned_bit_length(bytes: &[u8]) -> u32 {
    let trimmed: &[u8] = match bytes.iter().position(|byte| *byte != 0) {
        Some(first) => &bytes[first..],
        None => &[],
    };
    match trimmed.first() {
        Some(first) => {
            let length = u32::try_from(trimmed.len()).unwrap_or(u32::MAX / 8);
            length.saturating_mul(8) - first.leading_zeros()
        }
        None => 0,
    }
}

/// The modulus size of a PKCS#1 `RSAPrivateKey`.
fn rsa_private_key_bits(der: &[u8]) -> Result<u32, CaError> {
    let key = pkcs1::RsaPrivateKey::try_from(der).map_err(|source| CaError::MalformedKey {
        problem: "the PKCS#1 RSA key does not parse",
        source: Some(source.into()),
    })?;
    Ok(unsigned_bit_length(key.modulus.as_bytes()))
}

/// Wraps a SEC1 `ECPrivateKey` in PKCS#8, taking the curve from the key.
fn sec1_to_pkcs8(der: &[u8]) -> Result<Zeroizing<Vec<u8>>, CaError> {
    let key = sec1::EcPrivateKey::try_from(der).map_err(|source| CaError::MalformedKey {
        problem: "the SEC1 EC key does not parse",
        source: Some(source.into()),
    })?;
    let curve = key
        .parameters
        .and_then(|parameters| parameters.named_curve())
        .ok_or(CaError::MalformedKey {
            problem: "the SEC1 EC key names no curve; convert it with \
                      `openssl pkcs8 -topk8 -nocrypt`",
            source: None,
        })?;
    if key.public_key.is_none() {
        return Err(CaError::MalformedKey {
            problem: "the SEC1 EC key has no public key; regenerate it with openssl",
            source: None,
        });
    }
    let info = PrivateKeyInfo::new(
        AlgorithmIdentifierRef {
            oid: EC_PUBLIC_KEY_OID,
            parameters: Some(AnyRef::from(&curve)),
        },
        der,
    );
    encode_pkcs8(&info)
}

/// Wraps a PKCS#1 `RSAPrivateKey` in PKCS#8.
fn pkcs1_to_pkcs8(der: &[u8]) -> Result<Zeroizing<Vec<u8>>, CaError> {
    let bits = rsa_private_key_bits(der)?;
    check_rsa_bits(bits)?;
    let info = PrivateKeyInfo::new(
        AlgorithmIdentifierRef {
            oid: RSA_ENCRYPTION_OID,
            parameters: Some(AnyRef::from(Null)),
        },
        der,
    );
    encode_pkcs8(&info)
}

fn encode_pkcs8(info: &PrivateKeyInfo<'_>) -> Result<Zeroizing<Vec<u8>>, CaError> {
    info.to_der()
        .map(Zeroizing::new)
        .map_err(|source| CaError::MalformedKey {
            problem: "cannot re-encode as PKCS#8",
            source: Some(source.into()),
        })
}

#[cfg(test)]
#[allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::fixtures::{openssl_genpkey, run_openssl};

    #[test]
    fn generates_p256_and_p384() {
        let p256 = PrivateKey::generate(KeyAlgorithm::EcdsaP256).expect("p256");
        assert_eq!(
            (p256.algorithm(), p256.bits()),
            (KeyAlgorithm::EcdsaP256, 256)
        );
        let p384 = PrivateKey::generate(KeyAlgorithm::EcdsaP384).expect("p384");
        assert_eq!(
            (p384.algorithm(), p384.bits()),
            (KeyAlgorithm::EcdsaP384, 384)
        );
        assert!(matches!(
            PrivateKey::generate(KeyAlgorithm::Rsa),
            Err(CaError::UnsupportedKey { .. })
        ));
    }

    #[test]
    fn pem_round_trip_and_redacted_debug() {
        let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).expect("key");
        let text = key.to_pkcs8_pem();
        assert!(text.starts_with("-----BEGIN PRIVATE KEY-----\n"));
        let again = PrivateKey::from_pem(&text).expect("parse");
        assert_eq!(again.pkcs8_der(), key.pkcs8_der());
        assert_eq!(
            again.public_key_der().expect("spki"),
            key.public_key_der().expect("spki")
        );
        let debug = format!("{key:?}");
        assert_eq!(debug, "PrivateKey(ecdsa-p256, [redacted])");
    }

    #[test]
    fn from_pem_errors_never_echo_key_text() {
        let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).expect("key");
        let text = key.to_pkcs8_pem();
        let body: Vec<&str> = text
            .lines()
            .filter(|line| !line.starts_with("-----"))
            .collect();
        // Corrupt the base64 body and the DER inside it.
        let broken_base64 = text.replace(body[1], &format!("{}!", &body[1][1..]));
        let mut der = key.pkcs8_der().to_vec();
        der.truncate(der.len() - 10);
        let truncated = pem::encode(&pem::Pem::new("PRIVATE KEY", der));
        for input in [broken_base64, truncated, "garbage".to_string()] {
            let error = PrivateKey::from_pem(&input).expect_err("must fail");
            let message = error.to_string();
            for line in body.iter().chain(input.lines().collect::<Vec<_>>().iter()) {
                if line.len() > 8 && !line.starts_with("-----") {
                    assert!(!message.contains(line), "{message}");
                }
            }
        }
    }

    #[test]
    fn imports_openssl_pkcs8_sec1_and_pkcs1_keys() {
        let directory = tempfile::tempdir().expect("tempdir");
        let path = directory.path();
        // PKCS#8 P-384.
        let pkcs8 = openssl_genpkey(
            path,
            "p384.pem",
            &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384"],
        );
        let key = PrivateKey::from_pem(&pkcs8).expect("pkcs8");
        assert_eq!(
            (key.algorithm(), key.bits()),
            (KeyAlgorithm::EcdsaP384, 384)
        );
        // SEC1 P-256 with an EC PARAMETERS block in front.
        run_openssl(
            path,
            &[
                "ecparam",
                "-name",
                "prime256v1",
                "-genkey",
                "-out",
                "sec1.pem",
            ],
        );
        let sec1 = std::fs::read_to_string(path.join("sec1.pem")).expect("read");
        assert!(sec1.contains("BEGIN EC PRIVATE KEY"));
        let key = PrivateKey::from_pem(&sec1).expect("sec1");
        assert_eq!(key.algorithm(), KeyAlgorithm::EcdsaP256);
        // The SPKI derived from the converted key equals openssl's.
        let spki = run_openssl(
            path,
            &["pkey", "-in", "sec1.pem", "-pubout", "-outform", "DER"],
        )
        .stdout;
        assert_eq!(key.public_key_der().expect("spki"), spki);
        // PKCS#1 RSA-2048.
        openssl_genpkey(
            path,
            "rsa8.pem",
            &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
        );
        run_openssl(
            path,
            &["rsa", "-in", "rsa8.pem", "-traditional", "-out", "rsa1.pem"],
        );
        let pkcs1 = std::fs::read_to_string(path.join("rsa1.pem")).expect("read");
        assert!(pkcs1.contains("BEGIN RSA PRIVATE KEY"));
        let key = PrivateKey::from_pem(&pkcs1).expect("pkcs1");
        assert_eq!((key.algorithm(), key.bits()), (KeyAlgorithm::Rsa, 2048));
        let spki = run_openssl(
            path,
            &["pkey", "-in", "rsa1.pem", "-pubout", "-outform", "DER"],
        )
        .stdout;
        assert_eq!(key.public_key_der().expect("spki"), spki);
        // ring signs with the imported RSA key.
        let key_pair = key.key_pair().expect("key pair");
        assert!(rcgen::SigningKey::sign(key_pair, b"message").is_ok());
    }

    #[test]
    fn rejects_unsupported_openssl_keys() {
        let directory = tempfile::tempdir().expect("tempdir");
        let path = directory.path();
        let ed25519 = openssl_genpkey(path, "ed25519.pem", &["-algorithm", "ED25519"]);
        assert!(matches!(
            PrivateKey::from_pem(&ed25519),
            Err(CaError::UnsupportedKey { .. })
        ));
        let p521 = openssl_genpkey(
            path,
            "p521.pem",
            &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-521"],
        );
        let error = PrivateKey::from_pem(&p521).expect_err("p521");
        assert!(error.to_string().contains("P-521"), "{error}");
        let rsa1024 = openssl_genpkey(
            path,
            "rsa1024.pem",
            &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:1024"],
        );
        let error = PrivateKey::from_pem(&rsa1024).expect_err("rsa1024");
        assert!(matches!(error, CaError::UnsupportedKey { .. }), "{error}");
        assert!(error.to_string().contains("1024"), "{error}");
    }

    #[test]
    fn bit_length() {
        assert_eq!(unsigned_bit_length(&[0x00, 0x80, 0x00]), 16);
        assert_eq!(unsigned_bit_length(&[0x01, 0x00]), 9);
        assert_eq!(unsigned_bit_length(&[0x00]), 0);
    }
}
