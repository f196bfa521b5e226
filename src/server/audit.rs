//! The audit trail: every state change (init, clusters added and removed,
//! push kubeconfigs, enrollments, issued certificates, bundle versions,
//! rotation steps, reissues) and every refused admin call, with who did it.
//! An entry is added to the same store transaction as the change it
//! describes, so there is never a change without its entry.
//!
//! The entries form a hash chain: entry `n` holds SHA-256 over its content
//! and entry `n - 1`'s hash. The head record (last sequence number and hash)
//! carries an HMAC keyed from the KEK, so someone with only the store file
//! can edit, delete, reorder or truncate entries but cannot make the chain
//! verify again ([`verify_chain`]).
//!
//! Concurrency: the append is resolved inside the store's write transaction
//! ([`crate::store::Operation::Append`]): the entry's sequence number and
//! previous hash are read from the head as the transaction sees it, and the
//! store serialises write transactions. So batches committed concurrently
//! append one after the other, the chain stays linear, and no caller has to
//! retry for it (a compare-and-swap on the head would make every concurrent
//! issuance conflict and retry its whole change).
//!
//! Every entry is also one structured log line (target `trustplane::audit`,
//! fields `seq`, `actor`, `action`, `detail`, `hash`) for SIEMs. It is
//! written when the entry is linked inside the transaction, so a commit that
//! then fails (an I/O error) leaves a line for an entry that does not exist;
//! the `seq` of the next line shows it.

use std::sync::Arc;
use std::time::SystemTime;

use ring::digest::{SHA256, digest};

use super::error::{ChainError, ServerError};
use super::integrity;
use crate::ca::system_time_to_unix;
use crate::signer::sealed::Kek;
use crate::store::records::{self, AUDIT_HEAD_KEY, AuditHead, AuditRecord, CA_SETTINGS_KEY};
use crate::store::{Batch, ChainLink, Expect, Linked, Store, StoreError, Table};

/// HKDF label of the audit head's MAC key (distinct from the record MACs').
const HEAD_MAC_LABEL: &[u8] = b"trustplane audit-head v1";
/// Domain separation of entry hashes.
const ENTRY_CONTEXT: &[u8] = b"trustplane-audit-v1\0";
/// Domain separation of the head MAC.
const HEAD_CONTEXT: &[u8] = b"trustplane-audit-head-v1\0";
/// The `prev_hash` of the first entry.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The actor of changes made offline with the data directory and the KEK
/// (`trustplane issue`, `trustplane audit upgrade`).
pub const OFFLINE_ACTOR: &str = "offline (data directory + KEK)";

/// The actor of a cluster's agent.
pub fn cluster_actor(cluster: &str) -> String {
    format!("cluster/{cluster}")
}

/// The key of entry `seq` (20 digits, so keys sort by sequence).
pub fn entry_key(seq: u64) -> String {
    format!("{seq:020}")
}

/// SHA-256 (lowercase hex) of an entry's sequence number, time, actor,
/// action, detail and previous hash, each length-prefixed so that no two
/// different entries hash the same bytes.
pub fn entry_hash(record: &AuditRecord) -> String {
    let mut input = Vec::with_capacity(
        ENTRY_CONTEXT.len()
            + 64
            + record.actor.len()
            + record.action.len()
            + record.detail.len()
            + record.prev_hash.len(),
    );
    input.extend_from_slice(ENTRY_CONTEXT);
    input.extend_from_slice(&record.seq.to_be_bytes());
    input.extend_from_slice(&record.unix.to_be_bytes());
    for field in [
        &record.actor,
        &record.action,
        &record.detail,
        &record.prev_hash,
    ] {
        input.extend_from_slice(&(field.len() as u64).to_be_bytes());
        input.extend_from_slice(field.as_bytes());
    }
    hex::encode(digest(&SHA256, &input))
}

fn head_key(kek: &Kek) -> ring::hmac::Key {
    kek.derive_mac_key(HEAD_MAC_LABEL)
}

