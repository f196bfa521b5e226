//! The contract every sink fulfils: the [`ClusterSink`] trait, the
//! [`CacertsMaterial`] written through it, Istio's file names and the
//! backend-neutral [`SinkError`]. It knows no backend.

use std::path::PathBuf;

use zeroize::Zeroizing;

use crate::ca::CacertsFiles;

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
    /// A write was refused on purpose (used by the memory sink in tests).
    #[error("write refused: {0}")]
    Refused(String),
    /// The target exists but trustplane does not manage it, and taking it
    /// over was not allowed: neither read as ours nor written.
    #[error(
        "{target} exists but is not managed by trustplane ({marker}): left untouched; pass --adopt-existing to take it over"
    )]
    Foreign {
        /// The target, e.g. "Secret istio-system/cacerts".
        target: String,
        /// What marks a managed target and is missing, e.g. "no label
        /// app.kubernetes.io/managed-by=trustplane".
        marker: String,
    },
    /// The existing target cannot hold what the sink must write (e.g. an
    /// immutable Secret, or a `kubernetes.io/tls` Secret for the istio form).
    #[error("{target} cannot be updated: {reason}")]
    Incompatible {
        /// The target.
        target: String,
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// The backend refused or did not answer (an API server that is
    /// unreachable, slow, forbids the call, or conflicting writers on every
    /// attempt).
    #[error("could not {action} {target}")]
    Backend {
        /// What was being done, e.g. "read", "replace".
        action: &'static str,
        /// The target.
        target: String,
        /// The backend's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl SinkError {
    /// The kind of failure as a fixed name for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            SinkError::Io { .. } => "io",
            SinkError::UnexpectedEntry { .. } => "unexpected_entry",
            SinkError::Background(_) => "background",
            SinkError::Refused(_) => "refused",
            SinkError::Foreign { .. } => "foreign",
            SinkError::Incompatible { .. } => "incompatible",
            SinkError::Backend { .. } => "backend",
        }
    }
}

/// Where a cluster's `cacerts` go: a directory or a Kubernetes Secret.
#[async_trait::async_trait]
pub trait ClusterSink: Send + Sync {
    /// Human-readable target, e.g. "directory /etc/cacerts".
    fn describe(&self) -> String;

    /// The backend as a fixed name for metrics (`directory`,
    /// `kubernetes`, `memory`; `other` for a sink that does not say).
    fn kind(&self) -> &'static str {
        "other"
    }

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

impl From<crate::files::FileError> for SinkError {
    fn from(error: crate::files::FileError) -> Self {
        SinkError::Io {
            action: error.action,
            path: error.path,
            source: error.source,
        }
    }
}
