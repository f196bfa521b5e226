//! The trust bundle: an ordered, versioned set of root certificates for one
//! trust domain, in Istio's `root-cert.pem` form and as a SPIFFE bundle.
//! Pure.
//!
//! Byte stability: a root keeps exactly the same PEM bytes in every version;
//! new roots are appended at the end and old ones removed from the front,
//! never reordered, because istiod (≤ 1.29) accepts a changed
//! `root-cert.pem` only when the old bytes are a substring of the new or the
//! other way round.
//!
//! Re-announcement: a rotation's sign-new phase must change the bytes of
//! `root-cert.pem` without changing the set of roots, because istiod pushes
//! roots to proxies only when those bytes change. The bundle then carries
//! its newest root's PEM block a second time at the end
//! ([`TrustBundle::with_newest_repeated`]): this is what Istio's own
//! multi-root rotation test does, so istiod's substring rule is known to
//! accept it in both directions ({A,B} ⊂ {A,B,B} and {B} ⊂ {A,B,B}); every
//! X.509 consumer treats a repeated root as one (Go's `CertPool`, BoringSSL's
//! store and rustls all de-duplicate), and unlike a whitespace or comment
//! change it survives tooling that trims or re-flows PEM text. The SPIFFE
//! form lists each root once (its `spiffe_sequence` changes anyway).
//!
//! Owns the bundle's forms; does not decide when roots change (that is
//! `rotation`) nor where bundles are kept (that is `store`).

mod jwks;

use std::time::Duration;

pub use jwks::{SpiffeBundleContents, read_spiffe_bundle_json};

use crate::ca::Certificate;

/// A versioned set of trusted roots for one trust domain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrustBundle {
    trust_domain: String,
    version: u64,
    roots: Vec<Certificate>,
    newest_repeated: bool,
}

/// Errors from bundle operations.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// A bundle must hold at least one root.
    #[error("a trust bundle must contain at least one root")]
    Empty,
    /// The root is already in the bundle.
    #[error("root {serial} is already in the bundle")]
    DuplicateRoot {
        /// Hex serial of the duplicate.
        serial: String,
    },
    /// A certificate that cannot be put in a bundle: not a CA, or a key
    /// that the SPIFFE form cannot express (only EC P-256, EC P-384 and RSA).
    #[error("invalid root: {0}")]
    InvalidRoot(#[source] crate::ca::CaError),
    /// Appending to a bundle that repeats its newest root would break
    /// istiod's substring rule.
    #[error(
        "a root cannot be appended while the newest root is repeated; publish the plain bundle first"
    )]
    Repeated,
    /// The version cannot be incremented any further.
    #[error("bundle version {0} cannot be incremented")]
    VersionExhausted(u64),
    /// A SPIFFE bundle document that does not follow the format.
    #[error("malformed SPIFFE bundle: {problem}")]
    MalformedSpiffe {
        /// What is wrong, and where.
        problem: String,
    },
}

impl TrustBundle {
    /// A bundle with the given roots (oldest first) and version.
    ///
    /// Errors: [`BundleError::Empty`] when `roots` is empty,
    /// [`BundleError::DuplicateRoot`] when a certificate appears twice,
    /// [`BundleError::InvalidRoot`] when a root is not a CA or has a key the
    /// SPIFFE form cannot express.
    pub fn new(
        trust_domain: &str,
        version: u64,
        roots: Vec<Certificate>,
    ) -> Result<Self, BundleError> {
        if roots.is_empty() {
            return Err(BundleError::Empty);
        }
        for (index, root) in roots.iter().enumerate() {
            check_root(root)?;
            if roots[..index].contains(root) {
                return Err(duplicate(root));
            }
        }
        Ok(TrustBundle {
            trust_domain: trust_domain.to_string(),
            version,
            roots,
            newest_repeated: false,
        })
    }

    /// The same bundle, with its newest root's PEM block repeated at the end
    /// of [`Self::root_cert_pem`] when `repeated` (how a stored bundle is
    /// rebuilt; see the module docs).
    pub fn newest_repeated(mut self, repeated: bool) -> Self {
        self.newest_repeated = repeated;
        self
    }

    /// Whether [`Self::root_cert_pem`] repeats the newest root.
    pub fn is_newest_repeated(&self) -> bool {
        self.newest_repeated
    }

