//! The `vault-kv` store: every key a secret in Vault (or OpenBao) KV v2,
//! under `<mount>/data/<prefix>/`, shared by every trustplane server that
//! points at it.
//!
//! KV v2 only offers check-and-set on one secret, so batches commit through
//! one head secret, `<prefix>/head`, by the protocol of
//! `store::head_commit` (shared with the `kubernetes` store; this module is
//! its backend over KV v2, [`VaultObjects`]):
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

use std::sync::Arc;

use super::head_commit::records::{Head, KeyRecord, backend};
use super::head_commit::{HeadStore, Objects, runtime};
use super::{StoreError, Table};
use crate::vault::{Vault, VaultConfig, VaultErrorKind, kv};

mod records;

#[cfg(test)]
use super::head_commit::records::{RECENT_BATCHES, Write, batch_id, batch_id_from, encode};
#[cfg(test)]
use super::{Batch, Expect, Store};
use records::vault_error;
pub use records::{LeaseRecord, escape_key, unescape_key};

/// The largest head (one resolved batch) the store writes: below OpenBao's
/// and Vault's default raft entry limit of 1 MiB, with room for metadata.
pub const MAX_BATCH_BYTES: usize = 768 * 1024;

/// Attempts of one Vault call while Vault is sealed, unreachable or failing
/// with 5xx (pauses 0.1 s, 0.2 s, 0.4 s, ... between them).
const TRANSIENT_ATTEMPTS: u32 = 6;

/// Key reads a list runs at once.
const LIST_PARALLEL_READS: usize = 16;

/// Where the store lives in Vault: the backend of the head-commit protocol.
#[derive(Clone, Debug)]
pub struct VaultObjects {
    vault: Arc<Vault>,
    mount: String,
    prefix: String,
}

/// The store on Vault KV v2 (see the module docs for the commit protocol).
pub type VaultKvStore = HeadStore<VaultObjects>;

impl std::fmt::Debug for VaultKvStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VaultKvStore")
            .field("mount", &self.place.mount)
            .field("prefix", &self.place.prefix)
            .finish_non_exhaustive()
    }
}

impl VaultObjects {
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

    async fn write_record<T: serde::Serialize>(
        &self,
        path: &str,
        record: &T,
        cas: u64,
    ) -> Result<Option<u64>, StoreError> {
        let data = serde_json::to_value(record)
            .map_err(|error| backend(format!("cannot encode {path}: {error}")))?;
        self.write_raw(path, data, cas).await
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

    async fn read_record<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
    ) -> Result<Option<(T, u64)>, StoreError> {
        match self.read_raw(path).await? {
            None => Ok(None),
            Some(entry) => Ok(Some((self.parse(path, entry.data)?, entry.version))),
        }
    }
}

impl Objects for VaultObjects {
    type Token = u64;
    const MAX_BATCH_BYTES: usize = MAX_BATCH_BYTES;
    const NAME: &'static str = "Vault";

    async fn read_head(&self) -> Result<Option<(Head, u64)>, StoreError> {
        self.read_record(&self.head_path()).await
    }

    async fn write_head(&self, head: &Head, token: &u64) -> Result<Option<u64>, StoreError> {
        self.write_record(&self.head_path(), head, *token).await
    }

    async fn read_key(
        &self,
        table: Table,
        key: &str,
    ) -> Result<Option<(KeyRecord, u64)>, StoreError> {
        self.read_record(&self.key_path(table, key)).await
    }

    async fn write_key(
        &self,
        table: Table,
        key: &str,
        record: &KeyRecord,
        token: &u64,
    ) -> Result<Option<u64>, StoreError> {
        self.write_record(&self.key_path(table, key), record, *token)
            .await
    }

    /// The names in the table's folder, then each key read, a few at a
    /// time.
    async fn list_keys(&self, table: Table) -> Result<Vec<(String, KeyRecord)>, StoreError> {
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
        let permits = Arc::new(tokio::sync::Semaphore::new(LIST_PARALLEL_READS));
        let mut reads = tokio::task::JoinSet::new();
        for name in names {
            let Some(key) = unescape_key(&name) else {
                continue;
            };
            let objects = self.clone();
            let permits = permits.clone();
            reads.spawn(async move {
                let _permit = permits.acquire_owned().await;
                let record = objects.read_key(table, &key).await?;
                Ok::<_, StoreError>((key, record))
            });
        }
        let mut records = Vec::new();
        while let Some(read) = reads.join_next().await {
            let (key, record) = read.map_err(|error| {
                backend(format!("a read of {} failed: {error}", table.name()))
            })??;
            if let Some((record, _)) = record {
                records.push((key, record));
            }
        }
        Ok(records)
    }

