//! The commit protocol of the stores that several servers share over a
//! backend offering check-and-set on one object at a time (Vault KV v2,
//! Kubernetes objects with `resourceVersion`): batches commit through one
//! head object.
//!
//! 1. Read the head (its check-and-set token `H`, the last batch's
//!    sequence number `S` and that batch's resolved writes). If that batch
//!    is not yet marked applied, apply it first (roll forward: whoever
//!    committed it may have died half-way).
//! 2. Read the keys the batch needs, check its preconditions, run its
//!    appends, and resolve it into final writes (`key → value or deletion,
//!    new version`).
//! 3. Write the head guarded by `H`: `{seq: S + 1, writes, applied:
//!    false}`. **This is the commit point.** Losing the check-and-set means
//!    another batch committed first: re-read and start again (bounded, with
//!    jitter). The head also remembers the ids of the last batches, so a
//!    writer whose check-and-set succeeded but whose answer was lost does
//!    not commit twice.
//! 4. Apply each write to its key object, which records `{seq, version,
//!    value, previous}`; each is written guarded by the key object's token,
//!    and skipped when the key already holds a write of this or a later
//!    batch, so a late applier never overwrites newer state. Then mark the
//!    head applied (guarded by the head's new token).
//!
//! Readers never see half a batch: a get reads the head and answers from
//! its writes when the last batch touched the key (applied or not), else
//! from the key's object. A list reads the head (batch `S`) and then every
//! key as batch `S` left it: a key's object also keeps the value it held
//! before its last batch, so a key a later batch already changed is read as
//! it was; only a key written twice since `S` makes the list start again.
//! Deleted keys keep a tombstone (so that a late applier cannot resurrect
//! them); lists skip tombstones.
//!
//! A backend ([`Objects`]) reads and writes the head and the key objects;
//! this module owns everything else. The trait [`Store`] is synchronous
//! and is called from async code and from the blocking pool alike, so
//! [`HeadStore`] runs the backend's calls on a small tokio runtime of its
//! own and waits for them on a channel: it never calls `block_on` inside
//! another runtime.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use super::{
    Batch, Expect, Operation, Store, StoreError, Table, Versioned, check_batch, check_precondition,
    next_version,
};

pub mod records;

use records::{Head, KeyRecord, RECENT_BATCHES, Write, backend, batch_id, decode, encode};
use records::{table_named, visible};

/// Commits that lose the head's check-and-set to another server are
/// retried this many times before the store gives up.
const COMMIT_ATTEMPTS: u32 = 64;

/// A list that keeps finding keys written twice since the batch it reads
/// as of is read again this many times.
const LIST_ATTEMPTS: u32 = 32;

/// What a backend of the head-commit protocol does: read and write (with
/// check-and-set) the head and one object per key, list a table's objects,
/// and keep leases. Every call retries transient failures itself and
/// reports what remains as [`StoreError::Unavailable`] (or
/// [`StoreError::Backend`]) naming the object and what to do.
pub trait Objects: Send + Sync + 'static {
    /// What a check-and-set write is guarded by; `Default`: the object
    /// must not exist yet.
    type Token: Clone + Default + Send + Sync + 'static;

    /// The largest head (one resolved batch, as JSON) the backend stores.
    const MAX_BATCH_BYTES: usize;

    /// The backend's name for people ("Vault", "Kubernetes"), and of the
    /// store's runtime threads.
    const NAME: &'static str;

    /// The head and its token; `None` when there is none yet.
    fn read_head(
        &self,
    ) -> impl Future<Output = Result<Option<(Head, Self::Token)>, StoreError>> + Send;

    /// Writes the head if it is still at `token`; `Ok(None)` when another
    /// writer came first.
    fn write_head(
        &self,
        head: &Head,
        token: &Self::Token,
    ) -> impl Future<Output = Result<Option<Self::Token>, StoreError>> + Send;

    /// A key's record and its token.
    fn read_key(
        &self,
        table: Table,
        key: &str,
    ) -> impl Future<Output = Result<Option<(KeyRecord, Self::Token)>, StoreError>> + Send;

    /// Writes a key's record if its object is still at `token`;
    /// `Ok(None)` when another writer came first.
    fn write_key(
        &self,
        table: Table,
        key: &str,
        record: &KeyRecord,
        token: &Self::Token,
    ) -> impl Future<Output = Result<Option<Self::Token>, StoreError>> + Send;

    /// Every key of `table` with its record (tombstones included).
    fn list_keys(
        &self,
        table: Table,
    ) -> impl Future<Output = Result<Vec<(String, KeyRecord)>, StoreError>> + Send;

    /// See [`Store::changes`] (default: none).
    fn changes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        None
    }

    /// See [`Store::lease`].
    fn lease(
        &self,
        name: &str,
        holder: &str,
        now_unix_ms: u64,
        expires_unix_ms: u64,
    ) -> impl Future<Output = Result<String, StoreError>> + Send;

    /// The head, as errors name it (e.g. `Vault secret/data/trustplane/head`).
    fn head_name(&self) -> String;

    /// A key's object, as errors name it.
    fn key_name(&self, table: Table, key: &str) -> String;

    /// A table, as errors name it.
    fn table_name(&self, table: Table) -> String;

    /// The message for a batch of `size` bytes over
    /// [`Objects::MAX_BATCH_BYTES`] (it says that nothing was written).
    fn too_large(&self, size: usize) -> String;
}

