//! The audit trail: who took which rotation step, exclusion or reissue and
//! when. An entry is added to the same store transaction as the change it
//! describes, so there is never a change without its entry.

use std::sync::Arc;

use ring::rand::{SecureRandom, SystemRandom};

use super::core::Core;
use super::error::ServerError;
use crate::ca::system_time_to_unix;
use crate::store::records::{self, AuditRecord};
use crate::store::{Batch, Expect, Table};

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
    /// `detail`, now. Keys sort by time (then a random suffix).
    ///
    /// Errors: [`ServerError::Random`], store encoding errors.
    pub fn record(
        &self,
        batch: Batch,
        actor: &str,
        action: &str,
        detail: String,
    ) -> Result<Batch, ServerError> {
        let now = self.core.now();
        let nanos = now
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_nanos());
        let mut random = [0u8; 4];
        SystemRandom::new()
            .fill(&mut random)
            .map_err(|_| ServerError::Random)?;
        let key = format!("{nanos:020}-{}", hex::encode(random));
        tracing::info!(actor, action, detail = %detail, "audit");
        Ok(batch.put_json(
            Table::Audit,
            key,
            &AuditRecord {
                unix: system_time_to_unix(now),
                actor: actor.to_string(),
                action: action.to_string(),
                detail,
            },
            Some(Expect::Absent),
        )?)
    }

    /// The newest `limit` entries, oldest first.
    ///
    /// Errors: store errors.
    pub fn entries(&self, limit: usize) -> Result<Vec<AuditRecord>, ServerError> {
        let entries = records::list_json::<AuditRecord>(self.core.store.as_ref(), Table::Audit)?;
        let skip = entries.len().saturating_sub(limit.max(1));
        Ok(entries
            .into_iter()
            .skip(skip)
            .map(|(_, record, _)| record)
            .collect())
    }
}
