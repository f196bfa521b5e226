//! The embedded store (redb): one file, one redb table per [`Table`], each
//! value stored with its version. Batches are written by group commit:
//! batches that arrive while a commit is on its way to disk wait, and the
//! next commit writes all of them in one write transaction with immediate
//! durability (one fsync for the group). Each batch keeps its own
//! preconditions and atomicity: it is checked against the state that
//! includes the batches before it in the group, and a batch that is refused
//! writes nothing and fails alone. `commit` returns only once its batch is
//! durable. redb's copy-on-write commit means a crash leaves either the old
//! or the new state, never a mix.

use std::collections::HashMap;
use std::fs::{DirBuilder, OpenOptions, Permissions};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

use redb::{Database, DatabaseError, Durability, ReadableDatabase, ReadableTable, TableDefinition};

use super::{Batch, GROUP_COMMIT_LOG, Staged, Store, StoreError, Table, Versioned, stage_batch};

/// Stored value: (version, bytes).
type Definition = TableDefinition<'static, &'static str, (u64, &'static [u8])>;

/// The value and version under `key`, in a read or a write transaction.
fn read_versioned(
    table: &impl ReadableTable<&'static str, (u64, &'static [u8])>,
    key: &str,
) -> Result<Option<Versioned>, StoreError> {
    let stored = table.get(key).map_err(backend("read a value"))?;
    Ok(stored.map(|guard| {
        let (version, value) = guard.value();
        Versioned {
            value: value.to_vec(),
            version,
        }
    }))
}

fn definition(table: Table) -> Definition {
    TableDefinition::new(table.name())
}

/// Wraps a redb error with what was being done.
fn backend<E>(doing: &'static str) -> impl FnOnce(E) -> StoreError
where
    E: std::error::Error + Send + Sync + 'static,
{
    move |error| StoreError::Backend {
        message: format!("{doing}: {error}"),
        source: Some(Box::new(error)),
    }
}

/// The embedded store: one redb file under the data directory, readable and
/// writable by its owner only (it holds sealed keys and token hashes).
/// Preconditions of a batch are checked against the state before the batch.
#[derive(Debug)]
pub struct RedbStore {
    database: Database,
    /// The group commit's queue and outcomes.
    group: Mutex<Group>,
    /// Signalled when a group commit has set its outcomes.
    committed: Condvar,
    /// Durable transactions written (one fsync each).
    commits: AtomicU64,
    /// Batches those transactions carried.
    batches: AtomicU64,
}

/// Batches waiting for a group commit and the outcomes of those committed,
/// by ticket.
#[derive(Debug, Default)]
struct Group {
    /// The next ticket.
    next_ticket: u64,
    /// Waiting for the next group commit, in arrival order.
    queue: Vec<(u64, Batch)>,
    /// Outcomes not yet collected by their caller.
    outcomes: HashMap<u64, Result<(), StoreError>>,
    /// A thread is writing a group (outside the lock).
    writing: bool,
}

/// Locks `mutex`. A panic while it was held cannot have left a batch
/// half-applied (a write transaction that is not committed is aborted when
/// dropped), so poisoning is safe to ignore.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Group commits so far: how many durable transactions, and how many
/// batches they carried.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CommitCounts {
    /// Durable transactions (one fsync each).
    pub commits: u64,
    /// Batches committed in them.
    pub batches: u64,
}