fn head_input(seq: u64, hash: &str) -> Vec<u8> {
    let mut input = HEAD_CONTEXT.to_vec();
    input.extend_from_slice(&seq.to_be_bytes());
    input.extend_from_slice(hash.as_bytes());
    input
}

fn signed_head(key: &ring::hmac::Key, seq: u64, hash: String) -> AuditHead {
    let mac = hex::encode(ring::hmac::sign(key, &head_input(seq, &hash)));
    AuditHead { seq, hash, mac }
}

fn head_authenticates(key: &ring::hmac::Key, head: &AuditHead) -> bool {
    hex::decode(&head.mac)
        .is_ok_and(|tag| ring::hmac::verify(key, &head_input(head.seq, &head.hash), &tag).is_ok())
}

const HEAD_HELP: &str = "the audit head does not authenticate under this KEK: the chain was \
    rewritten by someone without the KEK, or the KEK given is not this store's; run \
    `trustplane audit verify` with the server stopped to see what changed";

/// Links one entry to the head inside the store's write transaction.
#[derive(Debug)]
struct AppendEntry {
    key: ring::hmac::Key,
    unix: i64,
    actor: String,
    action: String,
    detail: String,
}

impl ChainLink for AppendEntry {
    fn link(&self, head: Option<&[u8]>) -> Result<Linked, StoreError> {
        let refused = |reason: &str| StoreError::Integrity {
            table: Table::Meta.name(),
            key: AUDIT_HEAD_KEY.to_string(),
            reason: reason.to_string(),
        };
        let (seq, prev_hash) = match head {
            None => (1, GENESIS_HASH.to_string()),
            Some(bytes) => {
                let head: AuditHead =
                    serde_json::from_slice(bytes).map_err(|source| StoreError::Corrupt {
                        table: Table::Meta.name(),
                        key: AUDIT_HEAD_KEY.to_string(),
                        source,
                    })?;
                // Never extend a head the server did not write: the new MAC
                // would vouch for whatever an attacker put before it.
                if !head_authenticates(&self.key, &head) {
                    return Err(refused(HEAD_HELP));
                }
                let seq = head
                    .seq
                    .checked_add(1)
                    .ok_or_else(|| refused("the audit sequence number overflows"))?;
                (seq, head.hash)
            }
        };
        let mut record = AuditRecord {
            seq,
            unix: self.unix,
            actor: self.actor.clone(),
            action: self.action.clone(),
            detail: self.detail.clone(),
            prev_hash,
            hash: String::new(),
        };
        record.hash = entry_hash(&record);
        let key = entry_key(seq);
        let value = encode(&record, Table::Audit, &key)?;
        let head = encode(
            &signed_head(&self.key, seq, record.hash.clone()),
            Table::Meta,
            AUDIT_HEAD_KEY,
        )?;
        tracing::info!(
            target: "trustplane::audit",
            seq,
            actor = %record.actor,
            action = %record.action,
            detail = %record.detail,
            hash = %record.hash,
            "audit entry"
        );
        Ok(Linked { key, value, head })
    }
}

/// `value` as JSON. Errors: [`StoreError::Corrupt`] naming `table`/`key`.
fn encode<T: serde::Serialize>(value: &T, table: Table, key: &str) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|source| StoreError::Corrupt {
        table: table.name(),
        key: key.to_string(),
        source,
    })
}

/// Adds to `batch` the append of an entry (`actor` did `action` at `unix`,
/// described by `detail`), linked to the chain's head when the batch
/// commits. `init` and `trustplane audit upgrade` call it directly; the
/// server goes through [`AuditTrail::record`].
pub fn append(
    batch: Batch,
    kek: &Kek,
    unix: i64,
    actor: &str,
    action: &str,
    detail: String,
) -> Batch {
    batch.append(
        Table::Audit,
        Table::Meta,
        AUDIT_HEAD_KEY,
        Arc::new(AppendEntry {
            key: head_key(kek),
            unix,
            actor: actor.to_string(),
            action: action.to_string(),
            detail,
        }),
    )
}

