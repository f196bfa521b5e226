//! Persistent state behind one small trait: tables of versioned values,
//! written in atomic batches with compare-and-swap conditions.
//!
//! Backends: [`RedbStore`] (embedded, the default), [`VaultKvStore`]
//! (Vault or OpenBao KV v2, shared by several servers), [`KubeStore`]
//! (Kubernetes objects in the hub cluster, shared by several servers) and
//! [`MemoryStore`]
//! (tests).
//! Typed records live in [`records`]; this module never interprets them.

mod committer;
mod head_commit;
mod kube;
mod memory;
pub mod records;
mod redb_store;
mod vault_kv;

pub use committer::{Committer, Preparing};
pub use kube::resources as kube_resources;
pub use kube::{KubeStore, KubeStoreConfig, lease_name as kube_lease_name};
pub use memory::MemoryStore;
pub use redb_store::RedbStore;
pub use vault_kv::{LeaseRecord, MAX_BATCH_BYTES, VaultKvStore};

/// The message of the debug line the embedded store logs for each durable
/// transaction (one fsync), with `batches=<n>`: how many batches (e.g.
/// issuances) shared it. `trustplane bench sign --server-log` counts them.
pub const GROUP_COMMIT_LOG: &str = "store group commit";

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
    /// The audit chain: one entry per state change or refused admin call,
    /// by sequence number (20 digits), appended with [`Operation::Append`].
    /// Stores written before the chain keyed entries
    /// `<unix nanos, 20 digits>-<random>`.
    Audit,
}

