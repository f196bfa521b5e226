//! The `vault-kv` store: every key a secret in Vault (or OpenBao) KV v2,
//! under `<mount>/data/<prefix>/`, shared by every trustplane server that
//! points at it.
//!
//! KV v2 only offers check-and-set on one secret, so batches commit through
//! one head secret, `<prefix>/head`:
//!
//! 1. Read the head (its KV version `H`, the last batch's sequence number
//!    `S` and that batch's resolved writes). If that batch is not yet marked
//!    applied, apply it first (roll forward: whoever committed it may have
//!    died half-way).
//! 2. Read the keys the batch needs, check its preconditions, run its
//!    appends, and resolve it into final writes (`key → value or deletion,
//!    new version`).
//! 3. Write the head with `cas = H`: `{seq: S + 1, writes, applied: false}`.
//!    **This is the commit point.** Losing the CAS means another batch
//!    committed first: re-read and start again (bounded, with jitter). The
//!    head also remembers the ids of the last batches, so a writer whose
//!    CAS succeeded but whose answer was lost does not commit twice.
//! 4. Apply each write to its key secret `<prefix>/tables/<table>/<key>`,
//!    which records `{seq, version, value, previous}`; each is written with `cas` on
//!    the key's KV version, and skipped when the key already holds a write
//!    of this or a later batch, so a late applier never overwrites newer
//!    state. Then mark the head applied (`cas = H + 1`).
//!
//! Readers never see half a batch: [`Store::get`] reads the head and
//! answers from its writes when the last batch touched the key (applied or
//! not), else from the key's secret. [`Store::list`] reads the head (batch
//! `S`) and then every key as batch `S` left it: a key's secret also keeps
//! the value it held before its last batch, so a key a later batch already
//! changed is read as it was; only a key written twice since `S` makes the
//! list start again. Deleted keys keep a tombstone secret (so that a late
//! applier cannot resurrect them); lists skip tombstones.
//!
//! Key names are escaped into one path segment: `k` followed by the key
//! with every byte outside `[A-Za-z0-9._-]` as `%XX` (so `/` in bundle
//! history keys and the empty key work).
//!
//! The trait is synchronous and is called from async code and from the
//! blocking pool alike, so the store runs its Vault calls on a small tokio
//! runtime of its own and waits for them on a channel: it never calls
//! `block_on` inside another runtime. Every Vault call goes through
//! [`Vault::call_classified`], like every Vault call of trustplane:
//! transient failures (sealed, unreachable, 5xx) are retried with backoff,
//! then reported as [`StoreError::Unavailable`] naming the Vault path and
//! what to do; a 403 under AppRole or Kubernetes auth (an expired or
//! revoked token) logs in again once and repeats the call, and a 403 that
//! remains (or any 403 with a given token) is a [`StoreError::Backend`]
//! naming the path and saying to fix the policy, log in again or give a new
//! token. A lost check-and-set is not retried there: the commit protocol
//! below re-reads and tries again. Nothing of a failed batch is committed.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use super::{
    Batch, Expect, Operation, Store, StoreError, Table, Versioned, check_batch, check_precondition,
    next_version,
};
use crate::vault::{Vault, VaultConfig, VaultErrorKind, kv};

mod records;

#[cfg(test)]
use records::batch_id_from;
use records::{
    Head, KeyRecord, RECENT_BATCHES, Write, backend, batch_id, decode, encode, table_named,
    vault_error, visible,
};
pub use records::{LeaseRecord, escape_key, unescape_key};

/// The largest head (one resolved batch) the store writes: below OpenBao's
/// and Vault's default raft entry limit of 1 MiB, with room for metadata.
pub const MAX_BATCH_BYTES: usize = 768 * 1024;

/// Attempts of one Vault call while Vault is sealed, unreachable or failing
/// with 5xx (pauses 0.1 s, 0.2 s, 0.4 s, ... between them).
const TRANSIENT_ATTEMPTS: u32 = 6;

/// Commits that lose the head's check-and-set to another server are
/// retried this many times before the store gives up.
const COMMIT_ATTEMPTS: u32 = 64;

/// A list that keeps finding keys written twice since the batch it reads
/// as of is read again this many times.
const LIST_ATTEMPTS: u32 = 32;

/// Key reads a list runs at once.
const LIST_PARALLEL_READS: usize = 16;

/// Where the store lives in Vault.
#[derive(Debug)]
struct Place {
    vault: Arc<Vault>,
    mount: String,
    prefix: String,
}