/// A chain that verifies: how many entries, and its authenticated head.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainSummary {
    /// Number of entries.
    pub count: u64,
    /// Sequence number of the head (0 for an empty chain).
    pub head_seq: u64,
    /// Hash of the head entry (the genesis hash for an empty chain).
    pub head_hash: String,
}

fn bad(seq: Option<u64>, key: &str, unix: Option<i64>, problem: impl Into<String>) -> ServerError {
    ServerError::AuditChain(ChainError {
        seq,
        key: key.to_string(),
        unix,
        problem: problem.into(),
    })
}

fn read_head(store: &dyn Store, kek: &Kek) -> Result<Option<AuditHead>, ServerError> {
    let Some((head, _)) = records::get_json::<AuditHead>(store, Table::Meta, AUDIT_HEAD_KEY)?
    else {
        return Ok(None);
    };
    if !head_authenticates(&head_key(kek), &head) {
        return Err(bad(None, "audit head", None, HEAD_HELP));
    }
    Ok(Some(head))
}

/// Verifies the whole chain: every entry in sequence from 1 with its key,
/// linked to the one before, its hash matching its content; and the head
/// authenticated with the KEK and naming the last entry. Edits, deletions,
/// reordering and entries added without the KEK are named at the first bad
/// entry; a truncation shows as a head beyond the last entry; a chain
/// rewritten without the KEK as a head that does not authenticate or does
/// not match.
///
/// Errors: [`ServerError::AuditChain`] for the first thing that does not
/// verify; store errors.
pub fn verify_chain(store: &dyn Store, kek: &Kek) -> Result<ChainSummary, ServerError> {
    let entries = store.list(Table::Audit)?;
    let mut previous_hash = GENESIS_HASH.to_string();
    let mut count = 0u64;
    for (key, stored) in &entries {
        let expected = count + 1;
        let record: AuditRecord = match serde_json::from_slice(&stored.value) {
            Ok(record) => record,
            Err(error) => {
                return Err(bad(
                    Some(expected),
                    key,
                    None,
                    format!("the entry does not decode ({error}): it was edited"),
                ));
            }
        };
        let at = |problem: String| bad(Some(expected), key, Some(record.unix), problem);
        if record.seq == 0 || key.contains('-') {
            return Err(at("an entry from before the audit chain: run `trustplane audit upgrade` once (server stopped)".into()));
        }
        if *key != entry_key(record.seq) || record.seq < expected {
            return Err(at(format!(
                "found entry {} under key {key} where entry {expected} belongs: the chain was reordered",
                record.seq
            )));
        }
        if record.seq > expected {
            return Err(at(format!(
                "entries {expected} to {} are missing: deleted from the chain",
                record.seq - 1
            )));
        }
        if record.prev_hash != previous_hash {
            return Err(at(format!(
                "it does not link to entry {} (its previous hash is {}, that entry's hash is {previous_hash}): an entry before it was replaced, or the chain was reordered",
                expected - 1,
                record.prev_hash
            )));
        }
        if entry_hash(&record) != record.hash {
            return Err(at(
                "its content does not match its hash: the entry was edited".into(),
            ));
        }
        previous_hash.clone_from(&record.hash);
        count = expected;
    }
    let initialised = store.get(Table::Meta, CA_SETTINGS_KEY)?.is_some();
    let Some(head) = read_head(store, kek)? else {
        if count == 0 && !initialised {
            return Ok(ChainSummary {
                count,
                head_seq: 0,
                head_hash: previous_hash,
            });
        }
        return Err(bad(
            None,
            "audit head",
            None,
            "the chain's head record is missing: it was deleted, or the store predates the chain (then run `trustplane audit upgrade` once)",
        ));
    };
    if head.seq > count {
        return Err(bad(
            Some(count + 1),
            &entry_key(count + 1),
            None,
            format!(
                "missing: the chain ends at entry {count} but the authenticated head is entry {}; entries {} to {} were deleted (truncated)",
                head.seq,
                count + 1,
                head.seq
            ),
        ));
    }
    if head.seq < count {
        let first = head.seq + 1;
        let unix = entries
            .get(head.seq as usize)
            .and_then(|(_, stored)| serde_json::from_slice::<AuditRecord>(&stored.value).ok())
            .map(|record| record.unix);
        return Err(bad(
            Some(first),
            &entry_key(first),
            unix,
            format!(
                "entries {first} to {count} come after the authenticated head (entry {}): they were added without the KEK",
                head.seq
            ),
        ));
    }
    if head.hash != previous_hash {
        return Err(bad(
            Some(count),
            &entry_key(count),
            None,
            "the last entry is not the one the authenticated head vouches for: the chain was rewritten without the KEK",
        ));
    }
    Ok(ChainSummary {
        count,
        head_seq: head.seq,
        head_hash: head.hash,
    })
}

