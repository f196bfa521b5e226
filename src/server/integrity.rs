//! Store integrity: the records that decide what the mesh trusts — every
//! root, every bundle version (current and history), the rotation state and
//! the CA settings — the admin credentials (name, role, revocation) and the join tokens (which turn into a cluster identity,
//! and so into intermediates) carry a MAC keyed from the KEK, over their
//! table, key and content. Whoever can write the store file but has no KEK
//! can neither add a root to the published bundle, nor move the rotation,
//! nor plant a join token they know: the record is refused on load, and the
//! server refuses to start.
//!
//! The MAC is the record's last JSON field, `"mac":"<hex>"`, over the exact
//! bytes of the record without it, so no canonical form is needed. What a
//! MAC cannot catch is a rollback to an older authenticated value of the
//! same key, for the store as a whole (a restored old copy of the file); a
//! current bundle put back alone is caught by its history.

use serde::{Serialize, de::DeserializeOwned};

use super::error::ServerError;
use crate::signer::sealed::Kek;
use crate::store::records::{AUDIT_HEAD_KEY, CA_SETTINGS_KEY, ROTATION_KEY};
use crate::store::{Batch, Expect, Store, StoreError, Table};

/// Key prefix of the admin credential records in `Meta` (their role decides
/// what a credential may do).
const ADMIN_PREFIX: &str = "admin/";
/// HKDF label of the record MAC key (distinct from the audit chain's).
const RECORD_MAC_LABEL: &[u8] = b"trustplane record-mac v1";
/// Domain separation of the MAC input.
const MAC_CONTEXT: &[u8] = b"trustplane-record-v1\0";
/// What precedes the MAC's hex digits at the end of a record.
const MAC_FIELD: &[u8] = b",\"mac\":\"";
/// Bytes the MAC adds at the end of a record: field, 64 hex digits, `"}`.
const MAC_SUFFIX_LEN: usize = MAC_FIELD.len() + 64 + 2;

/// What to do about a record without a MAC.
const NO_MAC_HELP: &str = "it carries no MAC: it was written without the KEK (the store was \
    edited), or by a trustplane older than record MACs. For a store you trust that an older \
    version wrote, stop the server and run `trustplane audit upgrade --data-dir <dir>` once; \
    otherwise restore the store from a backup";
/// What to do about a MAC that does not match.
const BAD_MAC_HELP: &str = "its MAC does not match its content: the record was changed by \
    someone without the KEK (or the KEK given is not this store's). Do not start the server on \
    this store: restore it from a backup and find out who could write the file";

/// Whether `table`/`key` is a record this module authenticates.
pub fn is_authenticated(table: Table, key: &str) -> bool {
    match table {
        Table::Roots | Table::Bundles | Table::Tokens => true,
        Table::Meta => {
            key == CA_SETTINGS_KEY || key == ROTATION_KEY || key.starts_with(ADMIN_PREFIX)
        }
        _ => false,
    }
}

fn mac_key(kek: &Kek) -> ring::hmac::Key {
    kek.derive_mac_key(RECORD_MAC_LABEL)
}

fn mac_input(table: Table, key: &str, plain: &[u8]) -> Vec<u8> {
    let mut input = Vec::with_capacity(MAC_CONTEXT.len() + key.len() + plain.len() + 16);
    input.extend_from_slice(MAC_CONTEXT);
    input.extend_from_slice(table.name().as_bytes());
    input.push(0);
    input.extend_from_slice(key.as_bytes());
    input.push(0);
    input.extend_from_slice(plain);
    input
}

fn integrity(table: Table, key: &str, reason: impl Into<String>) -> StoreError {
    StoreError::Integrity {
        table: table.name(),
        key: key.to_string(),
        reason: reason.into(),
    }
}

/// `plain` (a JSON object's bytes) with its MAC as the last field.
///
/// Errors: [`StoreError::Corrupt`]-like integrity error when `plain` is not
/// a non-empty JSON object.
pub fn seal_bytes(kek: &Kek, table: Table, key: &str, plain: &[u8]) -> Result<Vec<u8>, StoreError> {
    if plain.len() < 3 || !plain.starts_with(b"{") || !plain.ends_with(b"}") {
        return Err(integrity(
            table,
            key,
            "only a non-empty JSON object can carry a MAC",
        ));
    }
    let tag = ring::hmac::sign(&mac_key(kek), &mac_input(table, key, plain));
    let mut sealed = Vec::with_capacity(plain.len() + MAC_SUFFIX_LEN);
    sealed.extend_from_slice(&plain[..plain.len() - 1]);
    sealed.extend_from_slice(MAC_FIELD);
    sealed.extend_from_slice(hex::encode(tag.as_ref()).as_bytes());
    sealed.extend_from_slice(b"\"}");
    Ok(sealed)
}

/// The record's bytes without the MAC if it is there, else `None`.
fn split_mac(stored: &[u8]) -> Option<(Vec<u8>, &[u8])> {
    let length = stored.len();
    if length < MAC_SUFFIX_LEN + 2 || !stored.ends_with(b"\"}") {
        return None;
    }
    let field_start = length - MAC_SUFFIX_LEN;
    if &stored[field_start..field_start + MAC_FIELD.len()] != MAC_FIELD {
        return None;
    }
    let mut plain = stored[..field_start].to_vec();
    plain.push(b'}');
    Some((plain, &stored[field_start + MAC_FIELD.len()..length - 2]))
}

