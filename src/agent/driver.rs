//! The agent's loop: (re)open the bundle stream, hand every bundle to the
//! cluster's [`Keeper`] (the shared reconciler driver), renew on time and
//! report. The agent's [`IntermediateSource`] generates the key here and
//! sends a CSR to the server; the key never leaves this process except into
//! the sink.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tonic::transport::Channel;

use super::config::{AgentConfig, AgentStatus};
use super::error::{AgentError, call, certificate_error};
use super::identity::{self, ClientIdentity, IdentityStore};
use crate::ca::{self, KeyAlgorithm, PrivateKey};
use crate::proto::intermediate_service_client::IntermediateServiceClient;
use crate::proto::trust_bundle_service_client::TrustBundleServiceClient;
use crate::proto::{
    Bundle, RenewIdentityRequest, ReportStatusRequest, SignIntermediateRequest, WatchBundleRequest,
};
use crate::reconcile::{self, Backoff, BundleView, IssueReason, StatusReport};
use crate::sink::{CacertsMaterial, ClusterSink, IntermediateSource, Keeper};
use crate::telemetry::{error_text, metrics};

/// How often the agent reports its state even when nothing changed.
const REPORT_INTERVAL: Duration = Duration::from_secs(60);
/// The agent renews its control-plane identity at this fraction of the
/// client certificate's lifetime (jittered like intermediates).
const IDENTITY_RENEW_FRACTION: f64 = 2.0 / 3.0;

/// When to renew the identity whose client certificate is `client_cert_pem`
/// (`None` when it does not read: the agent then serves until it expires).
fn identity_renewal_time(client_cert_pem: &str) -> Option<SystemTime> {
    let certificate = ca::Certificate::parse_pem_chain(client_cert_pem)
        .ok()?
        .into_iter()
        .next()?;
    let not_before = certificate.not_before().ok()?;
    let not_after = certificate.not_after().ok()?;
    Some(reconcile::renewal_time(
        reconcile::issued_at(not_before, not_after),
        not_after,
        IDENTITY_RENEW_FRACTION,
        reconcile::random_unit(),
    ))
}

/// `time` as fractional Unix seconds, as the metrics show times.
fn unix_seconds(time: SystemTime) -> f64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |since| since.as_secs_f64())
}

/// The wire form of a bundle as the reconciler sees it.
pub(crate) fn bundle_view(bundle: &Bundle) -> BundleView<'_> {
    BundleView {
        version: bundle.version,
        root_cert_pem: &bundle.root_cert_pem,
        signing_root_sha256: &bundle.signing_root_sha256,
        reissue_serial: &bundle.reissue_intermediate_serial,
    }
}

/// A status report in its wire form.
pub(crate) fn report_request(cluster: &str, report: StatusReport) -> ReportStatusRequest {
    ReportStatusRequest {
        applied_bundle_version: report.applied_bundle_version,
        intermediate_serial: report.intermediate_serial,
        intermediate_not_after_unix: report.intermediate_not_after_unix,
        cert_chain_pem: report.cert_chain_pem,
        error: report.error,
        cluster: cluster.to_string(),
    }
}

/// New intermediates from a CSR sent to the server; the key is made here.
struct CsrSource {
    cluster: String,
    key_algorithm: KeyAlgorithm,
    intermediates: IntermediateServiceClient<Channel>,
}

#[async_trait::async_trait]
impl IntermediateSource for CsrSource {
    type Error = AgentError;

