//! End-to-end tests against real peers (kube-apiserver + etcd, built by
//! `tests/e2e/harness/build-peers.sh`). This file declares the modules and
//! tests the harness itself.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod cluster_sync;
#[path = "../common/mod.rs"]
mod common;
mod ha;
mod helm;
mod kube_cluster;
mod rotation;
mod sink;
mod vault_kubernetes;

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::time::Instant;

use k8s_openapi::ByteString;
use k8s_openapi::api::authentication::v1::SelfSubjectReview;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};

use kube_cluster::{
    AGENT_SERVICE_ACCOUNT, KubeCluster, error_chain, is_connection_refused, skip_e2e,
};

fn secret(name: &str, key: &str, value: &str) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([(
            key.to_owned(),
            ByteString(value.as_bytes().to_vec()),
        )])),
        ..Secret::default()
    }
}

fn secret_value(secret: &Secret, key: &str) -> String {
    let bytes = &secret.data.as_ref().unwrap()[key].0;
    String::from_utf8(bytes.clone()).unwrap()
}

#[track_caller]
fn assert_forbidden<T: Debug>(result: Result<T, kube::Error>, what: &str) {
    match result {
        Err(kube::Error::Api(status)) if status.code == 403 => {}
        other => panic!("{what}: expected 403 Forbidden, got {other:?}"),
    }
}

#[tokio::test]
async fn two_clusters_are_independent() {
    if skip_e2e() {
        return;
    }
    let started = Instant::now();
    let (alpha, beta) = tokio::join!(KubeCluster::start("alpha"), KubeCluster::start("beta"));
    let (alpha, beta) = (alpha.unwrap(), beta.unwrap());
    println!(
        "two clusters started concurrently in {:.2?}; {}",
        started.elapsed(),
        KubeCluster::versions()
    );
    assert_eq!(alpha.name(), "alpha");
    assert_eq!(beta.name(), "beta");
    assert_ne!(alpha.server_url(), beta.server_url());
    assert_ne!(alpha.ca_pem(), beta.ca_pem());
    assert_ne!(alpha.dir(), beta.dir());
    assert!(alpha.admin_kubeconfig_path().starts_with(alpha.dir()));

    let alpha_secrets: Api<Secret> =
        Api::namespaced(alpha.admin_client().await.unwrap(), "istio-system");
    let beta_secrets: Api<Secret> =
        Api::namespaced(beta.admin_client().await.unwrap(), "istio-system");
    alpha_secrets
        .create(&PostParams::default(), &secret("only-in-alpha", "k", "v"))
        .await
        .unwrap();
    assert!(
        alpha_secrets
            .get_opt("only-in-alpha")
            .await
            .unwrap()
            .is_some()
    );
    assert!(
        beta_secrets
            .get_opt("only-in-alpha")
            .await
            .unwrap()
            .is_none()
    );

    // Each cluster has its own CA: beta's serving certificate fails against alpha's CA.
    let mut crossed = kube::Config::new(beta.server_url().parse().unwrap());
    crossed.root_cert = Some(vec![pem::parse(alpha.ca_pem()).unwrap().into_contents()]);
    let crossed: Api<Secret> = Api::namespaced(Client::try_from(crossed).unwrap(), "istio-system");
    let error = crossed.get_opt("only-in-alpha").await.unwrap_err();
    let chain = error_chain(&error);
    assert!(
        chain.contains("UnknownIssuer"),
        "expected a TLS failure (unknown issuer), got: {chain}"
    );
}

