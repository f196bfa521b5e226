//! The `kubernetes` store: object names and values (pure), and its
//! behaviour against a real kube-apiserver + etcd (the e2e harness of
//! `tests/e2e/kube_cluster.rs`; a missing peer fails these tests loudly,
//! `TRUSTPLANE_SKIP_E2E=1` skips them).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::resources::{self, StoredValue, load_value, object_name, store_value};
use super::*;
use crate::store::{Batch, Expect, Store, conformance};
use k8s_openapi::api::coordination::v1::Lease;

#[path = "../../../tests/e2e/kube_cluster.rs"]
#[allow(dead_code, clippy::disallowed_methods)]
mod kube_cluster;

use kube_cluster::{KubeCluster, skip_e2e};

fn is_dns_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

#[test]
fn object_names_are_dns_labels_readable_and_distinct() {
    let keys = [
        "",
        "a",
        "A",
        "td.a/00000000000000000001",
        "td.a/00000000000000000002",
        "td-a/00000000000000000001",
        "Z",
        "z",
        "100%",
        "é ü",
        "-",
        &"x".repeat(300),
    ];
    let mut names = std::collections::BTreeSet::new();
    for key in keys {
        let name = object_name(Table::Roots, key);
        assert!(is_dns_name(&name), "{key:?} → {name}");
        assert_eq!(name, object_name(Table::Roots, key), "not stable");
        assert!(names.insert(name), "{key:?} shares a name");
        let secret = object_name(Table::Secrets, key);
        assert!(secret.starts_with("trustplane-secret-"), "{secret}");
        assert!(is_dns_name(&secret), "{secret}");
    }
    assert!(
        object_name(Table::Bundles, "td.a/00000000000000000001")
            .starts_with("td-a-00000000000000000001-")
    );
    assert_eq!(lease_name("leader"), "trustplane-leader");
    assert!(is_dns_name(&lease_name("Not A Label")));
}