/// The protocol over one backend (see the module docs). It dereferences to
/// the backend.
#[derive(Debug)]
pub struct Protocol<B> {
    objects: B,
}

impl<B> std::ops::Deref for Protocol<B> {
    type Target = B;

    fn deref(&self) -> &B {
        &self.objects
    }
}

impl<B: Objects> Protocol<B> {
    /// The head and its token (`Default` when there is none yet).
    pub(crate) async fn head(&self) -> Result<(Head, B::Token), StoreError> {
        Ok(self.objects.read_head().await?.unwrap_or_default())
    }

    /// Writes every write of the batch `seq` to its key, never over a
    /// later batch's write.
    async fn apply(&self, seq: u64, writes: &[Write]) -> Result<(), StoreError> {
        // A key written twice in one batch: only its last write counts.
        let mut last: BTreeMap<(&str, &str), &Write> = BTreeMap::new();
        for write in writes {
            last.insert((write.table.as_str(), write.key.as_str()), write);
        }
        for write in last.into_values() {
            let table = table_named(&write.table).ok_or_else(|| {
                backend(format!(
                    "{}: unknown table {:?} in the last batch",
                    self.objects.head_name(),
                    write.table
                ))
            })?;
            let mut attempts = 0;
            loop {
                let (token, previous) = match self.objects.read_key(table, &write.key).await? {
                    Some((stored, _)) if stored.seq >= seq => break,
                    Some((stored, token)) => (
                        token,
                        Some(Box::new(KeyRecord {
                            previous: None,
                            ..stored
                        })),
                    ),
                    // Deleting what was never written: nothing to record.
                    None if write.value.is_none() => break,
                    None => (B::Token::default(), None),
                };
                let record = KeyRecord {
                    seq,
                    version: write.version,
                    value: write.value.clone(),
                    previous,
                };
                if self
                    .objects
                    .write_key(table, &write.key, &record, &token)
                    .await?
                    .is_some()
                {
                    break;
                }
                attempts += 1;
                if attempts >= COMMIT_ATTEMPTS {
                    return Err(backend(format!(
                        "{}: kept losing check-and-set while applying batch {seq}; trustplane applies it again on the next write",
                        self.objects.key_name(table, &write.key)
                    )));
                }
            }
        }
        Ok(())
    }

    /// Applies the head's batch if it is not marked applied, and marks it.
    /// Returns the head's token afterwards, or `None` when marking lost
    /// the check-and-set (someone else marked it or committed since).
    async fn roll_forward(
        &self,
        head: &Head,
        token: B::Token,
    ) -> Result<Option<B::Token>, StoreError> {
        if head.applied || head.writes.is_empty() {
            return Ok(Some(token));
        }
        self.apply(head.seq, &head.writes).await?;
        // Applied, the key objects hold every value: sealed key material
        // leaves the head (readers take it from its key from now on).
        let writes = head
            .writes
            .iter()
            .map(|write| {
                if write.table == Table::Secrets.name() && write.value.is_some() {
                    Write {
                        value: None,
                        in_key: true,
                        ..write.clone()
                    }
                } else {
                    write.clone()
                }
            })
            .collect();
        let applied = Head {
            applied: true,
            writes,
            ..head.clone()
        };
        self.objects.write_head(&applied, &token).await
    }