impl RedbStore {
    /// Opens or creates the database at `path`: creates missing parent
    /// directories (mode 0700), creates the file with mode 0600 (and tightens
    /// an existing file to 0600), and creates every table so that reads never
    /// fail for a missing table. Errors: [`StoreError::Locked`] when another
    /// process holds it; [`StoreError::Backend`] when the file cannot be
    /// created or is not a redb database.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let display = path.display().to_string();
        let io_error = |doing: &str, error: std::io::Error| StoreError::Backend {
            message: format!("{doing} {display}: {error}"),
            source: Some(Box::new(error)),
        };
        if let Some(parent) = path
            .parent()
            .filter(|parent| !parent.as_os_str().is_empty())
        {
            DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent)
                .map_err(|error| io_error("cannot create the directory of", error))?;
        }
        // Created here, not by redb, so that the file never exists with
        // looser permissions than 0600. An existing file is left alone until
        // redb has locked it.
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
        {
            Ok(_) => {}
            Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(error) => return Err(io_error("cannot create", error)),
        }
        let database = Database::create(path).map_err(|error| match error {
            DatabaseError::DatabaseAlreadyOpen | DatabaseError::LockProtocolMismatch => {
                StoreError::Locked {
                    path: display.clone(),
                }
            }
            other => StoreError::Backend {
                message: format!("cannot open the database {display}: {other}"),
                source: Some(Box::new(other)),
            },
        })?;
        std::fs::set_permissions(path, Permissions::from_mode(0o600))
            .map_err(|error| io_error("cannot set mode 0600 on", error))?;

        let transaction = database
            .begin_write()
            .map_err(backend("begin a write transaction"))?;
        for table in Table::ALL {
            transaction
                .open_table(definition(table))
                .map_err(backend("create a table"))?;
        }
        transaction
            .commit()
            .map_err(backend("commit the table creation"))?;
        Ok(RedbStore {
            database,
            group: Mutex::new(Group::default()),
            committed: Condvar::new(),
            commits: AtomicU64::new(0),
            batches: AtomicU64::new(0),
        })
    }

    /// Group commits since this store was opened.
    pub fn commit_counts(&self) -> CommitCounts {
        CommitCounts {
            commits: self.commits.load(Ordering::Relaxed),
            batches: self.batches.load(Ordering::Relaxed),
        }
    }

    /// Writes `group` in one durable write transaction and returns each
    /// batch's outcome, in order. A batch that is refused (precondition,
    /// append, read error) fails alone and writes nothing; a failure to
    /// write or commit the transaction fails every batch that was in it.
    fn commit_group(&self, group: Vec<Batch>) -> Vec<Result<(), StoreError>> {
        let count = group.len();
        let everyone = |error: StoreError| -> Vec<Result<(), StoreError>> {
            let message = error.to_string();
            let mut failed = vec![Err(error)];
            failed.extend((1..count).map(|_| {
                Err(StoreError::Backend {
                    message: message.clone(),
                    source: None,
                })
            }));
            failed
        };
        let mut transaction = match self.database.begin_write() {
            Ok(transaction) => transaction,
            Err(error) => return everyone(backend("begin a write transaction")(error)),
        };
        if let Err(error) = transaction.set_durability(Durability::Immediate) {
            return everyone(backend("set durability")(error));
        }
        let mut outcomes = Vec::with_capacity(count);
        for batch in group {
            let staged = stage_batch(batch, |table, key| {
                let opened = transaction
                    .open_table(definition(table))
                    .map_err(backend("open a table"))?;
                read_versioned(&opened, key)
            });
            match staged {
                Ok(staged) => {
                    // A write that fails half-way cannot be taken back
                    // alone: the transaction is dropped, which aborts it
                    // and every batch in it.
                    if let Err(error) = apply(&transaction, staged) {
                        return everyone(error);
                    }
                    outcomes.push(Ok(()));
                }
                Err(error) => outcomes.push(Err(error)),
            }
        }
        let committed = outcomes.iter().filter(|outcome| outcome.is_ok()).count();
        if committed == 0 {
            // Nothing to write: dropping the transaction aborts it, no fsync.
            return outcomes;
        }
        if let Err(error) = transaction.commit() {
            let message = format!("commit: {error}");
            let mut source = Some(Box::new(error) as Box<dyn std::error::Error + Send + Sync>);
            for outcome in &mut outcomes {
                if outcome.is_ok() {
                    *outcome = Err(StoreError::Backend {
                        message: message.clone(),
                        source: source.take(),
                    });
                }
            }
            return outcomes;
        }
        self.commits.fetch_add(1, Ordering::Relaxed);
        self.batches.fetch_add(committed as u64, Ordering::Relaxed);
        tracing::debug!(batches = committed, "{GROUP_COMMIT_LOG}");
        outcomes
    }
}

/// A group write in progress. Dropped, it marks the write finished and
/// wakes the waiting callers; the batches of `tickets` still without an
/// outcome (the write panicked) get an error, so that no caller waits for
/// ever.
struct Writing<'a> {
    store: &'a RedbStore,
    tickets: Vec<u64>,
}

