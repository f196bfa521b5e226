//! In-memory store for tests.

use super::{Batch, Store, StoreError, Table, Versioned};

/// A store in process memory (lost on exit). For tests.
#[derive(Debug, Default)]
pub struct MemoryStore {}

impl Store for MemoryStore {
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
