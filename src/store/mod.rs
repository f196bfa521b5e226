//! Persistent state behind one small trait: tables of versioned values,
//! written in atomic batches with compare-and-swap conditions.
//!
//! Backends: [`RedbStore`] (embedded, the default) and [`MemoryStore`]
//! (tests). Kubernetes and Vault KV backends plug in at the same seam.
//! Typed records live in [`records`]; this module never interprets them.

mod memory;
mod redb_store;
pub mod records;

pub use memory::MemoryStore;
pub use redb_store::RedbStore;

/// The tables trustplane keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    /// Singletons: CA settings, control-plane CA certificate.
    Meta,
    /// Sealed (encrypted) key material, by name.
    Secrets,
    /// Mesh roots, by id.
    Roots,
    /// Enrolled clusters, by name.
    Clusters,
    /// Every issued certificate, by hex serial (serials are never reused).
    Certificates,
    /// Published bundle versions, by trust domain (current) and
    /// `<td>/<version padded>` (history).
    Bundles,
    /// Join tokens, by SHA-256 hex of the token.
    Tokens,
}

impl Table {
    /// Every table.
    pub const ALL: [Table; 7] = [
        Table::Meta,
        Table::Secrets,
        Table::Roots,
        Table::Clusters,
        Table::Certificates,
        Table::Bundles,
        Table::Tokens,
    ];

    /// Stable name used by backends.
    pub fn name(self) -> &'static str {
        match self {
            Table::Meta => "meta",
            Table::Secrets => "secrets",
            Table::Roots => "roots",
            Table::Clusters => "clusters",
            Table::Certificates => "certificates",
            Table::Bundles => "bundles",
            Table::Tokens => "tokens",
        }
    }
}

/// A stored value and its version (starts at 1, +1 on every write).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Versioned {
    /// The bytes as written.
    pub value: Vec<u8>,
    /// Per-key version.
    pub version: u64,
}

/// A precondition on one key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// The key must not exist.
    Absent,
    /// The key must exist with exactly this version.
    Version(u64),
    /// The key must exist (any version).
    Present,
}

/// One operation in a batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Operation {
    /// Write `value`; the key's version becomes previous + 1.
    Put {
        /// Table.
        table: Table,
        /// Key.
        key: String,
        /// Value.
        value: Vec<u8>,
        /// Optional precondition.
        expect: Option<Expect>,
    },
    /// Delete the key (no error when absent unless `expect` says so).
    Delete {
        /// Table.
        table: Table,
        /// Key.
        key: String,
        /// Optional precondition.
        expect: Option<Expect>,
    },
    /// Only check a precondition.
    Check {
        /// Table.
        table: Table,
        /// Key.
        key: String,
        /// Precondition.
        expect: Expect,
    },
}

/// Operations applied all together or not at all.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Batch {
    /// In order.
    pub operations: Vec<Operation>,
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Self {
        Batch::default()
    }

    /// Adds a put.
    pub fn put(mut self, table: Table, key: impl Into<String>, value: Vec<u8>, expect: Option<Expect>) -> Self {
        self.operations.push(Operation::Put { table, key: key.into(), value, expect });
        self
    }

    /// Adds a delete.
    pub fn delete(mut self, table: Table, key: impl Into<String>, expect: Option<Expect>) -> Self {
        self.operations.push(Operation::Delete { table, key: key.into(), expect });
        self
    }

    /// Adds a check.
    pub fn check(mut self, table: Table, key: impl Into<String>, expect: Expect) -> Self {
        self.operations.push(Operation::Check { table, key: key.into(), expect });
        self
    }
}

/// Store errors.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A precondition did not hold; nothing was written.
    #[error("conflict on {table}/{key}: expected {expected}, found {found}")]
    Conflict {
        /// Table name.
        table: &'static str,
        /// Key.
        key: String,
        /// What the batch expected.
        expected: String,
        /// What was there.
        found: String,
    },
    /// The data directory is locked by another process (a running server).
    #[error("the data directory {path} is in use by another trustplane process; stop it or talk to it over gRPC")]
    Locked {
        /// Database path.
        path: String,
    },
    /// The backend failed.
    #[error("store backend error: {message}")]
    Backend {
        /// What failed.
        message: String,
        /// The cause.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// A stored record that does not decode.
    #[error("corrupt record {table}/{key}: {message}")]
    Corrupt {
        /// Table name.
        table: &'static str,
        /// Key.
        key: String,
        /// Decoder message.
        message: String,
    },
}

/// A transactional table store. Implementations make every [`Store::commit`]
/// atomic and durable before returning.
pub trait Store: Send + Sync + 'static {
    /// One value.
    fn get(&self, table: Table, key: &str) -> Result<Option<Versioned>, StoreError>;
    /// Every key and value in a table, ordered by key.
    fn list(&self, table: Table) -> Result<Vec<(String, Versioned)>, StoreError>;
    /// Applies a batch atomically: every precondition is checked first; on
    /// any failure nothing is written ([`StoreError::Conflict`]).
    fn commit(&self, batch: Batch) -> Result<(), StoreError>;
}
