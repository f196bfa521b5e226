//! A watch on the `TrustplaneHead`, so that a server sharing the store
//! hears of another server's commit at once instead of at its next poll
//! ([`crate::store::Store::changes`]).

use futures_util::StreamExt as _;
use kube::api::{Api, DynamicObject};
use kube::core::PartialObjectMeta;
use kube::runtime::{WatchStreamExt as _, watcher};
use tokio::sync::watch;

use super::resources::{HEAD_NAME, head_resource};

/// Watches the head in `namespace` until every receiver of the returned
/// channel is gone; the channel's value grows with every change seen.
/// Watch failures (the API server away, RBAC without `watch`) are retried
/// with kube's default backoff: the poll still catches every change.
pub(super) fn spawn(
    runtime: &tokio::runtime::Runtime,
    client: kube::Client,
    namespace: &str,
) -> watch::Receiver<u64> {
    let (sender, receiver) = watch::channel(0u64);
    // Metadata only: a change is all this needs to know.
    let api: Api<PartialObjectMeta<DynamicObject>> =
        Api::namespaced_with(client, namespace, &head_resource());
    runtime.spawn(async move {
        let config = watcher::Config::default().fields(&format!("metadata.name={HEAD_NAME}"));
        let events = watcher(api, config)
            .default_backoff()
            .applied_objects();
        let mut events = std::pin::pin!(events);
        loop {
            tokio::select! {
                event = events.next() => match event {
                    Some(Ok(_)) => {
                        sender.send_modify(|seen| *seen = seen.wrapping_add(1));
                    }
                    Some(Err(error)) => {
                        tracing::debug!(error = %error, "watching the store's head failed; retrying (the poll goes on)");
                    }
                    None => break,
                },
                () = sender.closed() => break,
            }
        }
    });
    receiver
}
