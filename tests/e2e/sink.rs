//! The Kubernetes sink's concurrency rule against a real apiserver: a
//! concurrent writer is detected by resourceVersion (409) and never
//! overwritten blindly.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::{Patch, PatchParams};
use trustplane::agent::{CacertsMaterial, ClusterSink, KubernetesSink, KubernetesSinkOptions};
use trustplane::ca::{self, KeyAlgorithm};

use crate::kube_cluster::{KubeCluster, error_chain, skip_e2e};

fn material(version: u64) -> CacertsMaterial {
    let now = SystemTime::now();
    let (root, root_key) = ca::create_root(
        &ca::RootRequest {
            trust_domain: "cluster.local".into(),
            organisation: "test".into(),
            key_algorithm: KeyAlgorithm::EcdsaP256,
            validity: Duration::from_secs(86400),
        },
        now,
    )
    .unwrap();
    let key = ca::PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let csr = ca::verify_csr(ca::create_csr(&key, "east").unwrap().as_bytes()).unwrap();
    let intermediate = ca::sign_intermediate(
        &csr,
        &ca::IntermediateProfile {
            trust_domain: "cluster.local".into(),
            organisation: "test".into(),
            cluster: "east".into(),
            lifetime: Duration::from_secs(3600),
            name_constraints: false,
        },
        &root,
        &root_key,
        now,
    )
    .unwrap();
    CacertsMaterial {
        ca_cert_pem: intermediate.to_pem(),
        ca_key_pem: key.to_pkcs8_pem(),
        cert_chain_pem: format!("{}{}", intermediate.to_pem(), root.to_pem()),
        root_cert_pem: root.to_pem(),
        bundle_version: version,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_concurrent_writer_is_detected_and_never_overwritten() {
    if skip_e2e() {
        return;
    }
    let cluster = KubeCluster::start("conflict").await.unwrap();
    let sink = KubernetesSink::new(
        cluster.agent_client("istio-system").await.unwrap(),
        KubernetesSinkOptions::default(),
    );
    sink.write(&material(1)).await.unwrap();
    let admin: Api<Secret> = Api::namespaced(cluster.admin_client().await.unwrap(), "istio-system");

    // Another writer bumps an annotation as fast as it can.
    let last_written = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (admin, last_written, stop) = (admin.clone(), last_written.clone(), stop.clone());
        tokio::spawn(async move {
            let mut count = 0u64;
            while !stop.load(Ordering::Relaxed) {
                count += 1;
                let patch = serde_json::json!({"metadata": {"annotations": {"other-writer": count.to_string()}}});
                if admin
                    .patch("cacerts", &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .is_ok()
                {
                    last_written.store(count, Ordering::SeqCst);
                }
            }
            count
        })
    };
    let (mut written, mut refused) = (0, 0);
    for version in 2..8 {
        let before = last_written.load(Ordering::SeqCst);
        match sink.write(&material(version)).await {
            Ok(()) => {
                written += 1;
                let after = admin.get("cacerts").await.unwrap();
                let seen: u64 = after
                    .metadata
                    .annotations
                    .unwrap_or_default()
                    .get("other-writer")
                    .map_or(0, |value| value.parse().unwrap());
                assert!(
                    seen >= before,
                    "our write reverted the other writer: {seen} < {before}"
                );
            }
            Err(error) => {
                let chain = error_chain(&error);
                assert!(
                    chain.contains("409"),
                    "only conflicts may fail a write here: {chain}"
                );
                refused += 1;
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    let other = writer.await.unwrap();
    println!(
        "concurrent writer: {other} patches; our writes: {written} stored, {refused} gave up after repeated 409s (never overwrote)"
    );
    assert_eq!(written + refused, 6);
    assert!(
        written > 0,
        "with re-reads, the sink must get some writes through"
    );
}
