//! Sealing key material at rest: AES-256-GCM (ring) under a 256-bit
//! key-encryption key (KEK) that lives outside the store (a 0600 file or the
//! `TRUSTPLANE_KEK` environment variable).

use std::path::Path;

use zeroize::Zeroizing;

use super::SignerError;

/// The environment variable that may hold the KEK (base64).
pub const KEK_ENV: &str = "TRUSTPLANE_KEK";

/// A 256-bit key-encryption key; wiped on drop, `Debug` prints `[redacted]`.
pub struct Kek(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for Kek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Kek([redacted])")
    }
}

impl Kek {
    /// A new random KEK.
    pub fn generate() -> Result<Kek, SignerError> {
        todo!()
    }

    /// Parses the text form (standard base64 of 32 bytes, surrounding
    /// whitespace ignored).
    pub fn from_text(text: &str) -> Result<Kek, SignerError> {
        todo!("{}", text.len())
    }

    /// The text form (base64), wiped on drop.
    pub fn to_text(&self) -> Zeroizing<String> {
        todo!()
    }

    /// Loads the KEK from `file` if given, else from `env_value` (the value
    /// of [`KEK_ENV`], read by the caller). Errors say how to provide one.
    pub fn load(file: Option<&Path>, env_value: Option<&str>) -> Result<Kek, SignerError> {
        todo!("{file:?}{}", env_value.is_some())
    }

    /// Writes the text form to a new file created with mode 0600 (fails if
    /// the file exists).
    pub fn write_new_file(&self, path: &Path) -> Result<(), SignerError> {
        todo!("{path:?}")
    }
}

/// Encrypts `plaintext`; `name` is bound as associated data so a sealed
/// value cannot be moved to another slot.
pub fn seal(kek: &Kek, name: &str, plaintext: &[u8]) -> Result<Vec<u8>, SignerError> {
    todo!("{kek:?}{name}{}", plaintext.len())
}

/// Decrypts what [`seal`] produced for the same `name`. Errors:
/// [`SignerError::Unseal`] for a wrong key, a wrong name or altered data.
pub fn unseal(kek: &Kek, name: &str, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, SignerError> {
    todo!("{kek:?}{name}{}", sealed.len())
}

/// Writes bytes to a new or existing file with mode 0600, atomically
/// (temporary file in the same directory, fsync, rename).
pub fn write_private_file(path: &Path, contents: &[u8]) -> Result<(), SignerError> {
    todo!("{path:?}{}", contents.len())
}
