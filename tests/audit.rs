//! The audit chain and store integrity, against a real server's store: the
//! chain verifies after a mixed run; an attacker who can write the redb
//! file but has no KEK (the tests open the file with redb directly) cannot
//! edit, delete, reorder, truncate, extend or rewrite the chain, add a root
//! to the bundle, move the rotation, swap a root or plant a join token
//! unnoticed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use trustplane::ca::{self, KeyAlgorithm, PrivateKey};
use trustplane::clock::SystemClock;
use trustplane::proto;
use trustplane::proto::admin_service_client::AdminServiceClient;
use trustplane::proto::intermediate_service_client::IntermediateServiceClient;
use trustplane::server::{self, Authority, ServerError};
use trustplane::signer::sealed::Kek;
use trustplane::store::records::AuditRecord;
use trustplane::store::{RedbStore, StoreError};

use common::binary::BINARY;

/// The redb layout of every table: (version, bytes).
type Definition = TableDefinition<'static, &'static str, (u64, &'static [u8])>;

fn table(name: &'static str) -> Definition {
    TableDefinition::new(name)
}

/// The attacker: the store file, opened with redb directly, no KEK.
struct File {
    path: PathBuf,
}

impl File {
    fn get(&self, name: &'static str, key: &str) -> Option<(u64, Vec<u8>)> {
        let database = redb::Database::create(&self.path).unwrap();
        let read = database.begin_read().unwrap();
        let opened = read.open_table(table(name)).unwrap();
        opened.get(key).unwrap().map(|guard| {
            let (version, value) = guard.value();
            (version, value.to_vec())
        })
    }

    fn list(&self, name: &'static str) -> Vec<(String, Vec<u8>)> {
        let database = redb::Database::create(&self.path).unwrap();
        let read = database.begin_read().unwrap();
        let opened = read.open_table(table(name)).unwrap();
        opened
            .iter()
            .unwrap()
            .map(|entry| {
                let (key, value) = entry.unwrap();
                (key.value().to_string(), value.value().1.to_vec())
            })
            .collect()
    }

    /// Writes and removes in one transaction.
    fn write(&self, name: &'static str, puts: &[(&str, &[u8])], removes: &[&str]) {
        let database = redb::Database::create(&self.path).unwrap();
        let write = database.begin_write().unwrap();
        {
            let mut opened = write.open_table(table(name)).unwrap();
            for (key, value) in puts {
                let version = opened
                    .get(*key)
                    .unwrap()
                    .map_or(1, |guard| guard.value().0 + 1);
                opened.insert(*key, (version, *value)).unwrap();
            }
            for key in removes {
                opened.remove(*key).unwrap();
            }
        }
        write.commit().unwrap();
    }

    fn json(&self, name: &'static str, key: &str) -> serde_json::Value {
        serde_json::from_slice(&self.get(name, key).unwrap().1).unwrap()
    }

    fn put_json(&self, name: &'static str, key: &str, value: &serde_json::Value) {
        self.write(name, &[(key, &serde_json::to_vec(value).unwrap())], &[]);
    }

    fn entries(&self) -> Vec<(String, AuditRecord)> {
        self.list("audit")
            .into_iter()
            .map(|(key, value)| (key, serde_json::from_slice(&value).unwrap()))
            .collect()
    }
}

/// A store after a run of every kind of change, stopped, with its KEK.
struct Run {
    _dir: tempfile::TempDir,
    /// A copy of the store file taken before the rotation (an old backup).
    backup: PathBuf,
    data_dir: server::DataDir,
    kek: Kek,
    policy: trustplane::Policy,
}

impl Run {
    /// A copy of the store file for one tampering case.
    fn copy(&self, into: &Path) -> File {
        let path = into.join("trustplane.redb");
        std::fs::copy(self.data_dir.store_path(), &path).unwrap();
        File { path }
    }

    fn verify(&self, file: &File) -> Result<server::ChainSummary, ServerError> {
        server::verify_chain(&RedbStore::open(&file.path).unwrap(), &self.kek)
    }

    fn open(&self, file: &File) -> Result<Authority, ServerError> {
        Authority::open(
            Arc::new(RedbStore::open(&file.path).unwrap()),
            &self.kek,
            self.policy.clone(),
            SystemClock::shared(),
        )
    }
}

/// Init, clusters added (one re-tokened) and removed, an enrollment, an
/// intermediate, a status report and a reissue, a refused admin call, a
/// rotation started (new root, bundle version 2) and a bundle published.
async fn mixed_run() -> Run {
    let server = common::start_server().await;
    let mut admin = server.admin().await;
    let east = server.enroll("east").await;
    server.add_cluster("west").await;
    server.add_cluster("west").await;

    let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let csr = ca::create_csr(&key, "east intermediate").unwrap();
    let mut intermediates = IntermediateServiceClient::new(east.clone());
    let signed = intermediates
        .sign_intermediate(proto::SignIntermediateRequest {
            csr: csr.into_bytes(),
            cluster: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    intermediates
        .report_status(proto::ReportStatusRequest {
            applied_bundle_version: 1,
            intermediate_serial: signed.serial.clone(),
            intermediate_not_after_unix: signed.not_after_unix,
            cert_chain_pem: signed.cert_chain_pem.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    admin
        .reissue_cluster(proto::ReissueClusterRequest {
            name: "east".into(),
        })
        .await
        .unwrap();

    // A cluster calling AdminService: refused, and recorded.
    let refused = AdminServiceClient::new(east.clone())
        .remove_cluster(proto::RemoveClusterRequest {
            name: "east".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);

    // An old copy of the file, as an attacker might keep one.
    drop(admin);
    drop(east);
    let stopped = server.stop().await;
    let backup = stopped.dir.path().join("backup.redb");
    std::fs::copy(stopped.data_dir.store_path(), &backup).unwrap();
    let server = common::TestServer::resume(stopped).await;
    let mut admin = server.admin().await;
    admin
        .rotate_start(proto::RotateStartRequest {
            options: Some(proto::RotationOptions::default()),
        })
        .await
        .unwrap();
    admin
        .remove_cluster(proto::RemoveClusterRequest {
            name: "west".into(),
        })
        .await
        .unwrap();

    let stopped = server.stop().await;
    let kek = Kek::load(Some(&stopped.data_dir.kek_path()), None).unwrap();
    Run {
        backup,
        _dir: stopped.dir,
        data_dir: stopped.data_dir,
        kek,
        policy: stopped.policy,
    }
}

fn chain_error(result: Result<server::ChainSummary, ServerError>) -> server::ChainError {
    match result {
        Err(ServerError::AuditChain(error)) => error,
        other => panic!("expected an audit chain error, got {other:?}"),
    }
}

#[tokio::test]
async fn the_chain_verifies_after_a_mixed_run_and_names_every_change_with_its_actor() {
    let run = mixed_run().await;
    let scratch = tempfile::tempdir().unwrap();
    let file = run.copy(scratch.path());
    let summary = run.verify(&file).unwrap();
    let entries = file.entries();
    assert_eq!(summary.count, entries.len() as u64);
    assert_eq!(summary.head_seq, summary.count);
    assert_eq!(summary.head_hash, entries.last().unwrap().1.hash);

    let has = |actor: &str, action: &str, detail: &str| {
        entries.iter().any(|(_, entry)| {
            entry.actor == actor && entry.action == action && entry.detail.contains(detail)
        })
    };
    let expected = [
        ("init", "init", "trust domain cluster.local"),
        ("init", "certificate-issue", "root serial"),
        ("init", "certificate-issue", "control-plane-ca serial"),
        ("admin", "cluster-add", "cluster east (agent mode)"),
        ("admin", "cluster-add", "cluster west"),
        ("admin", "cluster-retoken", "cluster west"),
        ("cluster/east", "cluster-enroll", "cluster east enrolled"),
        (
            "cluster/east",
            "certificate-issue",
            "control-plane-client serial",
        ),
        ("cluster/east", "certificate-issue", "intermediate serial"),
        ("admin", "cluster-reissue", "cluster east"),
        (
            "cluster/east",
            "admin-call-refused",
            "AdminService/RemoveCluster",
        ),
        ("admin", "rotate-start", "phase trust-new"),
        ("admin", "certificate-issue", "root serial"),
        ("admin", "bundle-publish", "version 2"),
        ("admin", "cluster-remove", "cluster west"),
    ];
    for (actor, action, detail) in expected {
        assert!(
            has(actor, action, detail),
            "no entry {actor} {action} {detail:?} in {:#?}",
            entries
                .iter()
                .map(|(_, entry)| format!("{} {} {}", entry.actor, entry.action, entry.detail))
                .collect::<Vec<_>>()
        );
    }
    // The intermediate's entry carries its serial, public key and lifetime.
    let issued = entries
        .iter()
        .find(|(_, entry)| entry.detail.starts_with("intermediate serial"))
        .unwrap();
    assert!(
        issued.1.detail.contains("public key sha256 ") && issued.1.detail.contains("lifetime "),
        "{}",
        issued.1.detail
    );
    // And the server opens on it again.
    run.open(&file).unwrap();
}

#[tokio::test]
async fn edits_deletions_reordering_truncation_and_additions_are_each_detected() {
    let run = mixed_run().await;
    let scratch = tempfile::tempdir().unwrap();
    let count = run.verify(&run.copy(scratch.path())).unwrap().count;
    assert!(count >= 10, "a mixed run writes many entries, got {count}");
    let case = |name: &str| {
        let directory = scratch.path().join(name);
        std::fs::create_dir_all(&directory).unwrap();
        run.copy(&directory)
    };
    let key = server::entry_key;

    // An entry's detail edited, its hash left alone.
    let edited = case("edited");
    let mut entry = edited.json("audit", &key(3));
    entry["detail"] = "nothing happened".into();
    edited.put_json("audit", &key(3), &entry);
    let error = chain_error(run.verify(&edited));
    assert_eq!(error.seq, Some(3));
    assert!(error.problem.contains("edited"), "{error}");
    assert!(error.unix.is_some());

    // An entry deleted from the middle.
    let deleted = case("deleted");
    deleted.write("audit", &[], &[&key(4)]);
    let error = chain_error(run.verify(&deleted));
    assert_eq!(error.seq, Some(4));
    assert!(
        error.problem.contains("entries 4 to 4 are missing"),
        "{error}"
    );

    // Two entries swapped.
    let reordered = case("reordered");
    let third = reordered.get("audit", &key(3)).unwrap().1;
    let fourth = reordered.get("audit", &key(4)).unwrap().1;
    reordered.write("audit", &[(&key(3), &fourth), (&key(4), &third)], &[]);
    let error = chain_error(run.verify(&reordered));
    assert_eq!(error.seq, Some(3));
    assert!(error.problem.contains("reordered"), "{error}");

    // The newest entries cut off (the head still says where it ended).
    let truncated = case("truncated");
    truncated.write("audit", &[], &[&key(count), &key(count - 1)]);
    let error = chain_error(run.verify(&truncated));
    assert_eq!(error.seq, Some(count - 1));
    assert!(error.problem.contains("truncated"), "{error}");
    assert!(run.open(&truncated).is_err());

    // An entry added after the head, correctly linked by hash.
    let extended = case("extended");
    let last: AuditRecord =
        serde_json::from_slice(&extended.get("audit", &key(count)).unwrap().1).unwrap();
    let mut forged = AuditRecord {
        seq: count + 1,
        unix: last.unix,
        actor: "admin".into(),
        action: "cluster-remove".into(),
        detail: "cluster nobody".into(),
        prev_hash: last.hash.clone(),
        hash: String::new(),
    };
    forged.hash = server::entry_hash(&forged);
    extended.write(
        "audit",
        &[(&key(count + 1), &serde_json::to_vec(&forged).unwrap())],
        &[],
    );
    let error = chain_error(run.verify(&extended));
    assert_eq!(error.seq, Some(count + 1));
    assert!(error.problem.contains("added without the KEK"), "{error}");
    assert!(run.open(&extended).is_err());
}

#[tokio::test]
async fn a_chain_rewritten_without_the_kek_is_detected() {
    let run = mixed_run().await;
    let scratch = tempfile::tempdir().unwrap();
    let file = run.copy(scratch.path());
    // The attacker edits entry 2 and recomputes every hash after it, so the
    // chain links, and points the head at the new last hash. The head's MAC
    // needs the KEK: they keep the old one.
    let mut entries = file.entries();
    entries[1].1.detail = "rewritten".into();
    let mut previous = server::GENESIS_HASH.to_string();
    let mut puts = Vec::new();
    for (key, entry) in &mut entries {
        entry.prev_hash.clone_from(&previous);
        entry.hash = server::entry_hash(entry);
        previous.clone_from(&entry.hash);
        puts.push((key.clone(), serde_json::to_vec(entry).unwrap()));
    }
    let puts: Vec<(&str, &[u8])> = puts
        .iter()
        .map(|(key, value)| (key.as_str(), value.as_slice()))
        .collect();
    file.write("audit", &puts, &[]);
    let mut head = file.json("meta", "audit-head");
    head["hash"] = previous.clone().into();
    file.put_json("meta", "audit-head", &head);

    let error = chain_error(run.verify(&file));
    assert_eq!(error.seq, None);
    assert!(error.problem.contains("does not authenticate"), "{error}");
    match run.open(&file) {
        Err(ServerError::AuditChain(error)) => {
            assert!(error.problem.contains("does not authenticate"), "{error}")
        }
        other => panic!("the server must refuse the rewritten chain, got {other:?}"),
    }

    // Leaving the head alone instead: its hash no longer matches the chain.
    let kept_head = {
        let directory = scratch.path().join("kept");
        std::fs::create_dir_all(&directory).unwrap();
        run.copy(&directory)
    };
    kept_head.write("audit", &puts, &[]);
    let error = chain_error(run.verify(&kept_head));
    assert!(
        error.problem.contains("rewritten without the KEK"),
        "{error}"
    );
}

/// Every issuance adds an entry, so the trail grows with the store: a query
/// reads back from the chain's head only as far as it needs. An old entry
/// made unreadable does not disturb the queries that stop before it.
#[tokio::test]
async fn an_audit_query_reads_back_from_the_head_only_as_far_as_it_needs() {
    let run = mixed_run().await;
    let scratch = tempfile::tempdir().unwrap();
    let file = run.copy(scratch.path());
    let entries: Vec<AuditRecord> = file
        .entries()
        .into_iter()
        .map(|(_, record)| record)
        .collect();
    let count = entries.len();
    assert!(count >= 10, "a mixed run writes many entries, got {count}");
    file.write("audit", &[(&server::entry_key(2), b"not json")], &[]);
    let authority = run.open(&file).unwrap();
    let query = |limit: usize, action: Option<&str>, since_unix: Option<i64>| {
        authority.audit.entries(&server::AuditQuery {
            limit,
            action: action.map(str::to_string),
            since_unix,
        })
    };

    // The newest three, oldest first.
    assert_eq!(query(3, None, None).unwrap(), entries[count - 3..].to_vec());
    // The newest matching one of an action (a '-'-separated prefix).
    let last_rotation = entries
        .iter()
        .rev()
        .find(|record| record.action.starts_with("rotate-"))
        .unwrap();
    assert_eq!(
        query(1, Some("rotate"), None).unwrap(),
        vec![last_rotation.clone()]
    );
    // After the newest entry (and its slack): nothing, and entry 2 unread.
    let after = entries[count - 1].unix + server::SINCE_SLACK_SECONDS + 1;
    assert!(query(100, None, Some(after)).unwrap().is_empty());
    // A query that has to reach entry 2 says it does not decode.
    let error = query(count, None, None).unwrap_err().to_string();
    assert!(error.contains("00000000000000000002"), "{error}");
}

#[tokio::test]
async fn concurrent_appends_from_many_tasks_keep_one_linear_chain() {
    let server = common::start_server().await;
    let authority = server.authority().clone();
    let before = authority.audit.entries(&server::AuditQuery {
        limit: usize::MAX,
        ..Default::default()
    });
    let before = before.unwrap().len() as u64;
    const TASKS: u64 = 8;
    const EACH: u64 = 10;
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let authority = authority.clone();
        tasks.push(tokio::task::spawn_blocking(move || {
            for index in 0..EACH {
                authority
                    .audit
                    .record_alone("test", "test-append", format!("task {task} entry {index}"))
                    .unwrap();
            }
        }));
    }
    // Real changes at the same time: clusters registered concurrently.
    let mut admins = Vec::new();
    for index in 0..4 {
        let mut admin = server.admin().await;
        admins.push(tokio::spawn(async move {
            admin
                .add_cluster(proto::AddClusterRequest {
                    name: format!("c{index}"),
                    ..Default::default()
                })
                .await
                .unwrap();
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    for admin in admins {
        admin.await.unwrap();
    }
    drop(authority);
    let stopped = server.stop().await;
    let kek = Kek::load(Some(&stopped.data_dir.kek_path()), None).unwrap();
    let store = RedbStore::open(&stopped.data_dir.store_path()).unwrap();
    let summary = server::verify_chain(&store, &kek).unwrap();
    assert_eq!(summary.count, before + TASKS * EACH + 4);
}

// ---- store integrity: records that decide trust ----

fn integrity_error(result: Result<Authority, ServerError>) -> (String, String, String) {
    match result {
        Err(error @ ServerError::Store(StoreError::Integrity { .. })) => {
            let message = error.to_string();
            let ServerError::Store(StoreError::Integrity { table, key, reason }) = error else {
                unreachable!()
            };
            (format!("{table}/{key}"), reason, message)
        }
        Err(other) => panic!("expected an integrity error, got {other}"),
        Ok(_) => panic!("a tampered store must be refused"),
    }
}

fn attacker_root() -> String {
    let (root, _) = ca::create_root(
        &ca::RootRequest {
            trust_domain: "cluster.local".into(),
            organisation: "attacker".into(),
            key_algorithm: KeyAlgorithm::EcdsaP256,
            validity: Duration::from_secs(3600 * 24 * 365),
        },
        std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
    )
    .unwrap();
    root.to_pem()
}

#[tokio::test]
async fn a_root_added_to_the_bundle_a_moved_rotation_a_swapped_root_or_a_planted_token_is_refused_at_open()
 {
    let run = mixed_run().await;
    let scratch = tempfile::tempdir().unwrap();
    let case = |name: &str| {
        let directory = scratch.path().join(name);
        std::fs::create_dir_all(&directory).unwrap();
        run.copy(&directory)
    };

    // (a) The attacker's root added to the published bundle.
    let bundle = case("bundle");
    let mut record = bundle.json("bundles", "cluster.local");
    record["roots_pem"]
        .as_array_mut()
        .unwrap()
        .push(attacker_root().into());
    bundle.put_json("bundles", "cluster.local", &record);
    let (changed, reason, message) = integrity_error(run.open(&bundle));
    assert_eq!(changed, "bundles/cluster.local");
    assert!(reason.contains("MAC does not match"), "{reason}");
    assert!(message.contains("restore it from a backup"), "{message}");

    // ... and with the MAC field removed instead: refused, no MAC.
    let stripped = case("stripped");
    let mut record = stripped.json("bundles", "cluster.local");
    record["roots_pem"]
        .as_array_mut()
        .unwrap()
        .push(attacker_root().into());
    record.as_object_mut().unwrap().remove("mac");
    stripped.put_json("bundles", "cluster.local", &record);
    let (changed, reason, _) = integrity_error(run.open(&stripped));
    assert_eq!(changed, "bundles/cluster.local");
    assert!(reason.contains("carries no MAC"), "{reason}");

    // (b) The rotation moved on to sign-new.
    let rotation = case("rotation");
    let mut record = rotation.json("meta", "rotation");
    assert_eq!(record["phase"], "trust-new");
    record["phase"] = "sign-new".into();
    rotation.put_json("meta", "rotation", &record);
    let (changed, reason, _) = integrity_error(run.open(&rotation));
    assert_eq!(changed, "meta/rotation");
    assert!(reason.contains("MAC does not match"), "{reason}");

    // (c) A root record's certificate swapped for the attacker's.
    let roots = case("roots");
    let (id, _) = roots.list("roots").into_iter().next().unwrap();
    let mut record = roots.json("roots", &id);
    record["certificate_pem"] = attacker_root().into();
    roots.put_json("roots", &id, &record);
    let (changed, reason, _) = integrity_error(run.open(&roots));
    assert_eq!(changed, format!("roots/{id}"));
    assert!(reason.contains("MAC does not match"), "{reason}");

    // A history version moved over the current one: bound to its key.
    let moved = case("moved");
    let history = moved
        .get("bundles", "cluster.local/00000000000000000001")
        .unwrap()
        .1;
    moved.write("bundles", &[("cluster.local", &history)], &[]);
    let (changed, _, _) = integrity_error(run.open(&moved));
    assert_eq!(changed, "bundles/cluster.local");

    // The current bundle put back to an older authentic copy of itself.
    let older = case("older");
    // From the attacker's old copy of the file, taken before the rotation.
    let backup = File {
        path: run.backup.clone(),
    };
    let rolled_back = backup.get("bundles", "cluster.local").unwrap().1;
    older.write("bundles", &[("cluster.local", &rolled_back)], &[]);
    let (changed, reason, _) = integrity_error(run.open(&older));
    assert_eq!(changed, "bundles/cluster.local");
    assert!(reason.contains("history goes up to version 2"), "{reason}");

    // (d) A join token the attacker knows, planted for a cluster of theirs:
    // it would enroll them and get them intermediates from the root.
    let token = case("token");
    let planted = "tp1.evil.known-to-the-attacker";
    token.put_json(
        "clusters",
        "evil",
        &serde_json::json!({
            "name": "evil", "trust_domain": "cluster.local", "created_unix": 1,
            "enrolled_unix": null, "client_cert_serial": null, "report": null,
        }),
    );
    let hash = server::token_hash(planted);
    token.put_json(
        "tokens",
        &hash,
        &serde_json::json!({
            "cluster": "evil", "created_unix": 1, "expires_unix": 4_000_000_000i64,
            "used_unix": null,
        }),
    );
    let (changed, reason, _) = integrity_error(run.open(&token));
    assert_eq!(changed, format!("tokens/{hash}"));
    assert!(reason.contains("carries no MAC"), "{reason}");

    // (e) An admin credential's role or revocation changed: the role
    // decides what the credential may do.
    let admin = case("admin");
    let mut record = admin.json("meta", "admin/admin");
    assert_eq!(record["role"], "admin");
    record["role"] = "auditor".into();
    admin.put_json("meta", "admin/admin", &record);
    let (changed, reason, _) = integrity_error(run.open(&admin));
    assert_eq!(changed, "meta/admin/admin");
    assert!(reason.contains("MAC does not match"), "{reason}");

    // The untouched copy still opens.
    run.open(&case("untouched")).unwrap();
}

#[tokio::test]
async fn a_store_from_before_the_chain_is_refused_until_upgraded_once() {
    let run = mixed_run().await;
    let scratch = tempfile::tempdir().unwrap();
    let file = run.copy(scratch.path());
    // Make it look as an older trustplane wrote it: no MACs, no head, audit
    // entries keyed by time without chain fields.
    for name in ["roots", "bundles", "tokens"] {
        for (key, _) in file.list(name) {
            let mut record = file.json(name, &key);
            record.as_object_mut().unwrap().remove("mac");
            file.put_json(name, &key, &record);
        }
    }
    for key in ["ca", "rotation", "admin/admin"] {
        let mut record = file.json("meta", key);
        record.as_object_mut().unwrap().remove("mac");
        file.put_json("meta", key, &record);
    }
    file.write("meta", &[], &["audit-head"]);
    let entries = file.entries();
    let legacy: Vec<(String, Vec<u8>)> = entries
        .iter()
        .enumerate()
        .map(|(index, (_, entry))| {
            let key = format!("{:020}-{index:08x}", entry.unix as u128 * 1_000_000_000);
            let value = serde_json::json!({
                "unix": entry.unix,
                "actor": entry.actor,
                "action": entry.action,
                "detail": entry.detail,
            });
            (key, serde_json::to_vec(&value).unwrap())
        })
        .collect();
    let removes: Vec<&str> = entries.iter().map(|(key, _)| key.as_str()).collect();
    file.write("audit", &[], &removes);
    let puts: Vec<(&str, &[u8])> = legacy
        .iter()
        .map(|(key, value)| (key.as_str(), value.as_slice()))
        .collect();
    file.write("audit", &puts, &[]);

    match run.open(&file) {
        Err(ServerError::LegacyStore) => {}
        other => panic!("expected LegacyStore, got {other:?}"),
    }
    let store = RedbStore::open(&file.path).unwrap();
    let upgraded =
        server::upgrade_store(&store, &run.kek, server::OFFLINE_ACTOR, SystemClock.now()).unwrap();
    assert_eq!(upgraded.chained, entries.len());
    assert!(
        upgraded
            .authenticated
            .contains(&"meta/rotation".to_string())
    );
    let summary = server::verify_chain(&store, &run.kek).unwrap();
    assert_eq!(summary.count, entries.len() as u64 + 1);
    // A second upgrade is refused: the store has a chain now.
    assert!(matches!(
        server::upgrade_store(&store, &run.kek, "x", SystemClock.now()),
        Err(ServerError::AlreadyExists(_))
    ));
    drop(store);
    let upgraded_entries = file.entries();
    assert_eq!(
        upgraded_entries.last().unwrap().1.action,
        "integrity-upgrade"
    );
    run.open(&file).unwrap();
}

// ---- the command a user runs ----

#[test]
fn audit_verify_exits_0_with_the_count_and_1_naming_the_first_bad_entry() {
    let directory = tempfile::tempdir().unwrap();
    let data_dir = directory.path().join("data");
    let run = |args: &[&str]| {
        Command::new(BINARY)
            .args(args)
            .arg("--data-dir")
            .arg(&data_dir)
            .env_remove("TRUSTPLANE_KEK")
            .env_remove("TRUSTPLANE_KEK_FILE")
            .output()
            .unwrap()
    };
    let init = run(&["init", "--trust-domain", "cluster.local"]);
    assert!(init.status.success(), "{init:?}");
    let verified = run(&["audit", "verify"]);
    let stdout = String::from_utf8_lossy(&verified.stdout);
    assert_eq!(verified.status.code(), Some(0), "{verified:?}");
    assert!(stdout.contains("verified: 4 entries, head 4"), "{stdout}");

    let file = File {
        path: data_dir.join("trustplane.redb"),
    };
    let mut entry = file.json("audit", &server::entry_key(2));
    entry["actor"] = "someone else".into();
    file.put_json("audit", &server::entry_key(2), &entry);
    let refused = run(&["audit", "verify"]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    assert!(
        stderr.contains("entry 2 (key 00000000000000000002, ")
            && stderr.contains("the entry was edited"),
        "{stderr}"
    );
}
