//! Secret propagation: from the admin call that publishes a new bundle
//! version to the moment a real kube-apiserver's watch shows the `cacerts`
//! Secret carrying it, for the agent path (a trustplane agent with the
//! Kubernetes sink, in `istio-system`) and the push path (a push-mode
//! cluster the server writes itself, in `d8-istio`), both in one real
//! kube-apiserver + etcd (the e2e harness's, `tests/e2e/harness/build-peers.sh`)
//! against a real in-process server over mTLS.
//!
//! Each version is published by `RotateStart` ({A, B}) or `RotateAbort`
//! (back to {A}), alternately; both Secrets must show it before the next.
//! The time of a Secret is when the watch event arrives that carries the
//! version in its `trustplane.io/bundle-version` annotation.
//!
//! `cargo bench --bench propagation` (env `TRUSTPLANE_BENCH_VERSIONS`,
//! default 20). Progress on stderr, one JSON object on stdout; exits
//! non-zero with the reason when a component is missing or a version never
//! arrives.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../tests/common/mod.rs"]
mod common;
#[allow(dead_code)]
#[path = "../tests/e2e/kube_cluster.rs"]
mod kube_cluster;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::runtime::watcher;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use trustplane::agent::{self, AgentConfig, IdentityStore, KubernetesIdentityStore};
use trustplane::proto;
use trustplane::sink::kube::BUNDLE_VERSION_ANNOTATION;
use trustplane::sink::{ClusterSink, KubernetesSink, KubernetesSinkOptions};

use kube_cluster::KubeCluster;

/// The agent's namespace and the push-mode cluster's.
const AGENT_NAMESPACE: &str = "istio-system";
const PUSH_NAMESPACE: &str = "d8-istio";
/// A version that does not reach both Secrets within this fails the bench.
const VERSION_TIMEOUT: Duration = Duration::from_secs(60);

fn fail(message: impl std::fmt::Display) -> ! {
    eprintln!("propagation bench FAILED: {message}");
    std::process::exit(1)
}

#[allow(clippy::disallowed_methods)] // the bench's own knob, not product configuration
fn versions_from_env() -> usize {
    match std::env::var("TRUSTPLANE_BENCH_VERSIONS") {
        Err(_) => 20,
        Ok(text) => text.parse().unwrap_or_else(|_| {
            fail(format!(
                "TRUSTPLANE_BENCH_VERSIONS={text:?} is not a number of versions"
            ))
        }),
    }
}

/// Forwards every version the `cacerts` Secret of `namespace` is seen
/// with, and when it was seen.
fn watch_cacerts(
    client: kube::Client,
    namespace: &'static str,
    seen: mpsc::UnboundedSender<(&'static str, u64, Instant)>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let secrets: Api<Secret> = Api::namespaced(client, namespace);
        let config = watcher::Config::default().fields("metadata.name=cacerts");
        let mut events = std::pin::pin!(watcher(secrets, config));
        while let Some(event) = events.next().await {
            let at = Instant::now();
            let secret = match event {
                Ok(watcher::Event::Apply(secret) | watcher::Event::InitApply(secret)) => secret,
                Ok(_) => continue,
                Err(error) => {
                    eprintln!("watch of {namespace}/cacerts: {error} (the watcher retries)");
                    continue;
                }
            };
            let version = secret
                .metadata
                .annotations
                .as_ref()
                .and_then(|annotations| annotations.get(BUNDLE_VERSION_ANNOTATION))
                .and_then(|version| version.parse::<u64>().ok());
            if let Some(version) = version
                && seen.send((namespace, version, at)).is_err()
            {
                return;
            }
        }
    })
}

/// Nearest-rank percentiles and the maximum, in milliseconds.
fn summary(mut samples: Vec<Duration>) -> serde_json::Value {
    samples.sort_unstable();
    let quantile = |q: f64| {
        if samples.is_empty() {
            return 0.0;
        }
        let rank = ((q * samples.len() as f64).ceil() as usize).clamp(1, samples.len());
        millis(samples[rank - 1])
    };
    serde_json::json!({
        "count": samples.len(),
        "p50_ms": quantile(0.5),
        "p99_ms": quantile(0.99),
        "max_ms": samples.last().copied().map_or(0.0, millis),
        "min_ms": samples.first().copied().map_or(0.0, millis),
    })
}

