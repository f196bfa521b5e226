//! The store's behaviour against a real OpenBao dev server: the
//! conformance tests every backend passes, and what is particular to
//! sharing Vault KV between servers.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;
use crate::vault::{Secret, VaultError};

/// A store on a fresh `bao server -dev`, and the server.
fn store() -> (VaultKvStore, openbao::OpenBao) {
    let bao = openbao::OpenBao::dev();
    (VaultKvStore::open(config(&bao)).unwrap(), bao)
}

fn config(bao: &openbao::OpenBao) -> VaultConfig {
    VaultConfig {
        addr: Some(bao.addr.clone()),
        token: Some(Secret(zeroize::Zeroizing::new(bao.token.clone()))),
        pki_mount: "pki".into(),
        kv_mount: "secret".into(),
        kv_prefix: "trustplane/test".into(),
        ..VaultConfig::default()
    }
}

crate::store::store_conformance_tests!(store());

#[test]
fn escaped_keys_are_one_segment_and_round_trip() {
    for key in [
        "",
        "a",
        "td.a/00000000000000000001",
        "Z",
        "100%",
        "k",
        "é ü",
    ] {
        let escaped = escape_key(key);
        assert!(!escaped.contains('/'), "{escaped}");
        assert!(escaped.starts_with('k'));
        assert_eq!(unescape_key(&escaped).as_deref(), Some(key));
    }
    assert_eq!(escape_key("td.a/1"), "ktd.a%2F1");
    assert_eq!(unescape_key("head"), None);
    assert_eq!(unescape_key("k%4"), None);
}

/// A list reads each key as the head's batch left it, even when a later
/// batch was applied to the key meanwhile.
#[test]
fn a_key_is_read_as_of_an_earlier_batch_through_the_value_it_keeps() {
    let record = |seq, value: Option<&str>, previous: Option<KeyRecord>| KeyRecord {
        seq,
        version: seq,
        value: value.map(str::to_string),
        previous: previous.map(Box::new),
    };
    let created_at_5 = record(5, Some("a"), None);
    assert_eq!(created_at_5.as_of(7).unwrap().value.as_deref(), Some("a"));
    assert_eq!(created_at_5.as_of(4).unwrap().value, None);
    let changed_at_8 = record(8, Some("b"), Some(created_at_5.clone()));
    assert_eq!(changed_at_8.as_of(8).unwrap().value.as_deref(), Some("b"));
    assert_eq!(changed_at_8.as_of(6).unwrap().value.as_deref(), Some("a"));
    assert_eq!(changed_at_8.as_of(6).unwrap().version, 5);
    let deleted_at_9 = record(9, None, Some(record(8, Some("b"), None)));
    assert_eq!(deleted_at_9.as_of(9).unwrap().value, None);
    assert_eq!(deleted_at_9.as_of(8).unwrap().value.as_deref(), Some("b"));
    // Written at 8 and 9 since 6: the state at 6 is gone.
    assert_eq!(deleted_at_9.as_of(6), None);
}

/// Two servers' stores on one Vault: concurrent appends through both
/// keep one linear chain and lose no write, though they race for the
/// head's check-and-set (and retry).
#[test]
fn two_stores_on_one_vault_commit_as_one() {
    let (first, bao) = store();
    let second = VaultKvStore::open(config(&bao)).unwrap();
    const PER_WRITER: u64 = 15;
    crate::store::conformance::two_stores_append_as_one(&first, &second, PER_WRITER);
    for store in [&first, &second] {
        assert_eq!(store.generation().unwrap(), Some(4 * PER_WRITER));
    }
}

/// While another server commits batches that each move one entry to
/// the next key (delete `k<n-1>`, put `k<n>`), every list on this
/// server shows exactly one entry: never half a batch, never two
/// batches mixed.
#[test]
fn readers_on_another_server_never_see_half_a_batch() {
    let (reader, bao) = store();
    let writer = VaultKvStore::open(config(&bao)).unwrap();
    const MOVES: u32 = 150;
    let key = |n: u32| format!("k{n:04}");
    writer
        .commit(Batch::new().put(Table::Tokens, key(0), key(0).into_bytes(), None))
        .unwrap();
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            for n in 1..=MOVES {
                writer
                    .commit(
                        Batch::new()
                            .delete(Table::Tokens, key(n - 1), Some(Expect::Present))
                            .put(Table::Tokens, key(n), key(n).into_bytes(), None),
                    )
                    .unwrap();
            }
            done.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        let mut lists = 0;
        while !done.load(std::sync::atomic::Ordering::SeqCst) || lists < 5 {
            let listed = reader.list(Table::Tokens).unwrap();
            assert_eq!(listed.len(), 1, "{listed:?}");
            assert_eq!(listed[0].1.value, listed[0].0.as_bytes());
            lists += 1;
        }
    });
    let listed = reader.list(Table::Tokens).unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].0, key(MOVES));
}

