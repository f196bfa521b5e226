//! Durable commits for async callers without a thread hop each: batches
//! go to one writer thread, which commits everything queued by then as a
//! group ([`Store::commit_many`]) and answers each caller when its batch is
//! durable. An async caller (issuance on the runtime's workers) waits on a
//! channel instead of holding a blocking-pool thread through the fsync, and
//! the writer is woken once per group, not once per batch. A caller alone
//! on a quiet store commits its batch itself, which spares it the two
//! thread wake-ups of the writer's round trip.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::{Batch, Store, StoreError};

/// The most batches one group carries (the rest wait for the next).
const MAX_GROUP: usize = 256;

/// How long the store must have been quiet (no commit ending) for a caller
/// alone to commit its batch itself. Under load commits follow each other
/// closer than this, and batches go to the writer, whose groups share an
/// fsync and whose waits keep no worker from the rest of the load.
const QUIET: Duration = Duration::from_micros(200);

type Reply = oneshot::Sender<Result<(), StoreError>>;

/// The writer thread of one store. Dropped, it lets the thread finish the
/// batches queued and joins it, so the store is closed when it returns.
pub struct Committer {
    queue: Option<mpsc::Sender<(Batch, Reply)>>,
    writer: Option<JoinHandle<()>>,
    /// The store, for a caller alone to write itself.
    store: Arc<dyn Store>,
    /// Callers preparing a batch or waiting for its commit (see
    /// [`Committer::prepare`]).
    busy: Arc<AtomicUsize>,
    /// When the last commit ended (shared with the writer).
    ended: Ended,
}

/// A caller preparing a batch it will commit (e.g. an issuance, while it
/// is handled): counted until it is dropped, after its commit. A commit
/// that finds one caller counted (its own) is alone and is written by its
/// caller, without the writer thread.
#[derive(Debug)]
pub struct Preparing(Arc<AtomicUsize>);