impl Table {
    /// Every table.
    pub const ALL: [Table; 8] = [
        Table::Meta,
        Table::Secrets,
        Table::Roots,
        Table::Clusters,
        Table::Certificates,
        Table::Bundles,
        Table::Tokens,
        Table::Audit,
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
            Table::Audit => "audit",
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
    /// Appends the next entry of a chain: inside the write transaction, the
    /// backend reads the head record (`head_table`/`head_key`, as changed by
    /// earlier operations of the same batch), asks `link` for the entry and
    /// the new head, and writes both (the entry's key must be absent). Two
    /// batches that append to one chain are thereby serialised by the
    /// backend's transaction: the chain never forks and no batch has to
    /// retry for it.
    Append {
        /// Table of the entries.
        table: Table,
        /// Table of the head record.
        head_table: Table,
        /// Key of the head record.
        head_key: String,
        /// Builds the entry from the head.
        link: Link,
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

/// Builds the next entry of an append-only chain from the chain's head,
/// inside the backend's write transaction (see [`Operation::Append`]).
pub trait ChainLink: Send + Sync + std::fmt::Debug {
    /// From the current head (`None`: the chain is empty), the new entry and
    /// the new head. Errors: whatever refuses the append (e.g. a head that
    /// does not authenticate); the whole batch is then not written.
    fn link(&self, head: Option<&[u8]>) -> Result<Linked, StoreError>;
}

/// What a [`ChainLink`] appends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Linked {
    /// Key of the new entry.
    pub key: String,
    /// The new entry.
    pub value: Vec<u8>,
    /// The new head record.
    pub head: Vec<u8>,
}

/// A shared [`ChainLink`]; two are equal when they are the same object.
#[derive(Clone, Debug)]
pub struct Link(pub std::sync::Arc<dyn ChainLink>);

impl PartialEq for Link {
    fn eq(&self, other: &Self) -> bool {
        std::sync::Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for Link {}

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
    pub fn put(
        mut self,
        table: Table,
        key: impl Into<String>,
        value: Vec<u8>,
        expect: Option<Expect>,
    ) -> Self {
        self.operations.push(Operation::Put {
            table,
            key: key.into(),
            value,
            expect,
        });
        self
    }

    /// Adds a delete.
    pub fn delete(mut self, table: Table, key: impl Into<String>, expect: Option<Expect>) -> Self {
        self.operations.push(Operation::Delete {
            table,
            key: key.into(),
            expect,
        });
        self
    }

    /// Adds an append to the chain of entries in `table` whose head is
    /// `head_table`/`head_key` (see [`Operation::Append`]).
    pub fn append(
        mut self,
        table: Table,
        head_table: Table,
        head_key: impl Into<String>,
        link: std::sync::Arc<dyn ChainLink>,
    ) -> Self {
        self.operations.push(Operation::Append {
            table,
            head_table,
            head_key: head_key.into(),
            link: Link(link),
        });
        self
    }

    /// Adds a check.
    pub fn check(mut self, table: Table, key: impl Into<String>, expect: Expect) -> Self {
        self.operations.push(Operation::Check {
            table,
            key: key.into(),
            expect,
        });
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
    #[error(
        "the data directory {path} is in use by another trustplane process; stop it or talk to it over gRPC"
    )]
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
    /// The backend is unavailable for now (Vault sealed, unreachable or
    /// failing) after the store's own retries; nothing was written. Callers
    /// may retry later.
    #[error("store unavailable: {message}")]
    Unavailable {
        /// What failed, with the path and what to do.
        message: String,
        /// The cause.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// A record or chain that fails its integrity check (a MAC that does not
    /// match, a broken or unauthenticated chain): the store was changed by
    /// something that does not hold the KEK, or the KEK is not this store's.
    #[error("integrity check failed for {table}/{key}: {reason}")]
    Integrity {
        /// Table name.
        table: &'static str,
        /// Key.
        key: String,
        /// What does not match, and what to do.
        reason: String,
    },
    /// A stored record that does not decode (or a value that does not encode).
    #[error("corrupt record {table}/{key}")]
    Corrupt {
        /// Table name.
        table: &'static str,
        /// Key.
        key: String,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
}

impl StoreError {
    /// The kind of failure as a fixed name for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            StoreError::Conflict { .. } => "conflict",
            StoreError::Locked { .. } => "locked",
            StoreError::Backend { .. } => "backend",
            StoreError::Unavailable { .. } => "unavailable",
            StoreError::Integrity { .. } => "integrity",
            StoreError::Corrupt { .. } => "corrupt",
        }
    }
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

    /// Commits each of `batches` as [`Store::commit`] would, in order, and
    /// returns each one's outcome: a batch refused fails alone. A store that
    /// can makes them share one durable write (group commit).
    fn commit_many(&self, batches: Vec<Batch>) -> Vec<Result<(), StoreError>> {
        batches
            .into_iter()
            .map(|batch| self.commit(batch))
            .collect()
    }

    /// A number that grows with every committed batch, for servers that
    /// share the store and poll it for changes made by the others (`None`:
    /// the backend has no cheap one; it is not shared either).
    fn generation(&self) -> Result<Option<u64>, StoreError> {
        Ok(None)
    }

    /// Whether other servers may write this store, so that a caller must
    /// read [`Store::generation`] before trusting what it loaded (false:
    /// only this process writes it, and `generation` is `None`).
    fn shared(&self) -> bool {
        false
    }

    /// A receiver whose value changes soon after the store may have
    /// changed (the backend watches it), so that a server sharing the
    /// store can read [`Store::generation`] at once instead of at its next
    /// poll. `None`: no such notice, poll only. A notice is a hint: it can
    /// come for nothing, and polling stays the guarantee.
    fn changes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        None
    }

    /// Takes or renews the lease `name` for `holder` until
    /// `expires_unix_ms`, when it is free, expired at `now_unix_ms`, or
    /// already `holder`'s, by check-and-set outside the batches (renewing a
    /// lease is not a change of state: [`Store::generation`] does not move).
    /// Returns the holder afterwards. A store that only one process opens
    /// has no one to share with: by default `holder` holds every lease.
    fn lease(
        &self,
        name: &str,
        holder: &str,
        now_unix_ms: u64,
        expires_unix_ms: u64,
    ) -> Result<String, StoreError> {
        let _ = (name, now_unix_ms, expires_unix_ms);
        Ok(holder.to_string())
    }
}

impl std::fmt::Display for Expect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Expect::Absent => f.write_str("absent"),
            Expect::Version(version) => write!(f, "version {version}"),
            Expect::Present => f.write_str("present"),
        }
    }
}

impl Operation {
    /// The table, key and precondition of this operation, if it has one.
    fn precondition(&self) -> Option<(Table, &str, Expect)> {
        match self {
            Operation::Put {
                table,
                key,
                expect: Some(expect),
                ..
            }
            | Operation::Delete {
                table,
                key,
                expect: Some(expect),
            }
            | Operation::Check { table, key, expect } => Some((*table, key.as_str(), *expect)),
            Operation::Put { expect: None, .. }
            | Operation::Delete { expect: None, .. }
            | Operation::Append { .. } => None,
        }
    }
}