/// Another server commits between this one's read of the head and its
/// check-and-set on it: the check-and-set loses, and the batch is
/// resolved again on the new state and committed, its append linked
/// to the head the other server left.
#[test]
fn a_lost_check_and_set_on_the_head_is_retried_on_the_new_state() {
    #[derive(Debug)]
    struct Interfering {
        other: Arc<VaultKvStore>,
        calls: std::sync::atomic::AtomicU32,
    }
    impl crate::store::ChainLink for Interfering {
        fn link(&self, head: Option<&[u8]>) -> Result<crate::store::Linked, StoreError> {
            let call = self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            if call == 0 {
                // The other server appends first, after this batch read
                // the head.
                self.other
                    .commit(Batch::new().put(Table::Meta, "chain", b"other".to_vec(), None))
                    .unwrap();
            }
            let count = head.map_or(0, |head| head.len());
            Ok(crate::store::Linked {
                key: format!("entry-{count}"),
                value: head.unwrap_or_default().to_vec(),
                head: vec![b'x'; count + 1],
            })
        }
    }
    let (store, bao) = store();
    let other = Arc::new(VaultKvStore::open(config(&bao)).unwrap());
    let link = Arc::new(Interfering {
        other: other.clone(),
        calls: std::sync::atomic::AtomicU32::new(0),
    });
    store
        .commit(
            Batch::new()
                .put(Table::Roots, "mine", b"1".to_vec(), Some(Expect::Absent))
                .append(Table::Audit, Table::Meta, "chain", link.clone()),
        )
        .unwrap();
    // Linked twice: once on the state it lost on, once on the new one.
    assert_eq!(link.calls.load(std::sync::atomic::Ordering::SeqCst), 2);
    // The other server's write came first; this batch linked to it.
    let entries = store.list(Table::Audit).unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].0, "entry-5");
    assert_eq!(entries[0].1.value, b"other");
    let chain = other.get(Table::Meta, "chain").unwrap().unwrap();
    assert_eq!((chain.value.len(), chain.version), (6, 2));
    assert_eq!(
        other.get(Table::Roots, "mine").unwrap().unwrap().value,
        b"1"
    );
    assert_eq!(store.generation().unwrap(), Some(2));
}

/// A commit whose check-and-set on the head succeeded but whose answer
/// was lost is tried again with the same batch id: it is found in the
/// head and not committed twice (no second append, no second version).
#[test]
fn a_batch_whose_answer_was_lost_is_not_committed_twice() {
    let (store, _bao) = store();
    #[derive(Debug)]
    struct Counter;
    impl crate::store::ChainLink for Counter {
        fn link(&self, head: Option<&[u8]>) -> Result<crate::store::Linked, StoreError> {
            let count = head.map_or(0, <[u8]>::len);
            Ok(crate::store::Linked {
                key: format!("{count:020}"),
                value: Vec::new(),
                head: vec![0; count + 1],
            })
        }
    }
    let batch = Batch::new()
        .put(Table::Roots, "r", b"x".to_vec(), None)
        .append(Table::Audit, Table::Meta, "chain", Arc::new(Counter));
    let attempt = |batch: Batch| {
        store.run(move |place| async move { place.try_commit(&batch, "same-batch").await })
    };
    assert!(attempt(batch.clone()).unwrap());
    assert!(attempt(batch).unwrap());
    assert_eq!(store.generation().unwrap(), Some(1));
    assert_eq!(store.get(Table::Roots, "r").unwrap().unwrap().version, 1);
    assert_eq!(store.list(Table::Audit).unwrap().len(), 1);
    // Another batch still commits, and the head remembers a bounded
    // number of ids.
    for _ in 0..RECENT_BATCHES + 3 {
        store
            .commit(Batch::new().put(Table::Meta, "m", Vec::new(), None))
            .unwrap();
    }
    let (head, _) = store
        .run(|place| async move { place.head().await })
        .unwrap();
    assert_eq!(head.recent.len(), RECENT_BATCHES);
    assert!(!head.recent.contains(&"same-batch".to_string()));
}

