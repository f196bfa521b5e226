//! Publication: the versioned trust bundle as watchers see it. A new
//! version is persisted first (with whatever else a step changes, in one
//! transaction) and only then handed to watch streams and push loops.

use std::sync::Arc;

use tokio::sync::watch;

use super::audit_trail::AuditTrail;
use super::core::{ClusterBundle, Core, PublishedBundle, bundle_record};
use super::error::ServerError;
use super::integrity;
use crate::bundle::TrustBundle;
use crate::signer::RootSigner;
use crate::store::records::{self, BundleRecord};
use crate::store::{Batch, Expect, Table};

/// Publishes bundle versions and serves them.
#[derive(Clone, Debug)]
pub struct Publication {
    core: Arc<Core>,
    audit: AuditTrail,
}

impl Publication {
    /// Publication over the shared state.
    pub fn new(core: Arc<Core>) -> Self {
        Self {
            audit: AuditTrail::new(core.clone()),
            core,
        }
    }

    /// The bundle published now.
    pub fn current(&self) -> Arc<PublishedBundle> {
        self.core.current_bundle()
    }

    /// A receiver that sees every newly published bundle (latest wins).
    pub fn subscribe(&self) -> watch::Receiver<Arc<PublishedBundle>> {
        self.core.subscribe()
    }

    /// A receiver that changes when per-cluster directives (reissue) change.
    pub fn subscribe_directives(&self) -> watch::Receiver<u64> {
        self.core.subscribe_directives()
    }

    /// The bundle for `cluster` (`None`: an admin), with its reissue request.
    pub fn for_cluster(&self, cluster: Option<&str>) -> ClusterBundle {
        self.core.cluster_bundle(cluster)
    }

    /// Persists `bundle` as the next version, then publishes it to watchers.
    ///
    /// Errors: [`ServerError::BundleVersion`] when its version is not
    /// exactly the current one + 1; store errors.
    pub fn publish(&self, bundle: TrustBundle) -> Result<(), ServerError> {
        let _guard = self.core.lock_rotation();
        self.commit_and_publish(Some(bundle), Batch::new(), None, "server")
    }

    /// Commits `extra` together with `bundle` (when Some) in one store
    /// transaction, with a `bundle-publish` audit entry by `actor`; only then
    /// switches to `signer` (when Some) and publishes the bundle to
    /// watchers. Callers hold the rotation lock.
    pub(super) fn commit_and_publish(
        &self,
        bundle: Option<TrustBundle>,
        extra: Batch,
        signer: Option<Arc<dyn RootSigner>>,
        actor: &str,
    ) -> Result<(), ServerError> {
        let core = &self.core;
        let Some(bundle) = bundle else {
            core.store.commit(extra)?;
            if let Some(signer) = signer {
                core.replace_signer(signer);
            }
            return Ok(());
        };
        let current = core.current_bundle();
        if bundle.version() != current.bundle.version() + 1 {
            return Err(ServerError::BundleVersion {
                version: bundle.version(),
                current: current.bundle.version(),
            });
        }
        let signing_root = match &signer {
            Some(signer) => signer.signing_root().clone(),
            None => core.signing_root(),
        };
        let published = PublishedBundle::new(bundle, &signing_root)?;
        let record = bundle_record(&published.bundle, core.now());
        let (_, stored_version) = integrity::get_json::<BundleRecord>(
            core.store.as_ref(),
            &core.kek,
            Table::Bundles,
            core.trust_domain(),
        )?
        .ok_or_else(|| ServerError::missing("the published trust bundle"))?;
        let batch = integrity::put_json(
            extra,
            &core.kek,
            Table::Bundles,
            core.trust_domain(),
            &record,
            Some(Expect::Version(stored_version)),
        )?;
        let batch = integrity::put_json(
            batch,
            &core.kek,
            Table::Bundles,
            &records::bundle_history_key(core.trust_domain(), record.version),
            &record,
            Some(Expect::Absent),
        )?;
        let batch =
            self.audit
                .record(batch, actor, "bundle-publish", bundle_detail(&published)?)?;
        core.store.commit(batch)?;
        if let Some(signer) = signer {
            core.replace_signer(signer);
        }
        core.publish(published);
        Ok(())
    }
}

/// The audit detail of a bundle version: version, digest, signing root and
/// every root by serial.
fn bundle_detail(published: &PublishedBundle) -> Result<String, ServerError> {
    let roots = published
        .bundle
        .roots()
        .iter()
        .map(|root| root.serial_hex())
        .collect::<Result<Vec<_>, _>>()?;
    Ok(format!(
        "trust domain {}, version {}, digest {}, roots [{}], signing root sha256 {}",
        published.bundle.trust_domain(),
        published.bundle.version(),
        published.digest,
        roots.join(", "),
        published.signing_root_sha256
    ))
}