/// The store on Vault KV v2 (see the module docs for the commit protocol).
pub struct VaultKvStore {
    place: Arc<Place>,
    /// Serialises this process's commits, so that they do not race each
    /// other for the head (other servers still do).
    commits: Arc<tokio::sync::Mutex<()>>,
    /// `None` only while dropping.
    runtime: Option<tokio::runtime::Runtime>,
}

impl std::fmt::Debug for VaultKvStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VaultKvStore")
            .field("mount", &self.place.mount)
            .field("prefix", &self.place.prefix)
            .finish_non_exhaustive()
    }
}

impl Drop for VaultKvStore {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which panics inside another runtime;
        // shutting it down in the background does not.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Place {
    fn head_path(&self) -> String {
        format!("{}/head", self.prefix)
    }

    fn table_path(&self, table: Table) -> String {
        format!("{}/tables/{}/", self.prefix, table.name())
    }

    fn key_path(&self, table: Table, key: &str) -> String {
        format!("{}{}", self.table_path(table), escape_key(key))
    }

    async fn read_raw(&self, path: &str) -> Result<Option<kv::KvEntry>, StoreError> {
        self.vault
            .call_classified(TRANSIENT_ATTEMPTS, |client| {
                let mount = self.mount.clone();
                let path = path.to_string();
                async move { kv::read(&client, &mount, &path).await }
            })
            .await
            .map_err(vault_error)
    }

    /// Writes with check-and-set; `Ok(None)` when the CAS was lost.
    async fn write_raw(
        &self,
        path: &str,
        data: serde_json::Value,
        cas: u64,
    ) -> Result<Option<u64>, StoreError> {
        // A lost check-and-set is no transient failure: `call` returns it
        // at once, as the `Conflict` it is.
        let written = self
            .vault
            .call_classified(TRANSIENT_ATTEMPTS, |client| {
                let mount = self.mount.clone();
                let path = path.to_string();
                let data = data.clone();
                async move { kv::write(&client, &mount, &path, data, cas).await }
            })
            .await;
        match written {
            Ok(version) => Ok(Some(version)),
            Err(error) if error.kind == VaultErrorKind::Conflict => Ok(None),
            Err(error) => Err(vault_error(error)),
        }
    }