/// A server that died after the commit point, before applying its
/// batch: readers already see the batch, the next commit applies it.
#[test]
fn a_batch_committed_but_not_applied_is_visible_and_finished_by_the_next_commit() {
    let (store, bao) = store();
    store
        .commit(Batch::new().put(Table::Roots, "old", b"kept".to_vec(), None))
        .unwrap();
    let (head, kv_version) = store
        .run(|place| async move { place.head().await })
        .unwrap();
    assert!(head.applied);
    let crashed = Head {
        seq: head.seq + 1,
        applied: false,
        recent: Vec::new(),
        writes: vec![
            Write {
                table: "roots".into(),
                key: "td/1".into(),
                version: 1,
                value: Some(encode(b"new")),
                in_key: false,
            },
            Write {
                table: "roots".into(),
                key: "old".into(),
                version: 0,
                value: None,
                in_key: false,
            },
        ],
    };
    let body = serde_json::json!({"options": {"cas": kv_version}, "data": crashed});
    let (status, answer) = bao.http(
        "POST",
        "secret/data/trustplane/test/head",
        Some(&body.to_string()),
    );
    assert_eq!(status, 200, "{answer}");
    // Not applied to the key secrets...
    let (status, _) = bao.http(
        "GET",
        "secret/data/trustplane/test/tables/roots/ktd%252F1",
        None,
    );
    assert_eq!(status, 404);
    // ...yet readers see the committed batch, and nothing before it.
    assert_eq!(
        store.get(Table::Roots, "td/1").unwrap().unwrap().value,
        b"new"
    );
    assert_eq!(store.get(Table::Roots, "old").unwrap(), None);
    let listed: Vec<String> = store
        .list(Table::Roots)
        .unwrap()
        .into_iter()
        .map(|(key, _)| key)
        .collect();
    assert_eq!(listed, ["td/1"]);
    // The next commit applies it first.
    store
        .commit(Batch::new().put(Table::Meta, "m", b"m".to_vec(), None))
        .unwrap();
    let (status, _) = bao.http(
        "GET",
        "secret/data/trustplane/test/tables/roots/ktd%252F1",
        None,
    );
    assert_eq!(status, 200);
    let (status, answer) = bao.http("GET", "secret/data/trustplane/test/tables/roots/kold", None);
    assert_eq!(status, 200);
    assert_eq!(answer["data"]["data"]["value"], serde_json::Value::Null);
    assert_eq!(store.get(Table::Roots, "old").unwrap(), None);
    assert_eq!(store.generation().unwrap(), Some(head.seq + 2));
}

#[test]
fn a_batch_too_large_for_one_kv_entry_is_refused_and_writes_nothing() {
    let (store, _bao) = store();
    let error = store
        .commit(
            Batch::new()
                .put(Table::Roots, "small", b"x".to_vec(), None)
                .put(Table::Roots, "large", vec![7; MAX_BATCH_BYTES], None),
        )
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("exceeds what one Vault KV entry holds"),
        "{error}"
    );
    assert!(
        error.contains("secret/data/trustplane/test/head"),
        "{error}"
    );
    assert!(error.contains("nothing was written"), "{error}");
    assert_eq!(store.get(Table::Roots, "small").unwrap(), None);
    assert_eq!(store.generation().unwrap(), Some(0));
}