    async fn get(&self, table: Table, key: &str) -> Result<Option<Versioned>, StoreError> {
        let (head, _) = self.head().await?;
        if let Some(write) = head
            .writes
            .iter()
            .rev()
            .find(|write| write.table == table.name() && write.key == key)
            .filter(|write| !write.in_key)
        {
            return match &write.value {
                None => Ok(None),
                Some(value) => Ok(Some(Versioned {
                    value: decode(table, key, value)?,
                    version: write.version,
                })),
            };
        }
        match self.objects.read_key(table, key).await? {
            None => Ok(None),
            Some((record, _)) => visible(table, key, &record),
        }
    }

    /// Every key of `table` as one batch left it: the head's batch `S`
    /// (overlaid, applied or not), each key read as of `S` (its record, or
    /// the previous value it keeps when a later batch already wrote it).
    /// Read again only when some key was written twice since `S`.
    async fn list(&self, table: Table) -> Result<Vec<(String, Versioned)>, StoreError> {
        'attempt: for _ in 0..LIST_ATTEMPTS {
            let (head, _) = self.head().await?;
            let mut entries: BTreeMap<String, Versioned> = BTreeMap::new();
            for (key, record) in self.objects.list_keys(table).await? {
                let Some(record) = record.as_of(head.seq) else {
                    continue 'attempt;
                };
                if let Some(stored) = visible(table, &key, &record)? {
                    entries.insert(key, stored);
                }
            }
            for write in head
                .writes
                .iter()
                .filter(|write| write.table == table.name() && !write.in_key)
            {
                match &write.value {
                    None => {
                        entries.remove(&write.key);
                    }
                    Some(value) => {
                        entries.insert(
                            write.key.clone(),
                            Versioned {
                                value: decode(table, &write.key, value)?,
                                version: write.version,
                            },
                        );
                    }
                }
            }
            return Ok(entries.into_iter().collect());
        }
        Err(backend(format!(
            "{}: other servers kept changing {} while it was listed; try again",
            self.objects.table_name(table),
            table.name()
        )))
    }

    /// One attempt at committing `batch`: `Ok(false)` when another batch
    /// committed first.
    pub(crate) async fn try_commit(&self, batch: &Batch, id: &str) -> Result<bool, StoreError> {
        let (head, token) = self.head().await?;
        if head.recent.iter().any(|recent| recent == id) {
            // An earlier attempt committed it; its answer was lost.
            self.roll_forward(&head, token).await?;
            return Ok(true);
        }
        let Some(token) = self.roll_forward(&head, token).await? else {
            // Someone else marked it applied, or committed since: re-read.
            return Ok(false);
        };
        // The state before the batch, read once per key.
        let mut before: BTreeMap<(Table, String), Option<Versioned>> = BTreeMap::new();
        let mut keys: Vec<(Table, String)> = Vec::new();
        for operation in &batch.operations {
            match operation {
                Operation::Put { table, key, .. }
                | Operation::Delete { table, key, .. }
                | Operation::Check { table, key, .. } => keys.push((*table, key.clone())),
                Operation::Append {
                    head_table,
                    head_key,
                    ..
                } => keys.push((*head_table, head_key.clone())),
            }
        }
        for slot in keys {
            if let std::collections::btree_map::Entry::Vacant(entry) = before.entry(slot) {
                let Some(stored) = self.at(head.seq, entry.key()).await? else {
                    return Ok(false);
                };
                entry.insert(stored);
            }
        }
        check_batch(batch, |table, key| {
            Ok(before
                .get(&(table, key.to_string()))
                .and_then(|stored| stored.as_ref().map(|stored| stored.version)))
        })?;
        let mut staged: BTreeMap<(Table, String), Option<Versioned>> = BTreeMap::new();
        let mut writes: Vec<Write> = Vec::new();
        for operation in &batch.operations {
            match operation {
                Operation::Put {
                    table, key, value, ..
                } => {
                    let slot = (*table, key.clone());
                    let Some(previous) = self.current(head.seq, &staged, &before, &slot).await?
                    else {
                        return Ok(false);
                    };
                    let version = next_version(*table, key, previous.map(|stored| stored.version))?;
                    staged.insert(
                        slot,
                        Some(Versioned {
                            value: value.clone(),
                            version,
                        }),
                    );
                    writes.push(Write {
                        table: table.name().to_string(),
                        key: key.clone(),
                        version,
                        value: Some(encode(value)),
                        in_key: false,
                    });
                }
                Operation::Delete { table, key, .. } => {
                    staged.insert((*table, key.clone()), None);
                    writes.push(Write {
                        table: table.name().to_string(),
                        key: key.clone(),
                        version: 0,
                        value: None,
                        in_key: false,
                    });
                }
                Operation::Append {
                    table,
                    head_table,
                    head_key,
                    link,
                } => {
                    let head_slot = (*head_table, head_key.clone());
                    let Some(chain_head) =
                        self.current(head.seq, &staged, &before, &head_slot).await?
                    else {
                        return Ok(false);
                    };
                    let linked = link
                        .0
                        .link(chain_head.as_ref().map(|stored| stored.value.as_slice()))?;
                    let entry_slot = (*table, linked.key.clone());
                    let Some(existing) = self
                        .current(head.seq, &staged, &before, &entry_slot)
                        .await?
                    else {
                        return Ok(false);
                    };
                    check_precondition(
                        *table,
                        &linked.key,
                        Expect::Absent,
                        existing.map(|stored| stored.version),
                    )?;
                    staged.insert(
                        entry_slot,
                        Some(Versioned {
                            value: linked.value.clone(),
                            version: 1,
                        }),
                    );
                    writes.push(Write {
                        table: table.name().to_string(),
                        key: linked.key,
                        version: 1,
                        value: Some(encode(&linked.value)),
                        in_key: false,
                    });
                    let version = next_version(
                        *head_table,
                        head_key,
                        chain_head.map(|stored| stored.version),
                    )?;
                    staged.insert(
                        head_slot,
                        Some(Versioned {
                            value: linked.head.clone(),
                            version,
                        }),
                    );
                    writes.push(Write {
                        table: head_table.name().to_string(),
                        key: head_key.clone(),
                        version,
                        value: Some(encode(&linked.head)),
                        in_key: false,
                    });
                }
                Operation::Check { .. } => {}
            }
        }
        if writes.is_empty() {
            // Preconditions held against committed state; nothing to write.
            return Ok(true);
        }
        let seq = head.seq + 1;
        let mut recent: Vec<String> = head
            .recent
            .iter()
            .skip(head.recent.len().saturating_sub(RECENT_BATCHES - 1))
            .cloned()
            .collect();
        recent.push(id.to_string());
        let next = Head {
            seq,
            applied: false,
            writes,
            recent,
        };
        let size = serde_json::to_string(&next)
            .map_err(|error| backend(format!("cannot encode the batch: {error}")))?
            .len();
        if size > B::MAX_BATCH_BYTES {
            return Err(backend(self.objects.too_large(size)));
        }
        let Some(committed) = self.objects.write_head(&next, &token).await? else {
            return Ok(false);
        };
        // Committed. Applying is best effort here: whoever commits or
        // reads next sees the batch in the head until it is applied.
        if let Err(error) = self.roll_forward(&next, committed).await {
            tracing::warn!(error = %error, seq, "batch committed; applying it to its keys failed, the next commit finishes it");
        }
        Ok(true)
    }

    /// A key's state as the batch being resolved on top of batch `seq`
    /// sees it: its own earlier writes, else the state after batch `seq`
    /// (read when first needed). `None`: a later batch already wrote the
    /// key, so the head read is stale.
    async fn current(
        &self,
        seq: u64,
        staged: &BTreeMap<(Table, String), Option<Versioned>>,
        before: &BTreeMap<(Table, String), Option<Versioned>>,
        slot: &(Table, String),
    ) -> Result<Option<Option<Versioned>>, StoreError> {
        if let Some(pending) = staged.get(slot) {
            return Ok(Some(pending.clone()));
        }
        if let Some(stored) = before.get(slot) {
            return Ok(Some(stored.clone()));
        }
        self.at(seq, slot).await
    }

    /// A key as batch `seq` (applied) left it; `None` when a later batch
    /// already wrote it. Every key read this way reflects one state, that
    /// after batch `seq`, so preconditions and appends are judged on a
    /// consistent snapshot, never on a mix of two batches.
    async fn at(
        &self,
        seq: u64,
        slot: &(Table, String),
    ) -> Result<Option<Option<Versioned>>, StoreError> {
        match self.objects.read_key(slot.0, &slot.1).await? {
            None => Ok(Some(None)),
            Some((record, _)) if record.seq > seq => Ok(None),
            Some((record, _)) => Ok(Some(visible(slot.0, &slot.1, &record)?)),
        }
    }

    async fn commit(&self, batch: Batch) -> Result<(), StoreError> {
        let id = batch_id()?;
        for attempt in 0..COMMIT_ATTEMPTS {
            if self.try_commit(&batch, &id).await? {
                return Ok(());
            }
            tracing::debug!(attempt, "another server committed first; re-reading");
            tokio::time::sleep(jitter(attempt)).await;
        }
        Err(backend(format!(
            "{}: lost check-and-set to other servers {COMMIT_ATTEMPTS} times in a row; nothing was written, try again",
            self.objects.head_name()
        )))
    }
}