#[test]
fn values_round_trip_byte_for_byte_and_json_is_embedded_where_the_api_server_keeps_it() {
    let cases: [(&[u8], &str); 9] = [
        (br#"{"a":1,"b":["x",true]}"#, "value"),
        // Keys out of order, a null, a float, a u64 over int64: kept as text.
        (br#"{"b":1,"a":2}"#, "text"),
        (br#"{"a":null}"#, "text"),
        (br#"{"a":1.5}"#, "text"),
        (br#"18446744073709551615"#, "text"),
        (b"null", "text"),
        (b" 1", "text"),
        (b"", "text"),
        (&[0xff, 0x00, 0x80], "base64"),
    ];
    for (bytes, field) in cases {
        let stored = store_value(bytes);
        let set = [
            stored.value.is_some(),
            stored.text.is_some(),
            stored.base64.is_some(),
        ];
        let expected = match field {
            "value" => [true, false, false],
            "text" => [false, true, false],
            _ => [false, false, true],
        };
        assert_eq!(set, expected, "{bytes:?}");
        // Through JSON, as the API server keeps it.
        let json = serde_json::to_string(&stored).unwrap();
        let back: StoredValue = serde_json::from_str(&json).unwrap();
        assert_eq!(load_value(&back).unwrap().as_deref(), Some(bytes), "{json}");
    }
    assert_eq!(load_value(&StoredValue::default()).unwrap(), None);
}

#[test]
fn the_crds_name_every_kind_and_keep_values_open() {
    let yaml = resources::crds_yaml().unwrap();
    for plural in [
        "trustplaneheads",
        "trustplanemetas",
        "trustplanerotations",
        "trustplaneroots",
        "trustplaneclusters",
        "trustplanecertificates",
        "trustplanebundles",
        "trustplanetokens",
        "trustplaneauditentries",
    ] {
        assert!(
            yaml.contains(&format!("name: {plural}.trustplane.io")),
            "{plural}"
        );
    }
    assert!(yaml.contains("x-kubernetes-preserve-unknown-fields: true"));
    assert_eq!(resources::crds().len(), 9);
}

/// A cluster with the CRDs applied and a runtime for the harness.
fn cluster(name: &str) -> (KubeCluster, tokio::runtime::Runtime) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let cluster = runtime.block_on(async {
        let cluster = KubeCluster::start(name).await.unwrap();
        cluster.apply_crds().await.unwrap();
        cluster
    });
    (cluster, runtime)
}

fn open(cluster: &KubeCluster, namespace: &str) -> KubeStore {
    KubeStore::open(KubeStoreConfig {
        kubeconfig: Some(cluster.admin_kubeconfig_path()),
        namespace: namespace.to_string(),
    })
    .unwrap()
}

/// Every behaviour every backend passes (the `conformance` suite), each
/// on a namespace of its own in one real API server; then what sharing
/// adds: two servers' stores commit as one, a value is readable with
/// kubectl, and the lease is a coordination.k8s.io Lease.
#[test]
fn the_store_behaviour_suite_and_sharing_pass_on_a_real_api_server() {
    if skip_e2e() {
        return;
    }
    let (cluster, runtime) = cluster("kube-store");
    type Behaviour = fn(&dyn Store);
    let behaviours: [(&str, Behaviour); 11] = [
        ("put-get", conformance::put_get_and_versions_increment),
        ("absent", conformance::absent_prevents_a_second_insert),
        ("cas", conformance::version_is_compare_and_swap),
        ("failing", conformance::a_failing_batch_writes_nothing),
        (
            "before",
            conformance::preconditions_see_the_state_before_the_batch,
        ),
        (
            "delete",
            conformance::delete_removes_and_honours_preconditions,
        ),
        ("list", conformance::list_is_ordered_by_key_within_one_table),
        (
            "concurrent-cas",
            conformance::concurrent_compare_and_swap_loses_no_update,
        ),
        (
            "append",
            conformance::append_links_each_entry_to_the_head_it_sees,
        ),
        (
            "refused-append",
            conformance::a_refused_append_writes_nothing,
        ),
        (
            "concurrent-appends",
            conformance::concurrent_appends_keep_one_linear_chain,
        ),
    ];
    for (namespace, behaviour) in behaviours {
        runtime
            .block_on(cluster.create_namespace(namespace))
            .unwrap();
        let store = open(&cluster, namespace);
        behaviour(&store);
        println!("{namespace}: ok");
    }

    // Two servers' stores on one namespace: appends through both keep one
    // chain, no write lost.
    runtime
        .block_on(cluster.create_namespace("shared"))
        .unwrap();
    let first = open(&cluster, "shared");
    let second = open(&cluster, "shared");
    // The second hears of the first's commit through its watch on the head.
    let mut changes = second
        .changes()
        .expect("the kubernetes store watches its head");
    changes.mark_unchanged();
    first
        .commit(Batch::new().put(Table::Meta, "first", b"1".to_vec(), None))
        .unwrap();
    runtime
        .block_on(async {
            tokio::time::timeout(std::time::Duration::from_secs(20), changes.changed()).await
        })
        .expect("no change notice within 20 s")
        .unwrap();
    const PER_WRITER: u64 = 10;
    conformance::two_stores_append_as_one(&first, &second, PER_WRITER);
    for store in [&first, &second] {
        assert_eq!(store.generation().unwrap(), Some(4 * PER_WRITER + 1));
        assert!(store.shared());
    }

    // What kubectl shows: the record's JSON, the key, the kind by table.
    let record = br#"{"name":"east","version":3}"#;
    first
        .commit(
            Batch::new()
                .put(Table::Clusters, "east", record.to_vec(), None)
                .put(
                    Table::Meta,
                    "rotation",
                    b"{\"phase\":\"stable\"}".to_vec(),
                    None,
                )
                .put(Table::Secrets, "root/1", vec![0xff, 1], None),
        )
        .unwrap();
    let admin = runtime.block_on(cluster.admin_client()).unwrap();
    let clusters: kube::Api<DynamicObject> = kube::Api::namespaced_with(
        admin.clone(),
        "shared",
        &ApiResource::erase::<resources::TrustplaneCluster>(&()),
    );
    let object = runtime
        .block_on(clusters.get(&object_name(Table::Clusters, "east")))
        .unwrap();
    assert_eq!(object.data["spec"]["key"], "east");
    assert_eq!(object.data["spec"]["value"]["name"], "east");
    assert_eq!(
        object.metadata.labels.as_ref().unwrap()[MANAGED_BY.0],
        MANAGED_BY.1
    );
    let rotations: kube::Api<DynamicObject> = kube::Api::namespaced_with(
        admin.clone(),
        "shared",
        &ApiResource::erase::<resources::TrustplaneRotation>(&()),
    );
    assert_eq!(
        runtime
            .block_on(rotations.list(&ListParams::default()))
            .unwrap()
            .items
            .len(),
        1
    );
    let secrets: kube::Api<Secret> = kube::Api::namespaced(admin.clone(), "shared");
    let secret = runtime
        .block_on(secrets.get(&object_name(Table::Secrets, "root/1")))
        .unwrap();
    assert_eq!(
        secret.metadata.labels.as_ref().unwrap()[TABLE_LABEL],
        "secrets"
    );
    assert_eq!(
        second.get(Table::Secrets, "root/1").unwrap().unwrap().value,
        [0xff, 1]
    );
    // Applied, the head keeps no sealed value: only that it is in its Secret.
    let heads: kube::Api<DynamicObject> = kube::Api::namespaced_with(
        admin.clone(),
        "shared",
        &ApiResource::erase::<resources::TrustplaneHead>(&()),
    );
    let head = runtime.block_on(heads.get("trustplane")).unwrap();
    assert_eq!(head.data["spec"]["applied"], true);
    let sealed: Vec<&serde_json::Value> = head.data["spec"]["writes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|write| write["table"] == "secrets")
        .collect();
    assert_eq!(sealed.len(), 1, "{:?}", head.data["spec"]);
    assert!(sealed[0].get("value").is_none(), "{:?}", sealed[0]);
    assert_eq!(sealed[0]["inKey"], true);
    // Readers take it from the Secret, in a list too; the cluster record
    // stays in the head as it was.
    assert_eq!(
        first.get(Table::Secrets, "root/1").unwrap().unwrap().value,
        [0xff, 1]
    );
    assert_eq!(
        second.list(Table::Secrets).unwrap(),
        vec![(
            "root/1".to_string(),
            crate::store::Versioned {
                value: vec![0xff, 1],
                version: 1
            }
        )]
    );
    assert_eq!(
        second.get(Table::Clusters, "east").unwrap().unwrap().value,
        record.to_vec()
    );
    assert_eq!(
        second
            .list(Table::Meta)
            .unwrap()
            .iter()
            .filter(|(key, _)| key == "rotation")
            .count(),
        1
    );

    // The lease: held until it expires, then taken over; a Lease object.
    assert_eq!(first.lease("leader", "a", 1_000, 16_000).unwrap(), "a");
    assert_eq!(second.lease("leader", "b", 2_000, 17_000).unwrap(), "a");
    assert_eq!(first.lease("leader", "a", 3_000, 18_000).unwrap(), "a");
    assert_eq!(second.lease("leader", "b", 18_001, 33_000).unwrap(), "b");
    let leases: kube::Api<Lease> = kube::Api::namespaced(admin, "shared");
    let lease = runtime.block_on(leases.get("trustplane-leader")).unwrap();
    assert_eq!(lease.spec.unwrap().holder_identity.as_deref(), Some("b"));
    // Renewing a lease is no change of state.
    assert_eq!(first.generation().unwrap(), Some(4 * PER_WRITER + 2));
}

/// A cluster without the CRDs, a ServiceAccount without the RBAC, and an
/// API server that stops: each error says what to do, and nothing of a
/// failed batch is written.
#[test]
fn missing_crds_missing_rbac_and_a_stopped_api_server_say_what_to_do() {
    if skip_e2e() {
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let mut cluster = runtime
        .block_on(KubeCluster::start("kube-store-errors"))
        .unwrap();
    let error = KubeStore::open(KubeStoreConfig {
        kubeconfig: Some(cluster.admin_kubeconfig_path()),
        namespace: "istio-system".into(),
    })
    .unwrap_err()
    .to_string();
    assert!(error.contains("install trustplane's CRDs"), "{error}");
    assert!(error.contains("trustplane admin crds"), "{error}");

    runtime.block_on(cluster.apply_crds()).unwrap();
    let agent = runtime
        .block_on(cluster.agent_kubeconfig_path("istio-system"))
        .unwrap();
    let error = KubeStore::open(KubeStoreConfig {
        kubeconfig: Some(agent),
        namespace: "istio-system".into(),
    })
    .unwrap_err()
    .to_string();
    for part in [
        "forbids list trustplaneheads in namespace istio-system",
        "give the server's ServiceAccount a Role",
    ] {
        assert!(error.contains(part), "{part:?} not in {error}");
    }

    let store = open(&cluster, "istio-system");
    store
        .commit(Batch::new().put(Table::Clusters, "east", b"1".to_vec(), None))
        .unwrap();
    runtime.block_on(cluster.stop_apiserver()).unwrap();
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
    assert!(error.contains("unreachable or failing"), "{error}");
    assert!(error.contains("--kubeconfig"), "{error}");
    runtime.block_on(cluster.start_apiserver()).unwrap();
    assert_eq!(
        store.get(Table::Clusters, "east").unwrap().unwrap().value,
        b"1"
    );
    assert_eq!(store.get(Table::Clusters, "west").unwrap(), None);
    assert_eq!(store.generation().unwrap(), Some(1));
}