    /// The trust domain.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The version (monotonic).
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The roots, oldest first.
    pub fn roots(&self) -> &[Certificate] {
        &self.roots
    }

    /// Istio's `root-cert.pem`: each root's PEM block, in order (and the
    /// newest one again when it is repeated).
    pub fn root_cert_pem(&self) -> String {
        let mut pem: String = self.roots.iter().map(Certificate::to_pem).collect();
        if self.newest_repeated
            && let Some(newest) = self.roots.last()
        {
            pem.push_str(&newest.to_pem());
        }
        pem
    }

    /// SHA-256 of [`Self::root_cert_pem`], lowercase hex.
    pub fn digest_hex(&self) -> String {
        let digest = ring::digest::digest(&ring::digest::SHA256, self.root_cert_pem().as_bytes());
        hex::encode(digest.as_ref())
    }

    /// Whether `certificate` is one of the roots.
    pub fn contains(&self, certificate: &Certificate) -> bool {
        self.roots.contains(certificate)
    }

    /// The next version of this bundle with `roots`.
    fn successor(
        &self,
        roots: Vec<Certificate>,
        newest_repeated: bool,
    ) -> Result<TrustBundle, BundleError> {
        if roots.is_empty() {
            return Err(BundleError::Empty);
        }
        Ok(TrustBundle {
            trust_domain: self.trust_domain.clone(),
            version: self
                .version
                .checked_add(1)
                .ok_or(BundleError::VersionExhausted(self.version))?,
            roots,
            newest_repeated,
        })
    }

    /// The next version with `root` appended at the end; the other roots
    /// keep their order and bytes.
    ///
    /// Errors: [`BundleError::DuplicateRoot`] when `root` is already in the
    /// bundle, [`BundleError::InvalidRoot`] as for [`Self::new`],
    /// [`BundleError::VersionExhausted`].
    pub fn with_appended(&self, root: Certificate) -> Result<TrustBundle, BundleError> {
        check_root(&root)?;
        if self.contains(&root) {
            return Err(duplicate(&root));
        }
        if self.newest_repeated {
            return Err(BundleError::Repeated);
        }
        let mut roots = self.roots.clone();
        roots.push(root);
        self.successor(roots, false)
    }

    /// The next version with the same roots, the newest one repeated or not
    /// at the end of `root-cert.pem` (see the module docs). Either way the
    /// old bytes are a substring of the new or the other way round.
    ///
    /// Errors: [`BundleError::VersionExhausted`].
    pub fn with_newest_repeated(&self, repeated: bool) -> Result<TrustBundle, BundleError> {
        self.successor(self.roots.clone(), repeated)
    }

    /// The next version without the newest root (undoing an append); the
    /// other roots keep their order and bytes, and nothing is repeated.
    ///
    /// Errors: [`BundleError::Empty`] when it would be empty,
    /// [`BundleError::VersionExhausted`].
    pub fn with_newest_removed(&self) -> Result<TrustBundle, BundleError> {
        let rest = self.roots.split_last().map_or(&[][..], |(_, rest)| rest);
        self.successor(rest.to_vec(), false)
    }

    /// The next version without the oldest root; the other roots keep their
    /// order and bytes.
    ///
    /// Errors: [`BundleError::Empty`] when it would be empty,
    /// [`BundleError::VersionExhausted`].
    pub fn with_oldest_removed(&self) -> Result<TrustBundle, BundleError> {
        let rest = self.roots.split_first().map_or(&[][..], |(_, rest)| rest);
        self.successor(rest.to_vec(), false)
    }

    /// The SPIFFE bundle (JWKS): one key per root with `use: x509-svid` and
    /// one `x5c`, `spiffe_sequence` = version, `spiffe_refresh_hint` in
    /// seconds (rounded down).
    ///
    /// EC roots become `kty: EC` keys (`crv` P-256 or P-384, `x`, `y`), RSA
    /// roots `kty: RSA` keys (`n`, `e`), all base64url without padding;
    /// `x5c` holds the DER certificate in standard base64.
    ///
    /// Errors: [`BundleError::InvalidRoot`] for a key the format cannot
    /// express (not possible for a bundle built by this module).
    pub fn spiffe_bundle_json(&self, refresh_hint: Duration) -> Result<String, BundleError> {
        jwks::spiffe_bundle_json(&self.roots, self.version, refresh_hint)
    }
}

