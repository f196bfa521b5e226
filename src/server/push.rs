//! Push mode: for clusters registered with a kubeconfig, the server writes
//! the `cacerts` Secret itself, with the same rules as the agent's
//! Kubernetes sink. The intermediate key is generated in this process for
//! each issuance and only ever sent to that cluster's Secret; it is never
//! stored by the server.
//!
//! Trade-off (documented in the README): no agent to install, but the
//! server holds a credential that can write Secrets in every push cluster,
//! and the intermediate key crosses the network once per issuance.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::authority::Authority;
use super::error::ServerError;
use crate::ca::KeyAlgorithm;
use crate::reconcile::{self, Backoff, BundleView, IssueReason, RENEW_FRACTION, StatusReport};
use crate::sink::kube;
use crate::sink::{
    CacertsMaterial, IntermediateSource, Keeper, KubernetesSink, KubernetesSinkOptions,
};
use crate::store::records::PushTarget;
use crate::telemetry::error_text;

/// How often a healthy push cluster is re-checked even without changes.
const RECHECK_INTERVAL: Duration = Duration::from_secs(60);
/// Longest wait between retries of a failing push.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Runs one push loop per push-mode cluster, starting and stopping loops
/// as clusters are added and removed.
#[derive(Debug)]
pub struct PushController {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl PushController {
    /// Starts the controller.
    pub fn spawn(authority: Arc<Authority>) -> Self {
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(supervise(authority, stopped));
        PushController { stop, task }
    }

    /// Stops every push loop and waits for them.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

struct Running {
    target: PushTarget,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

async fn supervise(authority: Arc<Authority>, mut stopped: watch::Receiver<bool>) {
    let mut running: HashMap<String, Running> = HashMap::new();
    loop {
        match authority.registry.push_clusters() {
            Ok(clusters) => {
                let wanted: HashMap<String, PushTarget> = clusters.into_iter().collect();
                let gone: Vec<String> = running
                    .iter()
                    .filter(|(name, loop_)| wanted.get(*name) != Some(&loop_.target))
                    .map(|(name, _)| name.clone())
                    .collect();
                for name in gone {
                    if let Some(loop_) = running.remove(&name) {
                        let _ = loop_.stop.send(true);
                        let _ = loop_.task.await;
                        tracing::info!(cluster = %name, "push loop stopped");
                    }
                }
                for (name, target) in wanted {
                    if running.contains_key(&name) {
                        continue;
                    }
                    let (stop, stop_receiver) = watch::channel(false);
                    let task = tokio::spawn(push_loop(
                        authority.clone(),
                        name.clone(),
                        target.clone(),
                        stop_receiver,
                    ));
                    tracing::info!(cluster = %name, namespace = %target.namespace, "push loop started");
                    running.insert(name, Running { target, stop, task });
                }
            }
            Err(error) => tracing::warn!(error = %error, "cannot list push-mode clusters"),
        }
        tokio::select! {
            () = authority.core().clusters_changed() => {}
            () = authority.core().clock().sleep(RECHECK_INTERVAL) => {}
            _ = stopped.changed() => break,
        }
    }
    for (_, loop_) in running {
        let _ = loop_.stop.send(true);
        let _ = loop_.task.await;
    }
}

/// New intermediates for push mode: the key is generated in this process,
/// signed by the server's own root signer, and only ever sent to the
/// cluster's Secret.
struct LocalKeySource<'a> {
    authority: &'a Authority,
    cluster: &'a str,
}

#[async_trait::async_trait]
impl IntermediateSource for LocalKeySource<'_> {
    type Error = ServerError;

    async fn obtain(
        &self,
        _bundle: &BundleView<'_>,
        _reason: IssueReason,
    ) -> Result<CacertsMaterial, ServerError> {
        let issued = self
            .authority
            .issuance
            .issue_with_local_key("server (push)", self.cluster, KeyAlgorithm::EcdsaP256, None)
            .await?;
        Ok(CacertsMaterial {
            ca_cert_pem: issued.certificate.to_pem(),
            ca_key_pem: issued.key.to_pkcs8_pem(),
            cert_chain_pem: issued.cert_chain_pem,
            root_cert_pem: issued.bundle.root_cert_pem.clone(),
            bundle_version: issued.bundle.bundle.version(),
        })
    }
}

async fn push_loop(
    authority: Arc<Authority>,
    cluster: String,
    target: PushTarget,
    mut stopped: watch::Receiver<bool>,
) {
    let mut bundles = authority.publication.subscribe();
    let mut directives = authority.publication.subscribe_directives();
    let mut backoff = Backoff::new(MAX_BACKOFF);
    let mut keeper: Option<Keeper> = None;
    loop {
        bundles.borrow_and_update();
        directives.borrow_and_update();
        let wait = match push_once(&authority, &cluster, &target, &mut keeper).await {
            Ok(keeper) => {
                backoff.reset();
                record(&authority, &cluster, keeper.report(None));
                reconcile::wait_before_next(authority.now(), &[keeper.renew_at()], RECHECK_INTERVAL)
            }
            Err(error) => {
                let delay = backoff.next_delay();
                let text = error_text(&error);
                tracing::warn!(
                    cluster = %cluster,
                    error = %text,
                    "push to the cluster failed; retrying in {:.1} s",
                    delay.as_secs_f64()
                );
                // What is applied, if anything, and the error: as the agent reports.
                let report = keeper.as_ref().map_or_else(
                    || StatusReport::new(None, Some(&text)),
                    |keeper| keeper.report(Some(&text)),
                );
                record(&authority, &cluster, report);
                delay
            }
        };
        tokio::select! {
            () = authority.core().clock().sleep(wait) => {}
            changed = bundles.changed() => if changed.is_err() { return },
            changed = directives.changed() => if changed.is_err() { return },
            _ = stopped.changed() => return,
        }
    }
}

fn record(authority: &Authority, cluster: &str, report: StatusReport) {
    if let Err(error) = authority.registry.report_status(cluster, report) {
        tracing::warn!(cluster, error = %error, "cannot record push status");
    }
}

/// One reconciliation: connect on first use, check the Secret still holds
/// what was written (someone may have changed it), and let the keeper keep
/// it, refresh its `root-cert.pem` or write a new intermediate.
async fn push_once<'a>(
    authority: &Authority,
    cluster: &str,
    target: &PushTarget,
    keeper: &'a mut Option<Keeper>,
) -> Result<&'a Keeper, ServerError> {
    let keeper = match keeper {
        Some(keeper) => keeper,
        None => {
            let kubeconfig = authority.registry.push_kubeconfig(target)?;
            let client = kube::connect_with_kubeconfig(&kubeconfig).await?;
            let sink = KubernetesSink::new(
                client,
                KubernetesSinkOptions {
                    namespace: target.namespace.clone(),
                    format: target.secret_format,
                    ..KubernetesSinkOptions::default()
                },
            )
            .with_clock(authority.core().clock().clone());
            keeper.insert(Keeper::new(Arc::new(sink), RENEW_FRACTION))
        }
    };
    keeper.recheck();
    let bundle = authority.publication.for_cluster(Some(cluster));
    let view = BundleView {
        version: bundle.published.bundle.version(),
        root_cert_pem: &bundle.published.root_cert_pem,
        signing_root_sha256: &bundle.published.signing_root_sha256,
        reissue_serial: &bundle.reissue_serial,
    };
    let source = LocalKeySource { authority, cluster };
    keeper.reconcile(&source, &view, authority.now()).await?;
    Ok(keeper)
}