/// A random pause of up to `min(attempt + 1, 20)` × 5 ms, so that servers
/// that lost to each other do not collide again.
fn jitter(attempt: u32) -> Duration {
    use ring::rand::SecureRandom as _;
    let mut byte = [0u8; 1];
    let _ = ring::rand::SystemRandom::new().fill(&mut byte);
    let ceiling = u64::from(attempt.saturating_add(1).min(20)) * 5_000;
    Duration::from_micros(u64::from(byte[0]) * ceiling / 255)
}

/// A [`Store`] over the protocol on backend `B`, with its own runtime.
pub struct HeadStore<B> {
    pub(in crate::store) place: Arc<Protocol<B>>,
    /// Serialises this process's commits, so that they do not race each
    /// other for the head (other servers still do).
    commits: Arc<tokio::sync::Mutex<()>>,
    /// `None` only while dropping.
    runtime: Option<tokio::runtime::Runtime>,
}

impl<B> Drop for HeadStore<B> {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which panics inside another runtime;
        // shutting it down in the background does not.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// A runtime for a store on backend `name`.
///
/// Errors: [`StoreError::Backend`] when the threads cannot be started.
pub(in crate::store) fn runtime(name: &str) -> Result<tokio::runtime::Runtime, StoreError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(format!("trustplane-{}-store", name.to_lowercase()))
        .enable_all()
        .build()
        .map_err(|error| StoreError::Backend {
            message: format!("cannot start the {name} store's runtime: {error}"),
            source: Some(Box::new(error)),
        })
}

