//! An in-memory sink for tests: holds the current set and records every
//! write in order.

use std::sync::{Mutex, PoisonError};

use crate::ca::CacertsFiles;

use super::contract::{CacertsMaterial, ClusterSink, SinkError};

/// An in-memory sink for tests: holds the current set and records every
/// write in order.
#[derive(Default)]
pub struct MemorySink {
    state: Mutex<MemoryState>,
}

#[derive(Default)]
struct MemoryState {
    current: Option<CacertsFiles>,
    writes: Vec<CacertsMaterial>,
    refuse_writes: Option<String>,
}

impl MemorySink {
    /// An empty sink (reads return `None`).
    pub fn new() -> Self {
        Self::default()
    }

    /// A sink that already holds `files` (e.g. from an earlier agent run);
    /// the preset does not count as a write.
    pub fn with_files(files: CacertsFiles) -> Self {
        let sink = Self::default();
        sink.lock().current = Some(files);
        sink
    }

    /// Every set written so far, oldest first (keys included: test use only).
    pub fn writes(&self) -> Vec<CacertsMaterial> {
        self.lock().writes.clone()
    }

    /// The most recent write, if any.
    pub fn last_write(&self) -> Option<CacertsMaterial> {
        self.lock().writes.last().cloned()
    }

    /// Makes every following write fail with [`SinkError::Refused`] carrying
    /// `reason`, or succeed again with `None`.
    pub fn refuse_writes(&self, reason: Option<String>) {
        self.lock().refuse_writes = reason;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryState> {
        // A panic in another test thread must not hide the recorded writes.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[async_trait::async_trait]
impl ClusterSink for MemorySink {
    fn describe(&self) -> String {
        "memory".to_string()
    }

    fn kind(&self) -> &'static str {
        "memory"
    }

    async fn read(&self) -> Result<Option<CacertsFiles>, SinkError> {
        Ok(self.lock().current.clone())
    }

    async fn write(&self, material: &CacertsMaterial) -> Result<(), SinkError> {
        let mut state = self.lock();
        if let Some(reason) = &state.refuse_writes {
            return Err(SinkError::Refused(reason.clone()));
        }
        state.current = Some(material.to_files());
        state.writes.push(material.clone());
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use zeroize::Zeroizing;

    use super::*;

    fn material(marker: &str) -> CacertsMaterial {
        CacertsMaterial {
            ca_cert_pem: format!("cert {marker}"),
            ca_key_pem: Zeroizing::new(format!("key {marker}")),
            cert_chain_pem: format!("chain {marker}"),
            root_cert_pem: format!("root {marker}"),
            bundle_version: 7,
        }
    }

    #[test]
    fn material_debug_redacts_the_key() {
        let text = format!("{:?}", material("secret-marker"));
        assert!(text.contains("[redacted]"));
        assert!(!text.contains("key secret-marker"));
    }

    #[tokio::test]
    async fn memory_sink_records_every_write_and_reads_the_last() {
        let sink = MemorySink::new();
        assert!(sink.read().await.unwrap().is_none());
        sink.write(&material("one")).await.unwrap();
        sink.write(&material("two")).await.unwrap();
        let writes = sink.writes();
        assert_eq!(writes, vec![material("one"), material("two")]);
        let files = sink.read().await.unwrap().unwrap();
        assert_eq!(files.ca_cert.as_deref(), Some("cert two"));
        assert_eq!(files.ca_key.as_deref().map(String::as_str), Some("key two"));
        assert_eq!(files.root_cert.as_deref(), Some("root two"));
    }

    #[tokio::test]
    async fn memory_sink_refuses_writes_on_request() {
        let sink = MemorySink::with_files(material("preset").to_files());
        sink.refuse_writes(Some("disk full".into()));
        let error = sink.write(&material("new")).await.unwrap_err();
        assert!(matches!(error, SinkError::Refused(_)));
        assert!(sink.writes().is_empty());
        let files = sink.read().await.unwrap().unwrap();
        assert_eq!(files.ca_cert.as_deref(), Some("cert preset"));
        sink.refuse_writes(None);
        sink.write(&material("new")).await.unwrap();
        assert_eq!(sink.writes().len(), 1);
    }
}