/// Checks `expect` against the version currently stored under `table`/`key`
/// (`None` when absent). Shared by every backend so that they agree on what
/// a precondition means. Errors: [`StoreError::Conflict`].
pub(crate) fn check_precondition(
    table: Table,
    key: &str,
    expect: Expect,
    found: Option<u64>,
) -> Result<(), StoreError> {
    let holds = match (expect, found) {
        (Expect::Absent, None) | (Expect::Present, Some(_)) => true,
        (Expect::Version(expected), Some(found)) => expected == found,
        _ => false,
    };
    if holds {
        return Ok(());
    }
    Err(StoreError::Conflict {
        table: table.name(),
        key: key.to_string(),
        expected: expect.to_string(),
        found: match found {
            None => "absent".to_string(),
            Some(version) => format!("version {version}"),
        },
    })
}

/// Checks every precondition of `batch` in order, reading versions through
/// `version_of`, and stops at the first that fails. Preconditions are
/// evaluated against the state before the batch, never against its own
/// earlier operations.
pub(crate) fn check_batch(
    batch: &Batch,
    mut version_of: impl FnMut(Table, &str) -> Result<Option<u64>, StoreError>,
) -> Result<(), StoreError> {
    for (table, key, expect) in batch.operations.iter().filter_map(Operation::precondition) {
        let found = version_of(table, key)?;
        check_precondition(table, key, expect, found)?;
    }
    Ok(())
}

/// What a batch writes: per key, the new value and version, or `None` for
/// a delete. Ordered by table and key.
pub(crate) type Staged = std::collections::BTreeMap<(Table, String), Option<Versioned>>;

/// Checks `batch`'s preconditions and works out every write it makes,
/// reading the current state through `read` and changing nothing: later
/// operations of the batch see the writes of earlier ones (a put after a
/// put, an append after an append). A backend applies the result only when
/// this succeeds, so a refused batch (a failed precondition, a refused
/// append, a version overflow) writes nothing. Errors: those of
/// [`check_batch`], of the chain's [`ChainLink`], of [`next_version`], and
/// of `read`.
pub(crate) fn stage_batch(
    batch: Batch,
    mut read: impl FnMut(Table, &str) -> Result<Option<Versioned>, StoreError>,
) -> Result<Staged, StoreError> {
    check_batch(&batch, |table, key| {
        Ok(read(table, key)?.map(|stored| stored.version))
    })?;
    let mut staged = Staged::new();
    let mut current = |staged: &Staged, slot: &(Table, String)| match staged.get(slot) {
        Some(pending) => Ok(pending.clone()),
        None => read(slot.0, &slot.1),
    };
    for operation in batch.operations {
        match operation {
            Operation::Put {
                table, key, value, ..
            } => {
                let slot = (table, key);
                let previous = current(&staged, &slot)?.map(|stored| stored.version);
                let version = next_version(table, &slot.1, previous)?;
                staged.insert(slot, Some(Versioned { value, version }));
            }
            Operation::Delete { table, key, .. } => {
                staged.insert((table, key), None);
            }
            Operation::Append {
                table,
                head_table,
                head_key,
                link,
            } => {
                let head_slot = (head_table, head_key);
                let head = current(&staged, &head_slot)?;
                let linked = link
                    .0
                    .link(head.as_ref().map(|stored| stored.value.as_slice()))?;
                let entry_slot = (table, linked.key);
                let existing = current(&staged, &entry_slot)?.map(|stored| stored.version);
                check_precondition(table, &entry_slot.1, Expect::Absent, existing)?;
                staged.insert(
                    entry_slot,
                    Some(Versioned {
                        value: linked.value,
                        version: 1,
                    }),
                );
                let version =
                    next_version(head_table, &head_slot.1, head.map(|stored| stored.version))?;
                staged.insert(
                    head_slot,
                    Some(Versioned {
                        value: linked.head,
                        version,
                    }),
                );
            }
            Operation::Check { .. } => {}
        }
    }
    Ok(staged)
}