impl<B: Objects> HeadStore<B> {
    /// The store over `objects`, running on `runtime`; reads the head
    /// once so that a wrong place or credential fails now, naming it.
    ///
    /// Errors: those of [`Objects::read_head`].
    pub(in crate::store) fn new(
        objects: B,
        runtime: tokio::runtime::Runtime,
    ) -> Result<Self, StoreError> {
        let store = HeadStore {
            place: Arc::new(Protocol { objects }),
            commits: Arc::new(tokio::sync::Mutex::new(())),
            runtime: Some(runtime),
        };
        store.run(|place| async move { place.head().await.map(|_| ()) })?;
        Ok(store)
    }

    /// Runs `call` on the store's runtime and waits for it.
    pub(in crate::store) fn run<T, F, Fut>(&self, call: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(Arc<Protocol<B>>) -> Fut,
        Fut: Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        let runtime = self
            .runtime
            .as_ref()
            .ok_or_else(|| backend(format!("the {} store is shutting down", B::NAME)))?;
        let (sender, receiver) = std::sync::mpsc::sync_channel(1);
        let future = call(self.place.clone());
        runtime.spawn(async move {
            let _ = sender.send(future.await);
        });
        receiver.recv().map_err(|_| {
            backend(format!(
                "the {} store's task stopped before answering",
                B::NAME
            ))
        })?
    }
}

impl<B: Objects> Store for HeadStore<B> {
    fn get(&self, table: Table, key: &str) -> Result<Option<Versioned>, StoreError> {
        let key = key.to_string();
        self.run(move |place| async move { place.get(table, &key).await })
    }

    fn list(&self, table: Table) -> Result<Vec<(String, Versioned)>, StoreError> {
        self.run(move |place| async move { place.list(table).await })
    }

    fn commit(&self, batch: Batch) -> Result<(), StoreError> {
        let commits = self.commits.clone();
        self.run(move |place| async move {
            let _serial = commits.lock().await;
            place.commit(batch).await
        })
    }

    fn shared(&self) -> bool {
        true
    }

    fn generation(&self) -> Result<Option<u64>, StoreError> {
        self.run(|place| async move { Ok(Some(place.head().await?.0.seq)) })
    }

    fn changes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        self.place.objects.changes()
    }

    fn lease(
        &self,
        name: &str,
        holder: &str,
        now_unix_ms: u64,
        expires_unix_ms: u64,
    ) -> Result<String, StoreError> {
        let name = name.to_string();
        let holder = holder.to_string();
        self.run(move |place| async move {
            place
                .objects
                .lease(&name, &holder, now_unix_ms, expires_unix_ms)
                .await
        })
    }
}
