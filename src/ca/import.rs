//! Importing an existing root: checks that a certificate and key can serve
//! as the mesh root before trustplane signs anything with them.

use std::time::SystemTime;

use super::csr::public_key_info;
use super::probe::probe_ca_signature;
use super::verify::{check_valid_at, key_matches_certificate};
use super::{CaError, Certificate, PrivateKey, may_sign_certificates, require_ca};

/// Checks an existing root for import: one certificate, CA:true, may sign
/// certificates, key matches, valid at `now`. Errors name the failing check.
///
/// Errors: [`CaError::MalformedPem`], [`CaError::Unexpected`],
/// [`CaError::MalformedDer`], [`CaError::MalformedKey`] (certificate or key
/// does not parse),
/// [`CaError::NotACa`] (not a CA, no keyCertSign, pathLen 0, cannot sign),
/// [`CaError::UnsupportedKey`], [`CaError::KeyMismatch`],
/// [`CaError::NotValidNow`].
pub fn import_root(
    certificate_pem: &str,
    key_pem: &str,
    now: SystemTime,
) -> Result<(Certificate, PrivateKey), CaError> {
    let certificate = Certificate::from_pem(certificate_pem)?;
    let key = PrivateKey::from_pem(key_pem)?;
    {
        let parsed = certificate.parsed()?;
        if require_ca(&parsed)? == Some(0) {
            return Err(CaError::NotACa {
                subject: parsed.subject().to_string(),
                reason: "basicConstraints pathLenConstraint is 0, so it cannot sign cluster \
                         intermediates",
                source: None,
            });
        }
        if !may_sign_certificates(&parsed)? {
            return Err(CaError::NotACa {
                subject: parsed.subject().to_string(),
                reason: "keyUsage does not include keyCertSign",
                source: None,
            });
        }
        public_key_info(parsed.public_key())?;
    }
    if !key_matches_certificate(&certificate, &key)? {
        return Err(CaError::KeyMismatch);
    }
    check_valid_at(&certificate, now)?;
    // Prove that the key signs and that certificates issued under this root
    // chain to it (its subject must survive rcgen's re-encoding).
    probe_ca_signature(&certificate, &key, now).map_err(|error| CaError::NotACa {
        subject: certificate.subject().unwrap_or_default(),
        reason: "a test certificate signed with this root does not verify",
        source: Some(Box::new(error)),
    })?;
    Ok((certificate, key))
}

