//! The shared driver half of the `cacerts` loop: a [`Keeper`] applies the
//! pure reconciler's decisions ([`crate::reconcile`]) to one sink. The agent
//! and push mode each own one and differ only in their
//! [`IntermediateSource`]: a CSR sent to the server, or the server's own key.

use std::sync::Arc;
use std::time::SystemTime;

use crate::reconcile::{
    self, Action, Adoption, Applied, BundleView, IssueReason, ReconcileError, StatusReport,
};

use super::contract::{CacertsMaterial, ClusterSink, SinkError};

/// Where a new intermediate (and its key) comes from.
#[async_trait::async_trait]
pub trait IntermediateSource: Send + Sync {
    /// The driver's error type; sink and reconciler errors convert into it.
    type Error: From<SinkError> + From<ReconcileError> + Send;

    /// A new key and an intermediate for it, with the chain and the newest
    /// bundle known (`bundle`, or a newer one the issuer answered with).
    async fn obtain(
        &self,
        bundle: &BundleView<'_>,
        reason: IssueReason,
    ) -> Result<CacertsMaterial, Self::Error>;
}

/// Keeps one sink's `cacerts` in line with the bundle: remembers what it
/// applied, adopts a usable set found in the sink, rewrites `root-cert.pem`
/// or writes a new intermediate, each as one checked write.
pub struct Keeper {
    sink: Arc<dyn ClusterSink>,
    renew_fraction: f64,
    current: Option<(CacertsMaterial, Applied)>,
    recheck: bool,
}

impl std::fmt::Debug for Keeper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keeper")
            .field("sink", &self.sink.describe())
            .field("renew_fraction", &self.renew_fraction)
            .field("applied", &self.applied())
            .finish()
    }
}

impl Keeper {
    /// A keeper of `sink` renewing at `renew_fraction` of the lifetime; it
    /// reads the sink on its first [`Keeper::reconcile`].
    pub fn new(sink: Arc<dyn ClusterSink>, renew_fraction: f64) -> Self {
        crate::telemetry::metrics::sink_in_use(sink.kind());
        Self {
            sink,
            renew_fraction,
            current: None,
            recheck: false,
        }
    }

    /// The sink's description, for logs.
    pub fn describe(&self) -> String {
        self.sink.describe()
    }

    /// What is applied now, if anything.
    pub fn applied(&self) -> Option<&Applied> {
        self.current.as_ref().map(|(_, applied)| applied)
    }

    /// When the applied intermediate is due for renewal.
    pub fn renew_at(&self) -> Option<SystemTime> {
        self.applied().map(|applied| applied.renew_at)
    }

    /// Makes the next pass read the sink again and start over from what it
    /// holds if that is no longer what was applied (push mode does so every
    /// pass: someone may have changed or deleted the Secret).
    pub fn recheck(&mut self) {
        self.recheck = true;
    }

    /// The status report for what is applied and the current `error`.
    pub fn report(&self, error: Option<&str>) -> StatusReport {
        StatusReport::new(self.applied(), error)
    }

    /// Brings the sink in line with `bundle` at `now`; `Ok(true)` when
    /// something was applied (adopted, written, or a new version recorded).
    ///
    /// Errors: the source's, the sink's, or a set istiod would reject.
    pub async fn reconcile<S: IntermediateSource>(
        &mut self,
        source: &S,
        bundle: &BundleView<'_>,
        now: SystemTime,
    ) -> Result<bool, S::Error> {
        let mut changed = false;
        if std::mem::take(&mut self.recheck) {
            self.drop_if_changed().await?;
        }
        if self.current.is_none() {
            self.current = self.adopt::<S::Error>(bundle, now).await?;
            changed = self.current.is_some();
        }
        match reconcile::decide(self.applied(), bundle, now)? {
            Action::Keep => Ok(changed),
            Action::RewriteRoot => {
                self.rewrite_root::<S::Error>(bundle, now).await?;
                Ok(true)
            }
            Action::Issue(reason) => {
                tracing::info!(sink = %self.sink.describe(), %reason, "obtaining a new intermediate");
                let material = source.obtain(bundle, reason).await?;
                let applied = Applied::read(
                    &material.ca_cert_pem,
                    &material.cert_chain_pem,
                    material.bundle_version,
                    self.renew_fraction,
                    reconcile::random_unit(),
                )?;
                self.check_and_write::<S::Error>(&material, now).await?;
                tracing::info!(
                    serial = %applied.serial,
                    not_after = crate::ca::system_time_to_unix(applied.not_after),
                    version = material.bundle_version,
                    sink = %self.sink.describe(),
                    "wrote a new intermediate"
                );
                self.current = Some((material, applied));
                Ok(true)
            }
        }
    }

