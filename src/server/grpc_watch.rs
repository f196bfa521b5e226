//! The `WatchBundle` stream and the bundle's wire form: with `grpc.rs`,
//! the only place that builds protobuf messages. A stream is polled by its
//! HTTP/2 stream's own task; it reads the store only when it opens and when
//! clusters or directives change, not once per watcher per new version.

use std::sync::Arc;

use tokio::sync::watch;
use tonic::Status;

use super::authority::Authority;
use super::core::{ClusterBundle, PublishedBundle};
use super::limits::WatchSlot;
use crate::proto;

/// The wire form of a bundle as `cluster` sees it.
pub(super) fn bundle_message(bundle: &ClusterBundle) -> proto::Bundle {
    let published = &bundle.published;
    proto::Bundle {
        trust_domain: published.bundle.trust_domain().to_string(),
        version: published.bundle.version(),
        digest: published.digest.clone(),
        root_cert_pem: published.root_cert_pem.clone(),
        spiffe_bundle_json: published.spiffe_bundle_json.clone(),
        signing_root_sha256: published.signing_root_sha256.clone(),
        reissue_intermediate_serial: bundle.reissue_serial.clone(),
    }
}

/// One `WatchBundle` stream's state. The stream is polled by the HTTP/2
/// stream's own task (no task or queue of its own): a new version wakes it
/// through the watch channel, and a slow consumer, whose stream is not
/// polled while HTTP/2 flow control holds it back, reads only the newest
/// version when it is polled again.
pub(super) struct BundleWatch {
    authority: Arc<Authority>,
    /// The watching cluster (`None`: an admin).
    cluster: Option<String>,
    bundles: watch::Receiver<Arc<PublishedBundle>>,
    directives: watch::Receiver<u64>,
    clusters: watch::Receiver<u64>,
    shutdown: watch::Receiver<bool>,
    /// Its place among the caller's streams, freed when the stream is
    /// dropped (it ended or the client went away).
    _slot: WatchSlot,
    /// The cluster's reissue directive, read from the store when the
    /// stream opens and when directives change, not on every new version.
    reissue_serial: String,
    /// Whether the cluster must be looked up again (it opened, or a
    /// cluster was added or removed).
    check_cluster: bool,
    /// Whether the reissue directive must be read again.
    check_directives: bool,
    /// The bundle and directive last sent.
    sent: Option<(Arc<PublishedBundle>, String)>,
    ended: bool,
}

impl BundleWatch {
    /// A stream for `cluster` (`None`: an admin) holding `slot`; its first
    /// message is the current bundle.
    pub(super) fn open(
        authority: Arc<Authority>,
        cluster: Option<String>,
        slot: WatchSlot,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        BundleWatch {
            bundles: authority.publication.subscribe(),
            directives: authority.publication.subscribe_directives(),
            clusters: authority.core().subscribe_clusters(),
            authority,
            cluster,
            shutdown,
            _slot: slot,
            reissue_serial: String::new(),
            check_cluster: true,
            check_directives: true,
            sent: None,
            ended: false,
        }
    }

    /// The next message: the bundle when it or the directive changed, or
    /// `PERMISSION_DENIED` once the cluster was removed; `None` ends the
    /// stream (server shutdown).
    pub(super) async fn next(mut self) -> Option<(Result<proto::Bundle, Status>, Self)> {
        loop {
            if self.ended {
                return None;
            }
            if let Some(cluster) = &self.cluster {
                if self.check_cluster {
                    self.check_cluster = false;
                    self.clusters.borrow_and_update();
                    // A store error keeps the stream: the next change
                    // checks again.
                    if matches!(self.authority.core().cluster(cluster), Ok(None)) {
                        self.ended = true;
                        let status = Status::permission_denied(format!(
                            "cluster removed: {cluster:?} is no longer registered; re-add it with `trustplane cluster add {cluster}` and enroll again"
                        ));
                        return Some((Err(status), self));
                    }
                }
                if self.check_directives {
                    self.check_directives = false;
                    self.directives.borrow_and_update();
                    self.reissue_serial = self
                        .authority
                        .core()
                        .reissue_serial(cluster)
                        .unwrap_or_default();
                }
            }
            let published = self.bundles.borrow_and_update().clone();
            let unchanged = self.sent.as_ref().is_some_and(|(bundle, serial)| {
                (Arc::ptr_eq(bundle, &published) || **bundle == *published)
                    && *serial == self.reissue_serial
            });
            if !unchanged {
                let message = bundle_message(&ClusterBundle {
                    published: published.clone(),
                    reissue_serial: self.reissue_serial.clone(),
                });
                self.sent = Some((published, self.reissue_serial.clone()));
                return Some((Ok(message), self));
            }
            tokio::select! {
                changed = self.bundles.changed() => if changed.is_err() { return None },
                changed = self.directives.changed() => match changed {
                    Ok(()) => self.check_directives = true,
                    Err(_) => return None,
                },
                changed = self.clusters.changed() => match changed {
                    Ok(()) => self.check_cluster = true,
                    Err(_) => return None,
                },
                _ = self.shutdown.changed() => return None,
            }
        }
    }
}
