//! Durable commits for async callers without a thread hop each: batches
//! go to one writer thread, which commits everything queued by then as a
//! group ([`Store::commit_many`]) and answers each caller when its batch is
//! durable. An async caller (issuance on the runtime's workers) waits on a
//! channel instead of holding a blocking-pool thread through the fsync, and
//! the writer is woken once per group, not once per batch.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::mpsc;
use std::thread::JoinHandle;

use tokio::sync::oneshot;

use super::{Batch, Store, StoreError};

/// The most batches one group carries (the rest wait for the next).
const MAX_GROUP: usize = 256;

type Reply = oneshot::Sender<Result<(), StoreError>>;

/// The writer thread of one store. Dropped, it lets the thread finish the
/// batches queued and joins it, so the store is closed when it returns.
#[derive(Debug)]
pub struct Committer {
    queue: Option<mpsc::Sender<(Batch, Reply)>>,
    writer: Option<JoinHandle<()>>,
}

impl Committer {
    /// Starts the writer thread of `store`.
    ///
    /// Errors: the thread cannot be started.
    pub fn start(store: Arc<dyn Store>) -> Result<Self, StoreError> {
        let (queue, batches) = mpsc::channel::<(Batch, Reply)>();
        let writer = std::thread::Builder::new()
            .name("trustplane-store-writer".into())
            .spawn(move || write_groups(store.as_ref(), &batches))
            .map_err(|error| StoreError::Backend {
                message: format!("cannot start the store writer thread: {error}"),
                source: Some(Box::new(error)),
            })?;
        Ok(Committer {
            queue: Some(queue),
            writer: Some(writer),
        })
    }

    /// Commits `batch` (as [`Store::commit`]) and returns once it is
    /// durable or refused.
    ///
    /// Errors: the store's; a writer that stopped.
    pub async fn commit(&self, batch: Batch) -> Result<(), StoreError> {
        let stopped = || StoreError::Backend {
            message:
                "the store writer thread stopped, so this batch was not written; restart the server"
                    .into(),
            source: None,
        };
        let (reply, outcome) = oneshot::channel();
        self.queue
            .as_ref()
            .ok_or_else(stopped)?
            .send((batch, reply))
            .map_err(|_| stopped())?;
        outcome.await.map_err(|_| stopped())?
    }
}

impl Drop for Committer {
    fn drop(&mut self) {
        drop(self.queue.take());
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

/// The writer thread: takes whatever is queued (at least one batch), commits
/// it as one group and answers each caller, until every sender is gone.
fn write_groups(store: &dyn Store, queue: &mpsc::Receiver<(Batch, Reply)>) {
    while let Ok(first) = queue.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match queue.try_recv() {
                Ok(next) => group.push(next),
                Err(_) => break,
            }
        }
        let (batches, replies): (Vec<Batch>, Vec<Reply>) = group.into_iter().unzip();
        let count = batches.len();
        // A panic inside the store fails this group, not the thread: later
        // batches are still written.
        let outcomes = catch_unwind(AssertUnwindSafe(|| store.commit_many(batches)))
            .unwrap_or_else(|_| {
                (0..count)
                    .map(|_| {
                        Err(StoreError::Backend {
                            message: "the store panicked while writing this batch, so whether it was written is unknown: read the state back before retrying".into(),
                            source: None,
                        })
                    })
                    .collect()
            });
        for (reply, outcome) in replies.into_iter().zip(outcomes) {
            // A caller that went away (its request was cancelled) does not
            // take its batch back: it is written or refused all the same.
            let _ = reply.send(outcome);
        }
    }
}