    async fn obtain(
        &self,
        bundle: &BundleView<'_>,
        reason: IssueReason,
    ) -> Result<CacertsMaterial, AgentError> {
        tracing::info!(cluster = %self.cluster, %reason, "requesting a new intermediate");
        let key = PrivateKey::generate(self.key_algorithm)
            .map_err(certificate_error("could not generate the intermediate key"))?;
        let csr = ca::create_csr(&key, &format!("{} intermediate CA", self.cluster))
            .map_err(certificate_error("could not create the intermediate CSR"))?;
        let request = SignIntermediateRequest {
            csr: csr.into_bytes(),
            cluster: self.cluster.clone(),
        };
        let response = call(
            "SignIntermediate",
            self.intermediates.clone().sign_intermediate(request),
        )
        .await?;
        // Use whichever bundle is newer: the one signed against or the watched one.
        let (root_cert_pem, bundle_version) = match response.bundle {
            Some(signed) if signed.version >= bundle.version => {
                (signed.root_cert_pem, signed.version)
            }
            _ => (bundle.root_cert_pem.to_string(), bundle.version),
        };
        Ok(CacertsMaterial {
            ca_cert_pem: response.certificate_pem,
            ca_key_pem: key.to_pkcs8_pem(),
            cert_chain_pem: response.cert_chain_pem,
            root_cert_pem,
            bundle_version,
        })
    }
}

/// One agent's loop state.
pub(crate) struct Agent<'a> {
    config: AgentConfig,
    status: &'a watch::Sender<AgentStatus>,
    cluster: String,
    source: CsrSource,
    intermediates: IntermediateServiceClient<Channel>,
    bundles: TrustBundleServiceClient<Channel>,
    keeper: Keeper,
    last_error: Option<String>,
    /// The control-plane identity in use, and where it is kept.
    identity: ClientIdentity,
    identity_store: Arc<dyn IdentityStore>,
    /// When to renew it next (or retry a failed renewal or save).
    identity_due: Option<SystemTime>,
    /// A renewed identity in use that the store does not hold yet.
    identity_unsaved: bool,
    identity_backoff: Backoff,
    /// The server addresses, and which one the channel talks to.
    servers: Vec<String>,
    server_index: usize,
}

/// What ended one watch stream.
enum StreamEnd {
    /// An error: reopen after a backoff.
    Failed(AgentError),
    /// The identity was renewed: reopen at once on the new channel.
    NewIdentity,
}

impl<'a> Agent<'a> {
    /// An agent acting as `identity` (kept in `identity_store`, renewed at
    /// 2/3 of its lifetime) and keeping `sink` current.
    ///
    /// Errors: [`AgentError::Transport`] for a bad server URL.
    pub(crate) fn new(
        config: AgentConfig,
        identity: ClientIdentity,
        identity_store: Arc<dyn IdentityStore>,
        sink: Arc<dyn ClusterSink>,
        status: &'a watch::Sender<AgentStatus>,
    ) -> Result<Self, AgentError> {
        let servers = config.servers();
        let first = servers.first().cloned().unwrap_or_default();
        let channel = identity::mtls_channel(&first, &identity)?;
        let intermediates = IntermediateServiceClient::new(channel.clone());
        let cluster = identity.cluster.clone();
        let identity_due = identity_renewal_time(&identity.client_cert_pem);
        if identity_due.is_none() {
            tracing::warn!(
                identity = %identity_store.describe(),
                "the client certificate does not read; it will not be renewed (enroll again before it expires)"
            );
        }
        Ok(Self {
            source: CsrSource {
                cluster: cluster.clone(),
                key_algorithm: config.key_algorithm,
                intermediates: intermediates.clone(),
            },
            keeper: Keeper::new(sink, config.renew_fraction),
            identity_due,
            identity_unsaved: false,
            identity_backoff: Backoff::new(config.max_backoff),
            identity,
            identity_store,
            config,
            status,
            cluster,
            intermediates,
            bundles: TrustBundleServiceClient::new(channel),
            last_error: None,
            servers,
            server_index: 0,
        })
    }

    /// The server the channel talks to.
    fn server(&self) -> &str {
        self.servers
            .get(self.server_index)
            .map_or(self.config.server.as_str(), String::as_str)
    }

