//! Sealing key material at rest: AES-256-GCM (ring) under a 256-bit
//! key-encryption key (KEK) that lives outside the store (a 0600 file or the
//! `TRUSTPLANE_KEK` environment variable).
//!
//! A sealed value is `b"tpk1"` (format and version), a random 96-bit nonce,
//! then the ciphertext and its 128-bit tag. The secret's name is the
//! associated data, so a sealed value only opens under the name it was
//! sealed for.

use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

use super::SignerError;
use crate::files;

/// The environment variable that may hold the KEK (base64).
pub const KEK_ENV: &str = "TRUSTPLANE_KEK";

/// Format and version of a sealed value; a new format gets a new prefix.
const SEALED_PREFIX: &[u8; 4] = b"tpk1";
/// AES-GCM tag length.
const TAG_LEN: usize = 16;
/// Bytes of a KEK.
const KEK_LEN: usize = 32;

/// What a KEK looks like and how to get one, for every error about its form.
const KEK_HELP: &str = "a key-encryption key is 32 random bytes in standard base64 \
    (44 characters ending in '='); `trustplane init` creates one, or make one with \
    `head -c 32 /dev/urandom | base64`";

/// A 256-bit key-encryption key; wiped on drop, `Debug` prints `[redacted]`.
/// Cloning copies it into another wiped-on-drop buffer (the server keeps one
/// to seal push-mode kubeconfigs).
#[derive(Clone)]
pub struct Kek(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for Kek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Kek([redacted])")
    }
}

fn random_failed() -> SignerError {
    SignerError::Kek("the system random number generator failed".to_string())
}

impl Kek {
    /// A new random KEK. Errors: [`SignerError::Kek`] if the system random
    /// number generator fails.
    pub fn generate() -> Result<Kek, SignerError> {
        let mut bytes = Zeroizing::new([0u8; KEK_LEN]);
        SystemRandom::new()
            .fill(&mut bytes[..])
            .map_err(|_| random_failed())?;
        Ok(Kek(bytes))
    }

    /// Parses the text form (standard base64 of 32 bytes, surrounding
    /// whitespace ignored). Errors: [`SignerError::Kek`] saying what a KEK
    /// looks like; the message never contains the text.
    pub fn from_text(text: &str) -> Result<Kek, SignerError> {
        let not_a_kek = |what: &str| SignerError::Kek(format!("the value is {what}; {KEK_HELP}"));
        let text = text.trim();
        // Longer text is not a KEK; shorter text decodes into a fixed buffer
        // that is wiped, never into an unwiped allocation.
        if text.len() > 64 {
            return Err(not_a_kek("not 32 bytes of base64"));
        }
        let mut decoded = Zeroizing::new([0u8; 48]);
        let length = STANDARD
            .decode_slice(text, &mut decoded[..])
            .map_err(|_| not_a_kek("not valid base64"))?;
        if length != KEK_LEN {
            return Err(not_a_kek("not 32 bytes of base64"));
        }
        let mut bytes = Zeroizing::new([0u8; KEK_LEN]);
        bytes.copy_from_slice(&decoded[..KEK_LEN]);
        Ok(Kek(bytes))
    }

    /// The text form (base64), wiped on drop.
    pub fn to_text(&self) -> Zeroizing<String> {
        Zeroizing::new(STANDARD.encode(&self.0[..]))
    }

    /// Loads the KEK from `file` if given, else from `env_value` (the value
    /// of [`KEK_ENV`], read by the caller). Errors say how to provide one:
    /// [`SignerError::Kek`] when neither is given, when the file is
    /// accessible by group or others, or when the value is not a KEK;
    /// [`SignerError::Io`] when the file cannot be read.
    pub fn load(file: Option<&Path>, env_value: Option<&str>) -> Result<Kek, SignerError> {
        if let Some(path) = file {
            return Kek::load_file(path);
        }
        match env_value {
            Some(value) => Kek::from_text(value).map_err(|error| match error {
                SignerError::Kek(message) => SignerError::Kek(format!("{KEK_ENV}: {message}")),
                other => other,
            }),
            None => Err(SignerError::Kek(format!(
                "none given: pass --kek-file <file> or set {KEK_ENV} (`trustplane init` creates one)"
            ))),
        }
    }