/// The version a put gives a key whose current version is `previous`.
/// Errors: [`StoreError::Backend`] if the version would overflow (never in
/// practice: 2^64 writes to one key).
pub(crate) fn next_version(
    table: Table,
    key: &str,
    previous: Option<u64>,
) -> Result<u64, StoreError> {
    match previous {
        None => Ok(1),
        Some(version) => version.checked_add(1).ok_or_else(|| StoreError::Backend {
            message: format!("version of {}/{key} overflows", table.name()),
            source: None,
        }),
    }
}

/// Expands to one `#[test]` per [`conformance`] behaviour, each on a fresh
/// store made by `$make`, an expression giving `(store, guard)`.
#[cfg(test)]
macro_rules! store_conformance_tests {
    ($make:expr) => {
        crate::store::store_conformance_tests!(
            $make;
            put_get_and_versions_increment,
            absent_prevents_a_second_insert,
            version_is_compare_and_swap,
            a_failing_batch_writes_nothing,
            preconditions_see_the_state_before_the_batch,
            delete_removes_and_honours_preconditions,
            list_is_ordered_by_key_within_one_table,
            concurrent_compare_and_swap_loses_no_update,
            append_links_each_entry_to_the_head_it_sees,
            a_refused_append_writes_nothing,
            concurrent_appends_keep_one_linear_chain,
        );
    };
    ($make:expr; $($behaviour:ident),+ $(,)?) => {
        $(
            #[test]
            fn $behaviour() {
                let (store, _guard) = $make;
                crate::store::conformance::$behaviour(&store);
            }
        )+
    };
}
#[cfg(test)]
pub(crate) use store_conformance_tests;

/// Behavioural tests every backend must pass, written once over `&dyn Store`.
/// A backend's test module runs them all with
/// `store_conformance_tests!((store, guard))`, where `guard` keeps whatever
/// the store needs alive (e.g. its temporary directory).
#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
pub(crate) mod conformance {
    use super::{Batch, ChainLink, Expect, Linked, Store, StoreError, Table, Versioned};
    use std::sync::Arc;

    /// A chain whose head is the number of entries; entry `n` holds the
    /// head it was linked to, so a fork or a lost append shows.
    #[derive(Debug)]
    struct Counter {
        refuse: bool,
    }

    impl ChainLink for Counter {
        fn link(&self, head: Option<&[u8]>) -> Result<Linked, StoreError> {
            if self.refuse {
                return Err(StoreError::Integrity {
                    table: "meta",
                    key: "head".into(),
                    reason: "refused".into(),
                });
            }
            let count = head.map_or(0, |head| u64::from_be_bytes(head.try_into().unwrap()));
            Ok(Linked {
                key: format!("{:020}", count + 1),
                value: count.to_be_bytes().to_vec(),
                head: (count + 1).to_be_bytes().to_vec(),
            })
        }
    }

    fn append(batch: Batch) -> Batch {
        batch.append(
            Table::Audit,
            Table::Meta,
            "head",
            Arc::new(Counter { refuse: false }),
        )
    }

    /// Asserts entries 1..=count each link to the one before.
    fn assert_linear(store: &dyn Store, count: u64) {
        let entries = store.list(Table::Audit).unwrap();
        assert_eq!(entries.len() as u64, count);
        for (index, (key, stored)) in entries.iter().enumerate() {
            assert_eq!(key, &format!("{:020}", index + 1));
            assert_eq!(stored.value, (index as u64).to_be_bytes());
        }
        let head = value(store, Table::Meta, "head").unwrap();
        assert_eq!(head.value, count.to_be_bytes());
        assert_eq!(head.version, count);
    }

    fn value(store: &dyn Store, table: Table, key: &str) -> Option<Versioned> {
        store.get(table, key).unwrap()
    }

    fn assert_conflict(
        result: Result<(), StoreError>,
        table: Table,
        key: &str,
        expected: &str,
        found: &str,
    ) {
        match result {
            Err(StoreError::Conflict {
                table: t,
                key: k,
                expected: e,
                found: f,
            }) => {
                assert_eq!(
                    (t, k.as_str(), e.as_str(), f.as_str()),
                    (table.name(), key, expected, found)
                );
            }
            other => panic!(
                "expected a conflict on {}/{key}, got {other:?}",
                table.name()
            ),
        }
    }