    /// With several server addresses: talks to the next one from now on
    /// (after the current one failed).
    fn fail_over(&mut self) {
        if self.servers.len() < 2 {
            return;
        }
        let failed = self.server().to_string();
        self.server_index = (self.server_index + 1) % self.servers.len();
        match identity::mtls_channel(self.server(), &self.identity) {
            Ok(channel) => {
                tracing::info!(failed = %failed, next = %self.server(), "failing over to the next server");
                self.use_channel(channel);
            }
            Err(error) => {
                tracing::error!(error = %error_text(&error), server = %self.server(), "cannot use the next server address");
            }
        }
    }

    /// Talks to the server over `channel` from now on.
    fn use_channel(&mut self, channel: Channel) {
        self.intermediates = IntermediateServiceClient::new(channel.clone());
        self.source.intermediates = self.intermediates.clone();
        self.bundles = TrustBundleServiceClient::new(channel);
    }

    /// Renews the control-plane identity when due: a fresh key made here, a
    /// CSR, `RenewIdentity` over the current identity, the new identity
    /// saved whole (directory files replaced atomically, or the Secret
    /// replaced under its resourceVersion) and the channel switched to it.
    /// The server refuses the old certificate once it answered, so the new
    /// identity is used at once even if saving it failed (the save is
    /// retried). On failure the current identity serves on until it
    /// expires, and renewal is retried with backoff. Returns whether the
    /// channel changed.
    async fn renew_identity_if_due(&mut self) -> bool {
        if self.identity_due.is_none_or(|due| self.now() < due) {
            return false;
        }
        if self.identity_unsaved {
            self.save_identity().await;
            return false;
        }
        match self.renew_identity().await {
            Ok(renewed) => {
                // The server refuses the old certificate from now on: keep
                // the new identity whatever happens next.
                self.identity = renewed;
                self.identity_unsaved = true;
                self.identity_backoff.reset();
                self.save_identity().await;
                match identity::mtls_channel(self.server(), &self.identity) {
                    Ok(channel) => {
                        self.use_channel(channel);
                        true
                    }
                    Err(error) => {
                        // Only a server URL that does not parse fails here,
                        // and it parsed for the current channel.
                        tracing::error!(error = %error_text(&error), "cannot switch to the renewed identity");
                        false
                    }
                }
            }
            Err(error) => {
                self.identity_failed("renewing the control-plane identity", &error);
                false
            }
        }
    }

