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
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::{Authority, ServerError};
use crate::agent::{
    CacertsMaterial, ClusterSink, KubernetesSink, KubernetesSinkOptions, SecretFormat,
};
use crate::ca::{self, Certificate, KeyAlgorithm, system_time_to_unix};
use crate::proto;
use crate::store::records::PushTarget;

/// How often a healthy push cluster is re-checked even without changes.
const RECHECK_INTERVAL: Duration = Duration::from_secs(60);
/// Longest wait between retries of a failing push.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Share of an intermediate's lifetime after which it is renewed.
const RENEW_FRACTION: f64 = 2.0 / 3.0;

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
        match authority.push_clusters() {
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
            _ = authority.clusters_changed() => {}
            _ = tokio::time::sleep(RECHECK_INTERVAL) => {}
            _ = stopped.changed() => break,
        }
    }
    for (_, loop_) in running {
        let _ = loop_.stop.send(true);
        let _ = loop_.task.await;
    }
}

/// What a successful push left in the cluster.
struct Applied {
    bundle_version: u64,
    serial: String,
    not_after: SystemTime,
    renew_at: SystemTime,
    cert_chain_pem: String,
}

async fn push_loop(
    authority: Arc<Authority>,
    cluster: String,
    target: PushTarget,
    mut stopped: watch::Receiver<bool>,
) {
    let mut bundles = authority.subscribe();
    let mut directives = authority.subscribe_directives();
    let mut failures: u32 = 0;
    loop {
        bundles.borrow_and_update();
        directives.borrow_and_update();
        let wait = match push_once(&authority, &cluster, &target).await {
            Ok(applied) => {
                failures = 0;
                report(&authority, &cluster, Some(&applied), "");
                let until_renewal = applied
                    .renew_at
                    .duration_since(authority.now())
                    .unwrap_or(Duration::ZERO);
                until_renewal.min(RECHECK_INTERVAL)
            }
            Err(error) => {
                failures = failures.saturating_add(1);
                let delay = backoff(failures);
                tracing::warn!(
                    cluster = %cluster,
                    error = %error,
                    "push to the cluster failed; retrying in {:.1} s",
                    delay.as_secs_f64()
                );
                report(&authority, &cluster, None, &error.to_string());
                delay
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            changed = bundles.changed() => if changed.is_err() { return },
            changed = directives.changed() => if changed.is_err() { return },
            _ = stopped.changed() => return,
        }
    }
}

fn backoff(failures: u32) -> Duration {
    let exponent = failures.saturating_sub(1).min(8);
    Duration::from_millis(500u64.saturating_mul(1 << exponent)).min(MAX_BACKOFF)
}

fn report(authority: &Authority, cluster: &str, applied: Option<&Applied>, error: &str) {
    let request = match applied {
        Some(applied) => proto::ReportStatusRequest {
            applied_bundle_version: applied.bundle_version,
            intermediate_serial: applied.serial.clone(),
            intermediate_not_after_unix: system_time_to_unix(applied.not_after),
            cert_chain_pem: applied.cert_chain_pem.clone(),
            error: String::new(),
            cluster: cluster.to_string(),
        },
        None => proto::ReportStatusRequest {
            error: error.to_string(),
            cluster: cluster.to_string(),
            ..Default::default()
        },
    };
    if let Err(report_error) = authority.report_status(cluster, request) {
        tracing::warn!(cluster, error = %report_error, "cannot record push status");
    }
}

async fn kube_client(kubeconfig: &str) -> Result<kube::Client, ServerError> {
    let parsed = kube::config::Kubeconfig::from_yaml(kubeconfig)
        .map_err(|error| ServerError::Push(format!("kubeconfig does not parse: {error}")))?;
    let config =
        kube::Config::from_custom_kubeconfig(parsed, &kube::config::KubeConfigOptions::default())
            .await
            .map_err(|error| ServerError::Push(format!("kubeconfig: {error}")))?;
    kube::Client::try_from(config)
        .map_err(|error| ServerError::Push(format!("Kubernetes client: {error}")))
}

fn renew_at(certificate: &Certificate) -> Result<(SystemTime, SystemTime), ServerError> {
    let not_after = certificate.not_after()?;
    let issued = certificate
        .not_before()?
        .checked_add(ca::BACKDATE)
        .map_or(not_after, |issued| issued.min(not_after));
    let lifetime = not_after.duration_since(issued).unwrap_or(Duration::ZERO);
    Ok((issued + lifetime.mul_f64(RENEW_FRACTION), not_after))
}

/// One reconciliation: keep a valid managed Secret, refresh only its
/// `root-cert.pem` when the bundle changed but still holds its root, or
/// issue a new intermediate (key generated here) and write all keys at once.
async fn push_once(
    authority: &Authority,
    cluster: &str,
    target: &PushTarget,
) -> Result<Applied, ServerError> {
    let kubeconfig = authority.push_kubeconfig(target)?;
    let client = kube_client(&kubeconfig).await?;
    let format: SecretFormat = target.secret_format.parse().map_err(|_| {
        ServerError::Push(format!("unknown secret format {:?}", target.secret_format))
    })?;
    let sink = KubernetesSink::new(
        client,
        KubernetesSinkOptions {
            namespace: target.namespace.clone(),
            format,
            ..KubernetesSinkOptions::default()
        },
    );
    let published = authority.current_bundle();
    let bundle_pem = published.message.root_cert_pem.clone();
    let roots = published.bundle.roots();
    let now = authority.now();

    if let Some(files) = sink
        .read()
        .await
        .map_err(|error| ServerError::Push(error.to_string()))?
    {
        let check = ca::check_cacerts(&files, now, Duration::ZERO);
        let chain = files
            .cert_chain
            .as_deref()
            .and_then(|pem| Certificate::parse_pem_chain(pem).ok())
            .unwrap_or_default();
        let chain_root_trusted = chain.last().is_some_and(|root| roots.contains(root));
        // A rotation (sign-new or its abort) switches the signing root: an
        // intermediate from the other root is replaced even though valid.
        let signing_root = authority.signing_root();
        let from_signing_root = chain.last() == Some(&signing_root);
        if let (true, true, true, Some(intermediate)) = (
            check.passed(),
            chain_root_trusted,
            from_signing_root,
            chain.first(),
        ) {
            let (renew, not_after) = renew_at(intermediate)?;
            let serial = intermediate.serial_hex()?;
            let reissue_requested = authority
                .reissue_serial(cluster)
                .is_some_and(|requested| requested == serial);
            if now < renew && !reissue_requested {
                let applied = Applied {
                    bundle_version: published.bundle.version(),
                    serial: intermediate.serial_hex()?,
                    not_after,
                    renew_at: renew,
                    cert_chain_pem: files.cert_chain.clone().unwrap_or_default(),
                };
                if files.root_cert.as_deref() == Some(bundle_pem.as_str()) {
                    return Ok(applied);
                }
                if let (Some(ca_cert), Some(ca_key), Some(cert_chain)) = (
                    files.ca_cert.clone(),
                    files.ca_key.clone(),
                    files.cert_chain.clone(),
                ) {
                    sink.write(&CacertsMaterial {
                        ca_cert_pem: ca_cert,
                        ca_key_pem: ca_key,
                        cert_chain_pem: cert_chain,
                        root_cert_pem: bundle_pem,
                        bundle_version: published.bundle.version(),
                    })
                    .await
                    .map_err(|error| ServerError::Push(error.to_string()))?;
                    tracing::info!(
                        cluster,
                        version = published.bundle.version(),
                        "pushed the new trust bundle"
                    );
                    return Ok(applied);
                }
            }
        }
    }

    let issued = authority
        .issue_with_local_key(cluster, KeyAlgorithm::EcdsaP256, None)
        .await?;
    let material = CacertsMaterial {
        ca_cert_pem: issued.certificate.to_pem(),
        ca_key_pem: issued.key.to_pkcs8_pem(),
        cert_chain_pem: issued.cert_chain_pem.clone(),
        root_cert_pem: issued.bundle.message.root_cert_pem.clone(),
        bundle_version: issued.bundle.bundle.version(),
    };
    let check = ca::check_cacerts(&material.to_files(), now, Duration::ZERO);
    if !check.passed() {
        return Err(ServerError::Push(format!(
            "refusing to write a cacerts set istiod would reject: {:?}",
            check.findings
        )));
    }
    sink.write(&material)
        .await
        .map_err(|error| ServerError::Push(error.to_string()))?;
    let (renew, not_after) = renew_at(&issued.certificate)?;
    let serial = issued.certificate.serial_hex()?;
    tracing::info!(cluster, serial = %serial, namespace = %target.namespace, "pushed a new intermediate");
    Ok(Applied {
        bundle_version: issued.bundle.bundle.version(),
        serial,
        not_after,
        renew_at: renew,
        cert_chain_pem: issued.cert_chain_pem,
    })
}
