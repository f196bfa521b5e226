//! The Kubernetes sink's concurrency rule against a real apiserver: a
//! concurrent writer is detected by resourceVersion (409) and never
//! overwritten blindly; a write that meets a 409 reads the Secret again and
//! then goes through, keeping the other writer's change, or gives up after
//! its attempts without writing. The races are made deterministic by a
//! transport between the sink and the apiserver ([`RacingWriter`]), so the
//! sink itself needs no test hook.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::{Patch, PatchParams, WatchEvent, WatchParams};
use kube::client::Body;
// tower's `Service` trait (tonic re-exports it; tower is no direct dependency).
use tokio_stream::StreamExt;
use tonic::codegen::{Context, Future, Pin, Poll, Service};
use trustplane::sink::{CacertsMaterial, ClusterSink, KubernetesSink, KubernetesSinkOptions};

use crate::cluster_sync::data;
use crate::common::fixtures::cacerts_material;
use crate::kube_cluster::{KubeCluster, error_chain, skip_e2e};

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
    sink.write(&cacerts_material(1)).await.unwrap();
    let admin: Api<Secret> = Api::namespaced(cluster.admin_client().await.unwrap(), "istio-system");
    // Every revision from here on, in order (metadata only: no key material),
    // drained as it comes: the apiserver closes a watch that falls behind.
    let created = admin.get_metadata("cacerts").await.unwrap();
    let mut watch = Box::pin(
        admin
            .watch_metadata(
                &WatchParams::default().fields("metadata.name=cacerts"),
                created.metadata.resource_version.as_deref().unwrap(),
            )
            .await
            .unwrap(),
    );
    let (revision_sender, mut revisions) = tokio::sync::mpsc::unbounded_channel();
    let watcher = tokio::spawn(async move {
        while let Some(event) = watch.next().await {
            if revision_sender.send(event).is_err() {
                break;
            }
        }
    });

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
        match sink.write(&cacerts_material(version)).await {
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

    // No write of the sink reverted the other writer: in the Secret's history,
    // each revision the sink wrote (a new bundle version) carries the other
    // writer's annotation exactly as the revision before it did.
    let last = admin
        .get_metadata("cacerts")
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let annotation = |metadata: &kube::api::ObjectMeta, key: &str| {
        metadata
            .annotations
            .as_ref()
            .and_then(|annotations| annotations.get(key).cloned())
    };
    let mut previous = created.metadata;
    let mut sink_revisions = 0;
    while previous.resource_version.as_deref() != Some(last.as_str()) {
        let event = tokio::time::timeout(Duration::from_secs(30), revisions.recv())
            .await
            .expect("the watch delivers every revision")
            .expect("the watch stays open")
            .unwrap();
        let current = match event {
            WatchEvent::Modified(object) => object.metadata,
            WatchEvent::Bookmark(_) => continue,
            other => panic!("unexpected watch event {other:?}"),
        };
        let bundle = "trustplane.io/bundle-version";
        if annotation(&current, bundle) != annotation(&previous, bundle) {
            sink_revisions += 1;
            assert_eq!(
                annotation(&current, "other-writer"),
                annotation(&previous, "other-writer"),
                "the sink's write of bundle v{} reverted the other writer",
                annotation(&current, bundle).unwrap_or_default()
            );
        }
        previous = current;
    }
    watcher.abort();
    assert_eq!(sink_revisions, written, "each stored write is one revision");
}

/// The sink's transport to the apiserver, with another writer racing it:
/// before forwarding each of the sink's next `races` replaces (PUT), it
/// changes the Secret's `other-writer.txt` key through the admin client, so
/// that the replace carries a resourceVersion the apiserver no longer has.
/// The 409s are the real apiserver's; the sink is unchanged. Every call is
/// recorded with the apiserver's status.
#[derive(Clone)]
struct RacingWriter {
    /// The sink's own client (the agent's ServiceAccount).
    agent: kube::Client,
    /// The other writer.
    admin: Api<Secret>,
    /// How many of the sink's next replaces to race.
    races: Arc<AtomicUsize>,
    /// How many times the other writer wrote, and the resourceVersion it
    /// left last time; it writes `write <count>` into `other-writer.txt`.
    last_race: Arc<Mutex<(u64, Option<String>)>>,
    calls: Arc<Mutex<Vec<(http::Method, u16)>>>,
}

impl RacingWriter {
    async fn race(&self) {
        let count = self.last_race.lock().unwrap().0 + 1;
        let patch =
            serde_json::json!({"stringData": {"other-writer.txt": format!("write {count}")}});
        let written = self
            .admin
            .patch("cacerts", &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap();
        *self.last_race.lock().unwrap() = (count, written.metadata.resource_version);
    }

    /// The calls recorded so far, and forgets them.
    fn take_calls(&self) -> Vec<(http::Method, u16)> {
        std::mem::take(&mut *self.calls.lock().unwrap())
    }
}

impl Service<http::Request<Body>> for RacingWriter {
    type Response = http::Response<Body>;
    type Error = kube::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let method = request.method().clone();
            let raced = method == http::Method::PUT
                && this
                    .races
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| {
                        left.checked_sub(1)
                    })
                    .is_ok();
            if raced {
                this.race().await;
            }
            let response = this.agent.send(request).await?;
            this.calls
                .lock()
                .unwrap()
                .push((method, response.status().as_u16()));
            Ok(response)
        })
    }
}