    pub(crate) fn put_get_and_versions_increment(store: &dyn Store) {
        assert_eq!(value(store, Table::Roots, "a"), None);
        store
            .commit(Batch::new().put(Table::Roots, "a", b"one".to_vec(), None))
            .unwrap();
        assert_eq!(
            value(store, Table::Roots, "a"),
            Some(Versioned {
                value: b"one".to_vec(),
                version: 1
            })
        );
        store
            .commit(Batch::new().put(Table::Roots, "a", b"two".to_vec(), None))
            .unwrap();
        assert_eq!(
            value(store, Table::Roots, "a"),
            Some(Versioned {
                value: b"two".to_vec(),
                version: 2
            })
        );
        // Tables are separate namespaces.
        assert_eq!(value(store, Table::Clusters, "a"), None);
        // Two puts of one key in one batch: each counts.
        store
            .commit(Batch::new().put(Table::Meta, "k", b"x".to_vec(), None).put(
                Table::Meta,
                "k",
                b"y".to_vec(),
                None,
            ))
            .unwrap();
        assert_eq!(
            value(store, Table::Meta, "k"),
            Some(Versioned {
                value: b"y".to_vec(),
                version: 2
            })
        );
        // An empty value and an empty batch are fine.
        store
            .commit(Batch::new().put(Table::Meta, "empty", Vec::new(), None))
            .unwrap();
        assert_eq!(
            value(store, Table::Meta, "empty").unwrap().value,
            Vec::<u8>::new()
        );
        store.commit(Batch::new()).unwrap();
    }

    pub(crate) fn absent_prevents_a_second_insert(store: &dyn Store) {
        let insert = |value: &[u8]| {
            store.commit(Batch::new().put(
                Table::Certificates,
                "0a1b",
                value.to_vec(),
                Some(Expect::Absent),
            ))
        };
        insert(b"first").unwrap();
        assert_conflict(
            insert(b"second"),
            Table::Certificates,
            "0a1b",
            "absent",
            "version 1",
        );
        assert_eq!(
            value(store, Table::Certificates, "0a1b"),
            Some(Versioned {
                value: b"first".to_vec(),
                version: 1
            })
        );
    }

    pub(crate) fn version_is_compare_and_swap(store: &dyn Store) {
        let put = |value: &[u8], expect| {
            store.commit(Batch::new().put(Table::Clusters, "east", value.to_vec(), Some(expect)))
        };
        assert_conflict(
            put(b"v", Expect::Version(1)),
            Table::Clusters,
            "east",
            "version 1",
            "absent",
        );
        assert_conflict(
            put(b"v", Expect::Present),
            Table::Clusters,
            "east",
            "present",
            "absent",
        );
        put(b"v1", Expect::Absent).unwrap();
        put(b"v2", Expect::Version(1)).unwrap();
        // A writer that read version 1 loses.
        assert_conflict(
            put(b"stale", Expect::Version(1)),
            Table::Clusters,
            "east",
            "version 1",
            "version 2",
        );
        put(b"v3", Expect::Present).unwrap();
        assert_eq!(
            value(store, Table::Clusters, "east"),
            Some(Versioned {
                value: b"v3".to_vec(),
                version: 3
            })
        );
        // A check alone guards a batch without writing its key.
        store
            .commit(
                Batch::new()
                    .check(Table::Clusters, "east", Expect::Version(3))
                    .put(Table::Meta, "m", b"m".to_vec(), None),
            )
            .unwrap();
        assert_conflict(
            store.commit(Batch::new().check(Table::Clusters, "east", Expect::Absent)),
            Table::Clusters,
            "east",
            "absent",
            "version 3",
        );
        assert_eq!(value(store, Table::Clusters, "east").unwrap().version, 3);
    }

