//! Cluster sync end to end: two real kube-apiservers (each with its own
//! etcd), agents in both (two leader-elected replicas in one), push mode for
//! two more cluster names (one in the istio form, one in the
//! `kubernetes.io/tls` form), and Istio's own CA code (`tests/interop/istio`)
//! loading every `cacerts` Secret read back from its apiserver in the layout
//! istiod would pick.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Api;
use kube::api::PostParams;
use trustplane::agent::{
    self, AgentConfig, AgentHandle, AgentStatus, IdentityStore, KubernetesIdentityStore,
    LeaseOptions,
};
use trustplane::ca::{self, Certificate};
use trustplane::proto;
use trustplane::sink::{ClusterSink, KubernetesSink, KubernetesSinkOptions};

use crate::common;
use crate::common::fixtures::{new_root, new_root_with_key};
use crate::kube_cluster::{KubeCluster, skip_e2e};

const WAIT: Duration = Duration::from_secs(90);
const LEASE: Duration = Duration::from_secs(4);

pub(crate) use crate::common::istio::{istio_interop, istio_sign, istio_verify, run};

pub(crate) fn data(secret: &Secret, key: &str) -> Option<String> {
    secret
        .data
        .as_ref()
        .and_then(|data| data.get(key))
        .map(|value| String::from_utf8(value.0.clone()).unwrap())
}

/// The two layouts of a `cacerts` Secret that istiod reads from its mount.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Layout {
    /// `--secret-format istio`: `ca-cert.pem`, `ca-key.pem`,
    /// `cert-chain.pem`, `root-cert.pem` in an `Opaque` Secret.
    Istio,
    /// `--secret-format tls`: `tls.crt`, `tls.key`, `ca.crt` in a
    /// `kubernetes.io/tls` Secret.
    Tls,
}

impl Layout {
    fn keys(self) -> &'static [&'static str] {
        match self {
            Layout::Istio => &[
                "ca-cert.pem",
                "ca-key.pem",
                "cert-chain.pem",
                "root-cert.pem",
            ],
            Layout::Tls => &["tls.crt", "tls.key", "ca.crt"],
        }
    }

    fn other(self) -> Layout {
        match self {
            Layout::Istio => Layout::Tls,
            Layout::Tls => Layout::Istio,
        }
    }

    /// The key holding the trust bundle.
    fn roots_key(self) -> &'static str {
        match self {
            Layout::Istio => "root-cert.pem",
            Layout::Tls => "ca.crt",
        }
    }

    fn secret_type(self) -> &'static str {
        match self {
            Layout::Istio => "Opaque",
            Layout::Tls => "kubernetes.io/tls",
        }
    }

    /// How `istio-interop sign` names the layout it loaded (`layout=...`).
    fn interop_name(self) -> &'static str {
        match self {
            Layout::Istio => "istiod",
            Layout::Tls => "tls",
        }
    }
}

/// Reads `namespace/cacerts` from a real apiserver into a directory, as
/// istiod's /etc/cacerts mount would see it, requiring the istio layout.
pub(crate) async fn read_cacerts(cluster: &KubeCluster, namespace: &str, dir: &Path) -> Secret {
    read_cacerts_as(cluster, namespace, Layout::Istio, dir).await
}

/// Reads `namespace/cacerts` into `dir` as the kubelet mounts a Secret (one
/// file per key, all keys), after checking that it holds every key of
/// `layout` and none of the other one: a stray `tls.crt` would switch istiod
/// to the tls layout.
async fn read_cacerts_as(
    cluster: &KubeCluster,
    namespace: &str,
    layout: Layout,
    dir: &Path,
) -> Secret {
    let secrets: Api<Secret> = Api::namespaced(cluster.admin_client().await.unwrap(), namespace);
    let secret = secrets.get("cacerts").await.unwrap();
    for key in layout.keys() {
        assert!(
            data(&secret, key).is_some(),
            "{namespace}/cacerts ({layout:?} layout) has no {key}"
        );
    }
    for key in layout.other().keys() {
        assert!(
            data(&secret, key).is_none(),
            "{namespace}/cacerts ({layout:?} layout) also has {key}"
        );
    }
    std::fs::create_dir_all(dir).unwrap();
    for (key, value) in secret.data.iter().flatten() {
        std::fs::write(dir.join(key), &value.0).unwrap();
    }
    secret
}