/// The cheap check the server makes at start: the head authenticates and
/// names the last entry (no entry after it, its entry's hash matches). The
/// whole chain is verified by [`verify_chain`] (`trustplane audit verify`).
///
/// Errors: [`ServerError::AuditChain`], store errors.
pub fn check_head(store: &dyn Store, kek: &Kek) -> Result<(), ServerError> {
    let Some(head) = read_head(store, kek)? else {
        return Err(bad(
            None,
            "audit head",
            None,
            "the chain's head record is missing: it was deleted; run `trustplane audit verify` with the server stopped",
        ));
    };
    let next = entry_key(head.seq + 1);
    if store.get(Table::Audit, &next)?.is_some() {
        return Err(bad(
            Some(head.seq + 1),
            &next,
            None,
            "an entry after the authenticated head: it was added without the KEK",
        ));
    }
    let key = entry_key(head.seq);
    let entry = records::get_json::<AuditRecord>(store, Table::Audit, &key)?;
    match entry {
        Some((record, _)) if record.hash == head.hash && entry_hash(&record) == record.hash => {
            Ok(())
        }
        Some((record, _)) => Err(bad(
            Some(head.seq),
            &key,
            Some(record.unix),
            "the last entry is not the one the authenticated head vouches for: it was edited or the chain rewritten without the KEK",
        )),
        None => Err(bad(
            Some(head.seq),
            &key,
            None,
            "missing: the authenticated head names it, so the chain was truncated",
        )),
    }
}

/// What `trustplane audit upgrade` did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upgraded {
    /// The records now authenticated, as `table/key`.
    pub authenticated: Vec<String>,
    /// How many entries from before the chain were chained.
    pub chained: usize,
}