impl Drop for Writing<'_> {
    fn drop(&mut self) {
        let mut group = lock(&self.store.group);
        for ticket in self.tickets.drain(..) {
            group.outcomes.insert(
                ticket,
                Err(StoreError::Backend {
                    message: "the group commit carrying this batch panicked, so whether it was written is unknown: read the state back before retrying".into(),
                    source: None,
                }),
            );
        }
        group.writing = false;
        self.store.committed.notify_all();
    }
}

/// Writes a staged batch into `transaction`.
fn apply(transaction: &redb::WriteTransaction, staged: Staged) -> Result<(), StoreError> {
    for ((table, key), write) in staged {
        let mut opened = transaction
            .open_table(definition(table))
            .map_err(backend("open a table"))?;
        match write {
            Some(stored) => {
                opened
                    .insert(key.as_str(), (stored.version, stored.value.as_slice()))
                    .map_err(backend("write a value"))?;
            }
            None => {
                opened
                    .remove(key.as_str())
                    .map_err(backend("delete a value"))?;
            }
        }
    }
    Ok(())
}

impl Store for RedbStore {
    fn get(&self, table: Table, key: &str) -> Result<Option<Versioned>, StoreError> {
        let transaction = self
            .database
            .begin_read()
            .map_err(backend("begin a read transaction"))?;
        let opened = transaction
            .open_table(definition(table))
            .map_err(backend("open a table"))?;
        read_versioned(&opened, key)
    }

    fn list(&self, table: Table) -> Result<Vec<(String, Versioned)>, StoreError> {
        let transaction = self
            .database
            .begin_read()
            .map_err(backend("begin a read transaction"))?;
        let opened = transaction
            .open_table(definition(table))
            .map_err(backend("open a table"))?;
        let entries = opened.iter().map_err(backend("list a table"))?;
        entries
            .map(|entry| {
                let (key, stored) = entry.map_err(backend("read a listed value"))?;
                let (version, value) = stored.value();
                Ok((
                    key.value().to_string(),
                    Versioned {
                        value: value.to_vec(),
                        version,
                    },
                ))
            })
            .collect()
    }

    /// Queues `batch` for the next group commit and returns once it is
    /// durable (or refused); see [`Store::commit_many`].
    fn commit(&self, batch: Batch) -> Result<(), StoreError> {
        self.commit_many(vec![batch]).pop().unwrap_or_else(|| {
            Err(StoreError::Backend {
                message: "a group commit returned no outcome for a batch".into(),
                source: None,
            })
        })
    }

    /// Queues `batches` for the next group commit and returns once they
    /// are durable (or refused). A caller that finds no group being written
    /// writes every batch queued by then, its own included; the others wait
    /// for their outcomes.
    fn commit_many(&self, batches: Vec<Batch>) -> Vec<Result<(), StoreError>> {
        let mut group = lock(&self.group);
        let count = batches.len();
        let first = group.next_ticket;
        group.next_ticket += count as u64;
        group.queue.extend((first..).zip(batches));
        let mut outcomes = Vec::with_capacity(count);
        loop {
            // Outcomes arrive in ticket order: a group takes the queue whole.
            while outcomes.len() < count {
                match group.outcomes.remove(&(first + outcomes.len() as u64)) {
                    Some(outcome) => outcomes.push(outcome),
                    None => break,
                }
            }
            if outcomes.len() == count {
                return outcomes;
            }
            if group.writing {
                group = self
                    .committed
                    .wait(group)
                    .unwrap_or_else(PoisonError::into_inner);
                continue;
            }
            group.writing = true;
            let (tickets, batches): (Vec<u64>, Vec<Batch>) =
                std::mem::take(&mut group.queue).into_iter().unzip();
            drop(group);
            let mut writing = Writing {
                store: self,
                tickets,
            };
            let written = self.commit_group(batches);
            let tickets = std::mem::take(&mut writing.tickets);
            lock(&self.group)
                .outcomes
                .extend(tickets.into_iter().zip(written));
            drop(writing);
            group = lock(&self.group);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::store::Expect;

    fn fresh() -> (RedbStore, tempfile::TempDir) {
        let directory = tempfile::tempdir().unwrap();
        let store = RedbStore::open(&directory.path().join("trustplane.redb")).unwrap();
        (store, directory)
    }

    crate::store::store_conformance_tests!(fresh());

    fn put(store: &RedbStore, table: Table, key: &str, value: &[u8]) {
        store
            .commit(Batch::new().put(table, key, value.to_vec(), None))
            .unwrap();
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn open_creates_missing_directories_and_a_private_file() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory
            .path()
            .join("data")
            .join("nested")
            .join("trustplane.redb");
        let store = RedbStore::open(&path).unwrap();
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(path.parent().unwrap()), 0o700);
        // Every table exists: reads of a never-written table succeed.
        for table in Table::ALL {
            assert_eq!(store.get(table, "missing").unwrap(), None);
            assert!(store.list(table).unwrap().is_empty());
        }
    }

    #[test]
    fn open_tightens_a_loose_existing_file() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("trustplane.redb");
        drop(RedbStore::open(&path).unwrap());
        std::fs::set_permissions(&path, Permissions::from_mode(0o644)).unwrap();
        drop(RedbStore::open(&path).unwrap());
        assert_eq!(mode(&path), 0o600);
    }

