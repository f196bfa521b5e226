//! The audit trail as the server uses it: entries added to a change's
//! batch with the server's clock and KEK, refused calls recorded alone, and
//! queries. The chain itself (hashing, the authenticated head, verification
//! and upgrade) is `audit`, which knows nothing of the server's state.

use std::sync::Arc;

use super::audit::append;
use super::core::Core;
use super::error::ServerError;
use crate::ca::system_time_to_unix;
use crate::store::records::{self, AuditRecord};
use crate::store::{Batch, Table};

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
    /// Errors: store errors.
    pub fn entries(&self, query: &AuditQuery) -> Result<Vec<AuditRecord>, ServerError> {
        let entries: Vec<AuditRecord> =
            records::list_json::<AuditRecord>(self.core.store.as_ref(), Table::Audit)?
                .into_iter()
                .map(|(_, record, _)| record)
                .filter(|record| query.matches(record))
                .collect();
        let skip = entries.len().saturating_sub(query.limit.max(1));
        Ok(entries.into_iter().skip(skip).collect())
    }
}
