//! The audit trail as the server uses it: entries added to a change's
//! batch with the server's clock and KEK, refused calls recorded alone, and
//! queries. The chain itself (hashing, the authenticated head, verification
//! and upgrade) is `audit`, which knows nothing of the server's state.

use std::sync::Arc;

use super::audit::{append, entry_key};
use super::core::Core;
use super::error::ServerError;
use crate::ca::system_time_to_unix;
use crate::store::records::{self, AUDIT_HEAD_KEY, AuditHead, AuditRecord};
use crate::store::{Batch, Table};

/// How far back before `since_unix` a query keeps reading: entries are
/// appended in time order, but a batch built a moment before another may
/// commit after it.
pub const SINCE_SLACK_SECONDS: i64 = 60;

/// Which entries [`AuditTrail::entries`] returns.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuditQuery {
    /// Only entries at or after this time (Unix seconds).
    pub since_unix: Option<i64>,
    /// Only this action, or the actions it is a `-`-separated prefix of
    /// (`rotate` matches `rotate-start`).
    pub action: Option<String>,
    /// At most this many of the newest matching entries (at least 1).
    pub limit: usize,
}

impl AuditQuery {
    pub(super) fn matches(&self, record: &AuditRecord) -> bool {
        self.since_unix.is_none_or(|since| record.unix >= since)
            && self.action.as_deref().is_none_or(|action| {
                record.action == action
                    || record
                        .action
                        .strip_prefix(action)
                        .is_some_and(|rest| rest.starts_with('-'))
            })
    }
}

/// Adds entries to and reads the audit trail.
#[derive(Clone, Debug)]
pub struct AuditTrail {
    core: Arc<Core>,
}

impl AuditTrail {
    /// The audit trail over the shared state.
    pub fn new(core: Arc<Core>) -> Self {
        Self { core }
    }

    /// Adds to `batch` an entry: `actor` did `action`, described by
    /// `detail`, now. The entry is linked to the chain's head when the
    /// batch commits (so concurrent batches chain one after the other); the
    /// commit fails if the head does not authenticate.
    ///
    /// Errors: none today; the `Result` leaves room for checks.
    pub fn record(
        &self,
        batch: Batch,
        actor: &str,
        action: &str,
        detail: String,
    ) -> Result<Batch, ServerError> {
        Ok(append(
            batch,
            &self.core.kek,
            system_time_to_unix(self.core.now()),
            actor,
            action,
            detail,
        ))
    }

    /// Records, in a transaction of its own, an entry that changes nothing
    /// else (a refused call). Errors: store errors.
    pub fn record_alone(
        &self,
        actor: &str,
        action: &str,
        detail: String,
    ) -> Result<(), ServerError> {
        let batch = self.record(Batch::new(), actor, action, detail)?;
        Ok(self.core.store.commit(batch)?)
    }

    /// The newest `query.limit` entries that match `query`, oldest first.
    ///
    /// Walks the chain back from its head (entries are keyed by sequence
    /// number), so the cost is the entries read, not the length of the
    /// trail: every issuance adds an entry, and an audit query must not
    /// slow down as the store grows. With `since_unix` the walk stops at
    /// the first entry older than `since_unix` by more than
    /// [`SINCE_SLACK_SECONDS`] (entries are appended in time order, give or
    /// take batches built concurrently).
    ///
    /// Errors: store errors.
    pub fn entries(&self, query: &AuditQuery) -> Result<Vec<AuditRecord>, ServerError> {
        let store = self.core.store.as_ref();
        let Some((head, _)) = records::get_json::<AuditHead>(store, Table::Meta, AUDIT_HEAD_KEY)?
        else {
            return Ok(Vec::new());
        };
        let limit = query.limit.max(1);
        let mut newest_first = Vec::new();
        let mut seq = head.seq;
        while seq >= 1 && newest_first.len() < limit {
            let Some((record, _)) =
                records::get_json::<AuditRecord>(store, Table::Audit, &entry_key(seq))?
            else {
                // A gap: `audit verify` names it; the query shows what is there.
                break;
            };
            if query
                .since_unix
                .is_some_and(|since| record.unix < since.saturating_sub(SINCE_SLACK_SECONDS))
            {
                break;
            }
            if query.matches(&record) {
                newest_first.push(record);
            }
            seq -= 1;
        }
        newest_first.reverse();
        Ok(newest_first)
    }
}