/// A sealed or stopped Vault: the commit fails (after its retries) with
/// the path and the next step, writes nothing, and works again once
/// Vault is back.
#[test]
fn a_sealed_or_stopped_vault_names_the_path_and_what_to_do_and_nothing_is_half_written() {
    let dir = tempfile::tempdir().unwrap();
    let mut bao = openbao::OpenBao::raft(dir.path());
    bao.kv2("secret");
    let store = VaultKvStore::open(config(&bao)).unwrap();
    store
        .commit(Batch::new().put(Table::Clusters, "east", b"1".to_vec(), None))
        .unwrap();
    bao.seal();
    let error = store
        .commit(
            Batch::new()
                .put(
                    Table::Clusters,
                    "east",
                    b"2".to_vec(),
                    Some(Expect::Version(1)),
                )
                .put(Table::Clusters, "west", b"1".to_vec(), None),
        )
        .unwrap_err();
    assert!(matches!(error, StoreError::Unavailable { .. }), "{error:?}");
    let error = error.to_string();
    assert!(
        error.contains("Vault secret/data/trustplane/test/head"),
        "{error}"
    );
    assert!(error.contains("sealed"), "{error}");
    assert!(error.contains("operator unseal"), "{error}");
    let read = store.get(Table::Clusters, "east").unwrap_err().to_string();
    assert!(read.contains("sealed"), "{read}");
    bao.unseal();
    assert_eq!(
        store.get(Table::Clusters, "east").unwrap().unwrap().value,
        b"1"
    );
    assert_eq!(store.get(Table::Clusters, "west").unwrap(), None);
    store
        .commit(Batch::new().put(
            Table::Clusters,
            "east",
            b"2".to_vec(),
            Some(Expect::Version(1)),
        ))
        .unwrap();
    assert_eq!(
        store.get(Table::Clusters, "east").unwrap().unwrap().version,
        2
    );

    // Stopped: unreachable, named the same way; nothing lost on restart.
    bao.stop();
    let error = store
        .commit(Batch::new().put(Table::Clusters, "west", b"1".to_vec(), None))
        .unwrap_err();
    assert!(matches!(error, StoreError::Unavailable { .. }), "{error:?}");
    let error = error.to_string();
    assert!(
        error.contains("Vault secret/data/trustplane/test/head"),
        "{error}"
    );
    assert!(error.contains("unreachable"), "{error}");
    assert!(error.contains("VAULT_ADDR"), "{error}");
    bao.restart_sealed();
    bao.unseal();
    assert_eq!(
        store.get(Table::Clusters, "east").unwrap().unwrap().value,
        b"2"
    );
    assert_eq!(store.get(Table::Clusters, "west").unwrap(), None);
}

#[test]
fn a_missing_mount_fails_at_open_naming_it() {
    let bao = openbao::OpenBao::dev();
    let mut settings = config(&bao);
    settings.kv_mount = "nowhere".into();
    let error = VaultKvStore::open(settings).unwrap_err().to_string();
    assert!(
        error.contains("Vault nowhere/data/trustplane/test/head"),
        "{error}"
    );
}

/// Writes the store's documented policy (for the test prefix) as
/// `kv-store` and returns its name.
fn store_policy(bao: &openbao::OpenBao) -> &'static str {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("kv-store.hcl");
    std::fs::write(
        &file,
        r#"path "secret/data/trustplane/test/*" { capabilities = ["create", "read", "update"] }
path "secret/metadata/trustplane/test/*" { capabilities = ["list"] }
"#,
    )
    .unwrap();
    bao.bao(&["policy", "write", "kv-store", file.to_str().unwrap()]);
    "kv-store"
}

/// Revokes `token` in OpenBao (`auth/token/revoke`).
fn revoke(bao: &openbao::OpenBao, token: &str) {
    let body = serde_json::json!({ "token": token }).to_string();
    let (status, answer) = bao.http("POST", "auth/token/revoke", Some(&body));
    assert_eq!(status, 204, "{answer}");
}

/// The token the store's connection currently uses.
fn current_token(store: &VaultKvStore) -> String {
    store.place.vault.client().settings.token.clone()
}

/// An AppRole login whose token is revoked under the store: every kind of
/// store call (commit, get, list, the lease) meets the 403, logs in again
/// once and succeeds with the new token.
#[test]
fn a_store_logged_in_with_approle_logs_in_again_when_its_token_is_revoked() {
    let bao = openbao::OpenBao::dev();
    let policy = store_policy(&bao);
    bao.bao(&["auth", "enable", "approle"]);
    bao.bao(&[
        "write",
        "auth/approle/role/trustplane",
        &format!("token_policies={policy}"),
    ]);
    let read = |args: &[&str]| -> serde_json::Value {
        serde_json::from_slice(&bao.bao(args).stdout).unwrap()
    };
    let role_id = read(&[
        "read",
        "-format=json",
        "auth/approle/role/trustplane/role-id",
    ]);
    let secret_id = read(&[
        "write",
        "-format=json",
        "-f",
        "auth/approle/role/trustplane/secret-id",
    ]);
    let store = VaultKvStore::open(VaultConfig {
        token: None,
        role_id: Some(
            role_id["data"]["role_id"]
                .as_str()
                .unwrap()
                .parse()
                .unwrap(),
        ),
        secret_id: Some(
            secret_id["data"]["secret_id"]
                .as_str()
                .unwrap()
                .parse()
                .unwrap(),
        ),
        approle_mount: "approle".into(),
        ..config(&bao)
    })
    .unwrap();
    store
        .commit(Batch::new().put(Table::Clusters, "east", b"1".to_vec(), None))
        .unwrap();

    // Each call below first meets a revoked token.
    let mut revoked = current_token(&store);
    revoke(&bao, &revoked);
    let mut revoke_current = |store: &VaultKvStore| {
        let token = current_token(store);
        assert_ne!(token, revoked, "the store did not log in again");
        revoke(&bao, &token);
        revoked = token;
    };
    store
        .commit(Batch::new().put(Table::Clusters, "west", b"1".to_vec(), Some(Expect::Absent)))
        .unwrap();
    revoke_current(&store);
    assert_eq!(
        store.get(Table::Clusters, "west").unwrap().unwrap().value,
        b"1"
    );
    revoke_current(&store);
    let listed: Vec<String> = store
        .list(Table::Clusters)
        .unwrap()
        .into_iter()
        .map(|(key, _)| key)
        .collect();
    assert_eq!(listed, ["east", "west"]);
    revoke_current(&store);
    assert_eq!(store.lease("leader", "me", 0, 1_000).unwrap(), "me");
    assert_ne!(current_token(&store), revoked);
}