    pub(crate) fn a_failing_batch_writes_nothing(store: &dyn Store) {
        store
            .commit(
                Batch::new()
                    .put(Table::Roots, "kept", b"old".to_vec(), None)
                    .put(Table::Tokens, "t", b"t".to_vec(), None),
            )
            .unwrap();
        let batch = Batch::new()
            .put(Table::Roots, "new-1", b"n1".to_vec(), Some(Expect::Absent))
            .put(Table::Bundles, "new-2", b"n2".to_vec(), None)
            .put(
                Table::Roots,
                "kept",
                b"changed".to_vec(),
                Some(Expect::Version(1)),
            )
            .delete(Table::Tokens, "t", Some(Expect::Present))
            .check(Table::Meta, "ca", Expect::Present);
        assert_conflict(store.commit(batch), Table::Meta, "ca", "present", "absent");
        assert_eq!(value(store, Table::Roots, "new-1"), None);
        assert_eq!(value(store, Table::Bundles, "new-2"), None);
        assert_eq!(
            value(store, Table::Roots, "kept"),
            Some(Versioned {
                value: b"old".to_vec(),
                version: 1
            })
        );
        assert_eq!(
            value(store, Table::Tokens, "t"),
            Some(Versioned {
                value: b"t".to_vec(),
                version: 1
            })
        );
        assert_eq!(store.list(Table::Roots).unwrap().len(), 1);
    }

    pub(crate) fn preconditions_see_the_state_before_the_batch(store: &dyn Store) {
        // The second put's Absent is checked before the first put applies.
        store
            .commit(
                Batch::new()
                    .put(Table::Secrets, "s", b"1".to_vec(), Some(Expect::Absent))
                    .put(Table::Secrets, "s", b"2".to_vec(), Some(Expect::Absent)),
            )
            .unwrap();
        assert_eq!(
            value(store, Table::Secrets, "s"),
            Some(Versioned {
                value: b"2".to_vec(),
                version: 2
            })
        );
    }

    pub(crate) fn delete_removes_and_honours_preconditions(store: &dyn Store) {
        store
            .commit(Batch::new().put(Table::Tokens, "t", b"t".to_vec(), None))
            .unwrap();
        assert_conflict(
            store.commit(Batch::new().delete(Table::Tokens, "t", Some(Expect::Version(7)))),
            Table::Tokens,
            "t",
            "version 7",
            "version 1",
        );
        store
            .commit(Batch::new().delete(Table::Tokens, "t", Some(Expect::Version(1))))
            .unwrap();
        assert_eq!(value(store, Table::Tokens, "t"), None);
        // Deleting what is not there is not an error, unless the batch says so.
        store
            .commit(Batch::new().delete(Table::Tokens, "t", None))
            .unwrap();
        assert_conflict(
            store.commit(Batch::new().delete(Table::Tokens, "t", Some(Expect::Present))),
            Table::Tokens,
            "t",
            "present",
            "absent",
        );
        // A key written again after a delete starts over at version 1.
        store
            .commit(Batch::new().put(Table::Tokens, "t", b"again".to_vec(), Some(Expect::Absent)))
            .unwrap();
        assert_eq!(value(store, Table::Tokens, "t").unwrap().version, 1);
    }