    fn load_file(path: &Path) -> Result<Kek, SignerError> {
        let text = crate::files::read_private(path).map_err(|error| match error {
            crate::files::PrivateFileError::File(error) => SignerError::Io {
                path: error.path.display().to_string(),
                source: error.source,
            },
            too_open => SignerError::Kek(too_open.to_string()),
        })?;
        Kek::from_text(&text).map_err(|error| match error {
            SignerError::Kek(message) => SignerError::Kek(format!("{}: {message}", path.display())),
            other => other,
        })
    }

    /// Writes the text form to a new file created with mode 0600 (fails if
    /// the file exists), and syncs it to disk. Errors: [`SignerError::Io`].
    pub fn write_new_file(&self, path: &Path) -> Result<(), SignerError> {
        let text = self.to_text();
        // Room for the newline up front: a reallocation could leave an
        // unwiped copy of the key text behind.
        let mut contents = Zeroizing::new(String::with_capacity(text.len() + 1));
        contents.push_str(&text);
        contents.push('\n');
        files::write_new(path, contents.as_bytes(), files::PRIVATE_MODE)?;
        Ok(files::sync_directory(files::parent_directory(path))?)
    }

    /// A MAC key derived from this KEK with HKDF-SHA256 for one purpose,
    /// named by `label` (distinct labels give independent keys, and none of
    /// them is the sealing key). Used to authenticate store records and the
    /// audit chain's head, so that whoever can write the store but has no
    /// KEK cannot forge them.
    pub fn derive_mac_key(&self, label: &'static [u8]) -> ring::hmac::Key {
        /// Fixed salt: the KEK is already uniformly random.
        const SALT: &[u8] = b"trustplane kek-derived keys v1";
        let labels = [label];
        let pseudo_random_key =
            ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, SALT).extract(&self.0[..]);
        let derived = pseudo_random_key.expand(&labels, ring::hmac::HMAC_SHA256);
        match derived {
            Ok(okm) => ring::hmac::Key::from(okm),
            // Fails only for an output longer than 255 × 32 bytes (HMAC-SHA256
            // asks for 32), so never; HMAC(KEK, label) is an equally sound
            // derivation and keeps this infallible.
            Err(ring::error::Unspecified) => {
                let fallback = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &self.0[..]);
                let tag = ring::hmac::sign(&fallback, label);
                ring::hmac::Key::new(ring::hmac::HMAC_SHA256, tag.as_ref())
            }
        }
    }

    fn aead_key(&self) -> Result<LessSafeKey, SignerError> {
        let key = UnboundKey::new(&AES_256_GCM, &self.0[..])
            .map_err(|_| SignerError::Kek("not usable as an AES-256 key".to_string()))?;
        Ok(LessSafeKey::new(key))
    }
}

/// Encrypts `plaintext`; `name` is bound as associated data so a sealed
/// value cannot be moved to another slot. Errors: [`SignerError::Kek`] if
/// the random number generator fails.
pub fn seal(kek: &Kek, name: &str, plaintext: &[u8]) -> Result<Vec<u8>, SignerError> {
    let mut nonce = [0u8; NONCE_LEN];
    SystemRandom::new()
        .fill(&mut nonce)
        .map_err(|_| random_failed())?;
    let header = SEALED_PREFIX.len() + NONCE_LEN;
    // Sized up front so the buffer never reallocates (which would leave a
    // copy of the plaintext behind), and wiped if sealing fails midway.
    let mut sealed = Zeroizing::new(Vec::with_capacity(header + plaintext.len() + TAG_LEN));
    sealed.extend_from_slice(SEALED_PREFIX);
    sealed.extend_from_slice(&nonce);
    sealed.extend_from_slice(plaintext);
    let tag = kek
        .aead_key()?
        .seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(name.as_bytes()),
            &mut sealed[header..],
        )
        .map_err(|_| SignerError::Kek(format!("cannot seal {name:?}")))?;
    sealed.extend_from_slice(tag.as_ref());
    Ok(std::mem::take(&mut *sealed))
}