/// A sink whose every replace can be raced by another writer (see
/// [`RacingWriter`]); no race until `races` is set.
async fn racing_sink(cluster: &KubeCluster) -> (KubernetesSink, RacingWriter) {
    let racing = RacingWriter {
        agent: cluster.agent_client("istio-system").await.unwrap(),
        admin: Api::namespaced(cluster.admin_client().await.unwrap(), "istio-system"),
        races: Arc::new(AtomicUsize::new(0)),
        last_race: Arc::new(Mutex::new((0, None))),
        calls: Arc::new(Mutex::new(Vec::new())),
    };
    let sink = KubernetesSink::new(
        kube::Client::new(racing.clone(), "istio-system"),
        KubernetesSinkOptions::default(),
    );
    (sink, racing)
}

/// The Secret holds exactly `material` in the istio form (compared without
/// printing it: `ca-key.pem` is a private key).
#[track_caller]
fn assert_holds(secret: &Secret, material: &CacertsMaterial) {
    let version = material.bundle_version;
    for (key, expected) in [
        ("ca-cert.pem", material.ca_cert_pem.as_str()),
        ("ca-key.pem", material.ca_key_pem.as_str()),
        ("cert-chain.pem", material.cert_chain_pem.as_str()),
        ("root-cert.pem", material.root_cert_pem.as_str()),
    ] {
        assert!(
            data(secret, key).as_deref() == Some(expected),
            "{key} is not the one of bundle v{version}"
        );
    }
    let annotations = secret.metadata.annotations.clone().unwrap_or_default();
    assert_eq!(
        annotations.get("trustplane.io/bundle-version"),
        Some(&version.to_string())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_write_that_meets_a_conflict_reads_again_and_keeps_the_other_writers_change() {
    if skip_e2e() {
        return;
    }
    let cluster = KubeCluster::start("reread").await.unwrap();
    let (sink, racing) = racing_sink(&cluster).await;
    sink.write(&cacerts_material(1)).await.unwrap();
    assert_eq!(
        racing.take_calls(),
        [(http::Method::GET, 404), (http::Method::POST, 201)],
        "the first write creates the Secret"
    );

    // The other writer changes the Secret between each of the sink's next
    // two reads and its replace.
    racing.races.store(2, Ordering::SeqCst);
    let second = cacerts_material(2);
    sink.write(&second).await.unwrap();
    let (get, put) = (http::Method::GET, http::Method::PUT);
    assert_eq!(
        racing.take_calls(),
        [
            (get.clone(), 200),
            (put.clone(), 409),
            (get.clone(), 200),
            (put.clone(), 409),
            (get, 200),
            (put, 200),
        ],
        "each 409 is followed by a new read, then a replace that goes through"
    );
    assert_eq!(racing.races.load(Ordering::SeqCst), 0);

    let (races, raced_version) = racing.last_race.lock().unwrap().clone();
    assert_eq!(races, 2);
    let after = racing.admin.get("cacerts").await.unwrap();
    assert_holds(&after, &second);
    assert_eq!(
        data(&after, "other-writer.txt").as_deref(),
        Some("write 2"),
        "the sink's write kept the other writer's latest change"
    );
    assert_ne!(
        after.metadata.resource_version, raced_version,
        "the sink wrote after the other writer's last change"
    );
    println!(
        "two writes raced by another writer: 409 twice, read again each time, then stored on the third attempt with the other writer's key kept"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_writer_that_always_comes_first_makes_the_sink_give_up_without_overwriting() {
    if skip_e2e() {
        return;
    }
    let cluster = KubeCluster::start("starved").await.unwrap();
    let (sink, racing) = racing_sink(&cluster).await;
    let first = cacerts_material(1);
    sink.write(&first).await.unwrap();
    racing.take_calls();

    racing.races.store(usize::MAX, Ordering::SeqCst);
    let error = sink.write(&cacerts_material(2)).await.unwrap_err();
    let chain = error_chain(&error);
    assert!(chain.contains("409"), "gave up for another reason: {chain}");

    let calls = racing.take_calls();
    let replaces = calls.len() / 2;
    assert!(
        replaces >= 2,
        "the sink gave up without reading again: {calls:?}"
    );
    for attempt in calls.chunks(2) {
        assert_eq!(
            attempt,
            [(http::Method::GET, 200), (http::Method::PUT, 409)],
            "every attempt reads, then meets a 409: {calls:?}"
        );
    }
    let (races, raced_version) = racing.last_race.lock().unwrap().clone();
    assert_eq!(races, replaces as u64, "each replace was raced");
    let after = racing.admin.get("cacerts").await.unwrap();
    assert_holds(&after, &first);
    assert_eq!(
        data(&after, "other-writer.txt"),
        Some(format!("write {races}")),
        "the other writer's latest change is what is stored"
    );
    assert_eq!(
        after.metadata.resource_version, raced_version,
        "nothing was written after the other writer's last change"
    );
    println!("{replaces} attempts, each read again and refused with 409; gave up: {chain}");
}
