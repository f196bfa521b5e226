//! What the head-commit protocol keeps (the head, a key's record) and how
//! values are written there (base64), whatever the backend.

use serde::{Deserialize, Serialize};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use crate::store::{StoreError, Table, Versioned};

/// One resolved write of a batch: the key's final value (`None`: deleted,
/// base64 otherwise) and version.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Write {
    /// The table's [`Table::name`].
    pub table: String,
    /// The key.
    pub key: String,
    /// The key's version after the batch (0 for a deletion).
    pub version: u64,
    /// The value, base64; `None`: deleted, unless `in_key`.
    pub value: Option<String>,
    /// The value was dropped from the head once the batch was applied: it
    /// is in the key's own object, where readers take it. Sealed key
    /// material (the `Secrets` table) does not stay in the head.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub in_key: bool,
}

/// The head: the last committed batch, and the ids of the last
/// [`RECENT_BATCHES`] batches (newest last). A writer whose check-and-set
/// on the head succeeded but whose answer was lost (the connection broke)
/// finds its id there when it tries again, instead of committing twice.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Head {
    /// The last committed batch's sequence number (0: none yet).
    pub seq: u64,
    /// Whether that batch's writes are applied to their keys.
    pub applied: bool,
    /// That batch's writes, in order.
    pub writes: Vec<Write>,
    /// Ids of the last batches, newest last.
    #[serde(default)]
    pub recent: Vec<String>,
}

/// Batch ids the head remembers.
pub const RECENT_BATCHES: usize = 32;

/// A random id for one batch (the same across its attempts), from the
/// operating system's generator.
///
/// Errors: as [`batch_id_from`].
pub fn batch_id() -> Result<String, StoreError> {
    use ring::rand::SecureRandom as _;
    let random = ring::rand::SystemRandom::new();
    batch_id_from(|bytes| random.fill(bytes))
}

/// A batch id of 12 bytes that `fill` draws.
///
/// Errors: [`StoreError::Backend`] when `fill` fails: an id that is not
/// random (all zeros) would repeat, and a new batch could be taken for an
/// already committed one and silently dropped, so the commit fails instead.
pub fn batch_id_from(
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

/// A key's record: what the batch `seq` left there, and what the key held
/// before that batch (`None`: nothing), so that a list can read every key
/// as one batch left it while later batches are applied.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct KeyRecord {
    /// The batch that wrote it.
    pub seq: u64,
    /// The key's version (0 with no value).
    pub version: u64,
    /// The value, base64; `None`: deleted (a tombstone).
    pub value: Option<String>,
    /// The key before batch `seq` (never itself with a `previous`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<Box<KeyRecord>>,
}

impl KeyRecord {
    /// The key as batch `seq` left it; `None` when two batches after `seq`
    /// wrote it (the state at `seq` is gone).
    pub fn as_of(&self, seq: u64) -> Option<KeyRecord> {
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

/// A [`StoreError::Backend`] with `message` and no source.
pub fn backend(message: impl Into<String>) -> StoreError {
    StoreError::Backend {
        message: message.into(),
        source: None,
    }
}

/// The table whose [`Table::name`] is `name`.
pub fn table_named(name: &str) -> Option<Table> {
    Table::ALL.into_iter().find(|table| table.name() == name)
}

/// A value as the head and key records hold it.
pub fn encode(value: &[u8]) -> String {
    STANDARD.encode(value)
}

/// The bytes [`encode`] made.
///
/// Errors: [`StoreError::Backend`] for text that is not base64.
pub fn decode(table: Table, key: &str, value: &str) -> Result<Vec<u8>, StoreError> {
    STANDARD.decode(value).map_err(|error| {
        backend(format!(
            "{}/{key} in the store is not base64: {error}",
            table.name()
        ))
    })
}

/// A key's state as readers see it.
///
/// Errors: as [`decode`].
pub fn visible(
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