    pub(crate) fn list_is_ordered_by_key_within_one_table(store: &dyn Store) {
        assert!(store.list(Table::Bundles).unwrap().is_empty());
        let mut batch = Batch::new();
        for key in [
            "td.b",
            "td.a/00000000000000000002",
            "td.a",
            "td.a/00000000000000000001",
            "Z",
            "",
        ] {
            batch = batch.put(Table::Bundles, key, key.as_bytes().to_vec(), None);
        }
        batch = batch.put(Table::Roots, "td.0", b"other table".to_vec(), None);
        batch = batch.put(Table::Tokens, "td.0", b"other table".to_vec(), None);
        store.commit(batch).unwrap();
        store
            .commit(Batch::new().put(Table::Bundles, "td.b", b"td.b".to_vec(), None))
            .unwrap();

        let listed = store.list(Table::Bundles).unwrap();
        let keys: Vec<&str> = listed.iter().map(|(key, _)| key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "",
                "Z",
                "td.a",
                "td.a/00000000000000000001",
                "td.a/00000000000000000002",
                "td.b"
            ]
        );
        for (key, stored) in &listed {
            assert_eq!(stored.value, key.as_bytes());
        }
        assert_eq!(listed[5].1.version, 2);
        assert_eq!(store.list(Table::Roots).unwrap().len(), 1);
    }

    pub(crate) fn concurrent_compare_and_swap_loses_no_update(store: &dyn Store) {
        const WRITERS: u64 = 2;
        const INCREMENTS: u64 = 50;
        store
            .commit(Batch::new().put(
                Table::Meta,
                "counter",
                0u64.to_be_bytes().to_vec(),
                Some(Expect::Absent),
            ))
            .unwrap();
        std::thread::scope(|scope| {
            for _ in 0..WRITERS {
                scope.spawn(|| {
                    let mut done = 0;
                    while done < INCREMENTS {
                        let current = value(store, Table::Meta, "counter").unwrap();
                        let count =
                            u64::from_be_bytes(current.value.as_slice().try_into().unwrap());
                        let batch = Batch::new().put(
                            Table::Meta,
                            "counter",
                            (count + 1).to_be_bytes().to_vec(),
                            Some(Expect::Version(current.version)),
                        );
                        match store.commit(batch) {
                            Ok(()) => done += 1,
                            Err(StoreError::Conflict { .. }) => {}
                            Err(other) => panic!("{other}"),
                        }
                    }
                });
            }
        });
        let stored = value(store, Table::Meta, "counter").unwrap();
        assert_eq!(
            u64::from_be_bytes(stored.value.as_slice().try_into().unwrap()),
            WRITERS * INCREMENTS
        );
        assert_eq!(stored.version, WRITERS * INCREMENTS + 1);
    }

    pub(crate) fn append_links_each_entry_to_the_head_it_sees(store: &dyn Store) {
        store
            .commit(append(Batch::new().put(
                Table::Roots,
                "r",
                b"x".to_vec(),
                None,
            )))
            .unwrap();
        // Two appends in one batch: the second sees the head the first left.
        store.commit(append(append(Batch::new()))).unwrap();
        assert_linear(store, 3);
        assert_eq!(value(store, Table::Roots, "r").unwrap().value, b"x");
    }

    pub(crate) fn a_refused_append_writes_nothing(store: &dyn Store) {
        store.commit(append(Batch::new())).unwrap();
        let refused = Batch::new()
            .put(Table::Roots, "r", b"x".to_vec(), None)
            .append(
                Table::Audit,
                Table::Meta,
                "head",
                Arc::new(Counter { refuse: true }),
            );
        assert!(matches!(
            store.commit(refused),
            Err(StoreError::Integrity { .. })
        ));
        // A batch whose precondition fails does not append either.
        let conflicting = append(Batch::new().check(Table::Roots, "r", Expect::Present));
        assert!(matches!(
            store.commit(conflicting),
            Err(StoreError::Conflict { .. })
        ));
        assert_eq!(value(store, Table::Roots, "r"), None);
        assert_linear(store, 1);
    }

    pub(crate) fn concurrent_appends_keep_one_linear_chain(store: &dyn Store) {
        const WRITERS: u64 = 4;
        const APPENDS: u64 = 25;
        std::thread::scope(|scope| {
            for writer in 0..WRITERS {
                scope.spawn(move || {
                    for index in 0..APPENDS {
                        // Each append rides in a batch with other work, as
                        // audit entries do; none of them retries.
                        store
                            .commit(append(Batch::new().put(
                                Table::Certificates,
                                format!("{writer}-{index}"),
                                Vec::new(),
                                Some(Expect::Absent),
                            )))
                            .unwrap();
                    }
                });
            }
        });
        assert_linear(store, WRITERS * APPENDS);
    }

    /// Two stores on one shared backend (two servers): four writers, two
    /// through each, append `per_writer` entries each; both stores then
    /// list every certificate and one linear chain, no write lost.
    pub(crate) fn two_stores_append_as_one(first: &dyn Store, second: &dyn Store, per_writer: u64) {
        std::thread::scope(|scope| {
            for (writer, store) in [(0, first), (1, second), (2, first), (3, second)] {
                scope.spawn(move || {
                    for index in 0..per_writer {
                        store
                            .commit(append(Batch::new().put(
                                Table::Certificates,
                                format!("{writer}-{index}"),
                                vec![1],
                                Some(Expect::Absent),
                            )))
                            .unwrap();
                    }
                });
            }
        });
        for store in [first, second] {
            assert_eq!(
                store.list(Table::Certificates).unwrap().len() as u64,
                4 * per_writer
            );
            assert_linear(store, 4 * per_writer);
        }
    }
}