    /// One KV secret per lease, changed by check-and-set; losing it twice
    /// in a row answers who won.
    async fn lease(
        &self,
        name: &str,
        holder: &str,
        now_unix_ms: u64,
        expires_unix_ms: u64,
    ) -> Result<String, StoreError> {
        let path = format!("{}/leases/{}", self.prefix, escape_key(name));
        for _ in 0..2 {
            let (cas, current) = match self.read_record::<LeaseRecord>(&path).await? {
                None => (0, None),
                Some((record, version)) => (version, Some(record)),
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
            if self.write_record(&path, &record, cas).await?.is_some() {
                return Ok(record.holder);
            }
        }
        match self.read_record::<LeaseRecord>(&path).await? {
            Some((record, _)) => Ok(record.holder),
            None => Ok(String::new()),
        }
    }

    fn head_name(&self) -> String {
        format!("Vault {}", kv::data_path(&self.mount, &self.head_path()))
    }

    fn key_name(&self, table: Table, key: &str) -> String {
        format!(
            "Vault {}",
            kv::data_path(&self.mount, &self.key_path(table, key))
        )
    }

    fn table_name(&self, table: Table) -> String {
        format!(
            "Vault {}",
            kv::data_path(&self.mount, &self.table_path(table))
        )
    }

    fn too_large(&self, size: usize) -> String {
        format!(
            "a batch of {size} bytes exceeds what one Vault KV entry holds ({MAX_BATCH_BYTES} bytes at {}); nothing was written",
            kv::data_path(&self.mount, &self.head_path())
        )
    }
}

impl VaultKvStore {
    /// Connects to Vault with `config` and opens the store under
    /// `config.kv_mount` / `config.kv_prefix`.
    ///
    /// Errors: [`StoreError::Backend`] with the Vault error (address,
    /// credentials, a missing mount, a sealed Vault after retries).
    pub fn open(config: VaultConfig) -> Result<Self, StoreError> {
        let runtime = runtime(VaultObjects::NAME)?;
        let (sender, receiver) = std::sync::mpsc::sync_channel(1);
        runtime.spawn(async move {
            let _ = sender.send(Vault::connect(config).await);
        });
        let connected = receiver
            .recv()
            .map_err(|_| backend("the Vault connection task stopped"))
            .and_then(|connected| connected.map_err(vault_error));
        match connected {
            Ok(vault) => Self::with_runtime(vault, runtime),
            Err(error) => {
                // Dropping a runtime blocks, which panics when the caller
                // runs inside another runtime (the server does).
                runtime.shutdown_background();
                Err(error)
            }
        }
    }

    /// Opens the store on an existing connection (shared with the signer).
    ///
    /// Errors: as [`VaultKvStore::open`].
    pub fn with_vault(vault: Arc<Vault>) -> Result<Self, StoreError> {
        Self::with_runtime(vault, runtime(VaultObjects::NAME)?)
    }

    fn with_runtime(
        vault: Arc<Vault>,
        runtime: tokio::runtime::Runtime,
    ) -> Result<Self, StoreError> {
        let config = vault.config();
        let mount = config.kv_mount.trim_matches('/').to_string();
        let prefix = config.kv_prefix.trim_matches('/').to_string();
        if mount.is_empty() || prefix.is_empty() {
            runtime.shutdown_background();
            return Err(backend(
                "--vault-kv-mount and --vault-kv-prefix must not be empty",
            ));
        }
        // Fails now, with the path, if the mount or the token is wrong.
        HeadStore::new(
            VaultObjects {
                vault,
                mount,
                prefix,
            },
            runtime,
        )
    }
}

/// The real OpenBao harness of the integration tests, shared with these
/// unit tests (a missing `bao` fails them loudly).
#[cfg(test)]
#[path = "../../../tests/common/openbao.rs"]
pub(crate) mod openbao;

#[cfg(test)]
mod tests;