    fn parse<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        data: serde_json::Value,
    ) -> Result<T, StoreError> {
        serde_json::from_value(data).map_err(|error| {
            backend(format!(
                "Vault {}: not a trustplane record ({error}); is --vault-kv-prefix shared with something else?",
                kv::data_path(&self.mount, path)
            ))
        })
    }

    /// The head and its KV version (0 when there is none yet).
    async fn head(&self) -> Result<(Head, u64), StoreError> {
        let path = self.head_path();
        match self.read_raw(&path).await? {
            None => Ok((Head::default(), 0)),
            Some(entry) => Ok((self.parse(&path, entry.data)?, entry.version)),
        }
    }

    /// A key's record and its KV version.
    async fn key(&self, table: Table, key: &str) -> Result<Option<(KeyRecord, u64)>, StoreError> {
        let path = self.key_path(table, key);
        match self.read_raw(&path).await? {
            None => Ok(None),
            Some(entry) => Ok(Some((self.parse(&path, entry.data)?, entry.version))),
        }
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
                    "Vault {}: unknown table {:?} in the last batch",
                    kv::data_path(&self.mount, &self.head_path()),
                    write.table
                ))
            })?;
            let path = self.key_path(table, &write.key);
            let mut attempts = 0;
            loop {
                let (cas, previous) = match self.key(table, &write.key).await? {
                    Some((stored, _)) if stored.seq >= seq => break,
                    Some((stored, kv_version)) => (
                        kv_version,
                        Some(Box::new(KeyRecord {
                            previous: None,
                            ..stored
                        })),
                    ),
                    // Deleting what was never written: nothing to record.
                    None if write.value.is_none() => break,
                    None => (0, None),
                };
                let record = KeyRecord {
                    seq,
                    version: write.version,
                    value: write.value.clone(),
                    previous,
                };
                let data = serde_json::to_value(&record)
                    .map_err(|error| backend(format!("cannot encode {path}: {error}")))?;
                if self.write_raw(&path, data, cas).await?.is_some() {
                    break;
                }
                attempts += 1;
                if attempts >= COMMIT_ATTEMPTS {
                    return Err(backend(format!(
                        "Vault {}: kept losing check-and-set while applying batch {seq}; trustplane applies it again on the next write",
                        kv::data_path(&self.mount, &path)
                    )));
                }
            }
        }
        Ok(())
    }

    /// Applies the head's batch if it is not marked applied, and marks it.
    /// Returns the head's KV version afterwards, or `None` when marking
    /// lost the check-and-set (someone else marked it or committed since).
    async fn roll_forward(&self, head: &Head, kv_version: u64) -> Result<Option<u64>, StoreError> {
        if head.applied || head.writes.is_empty() {
            return Ok(Some(kv_version));
        }
        self.apply(head.seq, &head.writes).await?;
        let applied = Head {
            applied: true,
            ..head.clone()
        };
        let data = serde_json::to_value(&applied)
            .map_err(|error| backend(format!("cannot encode the head: {error}")))?;
        self.write_raw(&self.head_path(), data, kv_version).await
    }

    /// See [`Store::lease`]: one KV secret per lease, changed by
    /// check-and-set; losing it twice in a row answers who won.
    async fn lease(
        &self,
        name: &str,
        holder: &str,
        now_unix_ms: u64,
        expires_unix_ms: u64,
    ) -> Result<String, StoreError> {
        let path = format!("{}/leases/{}", self.prefix, escape_key(name));
        for _ in 0..2 {
            let (cas, current) = match self.read_raw(&path).await? {
                None => (0, None),
                Some(entry) => (
                    entry.version,
                    Some(self.parse::<LeaseRecord>(&path, entry.data)?),
                ),
            };
            if let Some(current) = current
                && current.holder != holder
                && current.expires_unix_ms > now_unix_ms
            {
                return Ok(current.holder);
            }
            let record = LeaseRecord {
                holder: holder.to_string(),
                expires_unix_ms,
            };
            let data = serde_json::to_value(&record)
                .map_err(|error| backend(format!("cannot encode {path}: {error}")))?;
            if self.write_raw(&path, data, cas).await?.is_some() {
                return Ok(record.holder);
            }
        }
        match self.read_raw(&path).await? {
            Some(entry) => Ok(self.parse::<LeaseRecord>(&path, entry.data)?.holder),
            None => Ok(String::new()),
        }
    }

    async fn get(&self, table: Table, key: &str) -> Result<Option<Versioned>, StoreError> {
        let (head, _) = self.head().await?;
        if let Some(write) = head
            .writes
            .iter()
            .rev()
            .find(|write| write.table == table.name() && write.key == key)
        {
            return match &write.value {
                None => Ok(None),
                Some(value) => Ok(Some(Versioned {
                    value: decode(table, key, value)?,
                    version: write.version,
                })),
            };
        }
        match self.key(table, key).await? {
            None => Ok(None),
            Some((record, _)) => visible(table, key, &record),
        }
    }

    /// Every key of `table` as one batch left it: the head's batch `S`
    /// (overlaid, applied or not), each key read as of `S` (its record, or
    /// the previous value it keeps when a later batch already wrote it).
    /// Read again only when some key was written twice since `S`.
    async fn list(self: Arc<Self>, table: Table) -> Result<Vec<(String, Versioned)>, StoreError> {
        'attempt: for _ in 0..LIST_ATTEMPTS {
            let (head, _) = self.head().await?;
            let folder = self.table_path(table);
            let names = self
                .vault
                .call_classified(TRANSIENT_ATTEMPTS, |client| {
                    let mount = self.mount.clone();
                    let folder = folder.clone();
                    async move { kv::list(&client, &mount, &folder).await }
                })
                .await
                .map_err(vault_error)?;
            // Reads in parallel, a few at a time.
            let permits = Arc::new(tokio::sync::Semaphore::new(LIST_PARALLEL_READS));
            let mut reads = tokio::task::JoinSet::new();
            for name in names {
                let Some(key) = unescape_key(&name) else {
                    continue;
                };
                let place = self.clone();
                let permits = permits.clone();
                reads.spawn(async move {
                    let _permit = permits.acquire_owned().await;
                    let record = place.key(table, &key).await?;
                    Ok::<_, StoreError>((key, record))
                });
            }
            let mut entries: BTreeMap<String, Versioned> = BTreeMap::new();
            while let Some(read) = reads.join_next().await {
                let (key, record) = read.map_err(|error| {
                    backend(format!("a read of {} failed: {error}", table.name()))
                })??;
                let Some((record, _)) = record else {
                    continue;
                };
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
                .filter(|write| write.table == table.name())
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
            "Vault {}: other servers kept changing {} while it was listed; try again",
            kv::data_path(&self.mount, &self.table_path(table)),
            table.name()
        )))
    }

    /// One attempt at committing `batch`: `Ok(false)` when another batch
    /// committed first.
    async fn try_commit(&self, batch: &Batch, id: &str) -> Result<bool, StoreError> {
        let (head, kv_version) = self.head().await?;
        if head.recent.iter().any(|recent| recent == id) {
            // An earlier attempt committed it; its answer was lost.
            self.roll_forward(&head, kv_version).await?;
            return Ok(true);
        }
        let Some(kv_version) = self.roll_forward(&head, kv_version).await? else {
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
                    });
                }
                Operation::Delete { table, key, .. } => {
                    staged.insert((*table, key.clone()), None);
                    writes.push(Write {
                        table: table.name().to_string(),
                        key: key.clone(),
                        version: 0,
                        value: None,
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
        let data = serde_json::to_value(&next)
            .map_err(|error| backend(format!("cannot encode the batch: {error}")))?;
        let size = data.to_string().len();
        if size > MAX_BATCH_BYTES {
            return Err(backend(format!(
                "a batch of {size} bytes exceeds what one Vault KV entry holds ({MAX_BATCH_BYTES} bytes at {}); nothing was written",
                kv::data_path(&self.mount, &self.head_path())
            )));
        }
        let Some(committed_version) = self.write_raw(&self.head_path(), data, kv_version).await?
        else {
            return Ok(false);
        };
        // Committed. Applying is best effort here: whoever commits or
        // reads next sees the batch in the head until it is applied.
        if let Err(error) = self.roll_forward(&next, committed_version).await {
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
        match self.key(slot.0, &slot.1).await? {
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
            "Vault {}: lost check-and-set to other servers {COMMIT_ATTEMPTS} times in a row; nothing was written, try again",
            kv::data_path(&self.mount, &self.head_path())
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

impl VaultKvStore {
    /// Connects to Vault with `config` and opens the store under
    /// `config.kv_mount` / `config.kv_prefix`.
    ///
    /// Errors: [`StoreError::Backend`] with the Vault error (address,
    /// credentials, a missing mount, a sealed Vault after retries).
    pub fn open(config: VaultConfig) -> Result<Self, StoreError> {
        let runtime = runtime()?;
        let (sender, receiver) = std::sync::mpsc::sync_channel(1);
        runtime.spawn(async move {
            let _ = sender.send(Vault::connect(config).await);
        });
        let vault = receiver
            .recv()
            .map_err(|_| backend("the Vault connection task stopped"))?
            .map_err(vault_error)?;
        Self::with_runtime(vault, runtime)
    }

    /// Opens the store on an existing connection (shared with the signer).
    ///
    /// Errors: as [`VaultKvStore::open`].
    pub fn with_vault(vault: Arc<Vault>) -> Result<Self, StoreError> {
        Self::with_runtime(vault, runtime()?)
    }

    fn with_runtime(
        vault: Arc<Vault>,
        runtime: tokio::runtime::Runtime,
    ) -> Result<Self, StoreError> {
        let config = vault.config();
        let mount = config.kv_mount.trim_matches('/').to_string();
        let prefix = config.kv_prefix.trim_matches('/').to_string();
        if mount.is_empty() || prefix.is_empty() {
            return Err(backend(
                "--vault-kv-mount and --vault-kv-prefix must not be empty",
            ));
        }
        let store = VaultKvStore {
            place: Arc::new(Place {
                vault,
                mount,
                prefix,
            }),
            commits: Arc::new(tokio::sync::Mutex::new(())),
            runtime: Some(runtime),
        };
        // Fails now, with the path, if the mount or the token is wrong.
        store.run(|place| async move { place.head().await.map(|_| ()) })?;
        Ok(store)
    }

    /// Runs `call` on the store's runtime and waits for it.
    fn run<T, F, Fut>(&self, call: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(Arc<Place>) -> Fut,
        Fut: Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        let runtime = self
            .runtime
            .as_ref()
            .ok_or_else(|| backend("the Vault store is shutting down"))?;
        let (sender, receiver) = std::sync::mpsc::sync_channel(1);
        let future = call(self.place.clone());
        runtime.spawn(async move {
            let _ = sender.send(future.await);
        });
        receiver
            .recv()
            .map_err(|_| backend("the Vault store's task stopped before answering"))?
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, StoreError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("trustplane-vault-kv")
        .enable_all()
        .build()
        .map_err(|error| StoreError::Backend {
            message: format!("cannot start the Vault store's runtime: {error}"),
            source: Some(Box::new(error)),
        })
}

impl Store for VaultKvStore {
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
                .lease(&name, &holder, now_unix_ms, expires_unix_ms)
                .await
        })
    }
}

/// The real OpenBao harness of the integration tests, shared with these
/// unit tests (a missing `bao` fails them loudly).
#[cfg(test)]
#[path = "../../../tests/common/openbao.rs"]
pub(crate) mod openbao;

#[cfg(test)]
mod tests;