/// A root must be a CA and have a key the SPIFFE form can express.
fn check_root(root: &Certificate) -> Result<(), BundleError> {
    root.require_ca().map_err(BundleError::InvalidRoot)?;
    jwks::json_web_key(root)?;
    Ok(())
}

fn duplicate(root: &Certificate) -> BundleError {
    match root.serial_hex() {
        Ok(serial) => BundleError::DuplicateRoot { serial },
        Err(error) => BundleError::InvalidRoot(error),
    }
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
    use rcgen::{CertificateParams, KeyPair, SignatureAlgorithm};

    use super::*;
    use crate::fixtures::{ca_params, openssl_rsa_root, run_openssl};

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    const TRUST_DOMAIN: &str = "cluster.local";

    /// A self-signed CA generated with rcgen, and its key pair.
    fn ec_root(
        name: &str,
        algorithm: &'static SignatureAlgorithm,
    ) -> Result<(Certificate, KeyPair), Box<dyn std::error::Error>> {
        let key = KeyPair::generate_for(algorithm)?;
        let certificate = ca_params(name).self_signed(&key)?;
        Ok((Certificate::from_der(certificate.der().to_vec())?, key))
    }

    fn p256_root(name: &str) -> Result<Certificate, Box<dyn std::error::Error>> {
        Ok(ec_root(name, &rcgen::PKCS_ECDSA_P256_SHA256)?.0)
    }

    /// A self-signed RSA CA generated with OpenSSL, and its modulus in hex
    /// as OpenSSL prints it.
    fn rsa_root() -> Result<(Certificate, String), Box<dyn std::error::Error>> {
        let directory = tempfile::tempdir()?;
        let (certificate, _) = openssl_rsa_root(directory.path());
        let modulus = run_openssl(
            directory.path(),
            &["x509", "-in", "root.pem", "-noout", "-modulus"],
        );
        let modulus = String::from_utf8(modulus.stdout)?;
        let modulus = modulus
            .trim()
            .strip_prefix("Modulus=")
            .ok_or("no Modulus= line")?
            .to_string();
        let pem = std::fs::read_to_string(certificate)?;
        Ok((Certificate::from_pem(&pem)?, modulus))
    }

    fn bundle_json(bundle: &TrustBundle) -> Result<serde_json::Value, Box<dyn std::error::Error>> {
        let text = bundle.spiffe_bundle_json(Duration::from_secs(300))?;
        Ok(serde_json::from_str(&text)?)
    }

    fn field<'a>(
        value: &'a serde_json::Value,
        name: &str,
    ) -> Result<&'a str, Box<dyn std::error::Error>> {
        Ok(value[name]
            .as_str()
            .ok_or(format!("{name} missing in {value}"))?)
    }

    #[test]
    fn root_cert_pem_is_each_root_pem_in_order() -> TestResult {
        let (first, second) = (p256_root("first")?, p256_root("second")?);
        let bundle = TrustBundle::new(TRUST_DOMAIN, 1, vec![first.clone(), second.clone()])?;
        assert_eq!(
            bundle.root_cert_pem(),
            format!("{}{}", first.to_pem(), second.to_pem())
        );
        assert_eq!(
            Certificate::parse_pem_chain(&bundle.root_cert_pem())?,
            [first, second]
        );
        Ok(())
    }

    #[test]
    fn a_root_keeps_the_same_bytes_in_every_version() -> TestResult {
        let (old, new) = (p256_root("old")?, p256_root("new")?);
        let original = TrustBundle::new(TRUST_DOMAIN, 1, vec![old.clone()])?;
        let both = original.with_appended(new.clone())?;
        let rebuilt = TrustBundle::new(TRUST_DOMAIN, 7, vec![old.clone()])?;
        assert_eq!(original.root_cert_pem(), rebuilt.root_cert_pem());
        assert!(both.root_cert_pem().starts_with(&old.to_pem()));
        assert!(both.with_oldest_removed()?.root_cert_pem() == new.to_pem());
        Ok(())
    }

    #[test]
    fn rotation_steps_satisfy_istiods_substring_rule() -> TestResult {
        let (a, b) = (p256_root("root A")?, p256_root("root B")?);
        let stable = TrustBundle::new(TRUST_DOMAIN, 1, vec![a])?;
        let trust_new = stable.with_appended(b)?;
        let retire_old = trust_new.with_oldest_removed()?;
        // istiod (<= 1.29) takes a new root-cert.pem only when one is a byte
        // substring of the other.
        for (before, after) in [(&stable, &trust_new), (&trust_new, &retire_old)] {
            let (before, after) = (before.root_cert_pem(), after.root_cert_pem());
            assert!(
                after.contains(&before) || before.contains(&after),
                "not substrings:\n{before}\n{after}"
            );
        }
        assert_ne!(stable.root_cert_pem(), retire_old.root_cert_pem());
        Ok(())
    }

    /// istiod (<= 1.29) takes a new root-cert.pem only when one is a byte
    /// substring of the other; it pushes it only when the bytes change.
    fn assert_each_change_is_accepted_by_istio(bundles: &[&TrustBundle]) {
        for pair in bundles.windows(2) {
            let (before, after) = (pair[0].root_cert_pem(), pair[1].root_cert_pem());
            assert_ne!(before, after, "v{} keeps the bytes", pair[1].version());
            assert!(
                after.contains(&before) || before.contains(&after),
                "v{} to v{} breaks the substring rule:\n{before}\n{after}",
                pair[0].version(),
                pair[1].version()
            );
        }
    }

    #[test]
    fn repeating_the_newest_root_changes_the_bytes_but_not_the_roots() -> TestResult {
        let (a, b) = (p256_root("root A")?, p256_root("root B")?);
        let plain = TrustBundle::new(TRUST_DOMAIN, 2, vec![a.clone(), b.clone()])?;
        let repeated = plain.with_newest_repeated(true)?;
        assert!(repeated.is_newest_repeated());
        assert_eq!(repeated.version(), 3);
        assert_eq!(repeated.roots(), plain.roots());
        assert_eq!(
            repeated.root_cert_pem(),
            format!("{}{}{}", a.to_pem(), b.to_pem(), b.to_pem())
        );
        assert_ne!(repeated.digest_hex(), plain.digest_hex());
        // Any PEM reader sees the repeated root, and nothing else, again.
        assert_eq!(
            Certificate::parse_pem_chain(&repeated.root_cert_pem())?,
            [a.clone(), b.clone(), b.clone()]
        );
        // The SPIFFE form lists each root once.
        let keys = bundle_json(&repeated)?["keys"]
            .as_array()
            .ok_or("keys is not an array")?
            .len();
        assert_eq!(keys, 2);

        let back = repeated.with_newest_repeated(false)?;
        assert!(!back.is_newest_repeated());
        assert_eq!(back.version(), 4);
        assert_eq!(back.roots(), plain.roots());
        assert_eq!(back.root_cert_pem(), plain.root_cert_pem());

        // Rebuilding a stored bundle gives the same bytes.
        let rebuilt = TrustBundle::new(TRUST_DOMAIN, 3, vec![a, b])?.newest_repeated(true);
        assert_eq!(rebuilt, repeated);
        assert_eq!(rebuilt.root_cert_pem(), repeated.root_cert_pem());
        Ok(())
    }

    #[test]
    fn a_root_cannot_be_appended_while_the_newest_is_repeated() -> TestResult {
        let bundle = TrustBundle::new(TRUST_DOMAIN, 1, vec![p256_root("a")?])?
            .with_appended(p256_root("b")?)?
            .with_newest_repeated(true)?;
        let result = bundle.with_appended(p256_root("c")?);
        assert!(matches!(result, Err(BundleError::Repeated)), "{result:?}");
        // The plain bundle takes it.
        let plain = bundle.with_newest_repeated(false)?;
        assert_eq!(plain.with_appended(p256_root("c")?)?.roots().len(), 3);
        Ok(())
    }

    #[test]
    fn removing_the_newest_root_undoes_an_append() -> TestResult {
        let (a, b) = (p256_root("root A")?, p256_root("root B")?);
        let stable = TrustBundle::new(TRUST_DOMAIN, 1, vec![a.clone()])?;
        let both = stable.with_appended(b)?;
        let undone = both.with_newest_removed()?;
        assert_eq!(undone.roots(), std::slice::from_ref(&a));
        assert_eq!(undone.version(), 3);
        assert_eq!(undone.root_cert_pem(), stable.root_cert_pem());
        // From the repeated form too, and the result does not repeat.
        let undone = both.with_newest_repeated(true)?.with_newest_removed()?;
        assert_eq!(undone.roots(), [a]);
        assert!(!undone.is_newest_repeated());
        assert_eq!(undone.root_cert_pem(), stable.root_cert_pem());
        // A single root cannot be removed.
        let result = stable.with_newest_removed();
        assert!(matches!(result, Err(BundleError::Empty)), "{result:?}");
        Ok(())
    }

    #[test]
    fn removing_the_oldest_root_drops_the_repetition_too() -> TestResult {
        let (a, b) = (p256_root("root A")?, p256_root("root B")?);
        let repeated =
            TrustBundle::new(TRUST_DOMAIN, 1, vec![a, b.clone()])?.with_newest_repeated(true)?;
        let retired = repeated.with_oldest_removed()?;
        assert_eq!(retired.roots(), std::slice::from_ref(&b));
        assert!(!retired.is_newest_repeated());
        assert_eq!(retired.root_cert_pem(), b.to_pem());
        Ok(())
    }

    #[test]
    fn a_whole_rotation_satisfies_istios_substring_rule() -> TestResult {
        let (a, b) = (p256_root("root A")?, p256_root("root B")?);
        let stable = TrustBundle::new(TRUST_DOMAIN, 1, vec![a])?;
        let trust_new = stable.with_appended(b)?;
        let sign_new = trust_new.with_newest_repeated(true)?;
        let retire_old = sign_new.with_oldest_removed()?;
        assert_each_change_is_accepted_by_istio(&[&stable, &trust_new, &sign_new, &retire_old]);
        Ok(())
    }

    #[test]
    fn aborting_a_rotation_satisfies_istios_substring_rule() -> TestResult {
        let (a, b) = (p256_root("root A")?, p256_root("root B")?);
        let stable = TrustBundle::new(TRUST_DOMAIN, 1, vec![a])?;
        let sign_new = stable.with_appended(b)?.with_newest_repeated(true)?;
        let trust_new_again = sign_new.with_newest_repeated(false)?;
        let stable_again = trust_new_again.with_newest_removed()?;
        assert_each_change_is_accepted_by_istio(&[&sign_new, &trust_new_again, &stable_again]);
        assert_eq!(stable_again.root_cert_pem(), stable.root_cert_pem());
        Ok(())
    }

    #[test]
    fn appended_roots_go_last_and_the_order_never_changes() -> TestResult {
        let roots = [p256_root("1")?, p256_root("2")?, p256_root("3")?];
        let bundle = TrustBundle::new(TRUST_DOMAIN, 1, vec![roots[0].clone()])?
            .with_appended(roots[1].clone())?
            .with_appended(roots[2].clone())?;
        assert_eq!(bundle.roots(), roots);
        assert_eq!(bundle.with_oldest_removed()?.roots(), &roots[1..]);
        Ok(())
    }

    #[test]
    fn every_change_increments_the_version_by_one() -> TestResult {
        let bundle = TrustBundle::new(TRUST_DOMAIN, 41, vec![p256_root("a")?])?;
        assert_eq!(bundle.version(), 41);
        let appended = bundle.with_appended(p256_root("b")?)?;
        assert_eq!(appended.version(), 42);
        let removed = appended.with_oldest_removed()?;
        assert_eq!(removed.version(), 43);
        assert_eq!(removed.trust_domain(), TRUST_DOMAIN);
        Ok(())
    }

    #[test]
    fn the_version_never_wraps() -> TestResult {
        let bundle = TrustBundle::new(TRUST_DOMAIN, u64::MAX, vec![p256_root("a")?])?;
        let result = bundle.with_appended(p256_root("b")?);
        assert!(
            matches!(result, Err(BundleError::VersionExhausted(u64::MAX))),
            "{result:?}"
        );
        Ok(())
    }

    #[test]
    fn a_duplicate_root_is_rejected() -> TestResult {
        let root = p256_root("a")?;
        let serial = root.serial_hex()?;
        let result = TrustBundle::new(TRUST_DOMAIN, 1, vec![root.clone(), root.clone()]);
        assert!(
            matches!(&result, Err(BundleError::DuplicateRoot { serial: found }) if *found == serial),
            "{result:?}"
        );
        let bundle = TrustBundle::new(TRUST_DOMAIN, 1, vec![root.clone()])?;
        let result = bundle.with_appended(root);
        assert!(
            matches!(result, Err(BundleError::DuplicateRoot { .. })),
            "{result:?}"
        );
        Ok(())
    }

    #[test]
    fn an_empty_bundle_is_rejected() -> TestResult {
        let result = TrustBundle::new(TRUST_DOMAIN, 1, Vec::new());
        assert!(matches!(result, Err(BundleError::Empty)), "{result:?}");
        let single = TrustBundle::new(TRUST_DOMAIN, 1, vec![p256_root("only")?])?;
        let result = single.with_oldest_removed();
        assert!(matches!(result, Err(BundleError::Empty)), "{result:?}");
        Ok(())
    }

    #[test]
    fn a_certificate_that_is_not_a_ca_is_rejected() -> TestResult {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let leaf = CertificateParams::new(vec!["leaf.example".to_string()])?.self_signed(&key)?;
        let leaf = Certificate::from_der(leaf.der().to_vec())?;
        let result = TrustBundle::new(TRUST_DOMAIN, 1, vec![leaf]);
        assert!(
            matches!(
                result,
                Err(BundleError::InvalidRoot(crate::ca::CaError::NotACa { .. }))
            ),
            "{result:?}"
        );
        Ok(())
    }

    #[test]
    fn the_digest_is_sha256_of_root_cert_pem_and_changes_with_content() -> TestResult {
        let (a, b) = (p256_root("a")?, p256_root("b")?);
        let one = TrustBundle::new(TRUST_DOMAIN, 1, vec![a.clone()])?;
        let two = one.with_appended(b)?;

        // Cross-checked with OpenSSL over the exact bytes.
        let directory = tempfile::tempdir()?;
        std::fs::write(directory.path().join("root-cert.pem"), one.root_cert_pem())?;
        let openssl_digest = run_openssl(
            directory.path(),
            &["dgst", "-sha256", "-r", "root-cert.pem"],
        );
        let openssl_digest = String::from_utf8(openssl_digest.stdout)?;
        assert_eq!(
            openssl_digest.split_whitespace().next(),
            Some(one.digest_hex().as_str())
        );

        assert_eq!(one.digest_hex().len(), 64);
        assert_ne!(one.digest_hex(), two.digest_hex());
        // Content, not version, determines the digest.
        let same_content = TrustBundle::new(TRUST_DOMAIN, 9, vec![a])?;
        assert_eq!(one.digest_hex(), same_content.digest_hex());
        Ok(())
    }

    #[test]
    fn spiffe_bundle_has_sequence_refresh_hint_and_one_key_per_root() -> TestResult {
        let bundle = TrustBundle::new(TRUST_DOMAIN, 5, vec![p256_root("a")?])?
            .with_appended(p256_root("b")?)?;
        let json = bundle_json(&bundle)?;
        assert_eq!(json["spiffe_sequence"], 6);
        assert_eq!(json["spiffe_refresh_hint"], 300);
        let keys = json["keys"].as_array().ok_or("keys is not an array")?;
        assert_eq!(keys.len(), 2);
        for (key, root) in keys.iter().zip(bundle.roots()) {
            assert_eq!(field(key, "use")?, "x509-svid");
            let x5c = key["x5c"].as_array().ok_or("x5c is not an array")?;
            assert_eq!(x5c.len(), 1);
            let der = STANDARD.decode(x5c[0].as_str().ok_or("x5c[0] is not a string")?)?;
            assert_eq!(der, root.der());
        }
        Ok(())
    }

    fn assert_ec_key(
        algorithm: &'static SignatureAlgorithm,
        curve: &str,
        coordinate_length: usize,
    ) -> TestResult {
        let (root, key_pair) = ec_root("ec root", algorithm)?;
        let bundle = TrustBundle::new(TRUST_DOMAIN, 1, vec![root])?;
        let json = bundle_json(&bundle)?;
        let key = &json["keys"][0];
        assert_eq!(field(key, "kty")?, "EC");
        assert_eq!(field(key, "crv")?, curve);
        assert!(key.get("n").is_none() && key.get("e").is_none(), "{key}");
        // rcgen's raw public key is the uncompressed point 0x04 || x || y.
        let point = key_pair.public_key_raw();
        assert_eq!(point.len(), 1 + 2 * coordinate_length);
        let x = URL_SAFE_NO_PAD.decode(field(key, "x")?)?;
        let y = URL_SAFE_NO_PAD.decode(field(key, "y")?)?;
        assert_eq!(x, point[1..=coordinate_length]);
        assert_eq!(y, point[1 + coordinate_length..]);
        Ok(())
    }

    #[test]
    fn spiffe_bundle_expresses_a_p256_root_as_an_ec_key() -> TestResult {
        assert_ec_key(&rcgen::PKCS_ECDSA_P256_SHA256, "P-256", 32)
    }

    #[test]
    fn spiffe_bundle_expresses_a_p384_root_as_an_ec_key() -> TestResult {
        assert_ec_key(&rcgen::PKCS_ECDSA_P384_SHA384, "P-384", 48)
    }

    #[test]
    fn a_written_spiffe_bundle_reads_back_as_the_same_roots() -> TestResult {
        let (rsa, _) = rsa_root()?;
        let p384 = ec_root("p384", &rcgen::PKCS_ECDSA_P384_SHA384)?.0;
        let bundle = TrustBundle::new(TRUST_DOMAIN, 7, vec![p256_root("a")?, p384, rsa])?
            .newest_repeated(true);
        let read = read_spiffe_bundle_json(&bundle.spiffe_bundle_json(Duration::from_secs(300))?)?;
        assert_eq!(read.roots, bundle.roots());
        assert_eq!(read.sequence, Some(7));
        assert_eq!(read.refresh_hint, Some(300));
        Ok(())
    }

    #[test]
    fn a_spiffe_key_that_is_not_its_certificates_key_is_refused() -> TestResult {
        let (a, b) = (p256_root("a")?, p256_root("b")?);
        let mut json = bundle_json(&TrustBundle::new(TRUST_DOMAIN, 1, vec![a])?)?;
        let other = bundle_json(&TrustBundle::new(TRUST_DOMAIN, 1, vec![b])?)?;
        json["keys"][0]["x"] = other["keys"][0]["x"].clone();
        let result = read_spiffe_bundle_json(&json.to_string());
        assert!(
            matches!(&result, Err(BundleError::MalformedSpiffe { problem })
                if problem == "keys[0]: the key parameters are not those of its x5c certificate"),
            "{result:?}"
        );
        Ok(())
    }

    #[test]
    fn a_spiffe_x509_key_needs_exactly_one_certificate_and_other_uses_are_skipped() -> TestResult {
        let root = p256_root("a")?;
        let mut json = bundle_json(&TrustBundle::new(TRUST_DOMAIN, 1, vec![root.clone()])?)?;
        let jwt_key = serde_json::json!({"use": "jwt-svid", "kty": "EC", "kid": "k"});
        json["keys"]
            .as_array_mut()
            .ok_or("keys is not an array")?
            .insert(0, jwt_key);
        assert_eq!(read_spiffe_bundle_json(&json.to_string())?.roots, [root]);

        let x5c = json["keys"][1]["x5c"][0].clone();
        json["keys"][1]["x5c"] = serde_json::json!([x5c.clone(), x5c]);
        let result = read_spiffe_bundle_json(&json.to_string());
        assert!(
            matches!(&result, Err(BundleError::MalformedSpiffe { problem })
                if problem == "keys[1]: an x509-svid key needs exactly one x5c certificate"),
            "{result:?}"
        );
        Ok(())
    }

    #[test]
    fn spiffe_bundle_expresses_an_rsa_root_as_an_rsa_key() -> TestResult {
        let (root, modulus_hex) = rsa_root()?;
        let bundle = TrustBundle::new(TRUST_DOMAIN, 1, vec![root])?;
        let json = bundle_json(&bundle)?;
        let key = &json["keys"][0];
        assert_eq!(field(key, "kty")?, "RSA");
        assert!(key.get("crv").is_none() && key.get("x").is_none(), "{key}");
        let modulus = URL_SAFE_NO_PAD.decode(field(key, "n")?)?;
        assert_eq!(
            modulus.len(),
            256,
            "no leading zero octet for a 2048-bit modulus"
        );
        assert_eq!(hex::encode_upper(&modulus), modulus_hex);
        assert_eq!(field(key, "e")?, "AQAB");
        Ok(())
    }
}
