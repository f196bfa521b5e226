//! In-memory store for tests: the same semantics as the embedded store
//! (versions, preconditions, all-or-nothing batches), without durability.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use super::{Batch, Store, StoreError, Table, Versioned, stage_batch};

/// A store in process memory (lost on exit). For tests.
#[derive(Debug, Default)]
pub struct MemoryStore {
    entries: Mutex<BTreeMap<(Table, String), Versioned>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        MemoryStore::default()
    }

    // A panic while the lock was held cannot have left a half-applied batch:
    // `commit` checks everything before it changes anything, and the changes
    // themselves do not panic. So the map is consistent and poisoning is
    // safe to ignore.
    fn entries(&self) -> MutexGuard<'_, BTreeMap<(Table, String), Versioned>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Store for MemoryStore {
    fn get(&self, table: Table, key: &str) -> Result<Option<Versioned>, StoreError> {
        Ok(self.entries().get(&(table, key.to_string())).cloned())
    }

    fn list(&self, table: Table) -> Result<Vec<(String, Versioned)>, StoreError> {
        Ok(self
            .entries()
            .range((table, String::new())..)
            .take_while(|((entry_table, _), _)| *entry_table == table)
            .map(|((_, key), stored)| (key.clone(), stored.clone()))
            .collect())
    }

    fn commit(&self, batch: Batch) -> Result<(), StoreError> {
        let mut entries = self.entries();
        let staged = stage_batch(batch, |table, key| {
            Ok(entries.get(&(table, key.to_string())).cloned())
        })?;
        for (slot, write) in staged {
            match write {
                Some(stored) => entries.insert(slot, stored),
                None => entries.remove(&slot),
            };
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::store::Expect;

    crate::store::store_conformance_tests!((MemoryStore::new(), ()));

    #[test]
    fn a_poisoned_lock_does_not_panic_and_keeps_the_data() {
        let store = std::sync::Arc::new(MemoryStore::new());
        store
            .commit(Batch::new().put(
                Table::Meta,
                "ca",
                b"settings".to_vec(),
                Some(Expect::Absent),
            ))
            .unwrap();
        let poisoner = std::sync::Arc::clone(&store);
        let joined = std::thread::spawn(move || {
            let _guard = poisoner.entries.lock().unwrap();
            panic!("poison the lock");
        })
        .join();
        assert!(joined.is_err());
        assert!(store.entries.is_poisoned());

        let stored = store.get(Table::Meta, "ca").unwrap().unwrap();
        assert_eq!(stored.value, b"settings");
        store
            .commit(Batch::new().put(Table::Meta, "ca", b"new".to_vec(), Some(Expect::Version(1))))
            .unwrap();
        assert_eq!(store.get(Table::Meta, "ca").unwrap().unwrap().version, 2);
    }
}