/// A given token (VAULT_TOKEN) cannot be replaced by trustplane: once it
/// is revoked, store calls fail naming the path and saying to log in
/// again or give a new token, and nothing of the batch is written.
#[test]
fn a_revoked_given_token_fails_naming_the_path_and_writes_nothing() {
    let bao = openbao::OpenBao::dev();
    let policy = store_policy(&bao);
    let created: serde_json::Value = serde_json::from_slice(
        &bao.bao(&[
            "token",
            "create",
            "-format=json",
            &format!("-policy={policy}"),
        ])
        .stdout,
    )
    .unwrap();
    let token = created["auth"]["client_token"]
        .as_str()
        .unwrap()
        .to_string();
    let store = VaultKvStore::open(VaultConfig {
        token: Some(token.parse().unwrap()),
        ..config(&bao)
    })
    .unwrap();
    store
        .commit(Batch::new().put(Table::Clusters, "east", b"1".to_vec(), None))
        .unwrap();
    revoke(&bao, &token);

    let denied = |error: StoreError| {
        let StoreError::Backend {
            message,
            source: Some(source),
        } = error
        else {
            panic!("{error:?}")
        };
        let vault = source.downcast_ref::<VaultError>().unwrap();
        assert_eq!(vault.kind, VaultErrorKind::PermissionDenied, "{vault}");
        for part in [
            "Vault secret/data/trustplane/test/head",
            "permission denied",
            "revoked",
            "log in again",
            "give trustplane a new token (VAULT_TOKEN)",
        ] {
            assert!(message.contains(part), "{part:?} not in: {message}");
        }
    };
    denied(
        store
            .commit(
                Batch::new()
                    .put(Table::Clusters, "east", b"2".to_vec(), None)
                    .put(Table::Clusters, "west", b"1".to_vec(), None),
            )
            .unwrap_err(),
    );
    denied(store.get(Table::Clusters, "east").unwrap_err());
    assert_eq!(current_token(&store), token);

    let root = VaultKvStore::open(config(&bao)).unwrap();
    assert_eq!(root.generation().unwrap(), Some(1));
    assert_eq!(
        root.get(Table::Clusters, "east").unwrap().unwrap().value,
        b"1"
    );
    assert_eq!(root.get(Table::Clusters, "west").unwrap(), None);
}

/// A failing random generator fails the commit; it never yields a fixed
/// (all-zero) id that a later batch would repeat.
#[test]
fn a_failing_random_generator_is_an_error_never_a_zero_batch_id() {
    let error = batch_id_from(|_| Err(ring::error::Unspecified)).unwrap_err();
    let StoreError::Backend { message, .. } = &error else {
        panic!("{error:?}")
    };
    assert!(message.contains("random generator failed"), "{message}");
    assert!(message.contains("nothing was written"), "{message}");
    let id = batch_id_from(|bytes| {
        bytes.fill(0xab);
        Ok(())
    })
    .unwrap();
    assert_eq!(id, "ab".repeat(12));
    let (first, second) = (batch_id().unwrap(), batch_id().unwrap());
    assert_eq!(first.len(), 24);
    assert_ne!(first, second);
}