    /// Forgets what was applied when the sink no longer holds it.
    async fn drop_if_changed(&mut self) -> Result<(), SinkError> {
        let Some((material, _)) = &self.current else {
            return Ok(());
        };
        let unchanged = self.sink.read().await?.is_some_and(|files| {
            files.ca_cert.as_deref() == Some(material.ca_cert_pem.as_str())
                && files.ca_key.as_deref() == Some(&material.ca_key_pem)
                && files.cert_chain.as_deref() == Some(material.cert_chain_pem.as_str())
                && files.root_cert.as_deref() == Some(material.root_cert_pem.as_str())
        });
        if !unchanged {
            tracing::info!(sink = %self.sink.describe(), "the cacerts changed since they were written; reading them again");
            self.current = None;
        }
        Ok(())
    }

    /// The set already in the sink, if the reconciler may adopt it.
    async fn adopt<E: From<SinkError> + From<ReconcileError>>(
        &self,
        bundle: &BundleView<'_>,
        now: SystemTime,
    ) -> Result<Option<(CacertsMaterial, Applied)>, E> {
        let target = self.sink.describe();
        let files = self.sink.read().await?;
        let unit = reconcile::random_unit();
        match reconcile::adopt(files.as_ref(), bundle, now, self.renew_fraction, unit)? {
            Adoption::Replace(reason) => {
                tracing::info!(sink = %target, "{reason}; obtaining a new set");
                Ok(None)
            }
            Adoption::Adopt(applied) => {
                let Some(files) = files else { return Ok(None) };
                let (
                    Some(ca_cert_pem),
                    Some(ca_key_pem),
                    Some(cert_chain_pem),
                    Some(root_cert_pem),
                ) = (
                    files.ca_cert,
                    files.ca_key,
                    files.cert_chain,
                    files.root_cert,
                )
                else {
                    return Ok(None);
                };
                tracing::info!(
                    sink = %target,
                    serial = %applied.serial,
                    not_after = crate::ca::system_time_to_unix(applied.not_after),
                    "adopting the existing intermediate"
                );
                let material = CacertsMaterial {
                    ca_cert_pem,
                    ca_key_pem,
                    cert_chain_pem,
                    root_cert_pem,
                    bundle_version: 0,
                };
                Ok(Some((material, applied)))
            }
        }
    }

    async fn rewrite_root<E: From<SinkError> + From<ReconcileError>>(
        &mut self,
        bundle: &BundleView<'_>,
        now: SystemTime,
    ) -> Result<(), E> {
        let Some((material, _)) = self.current.as_ref() else {
            return Ok(());
        };
        if material.root_cert_pem != bundle.root_cert_pem {
            let mut next = material.clone();
            next.root_cert_pem = bundle.root_cert_pem.to_string();
            next.bundle_version = bundle.version;
            self.check_and_write::<E>(&next, now).await?;
            if let Some((material, _)) = self.current.as_mut() {
                *material = next;
            }
        }
        if let Some((_, applied)) = self.current.as_mut() {
            applied.bundle_version = bundle.version;
        }
        tracing::info!(version = bundle.version, sink = %self.sink.describe(), "applied trust bundle");
        Ok(())
    }