    async fn renew_identity(&self) -> Result<ClientIdentity, AgentError> {
        let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256)
            .map_err(certificate_error("could not generate the client key"))?;
        let csr = ca::create_csr(&key, &format!("trustplane agent {}", self.cluster))
            .map_err(certificate_error("could not create the client CSR"))?;
        let request = RenewIdentityRequest {
            client_csr_pem: csr,
        };
        let response = call(
            "RenewIdentity",
            self.intermediates.clone().renew_identity(request),
        )
        .await?;
        ca::Certificate::parse_pem_chain(&response.client_certificate_pem).map_err(
            certificate_error("the server sent an unusable client certificate"),
        )?;
        let mut renewed = self.identity.clone();
        renewed.client_cert_pem = response.client_certificate_pem;
        renewed.client_key_pem = key.to_pkcs8_pem();
        if !response.control_plane_ca_pem.trim().is_empty() {
            renewed.server_ca_pem = response.control_plane_ca_pem;
        }
        tracing::info!(
            cluster = %self.cluster,
            not_after = %humantime::format_rfc3339_seconds(ca::unix_to_system_time(response.not_after_unix)),
            "control-plane identity renewed"
        );
        Ok(renewed)
    }

    async fn save_identity(&mut self) {
        match self.identity_store.save(&self.identity).await {
            Ok(()) => {
                self.identity_unsaved = false;
                self.identity_backoff.reset();
                self.identity_due = identity_renewal_time(&self.identity.client_cert_pem);
                tracing::info!(identity = %self.identity_store.describe(), "renewed identity saved");
            }
            Err(error) => self.identity_failed("saving the renewed identity", &error),
        }
    }

    /// Logs a failed identity step and schedules its retry with backoff.
    fn identity_failed(&mut self, what: &str, error: &AgentError) {
        let delay = self.identity_backoff.next_delay();
        let text = error_text(error);
        tracing::warn!(
            error = %text,
            identity = %self.identity_store.describe(),
            "{what} failed; the current identity serves on; retrying in {:.1} s",
            delay.as_secs_f64()
        );
        self.identity_due = Some(self.now() + delay);
        self.record_error(format!("{what}: {text}"));
    }

    fn now(&self) -> SystemTime {
        self.config.clock.now()
    }

    /// The main loop: (re)open the bundle stream, apply every new bundle,
    /// renew on time, report periodically. Returns only on a fatal error
    /// (none today: everything here is retried).
    pub(crate) async fn watch_and_apply(&mut self) -> Result<(), AgentError> {
        let max_backoff = self.config.max_backoff;
        let mut stream_backoff = Backoff::new(max_backoff);
        let mut apply_backoff = Backoff::new(max_backoff);
        let mut report_backoff = Backoff::new(max_backoff);
        let mut latest: Option<Bundle> = None;
        // When to (re)try applying `latest`; `None` when it is applied.
        let mut apply_at: Option<SystemTime> = None;
        let mut report_at = self.now() + REPORT_INTERVAL;
        loop {
            let stream_error = match self.open_watch().await {
                Err(error) => error,
                Ok(mut stream) => match loop {
                    let wait = self.next_wake(apply_at, latest.is_some(), report_at);
                    let clock = self.config.clock.clone();
                    tokio::select! {
                        message = stream.message() => match message {
                            Ok(Some(bundle)) => {
                                stream_backoff.reset();
                                tracing::debug!(version = bundle.version, "received trust bundle");
                                latest = Some(bundle);
                                apply_at = Some(self.now());
                            }
                            Ok(None) => break StreamEnd::Failed(AgentError::Rpc {
                                call: "WatchBundle",
                                source: tonic::Status::unavailable("the server closed the stream"),
                            }),
                            Err(source) => break StreamEnd::Failed(AgentError::Rpc { call: "WatchBundle", source }),
                        },
                        () = clock.sleep(wait) => {}
                    }
                    if apply_at.is_none() && self.renewal_due() {
                        apply_at = Some(self.now());
                    }
                    if let (Some(at), Some(bundle)) = (apply_at, &latest)
                        && at <= self.now()
                    {
                        let report_now;
                        (apply_at, report_now) = self.apply(bundle, &mut apply_backoff).await;
                        if report_now {
                            report_at = self.now();
                        }
                    }
                    if report_at <= self.now() {
                        report_at = self.report_and_schedule(&mut report_backoff).await;
                    }
                    if self.renew_identity_if_due().await {
                        break StreamEnd::NewIdentity;
                    }
                } {
                    StreamEnd::Failed(error) => error,
                    StreamEnd::NewIdentity => {
                        // Show at once that the new identity works.
                        report_at = self.now();
                        continue;
                    }
                },
            };
            let delay = stream_backoff.next_delay();
            let text = error_text(&stream_error);
            tracing::warn!(
                error = %text,
                server = %self.server(),
                "watching the trust bundle failed; retrying in {:.1} s",
                delay.as_secs_f64()
            );
            self.record_error(text);
            self.config.clock.sleep(delay).await;
            // The stream broke or never opened: the next attempt goes to
            // the next replica (one Service name keeps its own channel).
            self.fail_over();
        }
    }

    /// Applies `bundle`. Returns when to try again (`None` once applied)
    /// and whether to report at once (something changed, or a new error).
    async fn apply(
        &mut self,
        bundle: &Bundle,
        backoff: &mut Backoff,
    ) -> (Option<SystemTime>, bool) {
        let now = self.now();
        match self
            .keeper
            .reconcile(&self.source, &bundle_view(bundle), now)
            .await
        {
            Ok(changed) => {
                backoff.reset();
                metrics::record_agent_apply(unix_seconds(now));
                let recovered = self.last_error.take().is_some();
                self.publish_status();
                (None, changed || recovered)
            }
            Err(error) => {
                let delay = backoff.next_delay();
                let text = error_text(&error);
                tracing::warn!(
                    error = %text,
                    sink = %self.keeper.describe(),
                    "applying trust bundle {} failed; retrying in {:.1} s",
                    bundle.version,
                    delay.as_secs_f64()
                );
                let new_error = self.record_error(text);
                (Some(self.now() + delay), new_error)
            }
        }
    }

    /// Reports the applied state; returns when to report next (sooner
    /// after a failure).
    async fn report_and_schedule(&mut self, backoff: &mut Backoff) -> SystemTime {
        let report = self.keeper.report(self.last_error.as_deref());
        let request = report_request(&self.cluster, report);
        match call("ReportStatus", self.intermediates.report_status(request)).await {
            Ok(_) => {
                backoff.reset();
                let now = self.now();
                metrics::record_agent_report(unix_seconds(now));
                now + REPORT_INTERVAL
            }
            Err(error) => {
                let delay = backoff.next_delay().min(REPORT_INTERVAL);
                tracing::warn!(
                    error = %error_text(&error),
                    "status report failed; retrying in {:.1} s",
                    delay.as_secs_f64()
                );
                self.now() + delay
            }
        }
    }

    async fn open_watch(&mut self) -> Result<tonic::Streaming<Bundle>, AgentError> {
        let request = WatchBundleRequest {
            known_version: self
                .keeper
                .applied()
                .map_or(0, |applied| applied.bundle_version),
        };
        call("WatchBundle", self.bundles.watch_bundle(request)).await
    }

    /// How long to wait: until the earliest of the pending apply (only with
    /// a bundle to apply), the renewal time (only when no apply is pending:
    /// a failed renewal waits for its backoff) and the report, never longer
    /// than one report interval.
    fn next_wake(
        &self,
        apply_at: Option<SystemTime>,
        has_bundle: bool,
        report_at: SystemTime,
    ) -> Duration {
        let pending = match (apply_at, has_bundle) {
            (Some(apply_at), true) => Some(apply_at),
            // A failed apply waits for its backoff, not for the renewal time.
            (Some(_), false) => None,
            (None, _) => self.keeper.renew_at(),
        };
        reconcile::wait_before_next(
            self.now(),
            &[pending, Some(report_at), self.identity_due],
            REPORT_INTERVAL,
        )
    }

    fn renewal_due(&self) -> bool {
        self.keeper
            .renew_at()
            .is_some_and(|renew_at| self.now() >= renew_at)
    }

    /// Records `text` as the last error; `true` when it differs from the
    /// previous one (worth reporting at once).
    fn record_error(&mut self, text: String) -> bool {
        let new = self.last_error.as_deref() != Some(text.as_str());
        self.last_error = Some(text);
        self.publish_status();
        new
    }

    fn publish_status(&self) {
        let applied = self.keeper.applied();
        let mut next = AgentStatus {
            cluster: self.cluster.clone(),
            applied_bundle_version: applied.map_or(0, |applied| applied.bundle_version),
            intermediate_serial: applied
                .map(|applied| applied.serial.clone())
                .unwrap_or_default(),
            intermediate_not_after_unix: applied
                .map_or(0, |applied| ca::system_time_to_unix(applied.not_after)),
            last_error: self.last_error.clone(),
            leader: None,
        };
        self.status.send_if_modified(|current| {
            // Leadership is the election's to publish.
            next.leader = current.leader;
            if *current == next {
                false
            } else {
                *current = next;
                true
            }
        });
    }
}
