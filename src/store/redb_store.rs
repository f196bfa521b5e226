//! The embedded store (redb): one file, one redb table per [`Table`], each
//! value stored with its version. A batch is one write transaction, committed
//! with immediate durability; redb's copy-on-write commit means a crash
//! leaves either the old or the new state, never a mix.

use std::fs::{DirBuilder, OpenOptions, Permissions};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use redb::{Database, DatabaseError, Durability, ReadableDatabase, ReadableTable, TableDefinition};

use super::{
    Batch, Expect, Operation, Store, StoreError, Table, Versioned, check_batch, check_precondition,
    next_version,
};

/// Stored value: (version, bytes).
type Definition = TableDefinition<'static, &'static str, (u64, &'static [u8])>;

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
        Ok(RedbStore { database })
    }
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
        let stored = opened.get(key).map_err(backend("read a value"))?;
        Ok(stored.map(|guard| {
            let (version, value) = guard.value();
            Versioned {
                value: value.to_vec(),
                version,
            }
        }))
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

    fn commit(&self, batch: Batch) -> Result<(), StoreError> {
        let mut transaction = self
            .database
            .begin_write()
            .map_err(backend("begin a write transaction"))?;
        transaction
            .set_durability(Durability::Immediate)
            .map_err(backend("set durability"))?;
        // On any error below, `transaction` is dropped uncommitted, which
        // aborts it: nothing of the batch reaches the file.
        check_batch(&batch, |table, key| {
            let opened = transaction
                .open_table(definition(table))
                .map_err(backend("open a table"))?;
            let stored = opened.get(key).map_err(backend("read a value"))?;
            Ok(stored.map(|guard| guard.value().0))
        })?;
        for operation in &batch.operations {
            match operation {
                Operation::Put {
                    table, key, value, ..
                } => {
                    let mut opened = transaction
                        .open_table(definition(*table))
                        .map_err(backend("open a table"))?;
                    let previous = opened
                        .get(key.as_str())
                        .map_err(backend("read a value"))?
                        .map(|guard| guard.value().0);
                    let version = next_version(*table, key, previous)?;
                    opened
                        .insert(key.as_str(), (version, value.as_slice()))
                        .map_err(backend("write a value"))?;
                }
                Operation::Delete { table, key, .. } => {
                    let mut opened = transaction
                        .open_table(definition(*table))
                        .map_err(backend("open a table"))?;
                    opened
                        .remove(key.as_str())
                        .map_err(backend("delete a value"))?;
                }
                Operation::Append {
                    table,
                    head_table,
                    head_key,
                    link,
                } => {
                    let head = {
                        let opened = transaction
                            .open_table(definition(*head_table))
                            .map_err(backend("open a table"))?;
                        let stored = opened
                            .get(head_key.as_str())
                            .map_err(backend("read a value"))?;
                        stored.map(|guard| {
                            let (version, value) = guard.value();
                            (version, value.to_vec())
                        })
                    };
                    let linked = link
                        .0
                        .link(head.as_ref().map(|(_, value)| value.as_slice()))?;
                    let mut entries = transaction
                        .open_table(definition(*table))
                        .map_err(backend("open a table"))?;
                    let existing = entries
                        .get(linked.key.as_str())
                        .map_err(backend("read a value"))?
                        .map(|guard| guard.value().0);
                    check_precondition(*table, &linked.key, Expect::Absent, existing)?;
                    entries
                        .insert(linked.key.as_str(), (1, linked.value.as_slice()))
                        .map_err(backend("write a value"))?;
                    drop(entries);
                    let version =
                        next_version(*head_table, head_key, head.map(|(version, _)| version))?;
                    transaction
                        .open_table(definition(*head_table))
                        .map_err(backend("open a table"))?
                        .insert(head_key.as_str(), (version, linked.head.as_slice()))
                        .map_err(backend("write a value"))?;
                }
                Operation::Check { .. } => {}
            }
        }
        transaction.commit().map_err(backend("commit"))?;
        tracing::debug!(batches = 1, "{}", super::GROUP_COMMIT_LOG);
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

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
