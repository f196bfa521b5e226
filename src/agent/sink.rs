//! Where a cluster's `cacerts` go: the [`ClusterSink`] seam, the material
//! written through it, and the in-memory sink used by tests.
//!
//! The directory sink lives in `directory.rs`, the Kubernetes Secret sink in
//! `kube.rs`. Every sink writes the four files as one atomic change.

use std::path::PathBuf;
use std::sync::{Mutex, PoisonError};

use zeroize::Zeroizing;

use crate::ca::CacertsFiles;

pub use super::directory::DirectorySink;
pub use super::kube::{KubernetesError, KubernetesSink};

/// Istio's `ca-cert.pem`.
pub const CA_CERT_FILE: &str = "ca-cert.pem";
/// Istio's `ca-key.pem`.
pub const CA_KEY_FILE: &str = "ca-key.pem";
/// Istio's `cert-chain.pem`.
pub const CERT_CHAIN_FILE: &str = "cert-chain.pem";
/// Istio's `root-cert.pem`.
pub const ROOT_CERT_FILE: &str = "root-cert.pem";

/// What the agent writes: Istio's four `cacerts` files, all present.
#[derive(Clone, PartialEq, Eq)]
pub struct CacertsMaterial {
    /// `ca-cert.pem`: the cluster's intermediate CA certificate.
    pub ca_cert_pem: String,
    /// `ca-key.pem`: its PKCS#8 PEM private key (never printed).
    pub ca_key_pem: Zeroizing<String>,
    /// `cert-chain.pem`: the intermediate first, then up to and including the root.
    pub cert_chain_pem: String,
    /// `root-cert.pem`: every root the mesh trusts now.
    pub root_cert_pem: String,
    /// The trust-bundle version `root_cert_pem` was taken from (0 when not
    /// known, e.g. for a set adopted from the sink). Sinks may record it;
    /// the Kubernetes sink writes it as the `trustplane.io/bundle-version`
    /// annotation.
    pub bundle_version: u64,
}

impl std::fmt::Debug for CacertsMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacertsMaterial")
            .field(
                "ca_cert_pem",
                &format_args!("{} bytes", self.ca_cert_pem.len()),
            )
            .field("ca_key_pem", &format_args!("[redacted]"))
            .field(
                "cert_chain_pem",
                &format_args!("{} bytes", self.cert_chain_pem.len()),
            )
            .field(
                "root_cert_pem",
                &format_args!("{} bytes", self.root_cert_pem.len()),
            )
            .field("bundle_version", &self.bundle_version)
            .finish()
    }
}

impl CacertsMaterial {
    /// The same contents in the form [`crate::ca::check_cacerts`] checks.
    pub fn to_files(&self) -> CacertsFiles {
        CacertsFiles {
            ca_cert: Some(self.ca_cert_pem.clone()),
            ca_key: Some(self.ca_key_pem.clone()),
            cert_chain: Some(self.cert_chain_pem.clone()),
            root_cert: Some(self.root_cert_pem.clone()),
        }
    }
}

/// Errors from reading or writing a sink. Messages name the target but never
/// contain key material.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// A file-system operation failed.
    #[error("could not {action} {}", path.display())]
    Io {
        /// What was being done, e.g. "write", "rename".
        action: &'static str,
        /// The path it was done to.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// Something unexpected occupies a name the sink manages (e.g. a
    /// directory where `ca-cert.pem` should be).
    #[error("{} is {found}; expected a file or a symlink: remove it and retry", path.display())]
    UnexpectedEntry {
        /// The occupied path.
        path: PathBuf,
        /// What was found there.
        found: &'static str,
    },
    /// The background task doing blocking file I/O failed.
    #[error("the background file-system task failed")]
    Background(#[source] tokio::task::JoinError),
    /// A write was refused on purpose (used by [`MemorySink`] in tests).
    #[error("write refused: {0}")]
    Refused(String),
    /// The Secret exists but trustplane does not manage it, and taking it
    /// over was not allowed: neither read as ours nor written.
    #[error(
        "Secret {namespace}/{name} exists but is not managed by trustplane (no label {label}={manager}): left untouched; pass --adopt-existing to take it over",
        label = super::kube::MANAGED_BY_LABEL,
        manager = super::kube::MANAGER
    )]
    Foreign {
        /// The Secret's namespace.
        namespace: String,
        /// The Secret's name.
        name: String,
    },
    /// The existing Secret cannot hold what the sink must write (e.g. an
    /// immutable Secret, or a `kubernetes.io/tls` Secret for the istio form).
    #[error("Secret {namespace}/{name} cannot be updated: {reason}")]
    Incompatible {
        /// The Secret's namespace.
        namespace: String,
        /// The Secret's name.
        name: String,
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// A Kubernetes API call failed (refused, unreachable, timed out, or
    /// conflicting writers on every attempt).
    #[error("could not {action} Secret {namespace}/{name}")]
    Kubernetes {
        /// What was being done, e.g. "read", "replace".
        action: &'static str,
        /// The Secret's namespace.
        namespace: String,
        /// The Secret's name.
        name: String,
        /// What the API said.
        #[source]
        source: KubernetesError,
    },
}

/// Where a cluster's `cacerts` go: a directory or a Kubernetes Secret.
#[async_trait::async_trait]
pub trait ClusterSink: Send + Sync {
    /// Human-readable target, e.g. "directory /etc/cacerts".
    fn describe(&self) -> String;

    /// The current contents (`None` if nothing there yet). Files that are
    /// missing are `None` in the result; `check_cacerts` reports them.
    ///
    /// Errors: besides I/O, [`SinkError::Foreign`] when the target belongs to
    /// someone else and may not be taken over (the agent then neither adopts
    /// nor writes, and retries later).
    async fn read(&self) -> Result<Option<CacertsFiles>, SinkError>;

    /// Writes all four files as one atomic change: a reader sees either the
    /// previous set or this one, never a mix.
    async fn write(&self, material: &CacertsMaterial) -> Result<(), SinkError>;
}

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