fn millis(duration: Duration) -> f64 {
    (duration.as_secs_f64() * 1e6).round() / 1e3
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if std::env::args().any(|argument| argument == "--list") {
        println!("propagation: bench");
        return;
    }
    let versions = versions_from_env();
    common::install_crypto();
    eprintln!("propagation bench: starting etcd + kube-apiserver (tests/e2e/harness)");
    let cluster = KubeCluster::start("propagation").await.unwrap_or_else(|error| {
        fail(format!(
            "a real kube-apiserver + etcd is needed (tests/e2e/harness/build-peers.sh builds them into ~/.cache/trustplane/bin): {error:#}"
        ))
    });
    eprintln!("  {}", KubeCluster::versions());
    let server = common::start_server().await;
    let mut admin = server.admin().await;

    let (seen_sender, mut seen) = mpsc::unbounded_channel();
    let watch_client = cluster
        .admin_client()
        .await
        .unwrap_or_else(|error| fail(format!("admin client: {error:#}")));
    let watches = [
        watch_cacerts(watch_client.clone(), AGENT_NAMESPACE, seen_sender.clone()),
        watch_cacerts(watch_client, PUSH_NAMESPACE, seen_sender),
    ];

    // The agent path: an agent with the Kubernetes sink and identity, as
    // deploy/manifests/agent.yaml runs it (its ServiceAccount's RBAC).
    let token = server.add_cluster("agent-path").await;
    let agent_client = cluster
        .agent_client(AGENT_NAMESPACE)
        .await
        .unwrap_or_else(|error| fail(format!("agent client: {error:#}")));
    let identity: Arc<dyn IdentityStore> = Arc::new(KubernetesIdentityStore::new(
        agent_client.clone(),
        AGENT_NAMESPACE,
    ));
    let sink: Arc<dyn ClusterSink> = Arc::new(KubernetesSink::new(
        agent_client,
        KubernetesSinkOptions {
            namespace: AGENT_NAMESPACE.to_string(),
            ..KubernetesSinkOptions::default()
        },
    ));
    let mut config = AgentConfig::new(server.url(), std::path::PathBuf::new());
    config.server_ca_pem = Some(server.control_plane_ca_pem.clone());
    config.join_token = Some(zeroize::Zeroizing::new(token));
    config.max_backoff = Duration::from_secs(1);
    let agent = agent::spawn_with_identity(config, identity, sink);

    // The push path: the server writes d8-istio/cacerts itself.
    let kubeconfig = cluster
        .agent_kubeconfig_path(PUSH_NAMESPACE)
        .await
        .and_then(|path| Ok(std::fs::read_to_string(path)?))
        .unwrap_or_else(|error| fail(format!("push kubeconfig: {error:#}")));
    admin
        .add_cluster(proto::AddClusterRequest {
            name: "push-path".into(),
            kubeconfig,
            namespace: PUSH_NAMESPACE.into(),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|status| fail(format!("adding the push-mode cluster: {status}")));

    let mut latest: HashMap<&'static str, u64> = HashMap::new();
    let mut wait_for = async |version: u64, started: Instant| -> HashMap<&'static str, Duration> {
        let mut arrived = HashMap::new();
        for namespace in [AGENT_NAMESPACE, PUSH_NAMESPACE] {
            if latest.get(namespace).is_some_and(|seen| *seen >= version) {
                arrived.insert(namespace, Duration::ZERO);
            }
        }
        let deadline = tokio::time::Instant::now() + VERSION_TIMEOUT;
        while arrived.len() < 2 {
            let event = tokio::time::timeout_at(deadline, seen.recv()).await;
            let (namespace, seen_version, at) = match event {
                Ok(Some(event)) => event,
                Ok(None) => fail("the Secret watches ended"),
                Err(_) => fail(format!(
                    "bundle v{version} never reached both Secrets within {VERSION_TIMEOUT:?}; seen: {latest:?}; agent: {:?}",
                    agent.status.borrow()
                )),
            };
            latest.insert(
                namespace,
                seen_version.max(latest.get(namespace).copied().unwrap_or(0)),
            );
            if seen_version >= version && !arrived.contains_key(namespace) {
                arrived.insert(namespace, at.saturating_duration_since(started));
            }
        }
        arrived
    };

    let first = server.authority().publication.current().bundle.version();
    wait_for(first, Instant::now()).await;
    eprintln!("both Secrets hold bundle v{first}; publishing {versions} versions");

    let mut agent_path = Vec::new();
    let mut push_path = Vec::new();
    let mut admin_calls = Vec::new();
    for index in 0..versions {
        let started = Instant::now();
        let status = if index % 2 == 0 {
            admin
                .rotate_start(proto::RotateStartRequest {
                    options: Some(proto::RotationOptions {
                        grace_seconds: 1,
                        ..Default::default()
                    }),
                })
                .await
        } else {
            admin
                .rotate_abort(proto::RotateAbortRequest::default())
                .await
        }
        .unwrap_or_else(|status| fail(format!("publishing version {}: {status}", index + 1)))
        .into_inner();
        admin_calls.push(started.elapsed());
        let version = status
            .bundle
            .as_ref()
            .map(|bundle| bundle.version)
            .unwrap_or_else(|| fail("the rotation status carries no bundle"));
        let arrived = wait_for(version, started).await;
        agent_path.push(arrived[AGENT_NAMESPACE]);
        push_path.push(arrived[PUSH_NAMESPACE]);
        eprintln!(
            "v{version}: agent {:.1} ms, push {:.1} ms (admin call {:.1} ms)",
            millis(arrived[AGENT_NAMESPACE]),
            millis(arrived[PUSH_NAMESPACE]),
            millis(admin_calls[index])
        );
    }
    // An even count ends on an abort: stable again. The watches end
    // before the apiserver does (no retries logged at exit).
    agent.stop();
    for watch in watches {
        watch.abort();
    }

    let agent_summary = summary(agent_path);
    let met = agent_summary["p50_ms"].as_f64().unwrap_or(f64::MAX) < 200.0;
    let push_summary = summary(push_path);
    let result = serde_json::json!({
        "bench": "propagation",
        "versions": versions,
        "kubernetes": KubeCluster::versions(),
        "agent": agent_summary,
        "push": push_summary,
        "admin_call": summary(admin_calls),
        "target_p50_ms": 200.0,
        "met": met && push_summary["p50_ms"].as_f64().unwrap_or(f64::MAX) < 200.0,
    });
    println!("{result}");
}
