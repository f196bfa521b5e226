//! Connecting to a trustplane server as admin.

use std::path::PathBuf;

use anyhow::Context as _;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

use super::options::{DEFAULT_SERVER_URL, DataDirOption, ServerCaOption, ServerOption};

/// How to reach the server as admin. Credentials default to the files
/// `trustplane init` wrote under `--data-dir`.
#[derive(Clone, Debug, clap::Args)]
pub struct AdminConnection {
    /// `--server`.
    #[command(flatten)]
    pub server: ServerOption,
    /// `--data-dir`, for the default credential paths.
    #[command(flatten)]
    pub data_dir: DataDirOption,
    /// `--server-ca`.
    #[command(flatten)]
    pub server_ca: ServerCaOption,
    /// Admin client certificate [default: <data-dir>/admin/admin.pem].
    #[arg(long, env = "TRUSTPLANE_ADMIN_CERT", value_name = "FILE")]
    pub admin_cert: Option<PathBuf>,
    /// Admin client key [default: <data-dir>/admin/admin-key.pem].
    #[arg(long, env = "TRUSTPLANE_ADMIN_KEY", value_name = "FILE")]
    pub admin_key: Option<PathBuf>,
}

/// Reads a credential file; the error names the flag that sets it.
fn read(path: &PathBuf, what: &str, flag: &str) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| {
        format!(
            "cannot read the {what} at {}: pass --data-dir (the directory `trustplane init` wrote) or --{flag}",
            path.display(),
        )
    })
}

impl AdminConnection {
    /// Admin credentials from `data_dir` for the server at `url`.
    pub fn new(url: String, data_dir: PathBuf) -> Self {
        AdminConnection {
            server: ServerOption { url: Some(url) },
            data_dir: DataDirOption { path: data_dir },
            server_ca: ServerCaOption::default(),
            admin_cert: None,
            admin_key: None,
        }
    }

    /// The server URL: `--server`, else the default.
    pub fn server_url(&self) -> &str {
        self.server.url.as_deref().unwrap_or(DEFAULT_SERVER_URL)
    }

    /// The control-plane CA that verifies the server: `--server-ca`, else
    /// the data directory's.
    pub fn server_ca_path(&self) -> PathBuf {
        self.server_ca
            .path
            .clone()
            .unwrap_or_else(|| self.data_dir.layout().control_plane_ca_path())
    }

    /// Reads the control-plane CA (PEM).
    pub fn server_ca_pem(&self) -> anyhow::Result<String> {
        read(&self.server_ca_path(), "control-plane CA", "server-ca")
    }

    /// Opens a TLS channel with the admin credential.
    pub async fn connect(&self) -> anyhow::Result<Channel> {
        let data_dir = self.data_dir.layout();
        let ca_path = self.server_ca_path();
        let cert_path = self
            .admin_cert
            .clone()
            .unwrap_or_else(|| data_dir.admin_cert_path());
        let key_path = self
            .admin_key
            .clone()
            .unwrap_or_else(|| data_dir.admin_key_path());
        let ca = read(&ca_path, "control-plane CA", "server-ca")?;
        let certificate = read(&cert_path, "admin cert", "admin-cert")?;
        let key = crate::files::read_private(&key_path).with_context(|| {
            format!(
                "cannot use the admin key at {}: pass --data-dir (the directory `trustplane init` wrote) or --admin-key",
                key_path.display()
            )
        })?;
        connect(self.server_url(), &ca, Some((&certificate, &key))).await
    }
}

/// Opens a TLS channel to `server` verifying it with `ca_pem`, optionally
/// presenting a client certificate.
pub async fn connect(
    server: &str,
    ca_pem: &str,
    client: Option<(&str, &str)>,
) -> anyhow::Result<Channel> {
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem));
    if let Some((certificate, key)) = client {
        tls = tls.identity(Identity::from_pem(certificate, key));
    }
    let endpoint = Channel::from_shared(server.to_string())
        .with_context(|| {
            format!("{server:?} is not a valid server URL (e.g. https://127.0.0.1:8443)")
        })?
        .tls_config(tls)
        .context("TLS configuration")?
        .connect_timeout(std::time::Duration::from_secs(10));
    endpoint.connect().await.with_context(|| {
        format!("cannot connect to {server}: is `trustplane server` running there, and is --server right?")
    })
}

/// Turns a gRPC status into a readable error.
pub fn status_error(status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!(
        "server refused the call ({:?}): {}",
        status.code(),
        status.message()
    )
}