/// Whether the record has a top-level `mac` field anywhere.
fn has_mac_field(stored: &[u8]) -> bool {
    split_mac(stored).is_some()
        || serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(stored)
            .is_ok_and(|object| object.contains_key("mac"))
}

/// Checks the MAC of a stored record and returns its bytes without it.
///
/// Errors: [`StoreError::Integrity`] naming the record, what is wrong and
/// what to do.
pub fn open_bytes(
    kek: &Kek,
    table: Table,
    key: &str,
    stored: &[u8],
) -> Result<Vec<u8>, StoreError> {
    let (plain, mac_hex) = split_mac(stored).ok_or_else(|| {
        // A `mac` field elsewhere than last: the record was rewritten.
        integrity(
            table,
            key,
            if has_mac_field(stored) {
                BAD_MAC_HELP
            } else {
                NO_MAC_HELP
            },
        )
    })?;
    let tag = hex::decode(mac_hex).map_err(|_| integrity(table, key, BAD_MAC_HELP))?;
    ring::hmac::verify(&mac_key(kek), &mac_input(table, key, &plain), &tag)
        .map_err(|_| integrity(table, key, BAD_MAC_HELP))?;
    Ok(plain)
}

/// Adds to `batch` a put of `value` as JSON with its MAC.
///
/// Errors: encoding errors.
pub fn put_json<T: Serialize>(
    batch: Batch,
    kek: &Kek,
    table: Table,
    key: &str,
    value: &T,
    expect: Option<Expect>,
) -> Result<Batch, ServerError> {
    let plain = serde_json::to_vec(value).map_err(|source| StoreError::Corrupt {
        table: table.name(),
        key: key.to_string(),
        source,
    })?;
    Ok(batch.put(table, key, seal_bytes(kek, table, key, &plain)?, expect))
}

fn decode<T: DeserializeOwned>(table: Table, key: &str, plain: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(plain).map_err(|source| StoreError::Corrupt {
        table: table.name(),
        key: key.to_string(),
        source,
    })
}

/// Reads a MAC'd JSON record and its version; the MAC is checked first.
///
/// Errors: [`StoreError::Integrity`], store and decoding errors.
pub fn get_json<T: DeserializeOwned>(
    store: &dyn Store,
    kek: &Kek,
    table: Table,
    key: &str,
) -> Result<Option<(T, u64)>, ServerError> {
    match store.get(table, key)? {
        None => Ok(None),
        Some(stored) => {
            let plain = open_bytes(kek, table, key, &stored.value)?;
            Ok(Some((decode(table, key, &plain)?, stored.version)))
        }
    }
}

/// Reads every MAC'd JSON record of `table` with its key and version,
/// ordered by key; every MAC is checked.
///
/// Errors: [`StoreError::Integrity`] for the first that does not verify,
/// store and decoding errors.
pub fn list_json<T: DeserializeOwned>(
    store: &dyn Store,
    kek: &Kek,
    table: Table,
) -> Result<Vec<(String, T, u64)>, ServerError> {
    store
        .list(table)?
        .into_iter()
        .map(|(key, stored)| {
            let plain = open_bytes(kek, table, &key, &stored.value)?;
            let value = decode(table, &key, &plain)?;
            Ok((key, value, stored.version))
        })
        .collect()
}

/// One stored record: table, key, bytes as stored, version.
type StoredRecord = (Table, String, Vec<u8>, u64);

/// Every authenticated record of the store.
fn authenticated_records(store: &dyn Store) -> Result<Vec<StoredRecord>, StoreError> {
    let mut found = Vec::new();
    for table in [Table::Roots, Table::Bundles, Table::Tokens] {
        for (key, stored) in store.list(table)? {
            found.push((table, key, stored.value, stored.version));
        }
    }
    for key in [CA_SETTINGS_KEY, ROTATION_KEY] {
        if let Some(stored) = store.get(Table::Meta, key)? {
            found.push((Table::Meta, key.to_string(), stored.value, stored.version));
        }
    }
    for (key, stored) in store.list(Table::Meta)? {
        if key.starts_with(ADMIN_PREFIX) {
            found.push((Table::Meta, key, stored.value, stored.version));
        }
    }
    Ok(found)
}

/// Checks every authenticated record (all roots, all bundle versions, the
/// join tokens, the CA settings and the rotation state); the server calls
/// it before it trusts anything in the store.
///
/// Errors: [`ServerError::LegacyStore`] for a store written before record
/// MACs and the audit chain; [`StoreError::Integrity`] for the first record
/// whose MAC is missing or wrong.
pub fn verify_records(store: &dyn Store, kek: &Kek) -> Result<(), ServerError> {
    let records = authenticated_records(store)?;
    let legacy = store.get(Table::Meta, AUDIT_HEAD_KEY)?.is_none()
        && records
            .iter()
            .all(|(_, _, stored, _)| !has_mac_field(stored));
    if legacy && !records.is_empty() {
        return Err(ServerError::LegacyStore);
    }
    let mut bundle_versions = Vec::new();
    for (table, key, stored, _) in &records {
        let plain = open_bytes(kek, *table, key, stored)?;
        if *table == Table::Bundles {
            let version = decode::<serde_json::Value>(*table, key, &plain)?
                .get("version")
                .and_then(serde_json::Value::as_u64);
            bundle_versions.push((key.as_str(), version));
        }
    }
    check_bundle_history(&bundle_versions)?;
    Ok(())
}