    #[test]
    fn open_refuses_a_file_that_is_not_a_database() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("trustplane.redb");
        std::fs::write(
            &path,
            b"not a redb file, but long enough to look like a header of something",
        )
        .unwrap();
        assert!(matches!(
            RedbStore::open(&path),
            Err(StoreError::Backend { .. })
        ));
    }

    #[test]
    fn data_persists_across_close_and_reopen() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("trustplane.redb");
        {
            let store = RedbStore::open(&path).unwrap();
            put(&store, Table::Roots, "b", b"root b");
            put(&store, Table::Roots, "a", b"root a");
            put(&store, Table::Roots, "a", b"root a v2");
            put(&store, Table::Secrets, "key", b"sealed");
            store
                .commit(Batch::new().delete(Table::Secrets, "key", None))
                .unwrap();
        }
        let store = RedbStore::open(&path).unwrap();
        assert_eq!(
            store.list(Table::Roots).unwrap(),
            vec![
                (
                    "a".to_string(),
                    Versioned {
                        value: b"root a v2".to_vec(),
                        version: 2
                    }
                ),
                (
                    "b".to_string(),
                    Versioned {
                        value: b"root b".to_vec(),
                        version: 1
                    }
                ),
            ]
        );
        assert_eq!(store.get(Table::Secrets, "key").unwrap(), None);
        store
            .commit(Batch::new().put(Table::Roots, "a", b"v3".to_vec(), Some(Expect::Version(2))))
            .unwrap();
    }

    #[test]
    fn a_second_open_reports_locked_until_the_first_closes() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("trustplane.redb");
        let first = RedbStore::open(&path).unwrap();
        put(&first, Table::Meta, "ca", b"settings");
        match RedbStore::open(&path) {
            Err(StoreError::Locked { path: locked }) => {
                assert_eq!(locked, path.display().to_string())
            }
            other => panic!("expected Locked, got {other:?}"),
        }
        // The refused open changed nothing and the first handle still works.
        assert_eq!(
            first.get(Table::Meta, "ca").unwrap().unwrap().value,
            b"settings"
        );
        drop(first);
        let second = RedbStore::open(&path).unwrap();
        assert_eq!(
            second.get(Table::Meta, "ca").unwrap().unwrap().value,
            b"settings"
        );
    }

    #[test]
    fn locked_by_another_process() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("trustplane.redb");
        let mut holder = ChildWriter::spawn(&path, ChildMode::HoldOpen);
        holder.wait_until_ready();
        assert!(matches!(
            RedbStore::open(&path),
            Err(StoreError::Locked { .. })
        ));
        holder.kill();
        let store = RedbStore::open(&path).unwrap();
        assert_eq!(
            store.get(Table::Meta, "ca").unwrap().unwrap().value,
            b"child"
        );
    }

    #[test]
    fn an_uncommitted_transaction_leaves_the_old_state() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("trustplane.redb");
        {
            let store = RedbStore::open(&path).unwrap();
            put(&store, Table::Roots, "a", b"old");
            let transaction = store.database.begin_write().unwrap();
            {
                let mut roots = transaction.open_table(definition(Table::Roots)).unwrap();
                roots.insert("a", (2, b"new".as_slice())).unwrap();
                roots.insert("b", (1, b"new".as_slice())).unwrap();
            }
            drop(transaction);
            assert_eq!(store.get(Table::Roots, "a").unwrap().unwrap().value, b"old");
        }
        let store = RedbStore::open(&path).unwrap();
        assert_eq!(
            store.list(Table::Roots).unwrap(),
            vec![(
                "a".to_string(),
                Versioned {
                    value: b"old".to_vec(),
                    version: 1
                }
            )]
        );
    }

    #[test]
    fn a_process_killed_mid_write_leaves_the_old_state() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("trustplane.redb");
        {
            let store = RedbStore::open(&path).unwrap();
            put(&store, Table::Roots, "a", b"old");
            put(&store, Table::Certificates, "01", b"issued");
        }
        // The child overwrites and adds megabytes in one transaction (so
        // that pages reach the file) and aborts before committing.
        let status = ChildWriter::spawn(&path, ChildMode::AbortMidWrite)
            .child
            .wait()
            .unwrap();
        assert!(
            !status.success(),
            "the child must die mid-write, got {status}"
        );

        let store = RedbStore::open(&path).unwrap();
        assert_eq!(
            store.list(Table::Roots).unwrap(),
            vec![(
                "a".to_string(),
                Versioned {
                    value: b"old".to_vec(),
                    version: 1
                }
            )]
        );
        assert_eq!(store.list(Table::Certificates).unwrap().len(), 1);
        // And it is writable again.
        store
            .commit(Batch::new().put(
                Table::Roots,
                "a",
                b"after".to_vec(),
                Some(Expect::Version(1)),
            ))
            .unwrap();
    }

    /// Commits `batches` from one thread each while a group commit is
    /// (pretended to be) on its way to disk, so that they queue in this
    /// order; then lets them go: the first to wake writes them all as one
    /// group. Returns each batch's outcome.
    fn commit_as_one_group(store: &RedbStore, batches: Vec<Batch>) -> Vec<Result<(), StoreError>> {
        lock(&store.group).writing = true;
        std::thread::scope(|scope| {
            let mut threads = Vec::new();
            for (queued, batch) in batches.into_iter().enumerate() {
                threads.push(scope.spawn(move || store.commit(batch)));
                while lock(&store.group).queue.len() <= queued {
                    std::thread::yield_now();
                }
            }
            lock(&store.group).writing = false;
            store.committed.notify_all();
            threads
                .into_iter()
                .map(|thread| thread.join().unwrap())
                .collect()
        })
    }

    #[derive(Debug)]
    struct RefusedLink;

    impl crate::store::ChainLink for RefusedLink {
        fn link(&self, _head: Option<&[u8]>) -> Result<crate::store::Linked, StoreError> {
            Err(StoreError::Integrity {
                table: "meta",
                key: "head".into(),
                reason: "refused".into(),
            })
        }
    }

    #[test]
    fn concurrent_batches_share_one_durable_commit() {
        let (store, _directory) = fresh();
        let before = store.commit_counts();
        let batches = (0..8)
            .map(|index| {
                Batch::new().put(
                    Table::Certificates,
                    format!("{index:02}"),
                    b"issued".to_vec(),
                    Some(Expect::Absent),
                )
            })
            .collect();
        let outcomes = commit_as_one_group(&store, batches);
        assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");
        let after = store.commit_counts();
        assert_eq!(after.commits - before.commits, 1);
        assert_eq!(after.batches - before.batches, 8);
        assert_eq!(store.list(Table::Certificates).unwrap().len(), 8);
    }

    #[test]
    fn a_refused_batch_fails_alone_and_its_neighbours_commit() {
        let (store, _directory) = fresh();
        put(&store, Table::Roots, "cas", b"v1");
        let before = store.commit_counts();
        let outcomes = commit_as_one_group(
            &store,
            vec![
                // Committed.
                Batch::new().put(
                    Table::Certificates,
                    "01",
                    b"a".to_vec(),
                    Some(Expect::Absent),
                ),
                // A failed compare-and-swap.
                Batch::new()
                    .put(Table::Certificates, "02", b"b".to_vec(), None)
                    .put(
                        Table::Roots,
                        "cas",
                        b"v2".to_vec(),
                        Some(Expect::Version(7)),
                    ),
                // A refused append after a put: the put is not written either.
                Batch::new()
                    .put(Table::Certificates, "03", b"c".to_vec(), None)
                    .append(Table::Audit, Table::Meta, "head", Arc::new(RefusedLink)),
                // Lost to the first batch of the same group.
                Batch::new().put(
                    Table::Certificates,
                    "01",
                    b"d".to_vec(),
                    Some(Expect::Absent),
                ),
                // Sees the state the earlier batches of the group left.
                Batch::new()
                    .put(
                        Table::Certificates,
                        "04",
                        b"e".to_vec(),
                        Some(Expect::Absent),
                    )
                    .put(
                        Table::Roots,
                        "cas",
                        b"v2".to_vec(),
                        Some(Expect::Version(1)),
                    ),
            ],
        );
        assert!(outcomes[0].is_ok(), "{:?}", outcomes[0]);
        assert!(
            matches!(&outcomes[1], Err(StoreError::Conflict { key, .. }) if key == "cas"),
            "{:?}",
            outcomes[1]
        );
        assert!(
            matches!(&outcomes[2], Err(StoreError::Integrity { .. })),
            "{:?}",
            outcomes[2]
        );
        assert!(
            matches!(&outcomes[3], Err(StoreError::Conflict { key, .. }) if key == "01"),
            "{:?}",
            outcomes[3]
        );
        assert!(outcomes[4].is_ok(), "{:?}", outcomes[4]);
        let after = store.commit_counts();
        assert_eq!(after.commits - before.commits, 1);
        assert_eq!(after.batches - before.batches, 2);
        let keys: Vec<(String, Vec<u8>)> = store
            .list(Table::Certificates)
            .unwrap()
            .into_iter()
            .map(|(key, stored)| (key, stored.value))
            .collect();
        assert_eq!(
            keys,
            vec![("01".into(), b"a".to_vec()), ("04".into(), b"e".to_vec())]
        );
        let cas = store.get(Table::Roots, "cas").unwrap().unwrap();
        assert_eq!((cas.value, cas.version), (b"v2".to_vec(), 2));
        assert!(store.list(Table::Audit).unwrap().is_empty());
        assert_eq!(store.get(Table::Meta, "head").unwrap(), None);
    }

    #[test]
    fn a_group_of_refused_batches_writes_nothing_and_does_not_commit() {
        let (store, _directory) = fresh();
        let before = store.commit_counts();
        let outcomes = commit_as_one_group(
            &store,
            vec![
                Batch::new().check(Table::Roots, "missing", Expect::Present),
                Batch::new().delete(Table::Roots, "missing", Some(Expect::Version(1))),
            ],
        );
        assert!(
            outcomes
                .iter()
                .all(|outcome| matches!(outcome, Err(StoreError::Conflict { .. })))
        );
        assert_eq!(store.commit_counts(), before);
    }

    #[test]
    fn a_group_committed_before_return_survives_reopen() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("trustplane.redb");
        {
            let store = RedbStore::open(&path).unwrap();
            let batches = (0..4)
                .map(|index| {
                    Batch::new().put(
                        Table::Certificates,
                        format!("{index:02}"),
                        vec![index],
                        Some(Expect::Absent),
                    )
                })
                .collect();
            let outcomes = commit_as_one_group(&store, batches);
            assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");
            assert_eq!(store.commit_counts().batches, 4);
        }
        let store = RedbStore::open(&path).unwrap();
        let stored: Vec<(String, Vec<u8>, u64)> = store
            .list(Table::Certificates)
            .unwrap()
            .into_iter()
            .map(|(key, stored)| (key, stored.value, stored.version))
            .collect();
        assert_eq!(
            stored,
            (0..4)
                .map(|index| (format!("{index:02}"), vec![index], 1))
                .collect::<Vec<_>>()
        );
    }

    #[test]
    fn many_threads_committing_at_once_each_get_their_own_outcome() {
        let (store, _directory) = fresh();
        // Every thread bumps one counter by compare-and-swap, retrying on
        // conflict, and adds one record of its own: none is lost, and each
        // thread saw exactly its own outcomes.
        put(&store, Table::Meta, "counter", b"0");
        std::thread::scope(|scope| {
            for thread in 0..8 {
                let store = &store;
                scope.spawn(move || {
                    for round in 0..10 {
                        store
                            .commit(Batch::new().put(
                                Table::Certificates,
                                format!("{thread}-{round}"),
                                Vec::new(),
                                Some(Expect::Absent),
                            ))
                            .unwrap();
                        loop {
                            let current = store.get(Table::Meta, "counter").unwrap().unwrap();
                            let next: u64 = String::from_utf8(current.value)
                                .unwrap()
                                .parse::<u64>()
                                .unwrap()
                                + 1;
                            match store.commit(Batch::new().put(
                                Table::Meta,
                                "counter",
                                next.to_string().into_bytes(),
                                Some(Expect::Version(current.version)),
                            )) {
                                Ok(()) => break,
                                Err(StoreError::Conflict { .. }) => continue,
                                Err(other) => panic!("{other}"),
                            }
                        }
                    }
                });
            }
        });
        assert_eq!(store.list(Table::Certificates).unwrap().len(), 80);
        assert_eq!(
            store.get(Table::Meta, "counter").unwrap().unwrap().value,
            b"80"
        );
        let counts = store.commit_counts();
        assert!(counts.batches >= 161 && counts.commits <= counts.batches);
    }

    /// Tells the re-executed test binary what to do (see [`child_writer`]).
    const CHILD_ENV: &str = "TRUSTPLANE_TEST_REDB_CHILD";

    enum ChildMode {
        HoldOpen,
        AbortMidWrite,
    }

    struct ChildWriter {
        child: std::process::Child,
    }

    impl ChildWriter {
        fn spawn(path: &Path, mode: ChildMode) -> Self {
            let mode = match mode {
                ChildMode::HoldOpen => "hold",
                ChildMode::AbortMidWrite => "abort",
            };
            let child = std::process::Command::new(std::env::current_exe().unwrap())
                .args([
                    "--exact",
                    "store::redb_store::tests::child_writer",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(CHILD_ENV, format!("{mode}:{}", path.display()))
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap();
            ChildWriter { child }
        }

        fn wait_until_ready(&mut self) {
            use std::io::BufRead;
            let stdout = self.child.stdout.take().unwrap();
            let ready = std::io::BufReader::new(stdout)
                .lines()
                .map(Result::unwrap)
                .any(|line| line.ends_with("child-ready"));
            assert!(ready, "the child exited before opening the database");
        }

        /// SIGKILL, then reap.
        fn kill(mut self) {
            self.child.kill().unwrap();
            self.child.wait().unwrap();
        }
    }

    /// Not a test on its own: does nothing unless re-executed by
    /// [`ChildWriter`] with [`CHILD_ENV`] set.
    #[test]
    #[allow(clippy::disallowed_methods)] // a test hook: the parent sets it for this process only
    fn child_writer() {
        let Ok(instruction) = std::env::var(CHILD_ENV) else {
            return;
        };
        let (mode, path) = instruction.split_once(':').unwrap();
        let store = RedbStore::open(Path::new(path)).unwrap();
        match mode {
            "hold" => {
                put(&store, Table::Meta, "ca", b"child");
                println!("child-ready");
                // Blocks until the parent kills this process (stdin stays open).
                let mut line = String::new();
                std::io::stdin().read_line(&mut line).unwrap();
                std::process::abort();
            }
            "abort" => {
                let transaction = store.database.begin_write().unwrap();
                {
                    let mut roots = transaction.open_table(definition(Table::Roots)).unwrap();
                    roots.insert("a", (2, b"new".as_slice())).unwrap();
                    let filler = vec![0x5a; 4096];
                    for index in 0..2_000 {
                        roots
                            .insert(
                                format!("filler-{index:05}").as_str(),
                                (1, filler.as_slice()),
                            )
                            .unwrap();
                    }
                    let mut certificates = transaction
                        .open_table(definition(Table::Certificates))
                        .unwrap();
                    certificates.remove("01").unwrap();
                }
                std::process::abort();
            }
            other => panic!("unknown child mode {other}"),
        }
    }
}