/// One cluster's cacerts location: which apiserver, which namespace.
pub(crate) struct Target<'a> {
    pub(crate) name: &'static str,
    pub(crate) cluster: &'a KubeCluster,
    pub(crate) namespace: &'static str,
}

/// A cluster of the cross-cluster checks: where its cacerts is, and the
/// layout it is written in.
struct Member<'a> {
    target: Target<'a>,
    layout: Layout,
}

/// Signs a workload certificate in every cluster with Istio's CA code
/// (loading the cacerts in the layout istiod picks, which must be the
/// member's), and verifies each under every other cluster's trust bundle.
/// Returns the number of checks made; panics on the first failure.
async fn cross_cluster_checks(members: &[Member<'_>], work: &Path, round: &str) -> usize {
    let spiffe = "spiffe://cluster.local/ns/default/sa/x";
    let mut checks = 0;
    for Member { target, layout } in members {
        let dir = work.join(round).join(target.name);
        read_cacerts_as(target.cluster, target.namespace, *layout, &dir).await;
        let leaf = dir.join("leaf-chain.pem");
        let signed = istio_sign(&dir, spiffe, &leaf).unwrap_or_else(|error| {
            panic!(
                "{round}: istiod's CA code refused {}'s cacerts: {error}",
                target.name
            )
        });
        assert!(
            signed.contains(&format!(" layout={} ", layout.interop_name())),
            "{round}: istiod's CA code did not load {}'s cacerts in the {layout:?} layout: {signed}",
            target.name
        );
        checks += 1;
    }
    for signer in members {
        for verifier in members {
            if signer.target.name == verifier.target.name {
                continue;
            }
            let chain = work
                .join(round)
                .join(signer.target.name)
                .join("leaf-chain.pem");
            let roots = work
                .join(round)
                .join(verifier.target.name)
                .join(verifier.layout.roots_key());
            let verified = istio_verify(&chain, &roots, Some(spiffe));
            assert!(
                verified.is_ok(),
                "{round}: a workload of {} does not verify under {}'s {}: {verified:?}",
                signer.target.name,
                verifier.target.name,
                verifier.layout.roots_key()
            );
            checks += 1;
        }
    }
    checks
}

/// The namespace of epsilon's `cacerts` (tls form, push mode) in beta.
const TLS_NAMESPACE: &str = "istio-tls";

fn targets<'a>(alpha: &'a KubeCluster, beta: &'a KubeCluster) -> [Member<'a>; 4] {
    let istio = |name, cluster, namespace| Member {
        target: Target {
            name,
            cluster,
            namespace,
        },
        layout: Layout::Istio,
    };
    [
        istio("alpha", alpha, "istio-system"),
        istio("beta", beta, "istio-system"),
        istio("gamma", alpha, "d8-istio"),
        Member {
            target: Target {
                name: "epsilon",
                cluster: beta,
                namespace: TLS_NAMESPACE,
            },
            layout: Layout::Tls,
        },
    ]
}

/// Creates `namespace` in `cluster` and applies the agent RBAC of
/// deploy/manifests/agent.yaml into it (as the harness does for its own
/// namespaces), then waits until it is in effect.
async fn add_agent_namespace(cluster: &KubeCluster, namespace: &str) {
    let admin = cluster.admin_client().await.unwrap();
    Api::<Namespace>::all(admin.clone())
        .create(
            &PostParams::default(),
            &Namespace {
                metadata: ObjectMeta {
                    name: Some(namespace.to_owned()),
                    ..ObjectMeta::default()
                },
                ..Namespace::default()
            },
        )
        .await
        .unwrap();
    cluster.apply_agent_rbac(namespace).await.unwrap();
}

fn publish_new_root(server: &common::TestServer, name: &str) -> u64 {
    let authority = server.authority();
    let next = authority
        .publication
        .current()
        .bundle
        .with_appended(new_root(name))
        .unwrap();
    let version = next.version();
    authority.publication.publish(next).unwrap();
    version
}