#[cfg(test)]
#[allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::ca::KeyAlgorithm;
    use crate::ca::issue::create_root;
    use crate::fixtures::{
        DAY, new_intermediate, openssl_rsa_root, openssl_self_signed, openssl_verify, profile,
        root_request, run_openssl, write_pem,
    };

    #[test]
    fn openssl_cross_check_rsa_root_chain() {
        let now = crate::clock::SystemClock.now();
        let directory = tempfile::tempdir().expect("tempdir");
        let path = directory.path();
        let (root, root_key) = rsa_root(path, now);
        let (intermediate, _) =
            new_intermediate(&profile("east", DAY, false), &root, &root_key, now);
        write_pem(path, "intermediate.pem", &[&intermediate]);
        let (ok, text) = openssl_verify(path, &["-CAfile", "root.pem", "intermediate.pem"]);
        assert!(ok, "{text}");
    }

    /// An openssl-made RSA-2048 root (PKCS#1 key) imported into trustplane;
    /// writes `root.pem` and `root-key.pem` into `directory`.
    fn rsa_root(directory: &std::path::Path, now: SystemTime) -> (Certificate, PrivateKey) {
        let (certificate, key) = openssl_rsa_root(directory);
        let certificate = std::fs::read_to_string(certificate).expect("read");
        let key = std::fs::read_to_string(key).expect("read");
        assert!(key.contains("BEGIN RSA PRIVATE KEY"));
        import_root(&certificate, &key, now.max(crate::clock::SystemClock.now()))
            .expect("import rsa root")
    }

    #[test]
    fn import_root_accepts_openssl_roots_in_every_key_format() {
        let now = crate::clock::SystemClock.now();
        let directory = tempfile::tempdir().expect("tempdir");
        let path = directory.path();
        // PKCS#1 RSA-2048.
        let (root, key) = rsa_root(path, now);
        assert_eq!((key.algorithm(), key.bits()), (KeyAlgorithm::Rsa, 2048));
        assert!(root.is_ca().expect("ca"));
        // PKCS#8 and SEC1 P-256.
        openssl_self_signed(
            path,
            &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"],
            "/O=Example Org/CN=ec root",
            &[
                "basicConstraints=critical,CA:TRUE",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
            "ec8.pem",
            "ec.pem",
        );
        run_openssl(path, &["ec", "-in", "ec8.pem", "-out", "ec1.pem"]);
        let certificate = std::fs::read_to_string(path.join("ec.pem")).expect("read");
        let pkcs8 = std::fs::read_to_string(path.join("ec8.pem")).expect("read");
        let sec1 = std::fs::read_to_string(path.join("ec1.pem")).expect("read");
        assert!(pkcs8.contains("BEGIN PRIVATE KEY") && sec1.contains("BEGIN EC PRIVATE KEY"));
        let (_, from_pkcs8) =
            import_root(&certificate, &pkcs8, crate::clock::SystemClock.now()).expect("pkcs8");
        let (_, from_sec1) =
            import_root(&certificate, &sec1, crate::clock::SystemClock.now()).expect("sec1");
        assert_eq!(
            from_pkcs8.public_key_der().expect("spki"),
            from_sec1.public_key_der().expect("spki")
        );
    }

    #[test]
    fn import_root_rejections_name_the_check() {
        let now = crate::clock::SystemClock.now();
        let directory = tempfile::tempdir().expect("tempdir");
        let path = directory.path();
        let (root, root_key) = create_root(&root_request("cluster.local"), now).expect("root");
        let (_, other_key) = create_root(&root_request("cluster.local"), now).expect("root");
        // A key that does not match.
        assert!(matches!(
            import_root(&root.to_pem(), &other_key.to_pkcs8_pem(), now),
            Err(CaError::KeyMismatch)
        ));
        // Not valid yet / expired.
        let error =
            import_root(&root.to_pem(), &root_key.to_pkcs8_pem(), now - DAY).expect_err("early");
        assert!(matches!(error, CaError::NotValidNow { .. }), "{error}");
        // A leaf is not a CA.
        openssl_self_signed(
            path,
            &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"],
            "/CN=leaf",
            &["basicConstraints=critical,CA:FALSE"],
            "leaf-key.pem",
            "leaf.pem",
        );
        let leaf = std::fs::read_to_string(path.join("leaf.pem")).expect("read");
        let leaf_key = std::fs::read_to_string(path.join("leaf-key.pem")).expect("read");
        let error = import_root(&leaf, &leaf_key, now).expect_err("leaf");
        assert!(
            matches!(&error, CaError::NotACa { reason, .. } if reason.contains("CA:true")),
            "{error}"
        );
        // A CA without keyCertSign.
        openssl_self_signed(
            path,
            &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"],
            "/CN=nosign",
            &[
                "basicConstraints=critical,CA:TRUE",
                "keyUsage=critical,digitalSignature",
            ],
            "nosign-key.pem",
            "nosign.pem",
        );
        let nosign = std::fs::read_to_string(path.join("nosign.pem")).expect("read");
        let nosign_key = std::fs::read_to_string(path.join("nosign-key.pem")).expect("read");
        let error = import_root(&nosign, &nosign_key, now).expect_err("nosign");
        assert!(
            matches!(&error, CaError::NotACa { reason, .. } if reason.contains("keyCertSign")),
            "{error}"
        );
        // Two certificates where one is expected.
        let two = format!("{}{}", root.to_pem(), root.to_pem());
        assert!(matches!(
            import_root(&two, &root_key.to_pkcs8_pem(), now),
            Err(CaError::Unexpected { .. })
        ));
        // The key PEM in place of the certificate.
        assert!(matches!(
            import_root(&root_key.to_pkcs8_pem(), &root_key.to_pkcs8_pem(), now),
            Err(CaError::Unexpected { .. })
        ));
        // And the happy path for our own root.
        assert!(import_root(&root.to_pem(), &root_key.to_pkcs8_pem(), now).is_ok());
    }
}
