//! CSR parsing and verification (x509-parser), and CSR creation for agents.
//!
//! rcgen's CSR parser rejects CSR extensions it does not know (openssl adds a
//! subjectKeyIdentifier), so CSRs are parsed and verified with x509-parser;
//! only the public key is used afterwards.

use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::error::X509Error;
use x509_parser::extensions::ParsedExtension;
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_NIST_EC_P521,
    OID_PKCS1_RSAENCRYPTION, OID_PKCS1_SHA1WITHRSA, OID_SHA1_WITH_RSA, OID_SIG_ED448,
    OID_SIG_ED25519,
};
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;
use x509_parser::x509::SubjectPublicKeyInfo;

use super::key::{check_rsa_bits, unsigned_bit_length};
use super::{CaError, KeyAlgorithm, PrivateKey, PublicKeyInfo, VerifiedCsr};

/// The largest CSR accepted, in bytes (PEM or DER).
pub const MAX_CSR_BYTES: usize = 64 * 1024;

/// Parses a PEM or DER PKCS#10 CSR, verifies its self-signature, and checks
/// its key: ECDSA P-256/P-384 or RSA 2048–8192. CSR extensions are ignored
/// (never copied). Errors: [`CaError::CsrTooLarge`],
/// [`CaError::MalformedPem`] / [`CaError::MalformedDer`] /
/// [`CaError::Unexpected`] (it does not parse), [`CaError::CsrBadSignature`],
/// [`CaError::UnsupportedKey`].
pub fn verify_csr(input: &[u8]) -> Result<VerifiedCsr, CaError> {
    if input.len() > MAX_CSR_BYTES {
        return Err(CaError::CsrTooLarge {
            size: input.len(),
            limit: MAX_CSR_BYTES,
        });
    }
    let der = csr_der(input)?;
    let (rest, request) = X509CertificationRequest::from_der(&der).map_err(CaError::der("CSR"))?;
    if !rest.is_empty() {
        return Err(CaError::Unexpected {
            what: "CSR",
            expected: "one DER CSR",
            found: format!("{} trailing bytes after it", rest.len()),
        });
    }
    let info = &request.certification_request_info;
    // The key is checked before the signature so that an unsupported key
    // (whose signature ring may not even verify) gets the precise error.
    let public_key = public_key_info(&info.subject_pki)?;
    let signature_algorithm = &request.signature_algorithm.algorithm;
    if *signature_algorithm == OID_PKCS1_SHA1WITHRSA || *signature_algorithm == OID_SHA1_WITH_RSA {
        return Err(CaError::UnsupportedKey {
            key: "the CSR is signed with SHA-1".into(),
            advice: "sign it with SHA-256 or stronger",
            source: None,
        });
    }
    match request.verify_signature() {
        Ok(()) => {}
        Err(X509Error::SignatureUnsupportedAlgorithm) => {
            return Err(CaError::UnsupportedKey {
                key: format!("CSR signature algorithm {signature_algorithm}"),
                advice: "use ECDSA with SHA-256/384 or RSA PKCS#1 v1.5 with SHA-256/384/512",
                source: None,
            });
        }
        Err(source) => return Err(CaError::CsrBadSignature { source }),
    }
    check_requested_extensions(&request)?;
    Ok(VerifiedCsr {
        public_key,
        subject: info.subject.to_string(),
        der: der.to_vec(),
    })
}

/// The most subject alternative names a CSR may request. trustplane's
/// profiles set the names themselves and ignore the requested ones; a CSR
/// asking for more than this is refused rather than silently trimmed.
pub const MAX_CSR_SANS: usize = 64;

/// Refuses a CSR that requests more than any trustplane profile grants:
/// a basicConstraints path length above 0 (intermediates are issued with
/// pathLen 0, so a request for more is a misconfiguration or an attack),
/// or more than [`MAX_CSR_SANS`] subject alternative names.
fn check_requested_extensions(request: &X509CertificationRequest<'_>) -> Result<(), CaError> {
    let Some(extensions) = request.requested_extensions() else {
        return Ok(());
    };
    for extension in extensions {
        match extension {
            ParsedExtension::BasicConstraints(constraints) => {
                if let Some(path_length) = constraints.path_len_constraint
                    && path_length > 0
                {
                    return Err(CaError::Unexpected {
                        what: "CSR",
                        expected: "no basicConstraints, or pathLen 0 (trustplane issues intermediates with pathLen 0)",
                        found: format!("a request for basicConstraints pathLen {path_length}"),
                    });
                }
            }
            ParsedExtension::SubjectAlternativeName(names)
                if names.general_names.len() > MAX_CSR_SANS =>
            {
                return Err(CaError::Unexpected {
                    what: "CSR",
                    expected: "at most 64 subjectAltName entries (trustplane sets the names itself)",
                    found: format!("{} subjectAltName entries", names.general_names.len()),
                });
            }
            _ => {}
        }
    }
    Ok(())
}