    /// Checks `material` like istiod would and writes it in one sink write.
    async fn check_and_write<E: From<SinkError> + From<ReconcileError>>(
        &self,
        material: &CacertsMaterial,
        now: SystemTime,
    ) -> Result<(), E> {
        for warning in reconcile::check_before_write(&material.to_files(), now)? {
            tracing::warn!(sink = %self.sink.describe(), "{warning}");
        }
        let started = std::time::Instant::now();
        let written = self.sink.write(material).await;
        crate::telemetry::metrics::record_cacerts_write(
            self.sink.kind(),
            started.elapsed(),
            written.as_ref().err().map(SinkError::metric_label),
        );
        Ok(written?)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::clock::SystemClock;
    use crate::fixtures::cacerts_material;
    use crate::sink::MemorySink;

    /// Hands out prepared sets and counts the calls.
    struct Prepared {
        sets: Mutex<Vec<CacertsMaterial>>,
        calls: Mutex<Vec<IssueReason>>,
    }

    impl Prepared {
        fn new(sets: Vec<CacertsMaterial>) -> Self {
            Self {
                sets: Mutex::new(sets),
                calls: Mutex::new(Vec::new()),
            }
        }

        fn calls(&self) -> Vec<IssueReason> {
            self.calls.lock().unwrap().clone()
        }
    }

    #[derive(Debug, thiserror::Error)]
    enum TestError {
        #[error(transparent)]
        Sink(#[from] SinkError),
        #[error(transparent)]
        Reconcile(#[from] ReconcileError),
    }

    #[async_trait::async_trait]
    impl IntermediateSource for Prepared {
        type Error = TestError;

        async fn obtain(
            &self,
            _bundle: &BundleView<'_>,
            reason: IssueReason,
        ) -> Result<CacertsMaterial, TestError> {
            self.calls.lock().unwrap().push(reason);
            Ok(self.sets.lock().unwrap().remove(0))
        }
    }

    fn view(material: &CacertsMaterial, version: u64) -> BundleView<'_> {
        BundleView {
            version,
            root_cert_pem: &material.root_cert_pem,
            signing_root_sha256: "",
            reissue_serial: "",
        }
    }

    #[tokio::test]
    async fn an_empty_sink_gets_one_checked_write_and_nothing_more_until_a_change() {
        let set = cacerts_material(1);
        let sink = Arc::new(MemorySink::new());
        let mut keeper = Keeper::new(sink.clone(), reconcile::RENEW_FRACTION);
        let source = Prepared::new(vec![set.clone()]);
        let now = SystemClock.now();
        assert!(
            keeper
                .reconcile(&source, &view(&set, 1), now)
                .await
                .unwrap()
        );
        assert_eq!(source.calls(), [IssueReason::NoIntermediate]);
        assert_eq!(sink.writes(), std::slice::from_ref(&set));
        let report = keeper.report(None);
        assert_eq!(report.applied_bundle_version, 1);
        assert!(!report.intermediate_serial.is_empty());
        // The same bundle again: nothing obtained, nothing written.
        assert!(
            !keeper
                .reconcile(&source, &view(&set, 1), now)
                .await
                .unwrap()
        );
        assert_eq!(sink.writes().len(), 1);
        assert!(keeper.renew_at().is_some_and(|renew_at| renew_at > now));
    }

    #[tokio::test]
    async fn a_valid_set_in_the_sink_is_adopted_and_a_new_bundle_rewrites_only_the_roots() {
        let set = cacerts_material(0);
        let sink = Arc::new(MemorySink::with_files(set.to_files()));
        let mut keeper = Keeper::new(sink.clone(), reconcile::RENEW_FRACTION);
        let source = Prepared::new(Vec::new());
        let now = SystemClock.now();
        // A newer bundle that still holds our root, plus another root.
        let other = cacerts_material(0);
        let roots = format!("{}{}", set.root_cert_pem, other.root_cert_pem);
        let bundle = BundleView {
            root_cert_pem: &roots,
            ..view(&set, 4)
        };
        assert!(keeper.reconcile(&source, &bundle, now).await.unwrap());
        assert!(source.calls().is_empty(), "the existing set is adopted");
        let written = sink.last_write().unwrap();
        assert_eq!(written.ca_cert_pem, set.ca_cert_pem);
        assert_eq!(written.root_cert_pem, roots);
        assert_eq!(written.bundle_version, 4);
        assert_eq!(keeper.report(None).applied_bundle_version, 4);
    }

    #[tokio::test]
    async fn a_recheck_starts_over_only_when_the_sink_changed() {
        let set = cacerts_material(1);
        let replacement = cacerts_material(1);
        let sink = Arc::new(MemorySink::new());
        let mut keeper = Keeper::new(sink.clone(), reconcile::RENEW_FRACTION);
        let source = Prepared::new(vec![set.clone(), replacement.clone()]);
        let now = SystemClock.now();
        keeper
            .reconcile(&source, &view(&set, 1), now)
            .await
            .unwrap();
        keeper.recheck();
        assert!(
            !keeper
                .reconcile(&source, &view(&set, 1), now)
                .await
                .unwrap()
        );
        assert_eq!(source.calls().len(), 1, "unchanged: kept");
        // Someone else writes a set of another root into the sink.
        sink.write(&cacerts_material(9)).await.unwrap();
        keeper.recheck();
        assert!(
            keeper
                .reconcile(&source, &view(&set, 1), now)
                .await
                .unwrap()
        );
        assert_eq!(
            source.calls(),
            [IssueReason::NoIntermediate, IssueReason::NoIntermediate]
        );
        assert_eq!(sink.last_write().unwrap(), replacement);
    }

    #[tokio::test]
    async fn a_set_istiod_would_reject_is_not_written() {
        let set = cacerts_material(1);
        let mut broken = cacerts_material(1);
        broken.ca_key_pem = set.ca_key_pem.clone();
        let sink = Arc::new(MemorySink::new());
        let mut keeper = Keeper::new(sink.clone(), reconcile::RENEW_FRACTION);
        let source = Prepared::new(vec![broken.clone()]);
        let error = keeper
            .reconcile(&source, &view(&broken, 1), SystemClock.now())
            .await
            .unwrap_err();
        assert!(
            matches!(error, TestError::Reconcile(ReconcileError::Rejected(_))),
            "{error}"
        );
        assert!(sink.writes().is_empty());
        assert!(keeper.applied().is_none());
    }
}
