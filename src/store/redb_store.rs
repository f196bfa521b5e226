//! The embedded store (redb).

use super::{Batch, Store, StoreError, Table, Versioned};

/// The embedded store: one redb file under the data directory.
#[derive(Debug)]
pub struct RedbStore {}

impl RedbStore {
    /// Opens or creates the database at `path`. Errors:
    /// [`StoreError::Locked`] when another process holds it.
    pub fn open(path: &std::path::Path) -> Result<Self, StoreError> {
        todo!("{path:?}")
    }
}

impl Store for RedbStore {
    fn get(&self, table: Table, key: &str) -> Result<Option<Versioned>, StoreError> {
        todo!("{table:?}{key}")
    }
    fn list(&self, table: Table) -> Result<Vec<(String, Versioned)>, StoreError> {
        todo!("{table:?}")
    }
    fn commit(&self, batch: Batch) -> Result<(), StoreError> {
        todo!("{batch:?}")
    }
}