/// Creates a PEM CSR signed by `key` with subject `CN=<common_name>`.
///
/// Errors: [`CaError::Generation`] when rcgen cannot build or sign it.
pub fn create_csr(key: &PrivateKey, common_name: &str) -> Result<String, CaError> {
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, common_name);
    let key_pair = key.key_pair()?;
    let request = params
        .serialize_request(key_pair)
        .map_err(|source| CaError::Generation {
            step: "CSR",
            source,
        })?;
    let block = pem::Pem::new("CERTIFICATE REQUEST", request.der().to_vec());
    Ok(pem::encode_config(
        &block,
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    ))
}

/// The DER of a CSR given as PEM (`CERTIFICATE REQUEST` or `NEW CERTIFICATE
/// REQUEST`) or DER.
fn csr_der(input: &[u8]) -> Result<Vec<u8>, CaError> {
    let trimmed = input.trim_ascii_start();
    if !trimmed.starts_with(b"-----BEGIN") {
        return Ok(input.to_vec());
    }
    // Text before the block is refused (it is read as DER above); text
    // after its END line is refused too, rather than silently ignored.
    let after_end = trimmed
        .windows(8)
        .rposition(|window| window == b"-----END")
        .and_then(|end| {
            let label_end = end + 8;
            trimmed[label_end..]
                .windows(5)
                .position(|window| window == b"-----")
                .map(|close| label_end + close + 5)
        })
        .map_or(&[][..], |tail| &trimmed[tail..]);
    if !after_end.trim_ascii().is_empty() {
        return Err(CaError::Unexpected {
            what: "CSR PEM",
            expected: "nothing but whitespace after the END line",
            found: format!("{} more bytes", after_end.trim_ascii().len()),
        });
    }
    let mut blocks = pem::parse_many(trimmed).map_err(|source| CaError::MalformedPem {
        what: "CSR",
        source,
    })?;
    let block = match (blocks.pop(), blocks.is_empty()) {
        (Some(block), true) => block,
        _ => {
            return Err(CaError::Unexpected {
                what: "CSR PEM",
                expected: "exactly one CERTIFICATE REQUEST block",
                found: format!("{} blocks", blocks.len() + usize::from(!blocks.is_empty())),
            });
        }
    };
    match block.tag() {
        "CERTIFICATE REQUEST" | "NEW CERTIFICATE REQUEST" => Ok(block.into_contents()),
        other => Err(CaError::Unexpected {
            what: "CSR PEM",
            expected: "a CERTIFICATE REQUEST block",
            found: other.to_string(),
        }),
    }
}

