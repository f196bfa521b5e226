//! What the `vault-kv` store keeps in KV of its own (the lease) and how
//! keys are written there (escaping).

use serde::{Deserialize, Serialize};

use crate::store::StoreError;
use crate::vault::VaultError;

/// A lease secret, `<prefix>/leases/<escaped name>`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct LeaseRecord {
    /// Who holds it.
    pub holder: String,
    /// Until when, Unix milliseconds.
    pub expires_unix_ms: u64,
}

pub(super) fn vault_error(error: VaultError) -> StoreError {
    let message = error.to_string();
    if error.is_transient() {
        StoreError::Unavailable {
            message,
            source: Some(Box::new(error)),
        }
    } else {
        StoreError::Backend {
            message,
            source: Some(Box::new(error)),
        }
    }
}

/// Escapes `key` into one KV path segment (see the module docs).
pub fn escape_key(key: &str) -> String {
    let mut escaped = String::with_capacity(key.len() + 1);
    escaped.push('k');
    for byte in key.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'_' | b'-') {
            escaped.push(char::from(byte));
        } else {
            escaped.push_str(&format!("%{byte:02X}"));
        }
    }
    escaped
}

/// The key [`escape_key`] escaped into `segment`; `None` for a segment it
/// cannot have made.
pub fn unescape_key(segment: &str) -> Option<String> {
    let rest = segment.strip_prefix('k')?;
    let mut bytes = Vec::with_capacity(rest.len());
    let mut input = rest.bytes();
    while let Some(byte) = input.next() {
        if byte == b'%' {
            let high = char::from(input.next()?).to_digit(16)?;
            let low = char::from(input.next()?).to_digit(16)?;
            bytes.push(u8::try_from(high * 16 + low).ok()?);
        } else {
            bytes.push(byte);
        }
    }
    String::from_utf8(bytes).ok()
}
