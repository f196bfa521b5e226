//! What the `vault-kv` store keeps in KV (the head, a key's record, the
//! lease) and how keys and values are written there (escaping, base64).

use serde::{Deserialize, Serialize};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use crate::store::{StoreError, Table, Versioned};
use crate::vault::VaultError;

/// One resolved write of a batch: the key's final value (`None`: deleted)
/// and version.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub(super) struct Write {
    pub(super) table: String,
    pub(super) key: String,
    pub(super) version: u64,
    pub(super) value: Option<String>,
}

/// The head secret: the last committed batch, and the ids of the last
/// [`RECENT_BATCHES`] batches (newest last). A writer whose check-and-set
/// on the head succeeded but whose answer was lost (the connection broke)
/// finds its id there when it tries again, instead of committing twice.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub(super) struct Head {
    pub(super) seq: u64,
    pub(super) applied: bool,
    pub(super) writes: Vec<Write>,
    #[serde(default)]
    pub(super) recent: Vec<String>,
}

/// Batch ids the head remembers.
pub(super) const RECENT_BATCHES: usize = 32;

/// A random id for one batch (the same across its attempts), from the
/// operating system's generator.
///
/// Errors: as [`batch_id_from`].
pub(super) fn batch_id() -> Result<String, StoreError> {
    use ring::rand::SecureRandom as _;
    let random = ring::rand::SystemRandom::new();
    batch_id_from(|bytes| random.fill(bytes))
}

/// A batch id of 12 bytes that `fill` draws.
///
/// Errors: [`StoreError::Backend`] when `fill` fails: an id that is not
/// random (all zeros) would repeat, and a new batch could be taken for an
/// already committed one and silently dropped, so the commit fails instead.
pub(super) fn batch_id_from(
    fill: impl FnOnce(&mut [u8]) -> Result<(), ring::error::Unspecified>,
) -> Result<String, StoreError> {
    let mut bytes = [0u8; 12];
    fill(&mut bytes).map_err(|error| {
        backend(format!(
            "cannot draw a random batch id: the operating system's random generator failed ({error}); nothing was written, check the host (getrandom) and try again"
        ))
    })?;
    Ok(hex::encode(bytes))
}

/// A key's secret: what the batch `seq` left there, and what the key held
/// before that batch (`None`: nothing), so that a list can read every key
/// as one batch left it while later batches are applied.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub(super) struct KeyRecord {
    pub(super) seq: u64,
    pub(super) version: u64,
    pub(super) value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) previous: Option<Box<KeyRecord>>,
}

impl KeyRecord {
    /// The key as batch `seq` left it; `None` when two batches after `seq`
    /// wrote it (the state at `seq` is gone).
    pub(super) fn as_of(&self, seq: u64) -> Option<KeyRecord> {
        if self.seq <= seq {
            return Some(KeyRecord {
                previous: None,
                ..self.clone()
            });
        }
        match &self.previous {
            // Created after `seq`: absent then.
            None => Some(KeyRecord {
                seq: 0,
                version: 0,
                value: None,
                previous: None,
            }),
            Some(previous) if previous.seq <= seq => Some(KeyRecord {
                previous: None,
                ..(**previous).clone()
            }),
            Some(_) => None,
        }
    }
}

/// A lease secret, `<prefix>/leases/<escaped name>`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct LeaseRecord {
    /// Who holds it.
    pub holder: String,
    /// Until when, Unix milliseconds.
    pub expires_unix_ms: u64,
}

pub(super) fn backend(message: impl Into<String>) -> StoreError {
    StoreError::Backend {
        message: message.into(),
        source: None,
    }
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

pub(super) fn table_named(name: &str) -> Option<Table> {
    Table::ALL.into_iter().find(|table| table.name() == name)
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

pub(super) fn encode(value: &[u8]) -> String {
    STANDARD.encode(value)
}

pub(super) fn decode(table: Table, key: &str, value: &str) -> Result<Vec<u8>, StoreError> {
    STANDARD.decode(value).map_err(|error| {
        backend(format!(
            "{}/{key} in Vault is not base64: {error}",
            table.name()
        ))
    })
}

/// A key's state as readers see it.
pub(super) fn visible(
    table: Table,
    key: &str,
    record: &KeyRecord,
) -> Result<Option<Versioned>, StoreError> {
    match &record.value {
        None => Ok(None),
        Some(value) => Ok(Some(Versioned {
            value: decode(table, key, value)?,
            version: record.version,
        })),
    }
}