/// Classifies a SubjectPublicKeyInfo: ECDSA P-256/P-384 (uncompressed
/// points) or RSA 2048–8192; anything else is [`CaError::UnsupportedKey`].
pub(crate) fn public_key_info(spki: &SubjectPublicKeyInfo<'_>) -> Result<PublicKeyInfo, CaError> {
    let oid = &spki.algorithm.algorithm;
    let (algorithm, bits) = if *oid == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|parameters| parameters.as_oid().ok())
            .ok_or_else(|| CaError::UnsupportedKey {
                key: "EC key without a named curve".into(),
                advice: "use P-256 or P-384",
                source: None,
            })?;
        let (algorithm, bits, point_length) = if curve == OID_EC_P256 {
            (KeyAlgorithm::EcdsaP256, 256, 65)
        } else if curve == OID_NIST_EC_P384 {
            (KeyAlgorithm::EcdsaP384, 384, 97)
        } else if curve == OID_NIST_EC_P521 {
            return Err(CaError::UnsupportedKey {
                key: "EC curve P-521".into(),
                advice: "use P-256 or P-384",
                source: None,
            });
        } else {
            return Err(CaError::UnsupportedKey {
                key: format!("EC curve {curve}"),
                advice: "use P-256 or P-384",
                source: None,
            });
        };
        let point = spki.subject_public_key.data.as_ref();
        if point.len() != point_length || point.first() != Some(&0x04) {
            return Err(CaError::UnsupportedKey {
                key: "EC public key that is not an uncompressed point of its curve".into(),
                advice: "",
                source: None,
            });
        }
        (algorithm, bits)
    } else if *oid == OID_PKCS1_RSAENCRYPTION {
        let bits = match spki.parsed().map_err(CaError::field("RSA public key"))? {
            PublicKey::RSA(rsa) => unsigned_bit_length(rsa.modulus),
            _ => {
                return Err(CaError::Unexpected {
                    what: "RSA public key",
                    expected: "an RSA modulus and exponent",
                    found: "another key type".into(),
                });
            }
        };
        check_rsa_bits(bits)?;
        (KeyAlgorithm::Rsa, bits)
    } else if *oid == OID_SIG_ED25519 || *oid == OID_SIG_ED448 {
        return Err(CaError::UnsupportedKey {
            key: "EdDSA (Ed25519/Ed448) keys are not accepted".into(),
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
    Ok(PublicKeyInfo {
        algorithm,
        bits,
        spki_der: spki.raw.to_vec(),
    })
}

#[cfg(test)]
#[allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::fixtures::{openssl_genpkey, run_openssl};

    /// An openssl-made CSR (with openssl's default extensions, which include
    /// a subjectKeyIdentifier) for the key in `key_file`.
    fn openssl_csr(directory: &Path, key_file: &str, csr_file: &str, extra: &[&str]) -> Vec<u8> {
        let mut arguments = vec![
            "req", "-new", "-key", key_file, "-subj", "/CN=east", "-out", csr_file,
        ];
        arguments.extend_from_slice(extra);
        run_openssl(directory, &arguments);
        std::fs::read(directory.join(csr_file)).expect("read csr")
    }

    #[test]
    fn accepts_own_csr_p256_and_p384() {
        for algorithm in [KeyAlgorithm::EcdsaP256, KeyAlgorithm::EcdsaP384] {
            let key = PrivateKey::generate(algorithm).expect("key");
            let text = create_csr(&key, "east").expect("csr");
            assert!(text.starts_with("-----BEGIN CERTIFICATE REQUEST-----\n"));
            let verified = verify_csr(text.as_bytes()).expect("verify");
            assert_eq!(verified.public_key.algorithm, algorithm);
            assert_eq!(
                verified.public_key.spki_der,
                key.public_key_der().expect("spki")
            );
            assert_eq!(verified.subject, "CN=east");
            // DER works too.
            let der = pem::parse(text.as_bytes()).expect("pem").into_contents();
            assert_eq!(
                verify_csr(&der).expect("der").public_key,
                verified.public_key
            );
        }
    }

    #[test]
    fn accepts_openssl_csr_with_ski_extension_and_new_pem_label() {
        let directory = tempfile::tempdir().expect("tempdir");
        let path = directory.path();
        openssl_genpkey(
            path,
            "key.pem",
            &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
        );
        let csr = openssl_csr(
            path,
            "key.pem",
            "csr.pem",
            &["-addext", "subjectKeyIdentifier=hash"],
        );
        let text = run_openssl(path, &["req", "-in", "csr.pem", "-noout", "-text"]).stdout;
        assert!(
            String::from_utf8_lossy(&text).contains("Subject Key Identifier"),
            "fixture must carry an SKI extension"
        );
        // rcgen's parser refuses this CSR; ours must not.
        assert!(
            rcgen::CertificateSigningRequestParams::from_pem(
                std::str::from_utf8(&csr).expect("utf8")
            )
            .is_err()
        );
        let verified = verify_csr(&csr).expect("openssl CSR");
        assert_eq!(verified.public_key.algorithm, KeyAlgorithm::EcdsaP256);
        let relabelled = String::from_utf8(csr)
            .expect("utf8")
            .replace("CERTIFICATE REQUEST", "NEW CERTIFICATE REQUEST");
        assert!(verify_csr(relabelled.as_bytes()).is_ok());
    }

    #[test]
    fn accepts_openssl_rsa_2048_csr() {
        let directory = tempfile::tempdir().expect("tempdir");
        let path = directory.path();
        openssl_genpkey(
            path,
            "key.pem",
            &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
        );
        let csr = openssl_csr(path, "key.pem", "csr.pem", &[]);
        let verified = verify_csr(&csr).expect("rsa csr");
        assert_eq!(verified.public_key.algorithm, KeyAlgorithm::Rsa);
        assert_eq!(verified.public_key.bits, 2048);
    }

    #[test]
    fn rejects_too_large_before_parsing() {
        let input = vec![b'A'; MAX_CSR_BYTES + 1];
        match verify_csr(&input) {
            Err(CaError::CsrTooLarge { size, limit }) => {
                assert_eq!((size, limit), (MAX_CSR_BYTES + 1, MAX_CSR_BYTES));
            }
            other => panic!("expected CsrTooLarge, got {other:?}"),
        }
    }

    #[test]
    fn rejects_garbage() {
        for input in [
            &b"not a csr"[..],
            b"",
            b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
            b"\x30\x03\x02\x01\x00",
        ] {
            assert!(
                matches!(
                    verify_csr(input),
                    Err(CaError::MalformedDer { .. }
                        | CaError::MalformedPem { .. }
                        | CaError::Unexpected { .. })
                ),
                "{input:?}"
            );
        }
        let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).expect("key");
        let wrong_label = key.to_pkcs8_pem();
        assert!(matches!(
            verify_csr(wrong_label.as_bytes()),
            Err(CaError::Unexpected { .. })
        ));
    }

    #[test]
    fn rejects_text_after_the_end_line() {
        let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).expect("key");
        let text = create_csr(&key, "east").expect("csr");
        assert!(verify_csr(format!("{text}\n \r\n").as_bytes()).is_ok());
        match verify_csr(format!("{text}garbage\x00").as_bytes()) {
            Err(error @ CaError::Unexpected { .. }) => {
                assert!(error.to_string().contains("after the END line"), "{error}")
            }
            other => panic!("expected Unexpected, got {other:?}"),
        }
    }

    #[test]
    fn rejects_tampered_signature() {
        let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).expect("key");
        let text = create_csr(&key, "east").expect("csr");
        let mut der = pem::parse(text.as_bytes()).expect("pem").into_contents();
        // The signature BIT STRING is last: flip a byte inside the ECDSA r value.
        let index = der.len() - 20;
        der[index] ^= 0x01;
        assert!(matches!(
            verify_csr(&der),
            Err(CaError::CsrBadSignature { .. })
        ));
        // Tampering with the signed part (the subject) fails too.
        let mut der = pem::parse(text.as_bytes()).expect("pem").into_contents();
        let position = der
            .windows(4)
            .position(|window| window == b"east")
            .expect("subject");
        der[position] = b'w';
        assert!(matches!(
            verify_csr(&der),
            Err(CaError::CsrBadSignature { .. })
        ));
    }

    #[test]
    fn rejects_ed25519_p521_and_rsa1024_keys() {
        let directory = tempfile::tempdir().expect("tempdir");
        let path = directory.path();
        let cases: [(&str, &[&str], &str); 3] = [
            ("ed25519.pem", &["-algorithm", "ED25519"], "EdDSA"),
            (
                "p521.pem",
                &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-521"],
                "P-521",
            ),
            (
                "rsa1024.pem",
                &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:1024"],
                "1024",
            ),
        ];
        for (name, options, expected) in cases {
            openssl_genpkey(path, name, options);
            let csr = openssl_csr(path, name, &format!("{name}.csr"), &[]);
            match verify_csr(&csr) {
                Err(error @ CaError::UnsupportedKey { .. }) => {
                    let message = error.to_string();
                    assert!(message.contains(expected), "{name}: {message}");
                }
                other => panic!("{name}: expected UnsupportedKey, got {other:?}"),
            }
        }
    }

    /// A signer with a made-up RSA public key of `bits` bits and a junk
    /// signature: enough to build a CSR whose key must be refused before its
    /// signature is even looked at (generating a real RSA-16384 key takes
    /// minutes).
    struct FakeRsaSigner {
        public_key: Vec<u8>,
        bits: usize,
    }

    impl FakeRsaSigner {
        fn new(bits: usize) -> Self {
            let mut modulus = vec![0xc5; bits / 8];
            modulus.insert(0, 0x00);
            let integer = crate::ca::issue::der_tlv(0x02, &modulus);
            let exponent = crate::ca::issue::der_tlv(0x02, &[0x01, 0x00, 0x01]);
            FakeRsaSigner {
                public_key: crate::ca::issue::der_tlv(0x30, &[integer, exponent].concat()),
                bits,
            }
        }
    }

    impl rcgen::PublicKeyData for FakeRsaSigner {
        fn der_bytes(&self) -> &[u8] {
            &self.public_key
        }

        fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
            &rcgen::PKCS_RSA_SHA256
        }
    }

    impl rcgen::SigningKey for FakeRsaSigner {
        fn sign(&self, _message: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
            Ok(vec![0x01; self.bits / 8])
        }
    }

    fn fake_rsa_csr(bits: usize) -> Vec<u8> {
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "east");
        params
            .serialize_request(&FakeRsaSigner::new(bits))
            .expect("csr")
            .der()
            .to_vec()
    }

    #[test]
    fn rejects_rsa16384_key_before_its_signature() {
        match verify_csr(&fake_rsa_csr(16384)) {
            Err(error @ CaError::UnsupportedKey { .. }) => {
                let message = error.to_string();
                assert!(message.contains("16384"), "{message}")
            }
            other => panic!("expected UnsupportedKey, got {other:?}"),
        }
        // The same construction with an acceptable size fails on the
        // signature, proving the key check is what rejected RSA-16384.
        assert!(matches!(
            verify_csr(&fake_rsa_csr(2048)),
            Err(CaError::CsrBadSignature { .. })
        ));
    }
}