#[tokio::test]
async fn agent_rbac_allows_secrets_in_its_namespace_only() {
    if skip_e2e() {
        return;
    }
    let started = Instant::now();
    let cluster = KubeCluster::start("rbac").await.unwrap();
    println!("KubeCluster::start took {:.2?}", started.elapsed());
    let agent = cluster.agent_client("istio-system").await.unwrap();

    // A real ServiceAccount token, not the admin's.
    let review = Api::<SelfSubjectReview>::all(agent.clone())
        .create(&PostParams::default(), &SelfSubjectReview::default())
        .await
        .unwrap();
    let user = review.status.unwrap().user_info.unwrap();
    assert_eq!(
        user.username.as_deref(),
        Some(format!("system:serviceaccount:istio-system:{AGENT_SERVICE_ACCOUNT}").as_str())
    );

    // Secrets in istio-system: create, get, replace with the resourceVersion, patch.
    let secrets: Api<Secret> = Api::namespaced(agent.clone(), "istio-system");
    secrets
        .create(
            &PostParams::default(),
            &secret("cacerts", "root-cert.pem", "one"),
        )
        .await
        .unwrap();
    let mut current = secrets.get("cacerts").await.unwrap();
    assert_eq!(secret_value(&current, "root-cert.pem"), "one");
    current.data = secret("cacerts", "root-cert.pem", "two").data;
    let replaced = secrets
        .replace("cacerts", &PostParams::default(), &current)
        .await
        .unwrap();
    assert_eq!(secret_value(&replaced, "root-cert.pem"), "two");
    // The stale resourceVersion is refused: a concurrent writer is detected.
    match secrets
        .replace("cacerts", &PostParams::default(), &current)
        .await
    {
        Err(kube::Error::Api(status)) if status.code == 409 => {}
        other => panic!("replace with a stale resourceVersion: expected 409, got {other:?}"),
    }
    secrets
        .patch(
            "cacerts",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"metadata": {"labels": {"patched": "yes"}}})),
        )
        .await
        .unwrap();

    // No list, watch or delete; nothing outside its namespace.
    assert_forbidden(
        secrets.list(&ListParams::default()).await,
        "list Secrets in istio-system",
    );
    assert_forbidden(
        secrets.delete("cacerts", &DeleteParams::default()).await,
        "delete a Secret in istio-system",
    );
    let default_secrets: Api<Secret> = Api::namespaced(agent.clone(), "default");
    assert_forbidden(
        default_secrets.get("cacerts").await,
        "get a Secret in default",
    );
    assert_forbidden(
        default_secrets
            .create(&PostParams::default(), &secret("cacerts", "k", "v"))
            .await,
        "create a Secret in default",
    );
    // The same file applied in d8-istio binds that namespace's ServiceAccount only.
    let other_agent = cluster.agent_client("d8-istio").await.unwrap();
    assert_forbidden(
        Api::<Secret>::namespaced(other_agent.clone(), "istio-system")
            .get("cacerts")
            .await,
        "d8-istio's agent gets a Secret in istio-system",
    );
    Api::<Secret>::namespaced(other_agent, "d8-istio")
        .create(&PostParams::default(), &secret("cacerts", "k", "v"))
        .await
        .unwrap();

    // Leases (leader election): create, get, replace, and patch as kube-lease-manager does.
    let leases: Api<Lease> = Api::namespaced(agent, "istio-system");
    let lease = Lease {
        metadata: ObjectMeta {
            name: Some("trustplane-agent".to_owned()),
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some("replica-a".to_owned()),
            lease_duration_seconds: Some(15),
            ..LeaseSpec::default()
        }),
    };
    leases.create(&PostParams::default(), &lease).await.unwrap();
    let mut current = leases.get("trustplane-agent").await.unwrap();
    current.spec.as_mut().unwrap().holder_identity = Some("replica-b".to_owned());
    let replaced = leases
        .replace("trustplane-agent", &PostParams::default(), &current)
        .await
        .unwrap();
    assert_eq!(
        replaced.spec.unwrap().holder_identity.as_deref(),
        Some("replica-b")
    );
    leases
        .patch(
            "trustplane-agent",
            &PatchParams::default(),
            &Patch::Strategic(serde_json::json!({"spec": {"holderIdentity": "replica-c"}})),
        )
        .await
        .unwrap();
    leases
        .patch(
            "trustplane-agent",
            &PatchParams::apply("trustplane-agent").force(),
            &Patch::Apply(serde_json::json!({
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "spec": {"holderIdentity": "replica-d"},
            })),
        )
        .await
        .unwrap();
    let current = leases.get("trustplane-agent").await.unwrap();
    assert_eq!(
        current.spec.unwrap().holder_identity.as_deref(),
        Some("replica-d")
    );
    assert_forbidden(
        leases.list(&ListParams::default()).await,
        "list Leases in istio-system",
    );
}

#[tokio::test]
async fn apiserver_restart_keeps_data() {
    if skip_e2e() {
        return;
    }
    let mut cluster = KubeCluster::start("restart").await.unwrap();
    let url = cluster.server_url();
    let secrets: Api<Secret> =
        Api::namespaced(cluster.admin_client().await.unwrap(), "istio-system");
    secrets
        .create(
            &PostParams::default(),
            &secret("kept", "k", "before restart"),
        )
        .await
        .unwrap();

    let stopped = Instant::now();
    cluster.stop_apiserver().await.unwrap();
    // A fresh client: no pooled connection to the dead process.
    let offline: Api<Secret> =
        Api::namespaced(cluster.admin_client().await.unwrap(), "istio-system");
    let error = offline.get("kept").await.unwrap_err();
    assert!(
        is_connection_refused(&error),
        "expected connection refused, got: {}",
        error_chain(&error)
    );

    cluster.start_apiserver().await.unwrap();
    println!("kube-apiserver restarted in {:.2?}", stopped.elapsed());
    assert_eq!(cluster.server_url(), url);
    // The client made before the restart reconnects to the same URL.
    let kept = secrets.get("kept").await.unwrap();
    assert_eq!(secret_value(&kept, "k"), "before restart");
    let agent = cluster.agent_client("istio-system").await.unwrap();
    Api::<Secret>::namespaced(agent, "istio-system")
        .create(
            &PostParams::default(),
            &secret("cacerts", "k", "after restart"),
        )
        .await
        .unwrap();
}