async fn wait_status(
    handle: &AgentHandle,
    what: &str,
    condition: impl Fn(&AgentStatus) -> bool,
) -> AgentStatus {
    let deadline = Instant::now() + WAIT;
    loop {
        let status = handle.status.borrow().clone();
        if condition(&status) {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "never reached: {what}; last status {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the server has reports from every cluster for `version`.
async fn wait_reported(
    server: &common::TestServer,
    clusters: &[&str],
    version: u64,
) -> Vec<proto::ClusterStatus> {
    let deadline = Instant::now() + WAIT;
    loop {
        let listed = server
            .admin()
            .await
            .list_clusters(proto::ListClustersRequest {})
            .await
            .unwrap()
            .into_inner()
            .clusters;
        let done = clusters.iter().all(|name| {
            listed.iter().any(|status| {
                status.name == *name
                    && status.applied_bundle_version == version
                    && !status.intermediate_serial.is_empty()
                    && status.last_error.is_empty()
            })
        });
        if done {
            return listed;
        }
        assert!(
            Instant::now() < deadline,
            "clusters {clusters:?} never all reported bundle v{version}: {listed:#?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub(crate) fn agent_config(server: &common::TestServer, token: Option<String>) -> AgentConfig {
    let mut config = AgentConfig::new(server.url(), PathBuf::new());
    config.server_ca_pem = Some(server.control_plane_ca_pem.clone());
    config.join_token = token.map(zeroize::Zeroizing::new);
    config.max_backoff = Duration::from_secs(2);
    config
}

pub(crate) async fn kubernetes_parts(
    cluster: &KubeCluster,
    namespace: &str,
) -> (kube::Client, Arc<dyn IdentityStore>, Arc<dyn ClusterSink>) {
    // The agent's own ServiceAccount token: exactly the RBAC of deploy/manifests/agent.yaml.
    let client = cluster.agent_client(namespace).await.unwrap();
    let identity: Arc<dyn IdentityStore> =
        Arc::new(KubernetesIdentityStore::new(client.clone(), namespace));
    let sink: Arc<dyn ClusterSink> = Arc::new(KubernetesSink::new(
        client.clone(),
        KubernetesSinkOptions {
            namespace: namespace.to_string(),
            ..KubernetesSinkOptions::default()
        },
    ));
    (client, identity, sink)
}

async fn leader_replica(
    cluster: &KubeCluster,
    server: &common::TestServer,
    token: &str,
    holder: &str,
) -> AgentHandle {
    let (client, identity, sink) = kubernetes_parts(cluster, "istio-system").await;
    let mut lease = LeaseOptions::new(client, "istio-system");
    lease.holder_id = holder.to_string();
    lease.duration = LEASE;
    agent::spawn_with_leader_election(
        agent_config(server, Some(token.to_string())),
        identity,
        sink,
        lease,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn agents_and_push_mode_keep_istio_cacerts_current_in_real_apiservers() {
    if skip_e2e() {
        return;
    }
    common::install_crypto();
    let started = Instant::now();
    let (alpha, beta) = tokio::join!(KubeCluster::start("alpha"), KubeCluster::start("beta"));
    let (alpha, mut beta) = (alpha.unwrap(), beta.unwrap());
    let istio_version = run(istio_interop(), &["version"]).unwrap();
    println!(
        "real components: {} ×2; Istio CA code: {}",
        KubeCluster::versions(),
        istio_version.trim()
    );
    let server = common::start_server().await;
    let work = tempfile::tempdir().unwrap();

    // alpha: two agent replicas competing for one Lease; beta: one agent;
    // gamma: push mode into alpha's d8-istio namespace (no agent); epsilon:
    // push mode in the kubernetes.io/tls form into beta's istio-tls namespace.
    let alpha_token = server.add_cluster("alpha").await;
    let replica_one = leader_replica(&alpha, &server, &alpha_token, "alpha-1").await;
    let replica_two = leader_replica(&alpha, &server, &alpha_token, "alpha-2").await;
    let beta_token = server.add_cluster("beta").await;
    let (_, beta_identity, beta_sink) = kubernetes_parts(&beta, "istio-system").await;
    let beta_agent = agent::spawn_with_identity(
        agent_config(&server, Some(beta_token)),
        beta_identity.clone(),
        beta_sink.clone(),
    );
    let gamma_kubeconfig =
        std::fs::read_to_string(alpha.agent_kubeconfig_path("d8-istio").await.unwrap()).unwrap();
    server
        .admin()
        .await
        .add_cluster(proto::AddClusterRequest {
            name: "gamma".into(),
            kubeconfig: gamma_kubeconfig,
            namespace: "d8-istio".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    add_agent_namespace(&beta, TLS_NAMESPACE).await;
    let epsilon_kubeconfig =
        std::fs::read_to_string(beta.agent_kubeconfig_path(TLS_NAMESPACE).await.unwrap()).unwrap();
    server
        .admin()
        .await
        .add_cluster(proto::AddClusterRequest {
            name: "epsilon".into(),
            kubeconfig: epsilon_kubeconfig,
            namespace: TLS_NAMESPACE.into(),
            secret_format: "tls".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let all = ["alpha", "beta", "gamma", "epsilon"];
    let listed = wait_reported(&server, &all, 1).await;
    for push in ["gamma", "epsilon"] {
        let status = listed.iter().find(|status| status.name == push).unwrap();
        assert_eq!(status.mode, "push", "{push}");
    }
    println!(
        "[{:.1}s] alpha (agent, 2 replicas), beta (agent), gamma (push), epsilon (push, tls form) applied bundle v1",
        started.elapsed().as_secs_f64()
    );

    let mut checks = cross_cluster_checks(&targets(&alpha, &beta), work.path(), "v1").await;

    // Every Secret is managed, versioned, and never carries istio-generated.
    for Member { target, layout } in &targets(&alpha, &beta) {
        let secret = read_cacerts_as(
            target.cluster,
            target.namespace,
            *layout,
            &work.path().join("labels").join(target.name),
        )
        .await;
        assert_eq!(
            secret.type_.as_deref(),
            Some(layout.secret_type()),
            "{}",
            target.name
        );
        let labels = secret.metadata.labels.clone().unwrap_or_default();
        assert_eq!(
            labels
                .get("app.kubernetes.io/managed-by")
                .map(String::as_str),
            Some("trustplane")
        );
        let annotations = secret.metadata.annotations.clone().unwrap_or_default();
        assert_eq!(
            annotations
                .get("trustplane.io/bundle-version")
                .map(String::as_str),
            Some("1"),
            "{}",
            target.name
        );
        assert!(data(&secret, "istio-generated").is_none());
        if *layout == Layout::Tls {
            // istiod appends ca.crt to tls.crt: with no CA between the
            // intermediate and the root, tls.crt is the intermediate alone.
            let chain = Certificate::parse_pem_chain(&data(&secret, "tls.crt").unwrap()).unwrap();
            assert_eq!(chain.len(), 1, "{}: tls.crt repeats the root", target.name);
        }
    }

    // A workload from an unrelated root is refused by every cluster's bundle.
    let foreign = work.path().join("foreign");
    std::fs::create_dir_all(&foreign).unwrap();
    let (foreign_root, foreign_key) = new_root_with_key("unrelated");
    let foreign_intermediate = ca::sign_intermediate(
        &ca::verify_csr(ca::create_csr(&foreign_key, "x").unwrap().as_bytes()).unwrap(),
        &trustplane::IntermediateProfile {
            trust_domain: "cluster.local".into(),
            organisation: "unrelated".into(),
            cluster: "foreign".into(),
            lifetime: Duration::from_secs(3600),
            name_constraints: false,
        },
        &foreign_root,
        &foreign_key,
        trustplane::clock::SystemClock.now(),
    )
    .unwrap();
    std::fs::write(foreign.join("ca-cert.pem"), foreign_intermediate.to_pem()).unwrap();
    std::fs::write(
        foreign.join("ca-key.pem"),
        foreign_key.to_pkcs8_pem().as_bytes(),
    )
    .unwrap();
    std::fs::write(
        foreign.join("cert-chain.pem"),
        foreign_intermediate.to_pem() + &foreign_root.to_pem(),
    )
    .unwrap();
    std::fs::write(foreign.join("root-cert.pem"), foreign_root.to_pem()).unwrap();
    let foreign_leaf = foreign.join("leaf-chain.pem");
    istio_sign(
        &foreign,
        "spiffe://cluster.local/ns/default/sa/x",
        &foreign_leaf,
    )
    .unwrap();
    for Member { target, layout } in &targets(&alpha, &beta) {
        let roots = work
            .path()
            .join("v1")
            .join(target.name)
            .join(layout.roots_key());
        let refused = istio_verify(&foreign_leaf, &roots, None);
        let refusal = refused.expect_err(&format!(
            "a workload from an unrelated root verified under {}'s bundle",
            target.name
        ));
        assert!(
            refusal.contains("unknown authority"),
            "refused for another reason than an unknown issuer: {refusal}"
        );
        checks += 1;
    }

    // Keys and labels trustplane does not own survive its next write.
    let beta_secrets: Api<Secret> =
        Api::namespaced(beta.admin_client().await.unwrap(), "istio-system");
    let mut extra = beta_secrets.get("cacerts").await.unwrap();
    extra
        .metadata
        .labels
        .get_or_insert_with(BTreeMap::new)
        .insert("team".into(), "mesh".into());
    extra
        .data
        .get_or_insert_with(BTreeMap::new)
        .insert("unrelated.txt".into(), ByteString(b"keep me".to_vec()));
    beta_secrets
        .replace("cacerts", &PostParams::default(), &extra)
        .await
        .unwrap();
    let v2 = publish_new_root(&server, "second");
    wait_reported(&server, &all, v2).await;
    let after = beta_secrets.get("cacerts").await.unwrap();
    assert_eq!(data(&after, "unrelated.txt").as_deref(), Some("keep me"));
    assert_eq!(
        after
            .metadata
            .labels
            .as_ref()
            .unwrap()
            .get("team")
            .map(String::as_str),
        Some("mesh")
    );
    let v1_pem = std::fs::read_to_string(work.path().join("v1/beta/root-cert.pem")).unwrap();
    let v2_pem = data(&after, "root-cert.pem").unwrap();
    assert!(
        v2_pem.contains(&v1_pem),
        "istiod's substring rule: the old bundle bytes stay in the new one"
    );
    assert_eq!(Certificate::parse_pem_chain(&v2_pem).unwrap().len(), 2);
    // The same rule for the tls form, whose bundle istiod reads from ca.crt.
    let epsilon_v1 = std::fs::read_to_string(work.path().join("v1/epsilon/ca.crt")).unwrap();
    let epsilon_v2 = data(
        &Api::<Secret>::namespaced(beta.admin_client().await.unwrap(), TLS_NAMESPACE)
            .get("cacerts")
            .await
            .unwrap(),
        "ca.crt",
    )
    .unwrap();
    assert!(
        epsilon_v2.contains(&epsilon_v1),
        "istiod's substring rule on epsilon's ca.crt"
    );
    assert_eq!(Certificate::parse_pem_chain(&epsilon_v2).unwrap().len(), 2);
    println!(
        "[{:.1}s] bundle v2 applied everywhere; unrelated key and label kept",
        started.elapsed().as_secs_f64()
    );
    checks += cross_cluster_checks(&targets(&alpha, &beta), work.path(), "v2").await;

    // Leader kill: the replica holding the Lease dies without releasing it;
    // the other takes over within the lease duration and applies v3.
    let leader_one = replica_one.status.borrow().leader == Some(true);
    let (leader, follower) = if leader_one {
        (replica_one, replica_two)
    } else {
        (replica_two, replica_one)
    };
    assert_eq!(
        follower.status.borrow().leader,
        Some(false),
        "exactly one replica leads"
    );
    leader.task.abort();
    let killed = Instant::now();
    let v3 = publish_new_root(&server, "third");
    wait_status(&follower, "the surviving replica leads", |status| {
        status.leader == Some(true)
    })
    .await;
    let leads_after = killed.elapsed();
    assert!(
        leads_after < LEASE + Duration::from_secs(2),
        "the surviving replica took {leads_after:?} to lead (lease {LEASE:?})"
    );
    wait_status(&follower, "the surviving replica applies v3", |status| {
        status.leader == Some(true) && status.applied_bundle_version == v3
    })
    .await;
    let takeover = killed.elapsed();
    println!(
        "[{:.1}s] leader killed; the other replica took over and applied v3 in {:.1}s (lease {}s)",
        started.elapsed().as_secs_f64(),
        takeover.as_secs_f64(),
        LEASE.as_secs()
    );
    assert!(
        takeover < LEASE + Duration::from_secs(8),
        "takeover took {takeover:?}"
    );
    wait_reported(&server, &all, v3).await;

    // Apiserver restart in the middle of a bundle update.
    beta.stop_apiserver().await.unwrap();
    let v4 = publish_new_root(&server, "fourth");
    let down = wait_status(
        &beta_agent,
        "beta reports the apiserver failure",
        |status| status.last_error.is_some(),
    )
    .await;
    println!(
        "[{:.1}s] beta's apiserver is down during v4: agent reports {:?}",
        started.elapsed().as_secs_f64(),
        down.last_error.unwrap_or_default()
    );
    let deadline = Instant::now() + WAIT;
    loop {
        let listed = server
            .admin()
            .await
            .list_clusters(proto::ListClustersRequest {})
            .await
            .unwrap()
            .into_inner()
            .clusters;
        if listed
            .iter()
            .any(|status| status.name == "beta" && !status.last_error.is_empty())
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the server never saw beta's error: {listed:#?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    beta.start_apiserver().await.unwrap();
    wait_reported(&server, &all, v4).await;
    let restored = read_cacerts(&beta, "istio-system", &work.path().join("restored")).await;
    assert_eq!(
        data(&restored, "root-cert.pem")
            .map(|pem| Certificate::parse_pem_chain(&pem).unwrap().len()),
        Some(4)
    );
    let check = ca::check_cacerts(
        &trustplane::cli::read_cacerts_dir(&work.path().join("restored")).unwrap(),
        trustplane::clock::SystemClock.now(),
        Duration::ZERO,
    );
    assert!(
        check.passed(),
        "the Secret after the restart is a whole, valid set: {:?}",
        check.findings
    );
    println!(
        "[{:.1}s] beta's apiserver back; v4 written as one whole Secret",
        started.elapsed().as_secs_f64()
    );
    checks += cross_cluster_checks(&targets(&alpha, &beta), work.path(), "v4").await;

    // A restarted agent finds its identity in its Secret and adopts its
    // cacerts: no join token, no new intermediate.
    let before = beta_agent.status.borrow().intermediate_serial.clone();
    beta_agent.stop();
    beta_agent.task.await.unwrap().unwrap();
    let restarted =
        agent::spawn_with_identity(agent_config(&server, None), beta_identity, beta_sink);
    let status = wait_status(&restarted, "the restarted agent applies v4", |status| {
        status.applied_bundle_version == v4
    })
    .await;
    assert_eq!(
        status.intermediate_serial, before,
        "a restarted agent adopts its own cacerts"
    );

    // A foreign cacerts is left untouched and the agent says so.
    let delta_token = server.add_cluster("delta").await;
    let d8_secrets: Api<Secret> = Api::namespaced(beta.admin_client().await.unwrap(), "d8-istio");
    let mut foreign_secret = Secret::default();
    foreign_secret.metadata.name = Some("cacerts".into());
    foreign_secret.data = Some(BTreeMap::from([(
        "ca-cert.pem".into(),
        ByteString(b"not ours".to_vec()),
    )]));
    d8_secrets
        .create(&PostParams::default(), &foreign_secret)
        .await
        .unwrap();
    let (_, delta_identity, delta_sink) = kubernetes_parts(&beta, "d8-istio").await;
    let delta = agent::spawn_with_identity(
        agent_config(&server, Some(delta_token)),
        delta_identity,
        delta_sink,
    );
    let refused = wait_status(&delta, "delta reports the foreign cacerts", |status| {
        status
            .last_error
            .as_deref()
            .is_some_and(|error| error.contains("--adopt-existing"))
    })
    .await;
    println!(
        "[{:.1}s] foreign cacerts left alone: {:?}",
        started.elapsed().as_secs_f64(),
        refused.last_error.unwrap_or_default()
    );
    let untouched = d8_secrets.get("cacerts").await.unwrap();
    assert_eq!(data(&untouched, "ca-cert.pem").as_deref(), Some("not ours"));
    assert!(
        !untouched
            .metadata
            .labels
            .unwrap_or_default()
            .contains_key("app.kubernetes.io/managed-by")
    );

    for handle in [&follower, &restarted, &delta] {
        handle.stop();
    }
    println!(
        "cross-cluster checks with Istio's CA code: {checks}, failures: 0 ({:.1}s)",
        started.elapsed().as_secs_f64()
    );
}