/// Authenticates a store written before record MACs and the audit chain:
/// MACs every record that decides trust, chains the older audit entries in
/// time order (their time, actor, action and detail kept) and appends an
/// `integrity-upgrade` entry, in one transaction. Run offline, once.
///
/// Errors: [`ServerError::NotInitialised`], [`ServerError::AlreadyExists`]
/// for a store that has an audit head already, store errors.
pub fn upgrade_store(
    store: &dyn Store,
    kek: &Kek,
    actor: &str,
    now: SystemTime,
) -> Result<Upgraded, ServerError> {
    if store.get(Table::Meta, CA_SETTINGS_KEY)?.is_none() {
        return Err(ServerError::NotInitialised);
    }
    if store.get(Table::Meta, AUDIT_HEAD_KEY)?.is_some() {
        return Err(ServerError::AlreadyExists(
            "the store has an audit chain already: nothing to upgrade; check it with `trustplane audit verify`".into(),
        ));
    }
    let mut batch = Batch::new();
    let legacy = records::list_json::<AuditRecord>(store, Table::Audit)?;
    for (key, record, version) in &legacy {
        batch = append(
            batch.delete(Table::Audit, key, Some(Expect::Version(*version))),
            kek,
            record.unix,
            &record.actor,
            &record.action,
            record.detail.clone(),
        );
    }
    let (batch, authenticated) = integrity::authenticate_legacy(store, kek, batch)?;
    let batch = append(
        batch,
        kek,
        system_time_to_unix(now),
        actor,
        "integrity-upgrade",
        format!(
            "authenticated {} records written before record MACs ({}) and chained {} earlier audit entries",
            authenticated.len(),
            authenticated.join(", "),
            legacy.len()
        ),
    );
    store.commit(batch)?;
    Ok(Upgraded {
        authenticated,
        chained: legacy.len(),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::server::audit_trail::AuditQuery;
    use crate::store::MemoryStore;

    fn entry(unix: i64, action: &str) -> AuditRecord {
        AuditRecord {
            seq: 1,
            unix,
            actor: "admin".into(),
            action: action.into(),
            detail: String::new(),
            prev_hash: GENESIS_HASH.into(),
            hash: String::new(),
        }
    }

    #[test]
    fn a_query_filters_by_time_and_by_action_or_its_prefix() {
        let query = AuditQuery {
            since_unix: Some(100),
            action: Some("rotate".into()),
            limit: 10,
        };
        assert!(query.matches(&entry(100, "rotate-start")));
        assert!(query.matches(&entry(200, "rotate")));
        assert!(!query.matches(&entry(99, "rotate-start")), "too old");
        assert!(
            !query.matches(&entry(200, "rotated")),
            "not a prefix at a '-'"
        );
        assert!(!query.matches(&entry(200, "cluster-add")));
        assert!(AuditQuery::default().matches(&entry(0, "anything")));
    }

    #[test]
    fn every_field_of_an_entry_is_covered_by_its_hash() {
        let base = entry(5, "cluster-add");
        let hash = entry_hash(&base);
        let changed = [
            AuditRecord {
                seq: 2,
                ..base.clone()
            },
            AuditRecord {
                unix: 6,
                ..base.clone()
            },
            AuditRecord {
                actor: "other".into(),
                ..base.clone()
            },
            AuditRecord {
                action: "cluster-remove".into(),
                ..base.clone()
            },
            AuditRecord {
                detail: "x".into(),
                ..base.clone()
            },
            AuditRecord {
                prev_hash: "1".repeat(64),
                ..base.clone()
            },
            // Moving bytes between fields changes the hash too.
            AuditRecord {
                actor: "admincluster-add".into(),
                action: String::new(),
                ..base.clone()
            },
        ];
        for record in changed {
            assert_ne!(entry_hash(&record), hash, "{record:?}");
        }
    }

    #[test]
    fn an_append_refuses_a_head_the_kek_did_not_sign() {
        let kek = Kek::generate().unwrap();
        let store = MemoryStore::new();
        store
            .commit(append(
                Batch::new(),
                &kek,
                1,
                "init",
                "init",
                "first".into(),
            ))
            .unwrap();
        // Someone without the KEK rewrites the head.
        let mut head: AuditHead = records::get_json(&store, Table::Meta, AUDIT_HEAD_KEY)
            .unwrap()
            .unwrap()
            .0;
        head.hash = GENESIS_HASH.into();
        store
            .commit(
                Batch::new()
                    .put_json(Table::Meta, AUDIT_HEAD_KEY, &head, None)
                    .unwrap(),
            )
            .unwrap();
        let refused = store.commit(append(
            Batch::new(),
            &kek,
            2,
            "admin",
            "cluster-add",
            "x".into(),
        ));
        match refused {
            Err(StoreError::Integrity { key, reason, .. }) => {
                assert_eq!(key, AUDIT_HEAD_KEY);
                assert!(reason.contains("does not authenticate"), "{reason}");
            }
            other => panic!("expected the append to be refused, got {other:?}"),
        }
        // A store with another KEK: the same.
        let other = Kek::generate().unwrap();
        let fresh = MemoryStore::new();
        fresh
            .commit(append(
                Batch::new(),
                &kek,
                1,
                "init",
                "init",
                "first".into(),
            ))
            .unwrap();
        assert!(
            fresh
                .commit(append(Batch::new(), &other, 2, "admin", "x", String::new()))
                .is_err()
        );
        assert_eq!(fresh.list(Table::Audit).unwrap().len(), 1);
    }
}