/// Decrypts what [`seal`] produced for the same `name`. Errors:
/// [`SignerError::Unseal`] for a wrong key, a wrong name or altered data.
pub fn unseal(kek: &Kek, name: &str, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, SignerError> {
    let unseal_error = || SignerError::Unseal {
        name: name.to_string(),
    };
    let header = SEALED_PREFIX.len() + NONCE_LEN;
    if sealed.len() < header + TAG_LEN || !sealed.starts_with(SEALED_PREFIX) {
        return Err(unseal_error());
    }
    let nonce: [u8; NONCE_LEN] = sealed[SEALED_PREFIX.len()..header]
        .try_into()
        .map_err(|_| unseal_error())?;
    let mut plaintext = Zeroizing::new(sealed[header..].to_vec());
    let length = kek
        .aead_key()?
        .open_in_place(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(name.as_bytes()),
            &mut plaintext,
        )
        .map_err(|_| unseal_error())?
        .len();
    plaintext.truncate(length);
    Ok(plaintext)
}

/// Writes bytes to a new or existing file with mode 0600, atomically
/// (temporary file in the same directory, fsync, rename, fsync of the
/// directory). Errors: [`SignerError::Io`]; the temporary file is removed.
pub fn write_private_file(path: &Path, contents: &[u8]) -> Result<(), SignerError> {
    Ok(files::replace_atomically(
        path,
        contents,
        files::PRIVATE_MODE,
    )?)
}

impl From<files::FileError> for SignerError {
    fn from(error: files::FileError) -> Self {
        SignerError::Io {
            path: error.path.display().to_string(),
            source: error.source,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    fn kek_message(result: Result<Kek, SignerError>) -> String {
        match result {
            Err(SignerError::Kek(message)) => message,
            other => panic!("expected a KEK error, got {other:?}"),
        }
    }

    fn assert_unseal_error(result: Result<Zeroizing<Vec<u8>>, SignerError>, expected_name: &str) {
        match result {
            Err(SignerError::Unseal { name }) => assert_eq!(name, expected_name),
            Err(other) => panic!("expected Unseal, got {other:?}"),
            Ok(_) => panic!("sealed data opened when it must not"),
        }
    }

    #[test]
    fn seal_then_unseal_round_trips() {
        let kek = Kek::generate().unwrap();
        for plaintext in [&b""[..], b"x", &[7u8; 5000][..]] {
            let sealed = seal(&kek, "root-key", plaintext).unwrap();
            assert!(sealed.starts_with(b"tpk1"));
            assert_eq!(sealed.len(), 4 + 12 + plaintext.len() + 16);
            assert_eq!(
                unseal(&kek, "root-key", &sealed).unwrap().as_slice(),
                plaintext
            );
        }
    }

    #[test]
    fn sealing_twice_gives_different_bytes() {
        let kek = Kek::generate().unwrap();
        let first = seal(&kek, "name", b"same plaintext").unwrap();
        let second = seal(&kek, "name", b"same plaintext").unwrap();
        assert_ne!(first, second);
        assert_ne!(first[4..16], second[4..16], "nonces must differ");
    }

    #[test]
    fn wrong_key_does_not_unseal() {
        let sealed = seal(&Kek::generate().unwrap(), "root-key", b"secret").unwrap();
        assert_unseal_error(
            unseal(&Kek::generate().unwrap(), "root-key", &sealed),
            "root-key",
        );
    }

    #[test]
    fn wrong_name_does_not_unseal() {
        let kek = Kek::generate().unwrap();
        let sealed = seal(&kek, "root-a", b"secret").unwrap();
        assert_unseal_error(unseal(&kek, "root-b", &sealed), "root-b");
    }

    #[test]
    fn any_flipped_byte_does_not_unseal() {
        let kek = Kek::generate().unwrap();
        let sealed = seal(&kek, "name", b"secret bytes").unwrap();
        for index in 0..sealed.len() {
            let mut altered = sealed.clone();
            altered[index] ^= 0x01;
            assert_unseal_error(unseal(&kek, "name", &altered), "name");
        }
    }

    #[test]
    fn truncated_or_extended_data_does_not_unseal() {
        let kek = Kek::generate().unwrap();
        let sealed = seal(&kek, "name", b"secret bytes").unwrap();
        for length in 0..sealed.len() {
            assert_unseal_error(unseal(&kek, "name", &sealed[..length]), "name");
        }
        let mut extended = sealed.clone();
        extended.push(0);
        assert_unseal_error(unseal(&kek, "name", &extended), "name");
    }

    #[test]
    fn kek_text_round_trips() {
        let kek = Kek::generate().unwrap();
        let text = kek.to_text();
        assert_eq!(text.len(), 44);
        let parsed = Kek::from_text(&format!("  {}\n", text.as_str())).unwrap();
        assert_eq!(parsed.0[..], kek.0[..]);
        let sealed = seal(&kek, "name", b"secret").unwrap();
        assert_eq!(
            unseal(&parsed, "name", &sealed).unwrap().as_slice(),
            b"secret"
        );
    }

    #[test]
    fn kek_debug_is_redacted() {
        let kek = Kek::generate().unwrap();
        let debug = format!("{kek:?}");
        assert_eq!(debug, "Kek([redacted])");
        assert!(!debug.contains(kek.to_text().as_str()));
    }

    #[test]
    fn bad_kek_text_is_refused_without_echoing_it() {
        let short = STANDARD.encode([0x42u8; 31]);
        let long = STANDARD.encode([0x42u8; 33]);
        let very_long = STANDARD.encode([0x42u8; 200]);
        for text in [
            "",
            "hunter2-is-not-base64!",
            short.as_str(),
            long.as_str(),
            very_long.as_str(),
        ] {
            let message = kek_message(Kek::from_text(text));
            if !text.is_empty() {
                assert!(!message.contains(text), "{message:?} echoes the input");
                assert!(
                    !message.contains(text.trim_end_matches('=')),
                    "{message:?} echoes the input"
                );
            }
            assert!(message.contains("32 random bytes"), "{message}");
            assert!(message.contains("trustplane init"), "{message}");
        }
    }

    #[test]
    fn write_new_file_is_0600_and_refuses_to_overwrite() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("kek");
        let kek = Kek::generate().unwrap();
        kek.write_new_file(&path).unwrap();
        assert_eq!(mode(&path), 0o600);
        let loaded = Kek::load(Some(&path), None).unwrap();
        assert_eq!(loaded.0[..], kek.0[..]);
        assert!(matches!(
            Kek::generate().unwrap().write_new_file(&path),
            Err(SignerError::Io { .. })
        ));
        assert_eq!(Kek::load(Some(&path), None).unwrap().0[..], kek.0[..]);
    }

    #[test]
    fn load_prefers_the_file_then_the_environment() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("kek");
        let from_file = Kek::generate().unwrap();
        from_file.write_new_file(&path).unwrap();
        let from_env = Kek::generate().unwrap();

        let loaded = Kek::load(Some(&path), Some(from_env.to_text().as_str())).unwrap();
        assert_eq!(loaded.0[..], from_file.0[..]);
        let loaded = Kek::load(None, Some(from_env.to_text().as_str())).unwrap();
        assert_eq!(loaded.0[..], from_env.0[..]);

        // A given but missing file is an error, not a fallback to the environment.
        let missing = directory.path().join("missing");
        assert!(matches!(
            Kek::load(Some(&missing), Some(from_env.to_text().as_str())),
            Err(SignerError::Io { .. })
        ));

        let message = kek_message(Kek::load(None, None));
        assert!(
            message.contains("--kek-file") && message.contains(KEK_ENV),
            "{message}"
        );
        let message = kek_message(Kek::load(None, Some("not-a-kek")));
        assert!(
            message.contains(KEK_ENV) && !message.contains("not-a-kek"),
            "{message}"
        );
    }

    #[test]
    fn load_refuses_a_file_readable_by_others() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("kek");
        Kek::generate().unwrap().write_new_file(&path).unwrap();
        for loose in [0o640, 0o604, 0o620, 0o644] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(loose)).unwrap();
            let message = kek_message(Kek::load(Some(&path), None));
            assert!(message.contains("chmod 600"), "{message}");
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).unwrap();
        Kek::load(Some(&path), None).unwrap();
    }

    #[test]
    fn load_reports_a_malformed_file_without_its_content() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("kek");
        write_private_file(&path, b"c2VjcmV0LWJ1dC1zaG9ydA==\n").unwrap();
        let message = kek_message(Kek::load(Some(&path), None));
        assert!(
            message.contains("32 random bytes") && !message.contains("c2VjcmV0"),
            "{message}"
        );
    }

    #[test]
    fn write_private_file_replaces_atomically_with_mode_0600() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("ca-key.pem");
        std::fs::write(&path, b"old").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();

        write_private_file(&path, b"new contents").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new contents");
        assert_eq!(mode(&path), 0o600);
        write_private_file(&path, b"again").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"again");
        assert_eq!(mode(&path), 0o600);
        // No temporary file is left behind.
        let names: Vec<_> = std::fs::read_dir(directory.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .collect();
        assert_eq!(names, ["ca-key.pem"]);
    }

    #[test]
    fn write_private_file_into_a_missing_directory_fails_cleanly() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("missing").join("key.pem");
        assert!(matches!(
            write_private_file(&path, b"x"),
            Err(SignerError::Io { .. })
        ));
        assert!(
            std::fs::read_dir(directory.path())
                .unwrap()
                .next()
                .is_none()
        );
    }
}