/// A current bundle record put back alone to an older authentic copy of
/// itself (from an old backup of the file): its history, written in the same
/// transactions, has a newer version.
fn check_bundle_history(versions: &[(&str, Option<u64>)]) -> Result<(), StoreError> {
    for (trust_domain, current) in versions.iter().filter(|(key, _)| !key.contains('/')) {
        let prefix = format!("{trust_domain}/");
        let newest = versions
            .iter()
            .filter(|(key, _)| key.starts_with(&prefix))
            .filter_map(|(_, version)| *version)
            .max();
        if let Some(newest) = newest
            && Some(newest) != *current
        {
            return Err(integrity(
                Table::Bundles,
                trust_domain,
                format!(
                    "the current bundle is version {} but its history goes up to version {newest}: the record was put back to an older copy; restore the store from a backup and find out who could write the file",
                    current.map_or_else(|| "unknown".to_string(), |version| version.to_string())
                ),
            ));
        }
    }
    Ok(())
}

/// Adds to `batch` a MAC for every authenticated record that has none
/// (`trustplane audit upgrade`), each guarded by its version. Returns the
/// batch and the records it authenticates, as `table/key`.
///
/// Errors: store errors; a record that carries a MAC already is checked and
/// must match.
pub fn authenticate_legacy(
    store: &dyn Store,
    kek: &Kek,
    mut batch: Batch,
) -> Result<(Batch, Vec<String>), ServerError> {
    let mut authenticated = Vec::new();
    for (table, key, stored, version) in authenticated_records(store)? {
        if has_mac_field(&stored) {
            open_bytes(kek, table, &key, &stored)?;
            continue;
        }
        // Decoded to refuse what is not a record before vouching for it.
        let _: serde_json::Value = decode(table, &key, &stored)?;
        let sealed = seal_bytes(kek, table, &key, &stored)?;
        batch = batch.put(table, &key, sealed, Some(Expect::Version(version)));
        authenticated.push(format!("{}/{key}", table.name()));
    }
    Ok((batch, authenticated))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;
    use crate::store::records::RootRecord;

    fn root(id: &str) -> RootRecord {
        RootRecord {
            id: id.into(),
            certificate_pem: "pem".into(),
            key_secret: None,
            created_unix: 1,
            imported: false,
            vault_issuer: None,
        }
    }

    fn integrity_reason(error: ServerError) -> (String, String) {
        match error {
            ServerError::Store(StoreError::Integrity { table, key, reason }) => {
                (format!("{table}/{key}"), reason)
            }
            other => panic!("expected an integrity error, got {other:?}"),
        }
    }

    #[test]
    fn a_record_round_trips_and_any_change_is_refused() {
        let kek = Kek::generate().unwrap();
        let store = MemoryStore::new();
        store
            .commit(put_json(Batch::new(), &kek, Table::Roots, "01", &root("01"), None).unwrap())
            .unwrap();
        let (read, version) = get_json::<RootRecord>(&store, &kek, Table::Roots, "01")
            .unwrap()
            .unwrap();
        assert_eq!((read, version), (root("01"), 1));

        let stored = store.get(Table::Roots, "01").unwrap().unwrap().value;
        let edited = String::from_utf8(stored.clone())
            .unwrap()
            .replace("\"pem\"", "\"other\"");
        store
            .commit(Batch::new().put(Table::Roots, "01", edited.into_bytes(), None))
            .unwrap();
        let (record, reason) =
            integrity_reason(get_json::<RootRecord>(&store, &kek, Table::Roots, "01").unwrap_err());
        assert_eq!(record, "roots/01");
        assert!(reason.contains("MAC does not match"), "{reason}");

        // The same bytes under another key, or read with another KEK, fail.
        store
            .commit(Batch::new().put(Table::Roots, "02", stored.clone(), None))
            .unwrap();
        assert!(get_json::<RootRecord>(&store, &kek, Table::Roots, "02").is_err());
        assert!(
            get_json::<RootRecord>(&store, &Kek::generate().unwrap(), Table::Roots, "02").is_err()
        );

        // Without a MAC: refused, saying how an older store is upgraded.
        store
            .commit(Batch::new().put(
                Table::Roots,
                "03",
                serde_json::to_vec(&root("03")).unwrap(),
                None,
            ))
            .unwrap();
        let (_, reason) =
            integrity_reason(get_json::<RootRecord>(&store, &kek, Table::Roots, "03").unwrap_err());
        assert!(reason.contains("trustplane audit upgrade"), "{reason}");
    }
}