impl Drop for Preparing {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl std::fmt::Debug for Committer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Committer")
            .field("busy", &self.busy.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Committer {
    /// Starts the writer thread of `store`.
    ///
    /// Errors: the thread cannot be started.
    pub fn start(store: Arc<dyn Store>) -> Result<Self, StoreError> {
        let (queue, batches) = mpsc::channel::<(Batch, Reply)>();
        let writing = store.clone();
        let ended = Ended {
            at: Arc::new(AtomicU64::new(0)),
            epoch: Instant::now(),
        };
        let writer_ended = ended.clone();
        let writer = std::thread::Builder::new()
            .name("trustplane-store-writer".into())
            .spawn(move || write_groups(writing.as_ref(), &batches, &writer_ended))
            .map_err(|error| StoreError::Backend {
                message: format!("cannot start the store writer thread: {error}"),
                source: Some(Box::new(error)),
            })?;
        Ok(Committer {
            queue: Some(queue),
            writer: Some(writer),
            store,
            busy: Arc::new(AtomicUsize::new(0)),
            ended,
        })
    }

    /// Counts this caller as preparing a batch until the guard is dropped
    /// (hold it until the commit has returned).
    pub fn prepare(&self) -> Preparing {
        self.busy.fetch_add(1, Ordering::AcqRel);
        Preparing(self.busy.clone())
    }

    /// Commits `batch` (as [`Store::commit`]) and returns once it is
    /// durable or refused. When exactly one caller is counted (see
    /// [`Committer::prepare`]: its own) and the store is only this
    /// process's, the caller commits it itself: no thread to wake and be
    /// woken by, which is most of a lone caller's wait besides the fsync
    /// (its worker is busy for that commit). Concurrent callers go to the
    /// writer thread, whose groups share an fsync.
    ///
    /// Errors: the store's; a writer that stopped.
    pub async fn commit(&self, batch: Batch) -> Result<(), StoreError> {
        if self.busy.load(Ordering::Acquire) == 1 && self.ended.quiet() && !self.store.shared() {
            let outcome = self.store.commit(batch);
            self.ended.now();
            return outcome;
        }
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

/// When the last commit ended (shared by the callers and the writer), in
/// microseconds after `epoch`.
#[derive(Clone, Debug)]
struct Ended {
    at: Arc<AtomicU64>,
    epoch: Instant,
}

impl Ended {
    /// Microseconds since `epoch`, counted from [`QUIET`] so that the
    /// store is quiet when no commit has ended yet.
    fn micros(&self) -> u64 {
        u64::try_from((self.epoch.elapsed() + QUIET).as_micros()).unwrap_or(u64::MAX)
    }

    /// Records that a commit ended now.
    fn now(&self) {
        self.at.fetch_max(self.micros(), Ordering::AcqRel);
    }

    /// Whether no commit ended within [`QUIET`].
    fn quiet(&self) -> bool {
        let quiet = u64::try_from(QUIET.as_micros()).unwrap_or(u64::MAX);
        self.micros()
            .saturating_sub(self.at.load(Ordering::Acquire))
            >= quiet
    }
}

/// The writer thread: takes whatever is queued (at least one batch), commits
/// it as one group and answers each caller, until every sender is gone.
fn write_groups(store: &dyn Store, queue: &mpsc::Receiver<(Batch, Reply)>, ended: &Ended) {
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
        ended.now();
        for (reply, outcome) in replies.into_iter().zip(outcomes) {
            // A caller that went away (its request was cancelled) does not
            // take its batch back: it is written or refused all the same.
            let _ = reply.send(outcome);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::store::{Expect, MemoryStore, Table, Versioned};

    /// A memory store that records which thread wrote each group and how
    /// large it was, and panics on a batch putting the key `panic`.
    #[derive(Debug, Default)]
    struct Recording {
        inner: MemoryStore,
        groups: Mutex<Vec<(String, usize)>>,
    }

    impl Store for Recording {
        fn get(&self, table: Table, key: &str) -> Result<Option<Versioned>, StoreError> {
            self.inner.get(table, key)
        }
        fn list(&self, table: Table) -> Result<Vec<(String, Versioned)>, StoreError> {
            self.inner.list(table)
        }
        fn commit(&self, batch: Batch) -> Result<(), StoreError> {
            self.commit_many(vec![batch]).pop().unwrap()
        }
        fn commit_many(&self, batches: Vec<Batch>) -> Vec<Result<(), StoreError>> {
            let thread = std::thread::current().name().unwrap_or("").to_string();
            self.groups.lock().unwrap().push((thread, batches.len()));
            if batches
                .iter()
                .any(|batch| format!("{batch:?}").contains("\"panic\""))
            {
                panic!("the store failed");
            }
            batches
                .into_iter()
                .map(|batch| self.inner.commit(batch))
                .collect()
        }
    }

    fn put(key: &str) -> Batch {
        Batch::new().put(Table::Meta, key, b"v".to_vec(), Some(Expect::Absent))
    }

    fn started() -> (Arc<Recording>, Committer) {
        let store = Arc::new(Recording::default());
        let committer = Committer::start(store.clone()).unwrap();
        (store, committer)
    }

    #[tokio::test]
    async fn a_lone_prepared_commit_is_written_by_its_caller() {
        let (store, committer) = started();
        let preparing = committer.prepare();
        committer.commit(put("one")).await.unwrap();
        drop(preparing);
        let groups = store.groups.lock().unwrap().clone();
        assert_eq!(groups.len(), 1);
        assert_ne!(groups[0].0, "trustplane-store-writer", "{groups:?}");
        assert!(store.get(Table::Meta, "one").unwrap().is_some());
        assert_eq!(committer.busy.load(Ordering::Acquire), 0);
    }

    #[tokio::test]
    async fn a_commit_while_others_prepare_goes_to_the_writer_thread() {
        let (store, committer) = started();
        let other = committer.prepare();
        let preparing = committer.prepare();
        committer.commit(put("one")).await.unwrap();
        drop(preparing);
        // Nobody counted: not known to be alone either.
        drop(other);
        committer.commit(put("two")).await.unwrap();
        let groups = store.groups.lock().unwrap().clone();
        assert_eq!(
            groups,
            vec![
                ("trustplane-store-writer".to_string(), 1),
                ("trustplane-store-writer".to_string(), 1)
            ]
        );
        assert_eq!(committer.busy.load(Ordering::Acquire), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_commits_each_get_their_own_outcome() {
        let (store, committer) = started();
        let committer = Arc::new(committer);
        let mut tasks = tokio::task::JoinSet::new();
        for index in 0..64 {
            let committer = committer.clone();
            // Every tenth batch repeats a key: refused alone.
            let key = if index % 10 == 9 {
                "shared".to_string()
            } else {
                format!("k{index}")
            };
            tasks.spawn(async move {
                let _preparing = committer.prepare();
                tokio::task::yield_now().await;
                (key.clone(), committer.commit(put(&key)).await)
            });
        }
        let mut shared_written = 0;
        while let Some(done) = tasks.join_next().await {
            let (key, outcome) = done.unwrap();
            match outcome {
                Ok(()) if key == "shared" => shared_written += 1,
                Ok(()) => assert!(store.get(Table::Meta, &key).unwrap().is_some()),
                Err(StoreError::Conflict { .. }) => assert_eq!(key, "shared"),
                Err(other) => panic!("{key}: {other}"),
            }
        }
        assert_eq!(shared_written, 1, "one of the batches putting the same key");
        let groups = store.groups.lock().unwrap().clone();
        assert_eq!(groups.iter().map(|(_, size)| size).sum::<usize>(), 64);
    }

    #[tokio::test]
    async fn a_store_that_panics_fails_its_group_and_the_writer_goes_on() {
        let (store, committer) = started();
        let failed = committer.commit(put("panic")).await;
        assert!(
            matches!(&failed, Err(StoreError::Backend { message, .. }) if message.contains("panicked")),
            "{failed:?}"
        );
        committer.commit(put("after")).await.unwrap();
        assert!(store.get(Table::Meta, "after").unwrap().is_some());
    }

    #[test]
    fn dropping_the_committer_stops_its_writer_and_releases_the_store() {
        let (store, committer) = started();
        assert_eq!(
            Arc::strong_count(&store),
            3,
            "the test, the committer, its writer"
        );
        drop(committer);
        assert_eq!(Arc::strong_count(&store), 1);
    }
}
